-- Export archives are deleted EXPORT_RETENTION_DAYS after they were made
-- (innera/jobs/export_sweeper.py); the job then says so: status 'expired' (no download link).
ALTER TABLE export_jobs DROP CONSTRAINT export_jobs_status_check;
ALTER TABLE export_jobs ADD CONSTRAINT export_jobs_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'expired'));
-- The sweeper's scan: completed exports, oldest first.
CREATE INDEX export_jobs_completed_idx ON export_jobs (finished_at, id)
    WHERE status = 'completed';
