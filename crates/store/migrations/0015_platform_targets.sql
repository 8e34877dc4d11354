-- compatible-with: 12
-- The platform's own services (`api.platform`) are registered by the API as targets it owns
-- (`managed_by = 'platform'`), so a delete that would not last is refused (409
-- `platform_target`). Only widens what `managed_by` may hold: a release that expects 12 to 14
-- reads the new word as a target that is not control's, as it did. The check is replaced
-- NOT VALID (every existing row holds one of the older words, so nothing needs checking
-- under the lock); the post-deployment step of the same number validates it without blocking
-- writers.
SET LOCAL lock_timeout = '5s';
ALTER TABLE targets DROP CONSTRAINT targets_managed_by_check;
ALTER TABLE targets ADD CONSTRAINT targets_managed_by_check
    CHECK (managed_by IN ('api', 'control', 'platform')) NOT VALID;
