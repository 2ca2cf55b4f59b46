"""Job handlers, one module per queue (they arrive with the jobs issue)."""
