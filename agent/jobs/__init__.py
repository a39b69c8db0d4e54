"""agent/jobs."""
