"""agent/rank."""
