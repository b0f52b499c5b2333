"""The core: data, training, metrics, assets, configs and results; imports nothing above it."""
