-- no-transaction
-- The contract half of schema 13: the B-tree on status_transitions.occurred_at, superseded by
-- status_transitions_occurred_brin. Dropped CONCURRENTLY, so writers never wait on it.
DROP INDEX CONCURRENTLY IF EXISTS status_transitions_occurred_idx
