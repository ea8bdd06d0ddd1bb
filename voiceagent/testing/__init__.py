"""Fakes shared by the tests and the benchmarks: engines on the event loop's clock, no models."""
