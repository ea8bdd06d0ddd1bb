"""Node-wide concerns every package may report to: Prometheus metrics and readiness probes."""
