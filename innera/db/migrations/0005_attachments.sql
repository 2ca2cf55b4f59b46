-- Attachments of journal entries. The bytes live in the attachment store (S3 or the local
-- data dir) under the key {user_id}/{entry_id}/{id}; a row is 'pending' from the moment the
-- upload URL is issued until POST /v1/attachments/{id}/complete has seen the object.
-- Deleting an entry (or a user) deletes its rows; the objects need a storage clean-up
-- (innera.api.attachments.delete_entry_objects).
CREATE TABLE attachments (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    entry_id     uuid        NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    filename     text        NOT NULL,
    content_type text        NOT NULL,
    size         bigint      NOT NULL,
    status       text        NOT NULL DEFAULT 'pending',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT attachments_status_check CHECK (status IN ('pending', 'ready')),
    CONSTRAINT attachments_size_check CHECK (size >= 0),
    CONSTRAINT attachments_filename_check CHECK (filename <> '' AND length(filename) <= 255)
);

CREATE INDEX attachments_entry_idx ON attachments (entry_id);
CREATE INDEX attachments_user_idx ON attachments (user_id);

CREATE TRIGGER attachments_set_updated_at
    BEFORE UPDATE ON attachments
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
