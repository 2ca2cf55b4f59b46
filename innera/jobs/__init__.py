"""Background jobs with a table (imports, exports, account deletions, key rotations).

- ``kinds.py``: :class:`~innera.jobs.kinds.JobKind`, a kind of job declared once (table,
  queue, name, retry policy); each domain module declares its own.
- ``tables.py``: the PostgreSQL job tables, the source of truth for a job's state.
- ``submission.py``: :func:`~innera.jobs.submission.submit` (insert, commit, then enqueue
  on the Redis queue; the reconciler catches up when Redis is down).
- ``handlers.py``: the bridge from a queue delivery to a row's work (status, progress,
  failures).
- ``reconciler.py``: re-enqueues unfinished jobs Redis has lost (at start-up, then every
  minute).
- ``runtime.py``: the queue configurations of a registry of handlers (``workers/registry.py``).
- ``upload_sweeper.py``: removes attachments declared but never uploaded.
"""
