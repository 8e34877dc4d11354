//! Who is looking at the page: the `Authorization` header, or a signed-in browser's session,
//! decides the [`View`].
//!
//! A session is kept server-side (`page_sessions`): the browser's cookie holds a random id
//! (`HttpOnly`, `SameSite=Strict`; `Secure` and `__Host-` prefixed when
//! `api.page.secure_cookies` says the page is served over HTTPS), never the token. It lasts
//! 12 hours at most (less when the token expires sooner), ends at sign-out (the old cookie is
//! refused afterwards), and ends when its token is revoked or the admin token rotated. Sign-in
//! is rate-limited per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caracal_tokens::{Access, Caller, Scope};
use sha2::{Digest, Sha256};

use super::render::View;

/// The session cookie's name over plain HTTP.
const COOKIE_NAME: &str = "caracal_session";
/// Its name over HTTPS: the `__Host-` prefix makes the browser refuse it unless `Secure`,
/// for path `/`, from this very host.
const SECURE_COOKIE_NAME: &str = "__Host-caracal_session";
/// How long a session lasts at most.
const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Longest token accepted at sign-in.
pub(crate) const MAX_TOKEN: usize = 2048;
/// Sign-in attempts per client address per [`ATTEMPT_WINDOW`].
const MAX_ATTEMPTS: u32 = 10;
/// The window sign-in attempts are counted over.
const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered before old windows are forgotten.
const MAX_REMEMBERED: usize = 10_000;

/// The caller as the page sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Viewer {
    pub view: View,
    /// Whether the credential came from a session (the page offers "sign out").
    pub signed_in: bool,
}

/// The page's sessions: the store, the cookie's shape, and the sign-in rate limit.
#[derive(Debug)]
pub(crate) struct Sessions {
    pool: sqlx::PgPool,
    secure: bool,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// A session as stored: view, admin digest, or an STS token's id, client and issue time.
type Row = (String, Option<Vec<u8>>, Option<String>, Option<String>, Option<i64>);

impl Sessions {
    /// Sessions in `pool`; `secure` when the page is served over HTTPS.
    pub(crate) fn new(pool: sqlx::PgPool, secure: bool) -> Self {
        Self { pool, secure, attempts: Mutex::new(HashMap::new()) }
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure { SECURE_COOKIE_NAME } else { COOKIE_NAME }
    }

    /// The view a request gets: from its `Authorization` header when it has one, else from its
    /// session. `Operator` with `targets:write`, `Details` with `targets:read` (or any read in
    /// dev, as the API's reads are open there), else `Public`.
    pub(crate) async fn viewer(&self, access: &Access, headers: &HeaderMap) -> Viewer {
        if let Some(value) = headers.get(AUTHORIZATION) {
            let mut credential = HeaderMap::new();
            credential.insert(AUTHORIZATION, value.clone());
            return Viewer { view: judge(access, &credential).await, signed_in: false };
        }
        let open = judge(access, &HeaderMap::new()).await;
        match self.session(access, headers).await {
            Some(view) => Viewer { view: view.max_view(open), signed_in: true },
            None => Viewer { view: open, signed_in: false },
        }
    }

    /// The view of the request's session, while it is valid.
    async fn session(&self, access: &Access, headers: &HeaderMap) -> Option<View> {
        let id = cookie(headers, self.cookie_name())?;
        let key = id_digest(id)?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT view, admin_sha256, jti, client_id, iat FROM page_sessions WHERE id_sha256 = $1 AND expires_at > now()",
        )
        .bind(key.as_slice())
        .fetch_optional(&self.pool)
        .await
        .ok()?;
        let (view, admin, jti, client_id, iat) = row?;
        let still = match (admin, jti, client_id, iat) {
            (Some(digest), _, _, _) => {
                <[u8; 32]>::try_from(digest.as_slice()).is_ok_and(|d| access.admin_allows_digest(&d))
            }
            (None, Some(jti), Some(client_id), Some(iat)) => access
                .verifier()
                .is_some_and(|v| !v.revocations().is_revoked(&jti, &client_id, u64::try_from(iat).unwrap_or(0))),
            _ => false,
        };
        still.then(|| if view == "operator" { View::Operator } else { View::Details })
    }

    /// Whether `peer` may try to sign in now; `Err(seconds to wait)` once it tried
    /// [`MAX_ATTEMPTS`] times within [`ATTEMPT_WINDOW`].
    pub(crate) fn attempt(&self, peer: Option<IpAddr>) -> Result<(), u64> {
        let Some(peer) = peer else { return Ok(()) };
        let Ok(mut attempts) = self.attempts.lock() else { return Ok(()) };
        if attempts.len() >= MAX_REMEMBERED {
            attempts.retain(|_, (since, _)| since.elapsed() < ATTEMPT_WINDOW);
        }
        let entry = attempts.entry(peer).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= ATTEMPT_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if entry.1 > MAX_ATTEMPTS {
            return Err(ATTEMPT_WINDOW.saturating_sub(entry.0.elapsed()).as_secs().max(1));
        }
        Ok(())
    }

