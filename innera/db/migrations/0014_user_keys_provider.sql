-- Which key provider wrapped each data key, beside the master key version: 'local'
-- (INNERA_MEK) or 'kms' (AWS KMS, INNERA_MEK_KMS_KEY_ID). Versions are one numbering across
-- both, so a rotation moves data keys between a local key and a KMS key; the column lets a
-- version configured with the other provider be reported as such, and `innera keys status`
-- show where the data keys are. Every key stored so far was wrapped locally; the default
-- stays, so an instance of the previous release (which knows only local keys and does not
-- name the column) still signs users up during a rolling deploy.
ALTER TABLE user_keys
    ADD COLUMN mek_provider text NOT NULL DEFAULT 'local'
        CHECK (mek_provider IN ('local', 'kms'));
