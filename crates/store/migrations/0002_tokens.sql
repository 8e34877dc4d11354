-- The token service (STS): clients, signing keys and revocations.

-- OAuth2 clients. A secret is 256 random bits, so a fast digest is enough to store it: it
-- cannot be guessed from the digest. Only the digest is kept; the secret is shown once.
CREATE TABLE sts_clients (
    id            text PRIMARY KEY,
    secret_sha256 bytea NOT NULL,
    scopes        text[] NOT NULL,
    description   text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);
-- Replicas keep the whole table in memory and re-read what changed since their last read.
CREATE INDEX sts_clients_updated_idx ON sts_clients (updated_at);

-- Signing keys. The private half is sealed (AES-256-GCM, nonce first) with the key from
-- CARACAL_STS_KEY_ENCRYPTION_FILE; the public half is the JWK the JWKS publishes.
-- A key is in the JWKS from created_at (pre-publication) until published_until, and signs
-- from signs_from until signs_until; published_until covers every token it signed.
CREATE TABLE sts_signing_keys (
    kid             text PRIMARY KEY,
    alg             text NOT NULL,
    public_jwk      jsonb NOT NULL,
    private_sealed  bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    signs_from      timestamptz NOT NULL,
    signs_until     timestamptz NOT NULL,
    published_until timestamptz NOT NULL,
    CHECK (signs_from < signs_until AND signs_until <= published_until)
);
CREATE INDEX sts_signing_keys_published_idx ON sts_signing_keys (published_until);

-- Revocations: one token (jti) or every token a client was issued up to revoked_at. Each is
-- written with its outbox event (`token.revoked`) in one transaction; expires_at is when every
-- token it covers has expired, after which it can be forgotten.
CREATE TABLE token_revocations (
    id         bigserial PRIMARY KEY,
    jti        text,
    client_id  text,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CHECK ((jti IS NULL) <> (client_id IS NULL))
);
CREATE INDEX token_revocations_expires_idx ON token_revocations (expires_at);
