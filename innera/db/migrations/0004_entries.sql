-- Journal entries. Content (title, body, tags, mood) is sealed with the user's data key
-- (innera/crypto/entry_cipher.py); only timestamps stay plaintext, for ordering.
CREATE TABLE entries (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content     bytea       NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Newest first, keyset pagination and the search scan: (user, occurred_at desc, id desc).
CREATE INDEX entries_user_occurred_idx ON entries (user_id, occurred_at DESC, id DESC);

CREATE TRIGGER entries_set_updated_at
    BEFORE UPDATE ON entries
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
