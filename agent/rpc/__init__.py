"""agent/rpc."""
