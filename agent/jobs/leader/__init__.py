"""agent/jobs/leader."""
