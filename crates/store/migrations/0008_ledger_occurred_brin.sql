-- The ledger is append-only and its rows arrive in about the order they occurred (the relay
-- claims the outbox in id order), so `occurred_at` is summarised per block range (BRIN)
-- instead of a B-tree entry per row. Each B-tree entry cost about a sixth of the ledger's
-- batch insert (timed in psql: 100,000 rows in 2,000-row batches), the audit's largest
-- statement; a BRIN index is updated only when a range is summarised. It serves the same
-- `since` filter of `GET /v1/events` (bitmap scans of the ranges that can hold later times).
-- `autosummarize` summarises each range as soon as the next one starts, instead of waiting
-- for VACUUM, so the newest ranges are the only ones ever read whole.
DROP INDEX audit_events_occurred_idx;
CREATE INDEX audit_events_occurred_brin ON audit_events USING brin (occurred_at) WITH (autosummarize = on);
