"""Realtime: the WebSocket hub (``hub.py``), the Redis pub/sub listener (``listener.py``),
events for a user's sockets (``events.py``) and each user's event log that lets a client
resume after a reconnect (``event_log.py``)."""
