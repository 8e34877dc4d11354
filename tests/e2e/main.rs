//! End-to-end tests: the built `caracal-api`, `caracal-coordinator`, `caracal-audit`, `caracal-control` and
//! `caracal-sts` binaries against real PostgreSQL and Redis, talking HTTP over loopback (and, for
//! traces, OTLP to a collector in the test).

mod cli;
mod discovery;
mod failover;
mod ledger;
mod outbound;
mod pipeline;
mod retention;
mod sentinel;
mod support;
mod tokens;
mod traces;
mod upgrade;
