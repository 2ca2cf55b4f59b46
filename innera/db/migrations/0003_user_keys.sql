-- One data key (DEK) per user, stored only wrapped by a master key (MEK) version.
CREATE TABLE user_keys (
    user_id     uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    mek_version integer     NOT NULL CHECK (mek_version > 0),
    wrapped_dek bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX user_keys_mek_version_idx ON user_keys (mek_version);

CREATE TRIGGER user_keys_set_updated_at
    BEFORE UPDATE ON user_keys
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
