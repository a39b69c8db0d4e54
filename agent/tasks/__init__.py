"""agent/tasks."""
