//! [`ApiError`]: every error the API answers, turned into HTTP in exactly one place.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered as `{"error": {"code", "message"[, "field"]}}` with a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (400, `malformed_json`).
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is not `application/json` (415, `unsupported_media_type`).
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// The body is larger than allowed (413, `payload_too_large`).
    #[error("the body is too large")]
    PayloadTooLarge,
    /// A value fails validation (422, `validation_failed`), naming the field.
    #[error("{message}")]
    Validation {
        /// The field, as a JSON path (`instances[1]`, `labels.team`).
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// No such target (404, `not_found`).
    #[error("no target named `{0}`")]
    NotFound(String),
    /// The target exists already (409, `conflict`).
    #[error("a target named `{0}` exists already")]
    Conflict(String),
    /// The target is control's to change (409, `managed_by_control`), one of the platform's own
    /// services (409, `platform_target`), or its instances are discovered (409,
    /// `discovered_instances`).
    #[error("{0}")]
    Owned(caracal_store::registry::Refused),
    /// No valid admin bearer (401, `unauthorized`).
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    /// The token lacks a scope this request needs beyond the route's (403,
    /// `insufficient_scope`).
    #[error("{0}")]
    InsufficientScope(String),
    /// The database cannot take the request now (503, `store_unavailable`, with
    /// `Retry-After`): a failover, a restart, a standby or demoted primary.
    #[error("the database cannot take this request now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Something failed inside (500, `internal`); the detail is logged, never answered.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A validation error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { field: field.into(), message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Owned(refused) => (StatusCode::CONFLICT, refused.code()),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed");
        }
        match &self {
            ApiError::Unavailable(source) => {
                tracing::warn!(error = %source, "the database cannot take a request; answered 503");
                caracal_core::unavailable::unavailable_response()
            }
            ApiError::Validation { field, message } => {
                let body = json!({ "error": { "code": code, "message": message, "field": field } });
                (status, Json(body)).into_response()
            }
            _ => caracal_core::error_response(status, code, &self.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::JsonDataError(e) => {
                // serde names the path first: "instances[0]: invalid type ...".
                let text = e.body_text();
                let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d);
                let backticked =
                    |prefix: &str| detail.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_string);
                let field = backticked("missing field `")
                    .or_else(|| backticked("unknown field `"))
                    .or_else(|| detail.split_once(':').map(|(f, _)| f.trim().to_string()).filter(|f| !f.contains(' ')));
                ApiError::Validation { field: field.unwrap_or_else(|| "(body)".into()), message: detail.to_string() }
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::MalformedJson(other.body_text()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if caracal_core::unavailable::postgres_unavailable(&error) {
            ApiError::Unavailable(Box::new(error))
        } else {
            ApiError::Internal(Box::new(error))
        }
    }
}

impl From<caracal_store::Error> for ApiError {
    fn from(error: caracal_store::Error) -> Self {
        use caracal_store::registry::Refused;
        match error {
            caracal_store::Error::Refused(Refused::NotFound(name)) => ApiError::NotFound(name),
            caracal_store::Error::Refused(Refused::Conflict(name)) => ApiError::Conflict(name),
            caracal_store::Error::Refused(refused) => ApiError::Owned(refused),
            caracal_store::Error::Database(e) => e.into(),
            caracal_store::Error::Batch(message) => ApiError::Validation { field: "(body)".into(), message },
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl From<caracal_store::target::Invalid> for ApiError {
    fn from(invalid: caracal_store::target::Invalid) -> Self {
        ApiError::Validation { field: invalid.field, message: invalid.message }
    }
}
