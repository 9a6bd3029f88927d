"""Structured logs and Prometheus metrics, shared by the three services."""
