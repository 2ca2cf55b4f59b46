-- Background jobs. These tables are the source of truth for a job's state; the Redis queue
-- only carries the work (a job id there is "<table>:<id>"). The reconciler re-enqueues
-- pending/running rows Redis has lost.

CREATE TABLE import_jobs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status      text        NOT NULL DEFAULT 'pending',
    attempts    integer     NOT NULL DEFAULT 0,
    progress    real        NOT NULL DEFAULT 0,
    error       text,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT import_jobs_status_check
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT import_jobs_progress_check CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT import_jobs_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX import_jobs_user_idx ON import_jobs (user_id, created_at DESC);
CREATE INDEX import_jobs_unfinished_idx ON import_jobs (created_at)
    WHERE status IN ('pending', 'running');
CREATE TRIGGER import_jobs_set_updated_at
    BEFORE UPDATE ON import_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE export_jobs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status      text        NOT NULL DEFAULT 'pending',
    attempts    integer     NOT NULL DEFAULT 0,
    progress    real        NOT NULL DEFAULT 0,
    error       text,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT export_jobs_status_check
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT export_jobs_progress_check CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT export_jobs_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX export_jobs_user_idx ON export_jobs (user_id, created_at DESC);
CREATE INDEX export_jobs_unfinished_idx ON export_jobs (created_at)
    WHERE status IN ('pending', 'running');
CREATE TRIGGER export_jobs_set_updated_at
    BEFORE UPDATE ON export_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- No foreign key: the job itself deletes the user row at its end, and its own row must
-- survive that (user_id is kept for the record).
CREATE TABLE account_deletion_jobs (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL,
    status      text        NOT NULL DEFAULT 'pending',
    attempts    integer     NOT NULL DEFAULT 0,
    progress    real        NOT NULL DEFAULT 0,
    error       text,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT account_deletion_jobs_status_check
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT account_deletion_jobs_progress_check CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT account_deletion_jobs_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX account_deletion_jobs_user_idx ON account_deletion_jobs (user_id, created_at DESC);
CREATE INDEX account_deletion_jobs_unfinished_idx ON account_deletion_jobs (created_at)
    WHERE status IN ('pending', 'running');
CREATE TRIGGER account_deletion_jobs_set_updated_at
    BEFORE UPDATE ON account_deletion_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Re-wrapping data keys from one master key version to another: not a user's job.
CREATE TABLE key_rotation_jobs (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    from_version integer     NOT NULL CHECK (from_version > 0),
    to_version   integer     NOT NULL CHECK (to_version > 0),
    status       text        NOT NULL DEFAULT 'pending',
    attempts     integer     NOT NULL DEFAULT 0,
    progress     real        NOT NULL DEFAULT 0,
    error        text,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT key_rotation_jobs_status_check
        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    CONSTRAINT key_rotation_jobs_progress_check CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT key_rotation_jobs_attempts_check CHECK (attempts >= 0)
);
CREATE INDEX key_rotation_jobs_unfinished_idx ON key_rotation_jobs (created_at)
    WHERE status IN ('pending', 'running');
CREATE TRIGGER key_rotation_jobs_set_updated_at
    BEFORE UPDATE ON key_rotation_jobs
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
