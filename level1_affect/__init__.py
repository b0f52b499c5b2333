"""level1_affect."""
