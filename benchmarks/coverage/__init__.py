"""Weight-free coverage proxy: which pruner keeps the objects of synthetic token maps."""
