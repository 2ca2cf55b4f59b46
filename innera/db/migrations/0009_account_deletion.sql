-- At most one unfinished account deletion per user: two DELETE /v1/me racing each other (or
-- any other path creating jobs) cannot start a second job for the same account.
--
-- A deletion that reaches its end anonymises its own row (workers/account_deletion.py): in
-- the transaction that deletes the users row, user_id is overwritten with the nil UUID, so
-- no row names the deleted user. That row is still 'running' until the handler marks it
-- completed a moment later, and several users' deletions may be at that point at once: the
-- nil UUID is therefore outside the predicate.
CREATE UNIQUE INDEX account_deletion_jobs_one_unfinished_idx
    ON account_deletion_jobs (user_id)
    WHERE status IN ('pending', 'running')
      AND user_id <> '00000000-0000-0000-0000-000000000000'::uuid;
