-- Gray failure: a fourth status, `degraded` (live and ready, but slow, flaky or flapping).
-- `targets.degraded` holds a target's detector settings (NULL: every default);
-- `instance_status.degraded` the verdict while an instance is degraded (`{"reason", "detail"}`,
-- NULL otherwise; since when is the row's `since`). Nullable columns: the previous release
-- ignores them, and reads a `degraded` status as a status it does not know.
ALTER TABLE targets ADD COLUMN degraded jsonb;
ALTER TABLE instance_status ADD COLUMN degraded jsonb;
