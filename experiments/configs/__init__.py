"""experiments/configs."""
