-- The contract half of schema 15: validates the widened check on targets.managed_by. VALIDATE
-- takes SHARE UPDATE EXCLUSIVE, so writers of targets go on while it reads the table.
SET LOCAL lock_timeout = '5s';
ALTER TABLE targets VALIDATE CONSTRAINT targets_managed_by_check
