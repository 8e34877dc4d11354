-- Caracal's schema. Every query a service runs on a hot path has an index here.

-- The targets registry: what the coordinator probes.
CREATE TABLE targets (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    labels       jsonb NOT NULL DEFAULT '{}',
    health_path  text NOT NULL,
    ready_path   text NOT NULL,
    metrics_path text NOT NULL,
    interval_ms  integer NOT NULL,
    timeout_ms   integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    id        bigserial PRIMARY KEY,
    target_id bigint NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    url       text NOT NULL,
    UNIQUE (target_id, url)
);

-- The current status of each instance, written only on a transition.
CREATE TABLE instance_status (
    instance_id bigint PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    status      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    last_error  text
);

-- Every transition, kept by name so history survives the target's deletion.
CREATE TABLE status_transitions (
    id           bigserial PRIMARY KEY,
    target_name  text NOT NULL,
    instance_url text NOT NULL,
    from_status  text NOT NULL,
    to_status    text NOT NULL,
    reason       text,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_transitions_target_idx ON status_transitions (target_name, id DESC);

-- The transactional outbox: written in the same transaction as the change it announces,
-- relayed to the Redis stream `caracal.events` by the coordinator.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_type      text NOT NULL,
    target          text,
    instance        text,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    dispatched_at   timestamptz,
    dead_at         timestamptz
);
-- The two partial indexes caracal-core's outbox checks read (checks::OUTBOX_INDEXES).
CREATE INDEX outbox_pending_idx ON outbox (created_at) WHERE dispatched_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_dead_idx ON outbox (created_at) WHERE dead_at IS NOT NULL;
-- The relay claims undispatched rows in id order.
CREATE INDEX outbox_relay_idx ON outbox (id) WHERE dispatched_at IS NULL AND dead_at IS NULL;
-- Purging dispatched rows after their retention.
CREATE INDEX outbox_purge_idx ON outbox (dispatched_at) WHERE dispatched_at IS NOT NULL;

-- The durable ledger the audit service writes, once per outbox id.
CREATE TABLE audit_events (
    outbox_id   bigint PRIMARY KEY,
    event_type  text NOT NULL,
    target      text,
    instance    text,
    payload     jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_target_idx ON audit_events (target, outbox_id);
CREATE INDEX audit_events_type_idx ON audit_events (event_type, outbox_id);
CREATE INDEX audit_events_occurred_idx ON audit_events (occurred_at, outbox_id);
