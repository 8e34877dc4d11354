//! The one error type of caracal-core and its exit codes.

use crate::config::ConfigError;

/// What can stop a service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad configuration value; the binary exits with status 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Telemetry (logs or the OTLP exporter) could not be set up.
    #[error("cannot set up telemetry: {0}")]
    Telemetry(String),
    /// A service's own start-up step failed.
    #[error("start-up failed: {what}")]
    Startup {
        /// The step that failed.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An operating-system call failed (runtime, signals).
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps a service's start-up failure, naming the step.
    pub fn startup(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Startup { what: what.into(), source: source.into() }
    }

    /// The process exit status for this error: 2 for configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The error body every Caracal endpoint answers: `{"error": {"code", "message"}}`, with
/// `WWW-Authenticate: Bearer` on a 401. `code` is stable and machine-readable.
pub fn error_response(status: axum::http::StatusCode, code: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = (status, axum::Json(body)).into_response();
    if status == axum::http::StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"caracal\""),
        );
    }
    response
}
