//! caracal-core's integration tests: one binary, real PostgreSQL and Redis from the testkit,
//! real HTTP over loopback.

mod auth;
mod checks;
mod config;
mod drain;
mod endpoints;
mod faults;
mod grpc;
mod ladder;
mod slow_clients;
mod stores;
mod storm;
mod support;
mod telemetry;
