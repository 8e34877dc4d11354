//! caracal-audit's integration tests: the consumer and the query API on real PostgreSQL and
//! Redis (a private Redis per test, since the stream name is fixed).

mod consumer;
mod events;
mod support;
