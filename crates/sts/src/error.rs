//! The STS's errors: [`StsError`] for the admin API and failures inside (answered in the
//! platform's `{"error": {"code", "message"}}` shape), and [`OAuthError`] for `/oauth/*`
//! (answered exactly as RFC 6749 §5.2: `{"error", "error_description"}`). Each becomes HTTP in
//! one place.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An admin-API or internal error, with a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// The body is not JSON (400, `malformed_json`).
    #[error("the body is not valid JSON")]
    MalformedJson,
    /// The body is not `application/json` (415, `unsupported_media_type`).
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// The body is too large (413, `payload_too_large`).
    #[error("the body is too large")]
    PayloadTooLarge,
    /// A value fails validation (422, `validation_failed`), naming the field.
    #[error("{message}")]
    Validation {
        /// The field.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// No such client (404, `not_found`).
    #[error("no client `{0}`")]
    NotFound(String),
    /// The client id is taken (409, `conflict`).
    #[error("a client `{0}` exists already")]
    Conflict(String),
    /// A cryptographic step failed (500); never answered in detail.
    #[error("cannot {0}")]
    Crypto(&'static str),
    /// PostgreSQL failed (500).
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// The store failed (500).
    #[error("store error")]
    Store(#[from] caracal_store::Error),
}

impl StsError {
    /// A validation error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { field: field.into(), message: message.into() }
    }
}

impl IntoResponse for StsError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            StsError::MalformedJson => (StatusCode::BAD_REQUEST, "malformed_json"),
            StsError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            StsError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            StsError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            StsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StsError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StsError::Db(e) | StsError::Store(caracal_store::Error::Database(e))
                if caracal_core::unavailable::postgres_unavailable(e) =>
            {
                tracing::warn!(error = %e, "the database cannot take a request; answered 503");
                return caracal_core::unavailable::unavailable_response();
            }
            StsError::Crypto(_) | StsError::Db(_) | StsError::Store(_) => {
                tracing::error!(error = %self, source = ?std::error::Error::source(&self).map(ToString::to_string), "request failed");
                return caracal_core::error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
            }
        };
        if let StsError::Validation { field, message } = &self {
            let body = serde_json::json!({ "error": { "code": code, "message": message, "field": field } });
            return (status, Json(body)).into_response();
        }
        caracal_core::error_response(status, code, &self.to_string())
    }
}

impl From<JsonRejection> for StsError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(_) => StsError::MalformedJson,
            JsonRejection::MissingJsonContentType(_) => StsError::UnsupportedMediaType,
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d).to_string();
                StsError::Validation { field: "(body)".into(), message: detail }
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => StsError::PayloadTooLarge,
            _ => StsError::MalformedJson,
        }
    }
}

/// An OAuth error (RFC 6749 §5.2, RFC 7009 §2.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code (`invalid_request`, `invalid_client`, ...).
    pub code: &'static str,
    /// A human-readable description; never holds a secret.
    pub description: String,
}

impl OAuthError {
    /// `invalid_request` (400): missing or repeated parameter, wrong content type, malformed.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_request", description: description.into() }
    }

    /// `invalid_client` (401): one answer for an unknown client, a wrong secret and a
    /// disabled client.
    pub fn invalid_client() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: "client authentication failed".into(),
        }
    }

    /// `unsupported_grant_type` (400).
    pub fn unsupported_grant_type() -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "unsupported_grant_type",
            description: "only the client_credentials grant is supported".into(),
        }
    }

    /// `invalid_scope` (400).
    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_scope", description: description.into() }
    }

    /// `server_error` (500): something failed inside; the detail is logged only.
    pub fn server_error() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: "the server could not complete the request".into(),
        }
    }

    /// `invalid_request` answered 413: the body is larger than any valid request.
    pub fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "invalid_request",
            description: "the body is too large".into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = serde_json::json!({ "error": self.code, "error_description": self.description });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"caracal\""));
        }
        response
    }
}
