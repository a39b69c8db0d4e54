"""console/verbs."""