    /// Starts a session for `token` when it is worth one (the admin token, or an STS token
    /// with `targets:read` or `targets:write`; asked as a write, so dev's open reads do not
    /// count): the `Set-Cookie` value.
    pub(crate) async fn start(&self, access: &Access, token: &str) -> Option<String> {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        let (view, caller) = match access.authorize(&Method::POST, &headers, Scope::TargetsWrite).await {
            Ok(caller) => ("operator", caller),
            Err(_) => ("details", access.authorize(&Method::POST, &headers, Scope::TargetsRead).await.ok()?),
        };
        let mut id = [0u8; 32];
        aws_lc_rs::rand::fill(&mut id).ok()?;
        let id = URL_SAFE_NO_PAD.encode(id);
        let key = id_digest(&id)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let (admin, jti, client_id, iat, expires) = match caller {
            Caller::Admin => {
                (Some(Sha256::digest(token.as_bytes()).to_vec()), None, None, None, now + MAX_AGE.as_secs())
            }
            Caller::Token(claims) => (
                None,
                Some(claims.jti),
                Some(claims.client_id),
                i64::try_from(claims.iat).ok(),
                claims.exp.min(now + MAX_AGE.as_secs()),
            ),
        };
        let max_age = expires.saturating_sub(now);
        // Expired sessions go here: a sign-in is rare, and the index finds them.
        let _ = sqlx::query("DELETE FROM page_sessions WHERE expires_at < now()").execute(&self.pool).await;
        sqlx::query(
            "INSERT INTO page_sessions (id_sha256, view, admin_sha256, jti, client_id, iat, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7))",
        )
        .bind(key.as_slice())
        .bind(view)
        .bind(admin)
        .bind(jti)
        .bind(client_id)
        .bind(iat)
        .bind(expires as f64)
        .execute(&self.pool)
        .await
        .map_err(|e| tracing::warn!(error = %e, "recording a status page session failed"))
        .ok()?;
        Some(format!(
            "{}={id}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
            self.cookie_name(),
            self.secure_attr()
        ))
    }

    /// Ends the request's session (its cookie is refused from now on): the `Set-Cookie` value
    /// clearing it in the browser.
    pub(crate) async fn end(&self, headers: &HeaderMap) -> String {
        if let Some(key) = cookie(headers, self.cookie_name()).and_then(id_digest) {
            let _ = sqlx::query("DELETE FROM page_sessions WHERE id_sha256 = $1")
                .bind(key.as_slice())
                .execute(&self.pool)
                .await;
        }
        format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}", self.cookie_name(), self.secure_attr())
    }

    fn secure_attr(&self) -> &'static str {
        if self.secure { "; Secure" } else { "" }
    }
}

impl View {
    /// The wider of two views.
    fn max_view(self, other: View) -> View {
        let rank = |v: View| match v {
            View::Public => 0,
            View::Details => 1,
            View::Operator => 2,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

/// The view `credential` (an `Authorization` header, or none) allows.
async fn judge(access: &Access, credential: &HeaderMap) -> View {
    if access.authorize(&Method::POST, credential, Scope::TargetsWrite).await.is_ok() {
        View::Operator
    } else if access.authorize(&Method::GET, credential, Scope::TargetsRead).await.is_ok() {
        View::Details
    } else {
        View::Public
    }
}

/// The SHA-256 of a session id as the browser holds it (43 base64url characters), the key it
/// is stored under.
fn id_digest(id: &str) -> Option<[u8; 32]> {
    (id.len() == 43 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Sha256::digest(id.as_bytes()).into())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Whether a form post may act on the caller's session: a browser says where the form came
/// from (`Sec-Fetch-Site`, else `Origin`), and only the page's own origin may use the cookie.
/// A request without either header is not a browser's, so its cookie is not ambient.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match (headers.get(ORIGIN).and_then(|v| v.to_str().ok()), headers.get(HOST).and_then(|v| v.to_str().ok())) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn a_session_id_is_read_only_in_its_shape_and_from_its_own_cookie() {
        let id = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let h = headers(&[("cookie", &format!("a=1; {COOKIE_NAME}={id}"))]);
        assert_eq!(cookie(&h, COOKIE_NAME), Some(id.as_str()));
        assert_eq!(cookie(&h, SECURE_COOKIE_NAME), None, "over HTTPS only the __Host- cookie counts");
        assert!(id_digest(&id).is_some());
        assert!(id_digest("a-token-someone-pasted").is_none());
    }

    #[tokio::test]
    async fn sign_in_is_limited_per_address() {
        let sessions = Sessions {
            pool: sqlx::PgPool::connect_lazy("postgres://x@127.0.0.1:1/x").expect("lazy pool"),
            secure: false,
            attempts: Mutex::new(HashMap::new()),
        };
        let (a, b) = (Some("10.0.0.1".parse().unwrap()), Some("10.0.0.2".parse().unwrap()));
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(sessions.attempt(a), Ok(()));
        }
        let wait = sessions.attempt(a).expect_err("limited");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(sessions.attempt(b), Ok(()), "another address is not");
    }

    #[test]
    fn only_the_pages_own_origin_may_post_with_the_cookie() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://h:1"), ("host", "h:1")])));
        assert!(same_origin(&headers(&[("origin", "http://h:1"), ("host", "h:1")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil"), ("host", "h:1")])));
        assert!(same_origin(&HeaderMap::new()));
    }
}
