"""console/net."""
