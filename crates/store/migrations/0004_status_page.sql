-- The status page: an operator can pause probing a target, and the page draws every target's
-- last 24 hours of transitions in one read.

-- When probing was paused (NULL: probed). The coordinator skips paused targets; their last
-- known status stays as it was.
ALTER TABLE targets ADD COLUMN paused_at timestamptz;

-- The page's timelines read the last 24 hours of every target's transitions.
CREATE INDEX status_transitions_occurred_idx ON status_transitions (occurred_at);
