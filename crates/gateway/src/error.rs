//! [`GatewayError`]: every error the gateway answers, turned into HTTP in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered as `{"error": {"code", "message"}}` with a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A malformed parameter or header (400), with its stable code: `bad_selector`,
    /// `bad_match`, `bad_metrics_path`, `bad_timeout_header`.
    #[error("{message}")]
    BadRequest {
        /// The stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The `Accept` header names no format the gateway writes (406, `not_acceptable`).
    #[error("acceptable: application/openmetrics-text (1.0.0) or text/plain (0.0.4)")]
    NotAcceptable,
    /// No such target (404, `not_found`).
    #[error("no target named `{0}`")]
    NotFound(String),
    /// The registry cannot be read and nothing is cached (503, `registry_unavailable`).
    #[error("the targets registry cannot be read")]
    Unavailable,
    /// A bug: the merge failed (500, `internal`); the detail is logged, never answered.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// A 400 with `code`.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    /// The `result` label of `caracal_gateway_federations_total`.
    pub fn result(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. } | GatewayError::NotAcceptable => "bad_request",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::Unavailable => "unavailable",
            GatewayError::Internal => "internal",
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            GatewayError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, *code),
            GatewayError::NotAcceptable => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            GatewayError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            GatewayError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable"),
            GatewayError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut response = caracal_core::error_response(status, code, &self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // As every Caracal 503 for a store: worth retrying shortly.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(caracal_core::unavailable::RETRY_AFTER_SECS),
            );
        }
        response
    }
}
