"""agent/jobs/node."""
