"""Background jobs (imports, exports, account deletions, key rotations).

- ``tables.py``: the PostgreSQL job tables, the source of truth for a job's state, and
  :func:`~innera.jobs.tables.submit` (insert, then enqueue on the Redis queue).
- ``reconciler.py``: re-enqueues unfinished jobs Redis has lost (at start-up, then every
  minute).
- ``runtime.py``: the registry of queue handlers the process' job workers run.
"""
