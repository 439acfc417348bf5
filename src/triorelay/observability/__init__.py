"""What an operator sees of a running relay: Prometheus metrics (``GET /metrics``)."""
