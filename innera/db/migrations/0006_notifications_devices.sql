-- Notifications shown in the app (and pushed to devices), and the devices' push tokens.
-- Titles and bodies are short system texts, not journal content: stored in clear.
CREATE TABLE notifications (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text        NOT NULL,
    title      text        NOT NULL,
    body       text        NOT NULL,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    read_at    timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_kind_check CHECK (kind <> '' AND char_length(kind) <= 64),
    CONSTRAINT notifications_title_check CHECK (char_length(title) <= 200),
    CONSTRAINT notifications_body_check CHECK (char_length(body) <= 2000),
    CONSTRAINT notifications_data_check CHECK (jsonb_typeof(data) = 'object')
);

-- Newest first with keyset pagination: (user, created_at desc, id desc).
CREATE INDEX notifications_user_created_idx
    ON notifications (user_id, created_at DESC, id DESC);
-- The unread filter and the unread count only touch unread rows.
CREATE INDEX notifications_user_unread_idx
    ON notifications (user_id, created_at DESC, id DESC) WHERE read_at IS NULL;

-- A push token may be up to 4096 characters: too long for a btree entry (~2.7 kB), so its
-- uniqueness is enforced on its SHA-256. convert_to() is only STABLE (encoding lookup); the
-- database encoding never changes, so this wrapper is immutable in fact.
CREATE FUNCTION push_token_digest(token text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT sha256(convert_to(token, 'UTF8')) $$;

CREATE TABLE devices (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform     text        NOT NULL,
    push_token   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT devices_platform_check CHECK (platform IN ('ios', 'android', 'web')),
    CONSTRAINT devices_push_token_check CHECK (char_length(push_token) BETWEEN 1 AND 4096)
);

-- UNIQUE (push_token): one device row per token, whoever registered it last owns it.
CREATE UNIQUE INDEX devices_push_token_key ON devices (push_token_digest(push_token));
CREATE INDEX devices_user_created_idx ON devices (user_id, created_at DESC, id DESC);

CREATE TRIGGER devices_set_updated_at
    BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
