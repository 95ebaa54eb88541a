"""Efficiency report: analytic FLOPs, measured times, memory and KV bytes per budget K."""
