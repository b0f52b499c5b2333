"""ahjax/data."""
