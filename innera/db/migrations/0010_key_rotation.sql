-- At most one key rotation is unfinished at a time: a second pending/running row is refused
-- (innera keys rotate checks first and reports the running one; this closes the race).
CREATE UNIQUE INDEX key_rotation_jobs_one_unfinished_idx ON key_rotation_jobs ((true))
    WHERE status IN ('pending', 'running');
