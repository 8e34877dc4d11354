-- The ledger's completeness: a watermark below which every live outbox row is known to be in
-- audit_events, so finding rows the stream lost (Redis restarted empty, FLUSHALL, a trimmed
-- stream) reads only the rows above it, never the whole outbox.
CREATE TABLE ledger_watermark (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Every outbox row with an id at or below this is in the ledger, dead, or purged.
    outbox_id  bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ledger_watermark DEFAULT VALUES;

-- The outbox is a queue: every row is written, updated once and deleted. Vacuum it after 1 %
-- of its rows changed (the default waits for 20 %), so the relay's partial indexes stay small.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
