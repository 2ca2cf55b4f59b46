-- A failed job names its failure with a stable, machine-readable code beside the message
-- (for example import_too_large, too_many_entries, entry_too_large, too_deep for imports;
-- job_failed when the work failed for another reason).
ALTER TABLE import_jobs ADD COLUMN error_code text;
ALTER TABLE export_jobs ADD COLUMN error_code text;
ALTER TABLE account_deletion_jobs ADD COLUMN error_code text;
ALTER TABLE key_rotation_jobs ADD COLUMN error_code text;
