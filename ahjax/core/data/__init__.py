"""Datasets: BAH, the feature store, windows, the demo set."""
