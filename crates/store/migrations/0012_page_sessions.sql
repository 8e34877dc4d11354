-- Status page sessions, kept server-side: the browser holds a random id (its SHA-256 is the
-- key here), never the token it signed in with. A session is what the token allowed at sign-in
-- (`view`), tied to the token so that revoking it ends the session: the admin token's SHA-256
-- (a rotated admin token no longer matches), or an STS token's id, client and issue time (its
-- revocation is seen through the revocation set). Deleted at sign-out; expired rows are purged
-- at each sign-in.
CREATE TABLE page_sessions (
    id_sha256    bytea PRIMARY KEY,
    view         text NOT NULL CHECK (view IN ('details', 'operator')),
    admin_sha256 bytea,
    jti          text,
    client_id    text,
    iat          bigint,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX page_sessions_expires_idx ON page_sessions (expires_at);
