-- Where imported entries came from, so importing the same file again adds nothing
-- (workers/imports.py). A source is ("innera", entry id in the exporting account) or
-- ("dayone", Day One uuid); it is stored only as source_key = HMAC-SHA256 under a key derived
-- from the user's data key, because the source id is content (it links this account to
-- another one, or to a Day One journal): the database holds no plain source id, and the
-- same source gives unrelated keys in two accounts.
--
-- Deleting the entry deletes its source row: an entry the user deleted comes back if the
-- same file is imported again.
CREATE TABLE entry_sources (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source_key bytea       NOT NULL,
    entry_id   uuid        NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, source_key),
    CONSTRAINT entry_sources_key_check CHECK (length(source_key) = 32)
);

-- The cascade from entries.
CREATE INDEX entry_sources_entry_idx ON entry_sources (entry_id);
