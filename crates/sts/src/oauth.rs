//! `/oauth/token` (RFC 6749 §4.4), `/oauth/revoke` (RFC 7009) and `/oauth/introspect`
//! (RFC 7662).
//!
//! The hot path of issuing a token touches no database: the client is authenticated from the
//! in-memory registry, and the active key is already open.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use caracal_store::revocation::{self, Revocation};
use caracal_tokens::claims::{TOKEN_TYPE, now_unix};
use caracal_tokens::{AccessClaims, Scope, VerifyError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::StsState;
use crate::clients::ClientEntry;
use crate::error::OAuthError;
use crate::form::{self, Form};
use crate::metrics::ResultLabels;

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    /// The JWT access token.
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until it expires.
    expires_in: u64,
    /// The scopes granted, space-separated.
    scope: String,
}

/// The form of a token request (client credentials grant).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct TokenRequest {
    /// The only grant: `client_credentials`.
    grant_type: GrantType,
    /// Space-separated scopes; all the client's allowed scopes when absent. A scope the
    /// client was not granted is refused with 400 `invalid_scope` (RFC 6749 §5.2).
    #[schema(
        pattern = "^ *(targets:read|targets:write|events:read|metrics:read|clients:write)( +(targets:read|targets:write|events:read|metrics:read|clients:write))* *$"
    )]
    scope: Option<String>,
    /// With `client_secret_post`.
    client_id: Option<String>,
    /// With `client_secret_post`.
    client_secret: Option<String>,
}

/// The grants the STS issues tokens for.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum GrantType {
    /// RFC 6749 §4.4.
    ClientCredentials,
}

/// The form of a revocation or introspection request.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct TokenForm {
    /// The token.
    #[schema(min_length = 1)]
    token: String,
    /// A hint, ignored (only access tokens exist).
    token_type_hint: Option<String>,
    /// With `client_secret_post`.
    client_id: Option<String>,
    /// With `client_secret_post`.
    client_secret: Option<String>,
}

/// An OAuth error body (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type`, `invalid_scope`, `server_error`.
    error: String,
    /// What went wrong.
    error_description: String,
}

/// Issue an access token (client credentials grant).
#[utoipa::path(post, path = "/oauth/token", tag = "oauth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse, description = "The token"),
              (status = 400, body = OAuthErrorBody, description = "invalid_request, unsupported_grant_type or invalid_scope"),
              (status = 401, body = OAuthErrorBody, description = "invalid_client"),
              (status = 413, body = OAuthErrorBody, description = "The body is too large"),
              (status = 503, body = OAuthErrorBody, description = "No signing key yet")),
    security((), ("client_secret_basic" = [])))]
pub(crate) async fn token(State(state): State<StsState>, headers: HeaderMap, body: Body) -> Response {
    let result = issue(&state, &headers, body).await;
    let label = match &result {
        Ok(_) => "issued",
        Err(e) => e.code,
    };
    state.metrics.issued.get_or_create(&ResultLabels { result: label }).inc();
    match result {
        Ok(response) => no_store(Json(response).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn issue(state: &StsState, headers: &HeaderMap, body: Body) -> Result<TokenResponse, OAuthError> {
    let form = Form::read(headers, body).await?;
    let grant_type = form.require("grant_type")?;
    let client = authenticate(state, headers, &form)?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::unsupported_grant_type());
    }
    let scope = granted_scope(&client, form.get("scope"))?;
    let ring = state.keys.state();
    let now = now_unix();
    let signer = ring.signer_at(now as i64).ok_or_else(|| OAuthError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "temporarily_unavailable",
        description: "no signing key is active yet; retry shortly".into(),
    })?;
    let lifetime = state.config.token_lifetime.as_secs();
    let claims = AccessClaims {
        iss: state.verifier.issuer().to_string(),
        sub: client.id.clone(),
        client_id: client.id.clone(),
        aud: state.verifier.audience().to_string(),
        exp: now + lifetime,
        iat: now,
        nbf: now,
        jti: jti(),
        scope,
    };
    let mut header = jsonwebtoken::Header::new(signer.alg);
    header.typ = Some(TOKEN_TYPE.into());
    header.kid = Some(signer.kid.clone());
    let access_token = jsonwebtoken::encode(&header, &claims, &signer.key).map_err(|e| {
        tracing::error!(error = %e, "signing a token failed");
        OAuthError::server_error()
    })?;
    Ok(TokenResponse { access_token, token_type: "Bearer", expires_in: lifetime, scope: claims.scope })
}

/// Authenticates the request's client: one answer (`invalid_client`) for an unknown client,
/// a wrong secret and a disabled one.
fn authenticate(state: &StsState, headers: &HeaderMap, form: &Form) -> Result<ClientEntry, OAuthError> {
    let credentials = form::credentials(headers, form)?;
    let revocations = state.verifier.revocations();
    state
        .clients
        .authenticate(&credentials.id, &credentials.secret, |id| revocations.client_revoked(id))
        .ok_or_else(OAuthError::invalid_client)
}

