//! Fail-closed bearer authentication: for `/metrics`, `/metrics.json` and readiness details,
//! and for admin APIs.
//!
//! In `rc` and `stable` a bearer must be configured *and* presented; in `dev` metrics are open
//! unless a bearer is configured. The bearer comes from `METRICS_BEARER` or from
//! `METRICS_BEARER_FILE`, which is re-read whenever it changes (rotation without restart) and
//! may hold two tokens, one per line, while a rotation is under way. Tokens are compared as
//! SHA-256 digests in constant time, so neither a token's value nor its length leaks through
//! timing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, CoreConfig, Mode, Secret};
use crate::env;

/// Bearer files larger than this are refused: a token file holds one or two short lines.
const MAX_FILE_BYTES: u64 = 16 * 1024;

type TokenDigest = [u8; 32];

/// A fail-closed bearer policy: who may read metrics (and readiness details), or who may
/// call an admin API.
///
/// In `rc` and `stable` a request is allowed only when a bearer is configured and presented;
/// in `dev` everything is allowed unless a bearer is configured, and then it is required.
#[derive(Debug)]
pub struct BearerAuth {
    mode: Mode,
    bearer: Bearer,
}

/// One bearer's settings and the names they go by, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct BearerSettings<'a> {
    /// The token itself.
    pub token: Option<&'a Secret>,
    /// A file with one or two tokens.
    pub file: Option<&'a Path>,
    /// Config key of the token (`metrics.bearer`).
    pub token_key: &'static str,
    /// Config key of the file (`metrics.bearer_file`).
    pub file_key: &'static str,
    /// Environment variable of the token (`METRICS_BEARER`).
    pub token_env: &'static str,
    /// Environment variable of the file (`METRICS_BEARER_FILE`).
    pub file_env: &'static str,
}

#[derive(Debug)]
enum Bearer {
    None,
    Fixed(TokenDigest),
    File(BearerFile),
}

/// A bearer file and the digests read from it at its last change.
#[derive(Debug)]
struct BearerFile {
    path: PathBuf,
    cache: Mutex<FileCache>,
}

#[derive(Debug)]
struct FileCache {
    stamp: Option<FileStamp>,
    /// Empty while the file is unreadable or invalid: nothing is accepted then.
    digests: Vec<TokenDigest>,
}

/// Enough of a file's metadata to notice a rewrite, a replacement or a symlink swap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl BearerAuth {
    /// The metrics bearer of `config` (`METRICS_BEARER` / `METRICS_BEARER_FILE`).
    ///
    /// # Errors
    /// As [`BearerAuth::new`].
    pub fn metrics(config: &CoreConfig) -> Result<Self, ConfigError> {
        Self::new(
            config.mode,
            BearerSettings {
                token: config.metrics.bearer.as_ref(),
                file: config.metrics.bearer_file.as_deref(),
                token_key: "metrics.bearer",
                file_key: "metrics.bearer_file",
                token_env: env::METRICS_BEARER,
                file_env: env::METRICS_BEARER_FILE,
            },
        )
    }

    /// The admin bearer of `config` (`CARACAL_ADMIN_TOKEN` / `CARACAL_ADMIN_TOKEN_FILE`).
    ///
    /// # Errors
    /// As [`BearerAuth::new`].
    pub fn admin(config: &CoreConfig) -> Result<Self, ConfigError> {
        Self::new(
            config.mode,
            BearerSettings {
                token: config.admin_token.as_ref(),
                file: config.admin_token_file.as_deref(),
                token_key: "admin_token",
                file_key: "admin_token_file",
                token_env: env::CARACAL_ADMIN_TOKEN,
                file_env: env::CARACAL_ADMIN_TOKEN_FILE,
            },
        )
    }

    /// Builds a policy, reading the bearer file once.
    ///
    /// # Errors
    /// [`ConfigError`] when both a token and a file are set, the token is blank, or the file is
    /// missing, unreadable, empty, too large or holds more than two tokens; the error names the
    /// key and the path.
    pub fn new(mode: Mode, s: BearerSettings<'_>) -> Result<Self, ConfigError> {
        let origin = |name: &str| format!("environment variable `{name}` (or config key)");
        let bearer = match (s.token, s.file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    key: format!("{} / {}", s.token_key, s.file_key),
                    origin: format!("environment variables `{}` and `{}` (or config keys)", s.token_env, s.file_env),
                    message: "set one of the two, not both".into(),
                });
            }
            (Some(token), None) if token.expose().trim().is_empty() => {
                return Err(ConfigError {
                    key: s.token_key.into(),
                    origin: origin(s.token_env),
                    message: "the token is set but empty; unset it or give a token".into(),
                });
            }
            (Some(token), None) => Bearer::Fixed(digest(token.expose().trim())),
            (None, Some(path)) => {
                let (stamp, digests) = crate::secret_file::check(path, mode)
                    .and_then(|()| read_tokens(path))
                    .map_err(|message| ConfigError { key: s.file_key.into(), origin: origin(s.file_env), message })?;
                let cache = Mutex::new(FileCache { stamp: Some(stamp), digests });
                Bearer::File(BearerFile { path: path.to_path_buf(), cache })
            }
            (None, None) => Bearer::None,
        };
        Ok(Self { mode, bearer })
    }

    /// The deployment mode the policy applies.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether a bearer is configured at all.
    pub fn is_configured(&self) -> bool {
        !matches!(self.bearer, Bearer::None)
    }

    /// Whether a request is allowed: open in dev without a configured bearer, otherwise only
    /// with a valid one (so in rc/stable without a bearer, never).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        match (&self.bearer, self.mode) {
            (Bearer::None, Mode::Dev) => true,
            (Bearer::None, Mode::Rc | Mode::Stable) => false,
            _ => self.presents_bearer(headers),
        }
    }

    /// Whether a request may see error text and observed values in readiness bodies: always in
    /// dev, otherwise only with the bearer.
    pub fn allows_details(&self, headers: &HeaderMap) -> bool {
        self.mode == Mode::Dev || self.presents_bearer(headers)
    }

    /// Whether a token whose SHA-256 is `presented` would be allowed now, as
    /// [`BearerAuth::allows`] judges a header (so a rotated bearer file no longer accepts the
    /// old token's digest). For sessions that keep a digest, never the token.
    pub fn allows_digest(&self, presented: &[u8; 32]) -> bool {
        match (&self.bearer, self.mode) {
            (Bearer::None, Mode::Dev) => true,
            (Bearer::None, Mode::Rc | Mode::Stable) => false,
            (Bearer::Fixed(expected), _) => presented.ct_eq(expected).into(),
            (Bearer::File(file), _) => file.accepts(presented),
        }
    }

    /// Whether the request carries exactly one `Authorization: Bearer <token>` whose token is
    /// one of the configured ones.
    pub fn presents_bearer(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = bearer_token(headers) else { return false };
        let presented = digest(presented);
        match &self.bearer {
            Bearer::None => false,
            Bearer::Fixed(expected) => presented.ct_eq(expected).into(),
            Bearer::File(file) => file.accepts(&presented),
        }
    }
}

