"""The gateway service: the HTTP API; it owns nothing and calls person and score."""
