"""agent/ml."""
