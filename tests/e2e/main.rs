//! End-to-end tests: the built `caracal-api`, `caracal-coordinator` and `caracal-audit`
//! binaries against real PostgreSQL and Redis, talking HTTP over loopback.

mod cli;
mod pipeline;
mod support;
