"""The queue: a reverse proxy in front of one app instance (breaker, readiness, drain, timeouts, stats)."""
