//! Who is looking at the page: the `Authorization` header, or the token a browser signed in
//! with (kept in an `HttpOnly`, `SameSite=Strict` cookie), decides the [`View`].

use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caracal_tokens::{Access, Scope};

use super::render::View;

/// The cookie holding a signed-in browser's token (base64url, so any admin token fits).
pub(crate) const COOKIE_NAME: &str = "caracal_session";
/// How long a sign-in lasts in the browser, in seconds (an STS token expires sooner anyway).
const MAX_AGE: u32 = 12 * 3600;
/// Longest token accepted at sign-in (a cookie holds about 4 KB).
pub(crate) const MAX_TOKEN: usize = 2048;

/// The caller as the page sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Viewer {
    pub view: View,
    /// Whether the credential came from the sign-in cookie (the page offers "sign out").
    pub signed_in: bool,
}

/// The credential to judge: the `Authorization` header if given, else the session cookie
/// turned into one. `signed_in` says which.
fn credential(headers: &HeaderMap) -> (HeaderMap, bool) {
    let mut credential = HeaderMap::new();
    if let Some(value) = headers.get(AUTHORIZATION) {
        credential.insert(AUTHORIZATION, value.clone());
        return (credential, false);
    }
    let token = cookie(headers).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok()).and_then(|t| String::from_utf8(t).ok());
    match token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        Some(value) => {
            credential.insert(AUTHORIZATION, value);
            (credential, true)
        }
        None => (credential, false),
    }
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The view a request gets: `Operator` with `targets:write`, `Details` with `targets:read`
/// (or any read in dev, as the API's reads are open there), else `Public`.
pub(crate) async fn viewer(access: &Access, headers: &HeaderMap) -> Viewer {
    let (credential, signed_in) = credential(headers);
    let view = if access.authorize(&Method::POST, &credential, Scope::TargetsWrite).await.is_ok() {
        View::Operator
    } else if access.authorize(&Method::GET, &credential, Scope::TargetsRead).await.is_ok() {
        View::Details
    } else {
        View::Public
    };
    Viewer { view, signed_in }
}

/// Whether `token` is a credential worth a session: the admin token, or an STS token with
/// `targets:read` or `targets:write`. (Asked as a write, so dev's open reads do not count.)
pub(crate) async fn accepts(access: &Access, token: &str) -> bool {
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else { return false };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    for scope in [Scope::TargetsRead, Scope::TargetsWrite] {
        if access.authorize(&Method::POST, &headers, scope).await.is_ok() {
            return true;
        }
    }
    false
}

/// The `Set-Cookie` value starting a session with `token`. `Secure` when the request came
/// through an HTTPS front end (`X-Forwarded-Proto: https`): on plain HTTP the browser would
/// drop a secure cookie and the sign-in would silently fail.
pub(crate) fn start(token: &str, headers: &HeaderMap) -> String {
    let secure =
        headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!(
        "{COOKIE_NAME}={}; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Strict{}",
        URL_SAFE_NO_PAD.encode(token),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value ending the session.
pub(crate) fn end() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
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
    fn the_cookie_carries_any_token_and_the_header_wins() {
        let set = start("tok en;\"x", &HeaderMap::new());
        let value = set.split(';').next().unwrap().split_once('=').unwrap().1;
        let (from_cookie, signed_in) = credential(&headers(&[("cookie", &format!("a=1; {COOKIE_NAME}={value}"))]));
        assert!(signed_in);
        assert_eq!(from_cookie[AUTHORIZATION], "Bearer tok en;\"x");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"));
        assert!(start("t", &headers(&[("x-forwarded-proto", "https")])).ends_with("; Secure"));
        let (from_header, signed_in) =
            credential(&headers(&[("authorization", "Bearer h"), ("cookie", &format!("{COOKIE_NAME}={value}"))]));
        assert!(!signed_in);
        assert_eq!(from_header[AUTHORIZATION], "Bearer h");
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
