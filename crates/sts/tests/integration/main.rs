//! caracal-sts's integration tests: the STS served in-process over real HTTP, on real
//! PostgreSQL and Redis.

mod admin;
mod keys;
mod oauth;
mod support;