/// Middleware for admin APIs: writes need the admin bearer (fail-closed, as
/// [`BearerAuth::allows`]); reads need it too except in `dev`. Use with
/// `axum::middleware::from_fn_with_state(Arc<BearerAuth>, require_admin)`.
pub async fn require_admin(
    axum::extract::State(auth): axum::extract::State<std::sync::Arc<BearerAuth>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    if (read && auth.mode == Mode::Dev) || auth.allows(request.headers()) {
        next.run(request).await
    } else {
        crate::error_response(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        )
    }
}

impl BearerFile {
    /// Compares against the file's current tokens, re-reading it first if it changed.
    fn accepts(&self, presented: &TokenDigest) -> bool {
        let Ok(mut cache) = self.cache.lock() else { return false };
        let stamp = stamp(&self.path).ok();
        if stamp.is_none() || stamp != cache.stamp {
            match read_tokens(&self.path) {
                Ok((stamp, digests)) => {
                    tracing::info!(path = %self.path.display(), tokens = digests.len(), "metrics bearer file re-read");
                    *cache = FileCache { stamp: Some(stamp), digests };
                }
                Err(message) => {
                    // Fail closed: a file that vanished or went bad accepts nothing until fixed.
                    if cache.stamp.is_some() {
                        tracing::warn!(path = %self.path.display(), %message, "metrics bearer file unusable; refusing every token");
                    }
                    *cache = FileCache { stamp: None, digests: Vec::new() };
                }
            }
        }
        // Every candidate is compared, so timing does not tell which one matched.
        cache.digests.iter().fold(subtle::Choice::from(0), |any, d| any | presented.ct_eq(d)).into()
    }
}

/// The token of a single `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110); surrounding whitespace is not part of a field value; two headers
/// are ambiguous and give none.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(char::is_whitespace))
        .then_some(token)
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)?;
    Ok(FileStamp { modified: md.modified().ok(), len: md.len(), inode: md.ino() })
}

/// Reads one or two tokens, one per line; blank lines and surrounding whitespace are ignored.
fn read_tokens(path: &Path) -> Result<(FileStamp, Vec<TokenDigest>), String> {
    let shown = path.display();
    let stamp = stamp(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if stamp.len > MAX_FILE_BYTES {
        return Err(format!("{shown} is {} bytes; a bearer file holds one or two tokens", stamp.len));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let tokens: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match tokens.len() {
        0 => Err(format!("{shown} is empty; expected a token (two during a rotation), one per line")),
        1 | 2 if tokens.iter().any(|t| t.contains(char::is_whitespace)) => {
            Err(format!("{shown} has a token with whitespace inside; expected one token per line"))
        }
        1 | 2 => Ok((stamp, tokens.into_iter().map(digest).collect())),
        n => Err(format!("{shown} holds {n} tokens; expected one, or two during a rotation")),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::bearer_token;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("authorization", HeaderValue::from_str(v).expect("test header"));
        }
        h
    }

    #[test]
    fn parses_one_bearer_header() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Some("abc"));
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Some("abc"), "the scheme is case-insensitive");
        assert_eq!(bearer_token(&headers(&["Bearer abc  "])), Some("abc"), "trailing OWS is not part of the value");
        assert_eq!(bearer_token(&headers(&["Basic abc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a b"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer abc", "Bearer abc"])), None, "two headers are ambiguous");
        assert_eq!(bearer_token(&headers(&[])), None);
    }
}
