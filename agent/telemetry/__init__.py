"""agent/telemetry."""
