-- no-transaction
-- compatible-with: 12
-- The status history is appended in time order, so a BRIN index on occurred_at finds the
-- status page's last 24 hours (and, later, what retention prunes) at a fraction of the
-- B-tree's size and write cost. Built CONCURRENTLY: writers of status_transitions go on
-- recording changes meanwhile. The B-tree it replaces is dropped by the post-deployment step
-- of the same number (post-deploy/0013_*), once no replica of the previous release reads
-- through it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS status_transitions_occurred_brin ON status_transitions USING brin (occurred_at) WITH (autosummarize = on)
