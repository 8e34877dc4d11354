-- The credential the gateway presents when it scrapes a target's metrics: the name of a file
-- in the operator's credential directory (`gateway.credentials_dir`), never a path or a
-- secret. NULL: nothing is presented (the platform's own targets get the metrics bearer by
-- configuration, not by this column). A nullable column: the previous release ignores it.
ALTER TABLE targets ADD COLUMN credential text;
