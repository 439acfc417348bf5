"""Thin handlers: WebSocket relay endpoints (lean ASGI) and the HTTP API (Quart blueprint)."""
