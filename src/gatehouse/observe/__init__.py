"""What operators see of a running server: audit log, metrics, probes, traces."""
