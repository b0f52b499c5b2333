"""ahjax/train."""
