//! A store that cannot take a request right now (a failover, a restart, a database that has
//! turned read-only) is answered `503` with `Retry-After`, never `500`: the request was fine,
//! and a client that waits a moment and retries gets through once the store is back.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

/// Seconds a client should wait before retrying: about one readiness check interval, in which
/// `postgres:writable` notices a switch.
pub const RETRY_AFTER_SECS: u16 = 2;

/// Whether `error` means PostgreSQL cannot take the request now but may shortly: no
/// connection (refused, reset, TLS, the pool timed out waiting for one, or a peer that broke
/// the wire protocol — a proxy whose server is gone answers a connection's first message with
/// nonsense, then closes it), the server shutting
/// down or starting (`57P01`–`57P03`), a connection exception (class `08`), too many
/// connections (`53300`), or a read-only transaction (`25006`: a standby, or a primary that
/// has been demoted).
pub fn postgres_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "25006" || code == "53300"
        }),
        _ => false,
    }
}

/// `503` `{"error": {"code": "store_unavailable", ...}}` with `Retry-After`.
pub fn unavailable_response() -> Response {
    let mut response = crate::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the database cannot take this request now; retry shortly",
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_mistakes_are_not() {
        assert!(postgres_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(postgres_unavailable(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())));
        // What a connection through haproxy to a dead primary met (seen in the failover test).
        assert!(postgres_unavailable(&sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into())));
        assert!(!postgres_unavailable(&sqlx::Error::RowNotFound));
        let response = unavailable_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
