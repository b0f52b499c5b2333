"""level2_conflict."""
