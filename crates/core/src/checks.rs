//! Built-in checks. Each is a plain function returning a [`Check`](crate::Check) (or two),
//! with the usual name, rung and component type already set.
//!
//! - [`postgres()`]: `postgres:connectivity`, acquire + `SELECT 1` (storage rung).
//! - [`postgres_writable()`]: `postgres:writable`, the database takes writes (not a standby,
//!   not read-only), closing read-only pooled connections while it fails (storage rung).
//! - [`redis()`]: `redis:connectivity`, `PING` (storage rung).
//! - [`redis_tls()`]: `redis:tls`, a fresh verified TLS session with a `rediss://` Redis, its
//!   failures named (storage rung).
//! - [`stream_group()`]: `stream:lag`, a Redis stream consumer group's lag and oldest pending
//!   entry (delivery rung).
//! - [`outbox()`]: `outbox:oldest_pending_age` (required) and `outbox:dead` (warn only) for a
//!   transactional outbox table (delivery rung).

mod outbox;
mod postgres;
mod redis;
mod stream;

pub use outbox::{OUTBOX_INDEXES, outbox, outbox_measured, outbox_query};
pub use postgres::{postgres, postgres_writable};
pub use redis::{redis, redis_tls};
pub use stream::{StreamGroup, stream_group};

/// Milliseconds since `start`, as a check's observed response time.
fn elapsed_ms(start: std::time::Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
