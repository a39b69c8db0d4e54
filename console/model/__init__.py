"""console/model."""
