-- Sessions. A user's session generation is raised by a password change, a sign-out
-- everywhere and an account deletion; an access token carries the generation it was issued
-- with and is good only while the two are equal (checked by the per-request "still
-- active?" query, so at no extra cost).
ALTER TABLE users ADD COLUMN session_generation integer NOT NULL DEFAULT 0;

-- What GET /v1/me/sessions shows of a refresh-token family (REFRESH_TOKEN_STORE=postgres):
-- when it began (carried from token to token) and the client that last used it.
ALTER TABLE refresh_tokens ADD COLUMN family_created_at timestamptz;
ALTER TABLE refresh_tokens ADD COLUMN client text;
UPDATE refresh_tokens SET family_created_at = created_at;
ALTER TABLE refresh_tokens ALTER COLUMN family_created_at SET DEFAULT now();
ALTER TABLE refresh_tokens ALTER COLUMN family_created_at SET NOT NULL;
