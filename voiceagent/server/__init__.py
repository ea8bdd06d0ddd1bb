"""HTTP server: the FastAPI app, health/readiness/metrics endpoints, and later the call routes."""
