-- Traces through the pipeline: the W3C `traceparent` of the request that wrote an outbox row,
-- so the relay's publish and the audit's ledger insert continue that request's trace, and the
-- trace id each ledger row belongs to, shown by `GET /v1/events`. NULL when tracing is off
-- (or the row was written outside a traced request).
ALTER TABLE outbox ADD COLUMN trace_context text;
ALTER TABLE audit_events ADD COLUMN trace_id text;
