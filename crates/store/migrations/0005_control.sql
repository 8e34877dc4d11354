-- The control plane (caracal-control): targets discovered from DNS or declared in files, and
-- the registry's change feed that lets the coordinator and the gateway stop re-reading it.

-- Who owns a target: `api` (created through the API, the default) or `control` (declared in
-- a file under control.targets_dir). Control never touches a target it does not own.
ALTER TABLE targets ADD COLUMN managed_by text NOT NULL DEFAULT 'api'
    CHECK (managed_by IN ('api', 'control'));
-- For a control-owned target, the file that declares it (shown to operators).
ALTER TABLE targets ADD COLUMN declared_in text;
-- `{"dns": {...}}` when the instances come from DNS (control resolves them); NULL when the
-- instances are listed. A discovered target's instances are written by control only.
ALTER TABLE targets ADD COLUMN discovery jsonb;

-- Control's resolution loop reads the discovered targets only (a few of the fleet, usually).
CREATE INDEX targets_discovered_idx ON targets (id) WHERE discovery IS NOT NULL;
-- Its reconciliation of declared files reads the targets it owns only.
CREATE INDEX targets_control_idx ON targets (name) WHERE managed_by = 'control';

-- How each discovered target was last resolved, written by control (batched, without an
-- outbox event: only a change of instances is news) and shown by `GET /v1/targets/{name}`.
CREATE TABLE discovery_status (
    target_id     bigint PRIMARY KEY REFERENCES targets (id) ON DELETE CASCADE,
    -- The last resolution attempt, and its outcome: ok, empty, nxdomain, timeout, servfail,
    -- refused or error.
    attempted_at  timestamptz NOT NULL,
    outcome       text NOT NULL,
    -- The last successful resolution (an answer with records, or an authoritative empty one).
    resolved_at   timestamptz,
    -- Records in the last answer, and the lowest TTL among them (s).
    records       integer NOT NULL DEFAULT 0,
    ttl_s         integer,
    -- Consecutive authoritative empty answers (the set empties only at 2).
    empty_streak  integer NOT NULL DEFAULT 0,
    -- Why the last attempt failed; NULL after a success.
    error         text
);

-- The api's summary of the platform's own services (every 5 s) reads them through this index
-- instead of scanning the whole registry for the label.
CREATE INDEX targets_platform_idx ON targets (id) WHERE labels @> '{"caracal": "platform"}';

-- The relay sleeps until a transaction inserts outbox rows, instead of polling: one
-- notification per inserting statement, delivered at commit (and folded into one per
-- transaction by PostgreSQL).
CREATE FUNCTION caracal_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('caracal_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION caracal_outbox_notify();
