"""innera's durable job queue on Redis (Trio): see jobs.py, worker.py, reaper.py, admin.py."""

from innera.queue.jobs import Job, JobInfo, JobQueue, PermanentJobError
from innera.queue.worker import JobContext, QueueConfig, job_workers, run_workers

__all__ = ["Job", "JobContext", "JobInfo", "JobQueue", "PermanentJobError", "QueueConfig",
           "job_workers", "run_workers"]
