//! What an access token says (RFC 9068 §2.2).

use serde::{Deserialize, Serialize};

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The claims of a Caracal access token. Every field is required when verifying: a token
/// missing one, or carrying one of the wrong type, does not deserialize and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The issuer: the STS's URL.
    pub iss: String,
    /// The subject: the client the token was issued to (client credentials grant).
    pub sub: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The audience: the platform's resource identifier.
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds.
    pub nbf: u64,
    /// The token's unique id, what a single-token revocation names.
    pub jti: String,
    /// Space-separated scopes.
    pub scope: String,
}

/// Whether a JOSE `typ` header names an access token: `at+jwt`, or `application/at+jwt`,
/// compared without regard to case (RFC 9068 §4, RFC 7515 §4.1.9).
pub fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case(TOKEN_TYPE)
    })
}

/// The time now, in Unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
