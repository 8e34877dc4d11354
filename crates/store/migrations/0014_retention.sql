-- compatible-with: 12
-- Retention: the status history and the audit ledger are kept for a configured time
-- (`store.retention.history`, `audit.retention`) and purged in batches in the background
-- (caracal_store::retention). One row per purged table says what the purger was told to keep
-- and what it has done, for `caracal doctor`. Only additions: a release that expects 12 or 13
-- neither reads nor writes it.
SET LOCAL lock_timeout = '5s';
CREATE TABLE retention (
    table_name  text PRIMARY KEY,
    -- The retention the last purge applied, in seconds; NULL until a purger ran, 0 = forever.
    keep_secs   double precision,
    rows_purged bigint NOT NULL DEFAULT 0,
    -- The highest key a purge deleted: the ledger's consumer skips a redelivered entry at or
    -- below it, so a purged row is never written back.
    purged_through bigint NOT NULL DEFAULT 0,
    purged_at   timestamptz
);
INSERT INTO retention (table_name) VALUES ('status_transitions'), ('audit_events');
-- Purged rows leave dead tuples at the old end of the table; vacuum after 2 % of the rows
-- changed (the default waits for 20 %), so the space is reused by new rows soon after a purge
-- instead of the table growing by a fifth first. SHARE UPDATE EXCLUSIVE: writers go on.
ALTER TABLE status_transitions SET (autovacuum_vacuum_scale_factor = 0.02);
ALTER TABLE audit_events SET (autovacuum_vacuum_scale_factor = 0.02);
