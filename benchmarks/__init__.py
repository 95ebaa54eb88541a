"""Report tools and benchmarks, run from the repository root as ``python -m benchmarks.<name>``.

They import the pruning library and the llava package; neither imports them."""
