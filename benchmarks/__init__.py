"""Measurements of ESS components, each a runnable module (``python -m benchmarks.<name>``)."""
