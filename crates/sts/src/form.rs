//! Reading an OAuth request: the form body (RFC 6749 §3.2: `application/x-www-form-urlencoded`,
//! UTF-8, no repeated parameter) and the client's credentials (HTTP Basic or form fields,
//! never both: §2.3.1).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::OAuthError;

/// Largest form body accepted; a valid one is well under 1 KiB.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// A parsed form: each parameter once. Empty values count as absent (RFC 6749 §3.1).
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
}

impl Form {
    /// Reads and checks the body of a request with `headers`.
    ///
    /// # Errors
    /// `invalid_request` for a wrong content type, a body that is not UTF-8 or repeats a
    /// parameter; 413 for a body over [`MAX_FORM_BYTES`].
    pub async fn read(headers: &HeaderMap, body: Body) -> Result<Self, OAuthError> {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
        }
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| OAuthError::too_large())?;
        if std::str::from_utf8(&bytes).is_err() {
            return Err(OAuthError::invalid_request("the body is not UTF-8"));
        }
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(&bytes) {
            if value.is_empty() {
                continue;
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                // The name is echoed only when it is one of ours: never a secret's value.
                let shown = if name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("`{name}`")
                } else {
                    "a parameter".into()
                };
                return Err(OAuthError::invalid_request(format!("{shown} is repeated")));
            }
        }
        Ok(Self { params })
    }

    /// The value of `name`, if present and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The value of `name`, required.
    ///
    /// # Errors
    /// `invalid_request` naming the missing parameter.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| OAuthError::invalid_request(format!("the parameter `{name}` is missing")))
    }
}

/// A client's presented credentials.
pub struct Credentials {
    /// The client id.
    pub id: String,
    /// The secret; never logged or echoed.
    pub secret: String,
}

/// The client's credentials from the `Authorization: Basic` header or the form.
///
/// # Errors
/// `invalid_request` when both mechanisms are used or the form names another client than
/// the header; `invalid_client` when none is, or the header is not a usable Basic one.
pub fn credentials(headers: &HeaderMap, form: &Form) -> Result<Credentials, OAuthError> {
    let from_form = || match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Ok(Credentials { id: id.into(), secret: secret.into() }),
        _ => Err(OAuthError::invalid_client()),
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(header) = values.next() else { return from_form() };
    if values.next().is_some() {
        return Err(OAuthError::invalid_request("more than one Authorization header"));
    }
    // Only Basic authenticates a client here (RFC 6749 §2.3.1); another scheme (a Bearer
    // token sent to every endpoint by a generic client, say) is not a second method.
    let is_basic =
        header.to_str().ok().and_then(|v| v.trim().split(' ').next()).is_some_and(|s| s.eq_ignore_ascii_case("basic"));
    if !is_basic {
        return from_form();
    }
    if form.get("client_secret").is_some() {
        return Err(OAuthError::invalid_request("the client authenticated twice: Basic and client_secret"));
    }
    let basic = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| STANDARD.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(OAuthError::invalid_client)?;
    let (id, secret) = basic.split_once(':').ok_or_else(OAuthError::invalid_client)?;
    // Both halves are form-urlencoded before encoding (RFC 6749 §2.3.1).
    let decode = |s: &str| form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.to_string());
    let (Some(id), Some(secret)) = (decode(id), decode(secret)) else { return Err(OAuthError::invalid_client()) };
    if form.get("client_id").is_some_and(|f| f != id) {
        return Err(OAuthError::invalid_request("client_id differs from the Basic credentials"));
    }
    Ok(Credentials { id, secret })
}