/// The scopes to grant: the requested ones when each is allowed, all allowed when none is
/// asked for; in the platform's order, each once.
fn granted_scope(client: &ClientEntry, requested: Option<&str>) -> Result<String, OAuthError> {
    let allowed = |s: &str| client.scopes.iter().any(|a| a == s);
    let wanted: Vec<&str> = match requested {
        None => client.scopes.iter().map(String::as_str).collect(),
        Some(list) => {
            let mut wanted = Vec::new();
            for s in list.split(' ').filter(|s| !s.is_empty()) {
                if Scope::parse(s).is_none() || !allowed(s) {
                    let shown =
                        if s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic()) { s } else { "(unprintable)" };
                    return Err(OAuthError::invalid_scope(format!(
                        "the scope `{shown}` is not allowed for this client"
                    )));
                }
                wanted.push(s);
            }
            wanted
        }
    };
    let scope: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).filter(|s| wanted.contains(s) && allowed(s)).collect();
    if scope.is_empty() {
        return Err(OAuthError::invalid_scope("no scope to grant"));
    }
    Ok(scope.join(" "))
}

/// A token id: 128 random bits, base64url.
fn jti() -> String {
    use base64::Engine;
    let bytes = crate::keys::random::<16>().unwrap_or_else(|_| {
        // The system RNG failing is not recoverable in a meaningful way; an id built from the
        // time and a process-local counter is still unique, which is all a jti must be.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&now_unix().to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        b
    });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Revoke a token (RFC 7009): 200 for a token revoked now, already revoked, expired or unknown.
#[utoipa::path(post, path = "/oauth/revoke", tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Revoked, or nothing to revoke"),
              (status = 400, body = OAuthErrorBody, description = "invalid_request (the token belongs to another client, or the request is malformed)"),
              (status = 401, body = OAuthErrorBody, description = "invalid_client"),
              (status = 413, body = OAuthErrorBody, description = "The body is too large")),
    security((), ("client_secret_basic" = [])))]
pub(crate) async fn revoke(State(state): State<StsState>, headers: HeaderMap, body: Body) -> Response {
    match revoke_token(&state, &headers, body).await {
        Ok(()) => no_store(().into_response()),
        Err(e) => e.into_response(),
    }
}

async fn revoke_token(state: &StsState, headers: &HeaderMap, body: Body) -> Result<(), OAuthError> {
    let form = Form::read(headers, body).await?;
    let token = form.require("token")?;
    let client = authenticate(state, headers, &form)?;
    let claims = match state.verifier.verify(token).await {
        Ok(claims) => claims,
        // Unknown, malformed, expired or already revoked: nothing to do (RFC 7009 §2.2).
        Err(VerifyError::RevocationsNotLoaded) => return Err(OAuthError::server_error()),
        Err(_) => return Ok(()),
    };
    if claims.client_id != client.id {
        return Err(OAuthError::invalid_request("the token was not issued to this client"));
    }
    let revocation = Revocation {
        jti: Some(claims.jti),
        client_id: None,
        revoked_at: now_unix() as i64,
        expires_at: (claims.exp + state.config.retire_margin().as_secs()) as i64,
    };
    record(state, &revocation).await.map_err(|e| {
        tracing::error!(error = %e, "recording a revocation failed");
        OAuthError::server_error()
    })
}

/// Records `revocation` with its outbox event, and applies it here at once.
///
/// # Errors
/// When PostgreSQL fails.
pub(crate) async fn record(state: &StsState, revocation: &Revocation) -> Result<(), crate::error::StsError> {
    let mut tx = state.pool.begin().await?;
    revocation::record(&mut tx, revocation).await?;
    tx.commit().await?;
    state.verifier.revocations().insert(revocation);
    state.metrics.revocations.inc();
    Ok(())
}

/// What introspection says of an active token (RFC 7662 §2.2).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Introspection {
    /// Whether the token is valid now.
    active: bool,
    #[serde(flatten)]
    #[schema(inline)]
    details: Option<IntrospectionDetails>,
}

/// The claims of an active token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IntrospectionDetails {
    scope: String,
    client_id: String,
    token_type: &'static str,
    exp: u64,
    iat: u64,
    nbf: u64,
    sub: String,
    aud: String,
    iss: String,
    jti: String,
}

/// Introspect a token (RFC 7662): `{"active": false}` for anything not valid now, and for
/// another client's token unless the caller holds `tokens:introspect`.
#[utoipa::path(post, path = "/oauth/introspect", tag = "oauth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = Introspection, description = "Whether the token is active, and its claims when it is"),
              (status = 400, body = OAuthErrorBody, description = "invalid_request"),
              (status = 401, body = OAuthErrorBody, description = "invalid_client"),
              (status = 413, body = OAuthErrorBody, description = "The body is too large")),
    security((), ("client_secret_basic" = [])))]
pub(crate) async fn introspect(State(state): State<StsState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let form = Form::read(&headers, body).await?;
        let token = form.require("token")?;
        let caller = authenticate(&state, &headers, &form)?;
        // RFC 7662 §4 leaves who may learn what to the server: a client learns about its own
        // tokens; another client's are `active: false` unless it may introspect any
        // (`tokens:introspect`), so a leaked token cannot be checked by whoever holds a client.
        let any = caller.scopes.iter().any(|s| s == Scope::TokensIntrospect.as_str());
        let claims = state.verifier.verify(token).await.ok().filter(|c| any || c.client_id == caller.id);
        let details = claims.map(|c| IntrospectionDetails {
            scope: c.scope,
            client_id: c.client_id,
            token_type: "Bearer",
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            sub: c.sub,
            aud: c.aud,
            iss: c.iss,
            jti: c.jti,
        });
        Ok::<_, OAuthError>(Introspection { active: details.is_some(), details })
    }
    .await;
    match result {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(e) => e.into_response(),
    }
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
