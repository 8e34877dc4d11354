//! caracal-api's integration tests: the API served in-process over real HTTP, on real
//! PostgreSQL and Redis.

mod bad_input;
mod degraded;
mod faults;
mod monitoring;
mod page;
mod registry;
mod support;
