"""console/ui."""
