"""Realtime: the WebSocket hub (and, with the realtime issue, the endpoint and the Redis
pub/sub listener)."""
