-- Marking an outbox row dispatched becomes a HOT update. PostgreSQL rewrites a row in place on
-- its own page, with no new index entries, only when no index names a column the update
-- changes, predicates included, and the page has room. Every partial index below named
-- `dispatched_at`, so each claim wrote a new tuple elsewhere and an entry in the primary key
-- and in the purge index: half of the claim's cost (timed in psql: 50 claims of 2,000 rows
-- from a 100,000-row backlog, 1.75-2.38 s of the backend's CPU before, 0.95-1.04 s after).
--
-- What the dropped indexes found is now found this way:
--   pending rows (the relay's claim, the outbox checks): the primary key walked up from
--     `outbox_floor`, an id at or below which no row is pending (see below);
--   rows old enough to purge: `outbox_created_idx`, since a row is dispatched after it is
--     created, so every row dispatched before T was created before T.
DROP INDEX outbox_pending_idx;
DROP INDEX outbox_relay_idx;
DROP INDEX outbox_purge_idx;
CREATE INDEX outbox_created_idx ON outbox (created_at);

-- Over half of each page is left free when rows are inserted: a claim rewrites every row of a
-- page in one transaction, and each new version, 8 bytes longer with its `dispatched_at`, has
-- to fit on the page for the update to be HOT (at 50 % the last row of a page often did not:
-- 95 of 100 marks were HOT). Pruning reclaims the old versions once no snapshot sees them.
ALTER TABLE outbox SET (fillfactor = 45);

-- Every outbox row with an id at or below this is dispatched or dead, and no row at or below
-- it can still appear (outbox ids come from a sequence and commit out of order, so the relay
-- moves it only up to an id below which every transaction has ended). Only the runbook's
-- re-queue of dead rows moves it down.
CREATE TABLE outbox_floor (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- DROP INDEX above holds the outbox's ACCESS EXCLUSIVE lock until this migration commits, so
-- no transaction is inserting outbox rows now: every id drawn so far is visible.
INSERT INTO outbox_floor (id)
SELECT coalesce(
    (SELECT min(id) - 1 FROM outbox WHERE dispatched_at IS NULL AND dead_at IS NULL),
    (SELECT max(id) FROM outbox),
    0);
