//! `/.well-known/jwks.json` (RFC 7517) and `/.well-known/oauth-authorization-server`
//! (RFC 8414).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use caracal_tokens::Scope;

use crate::StsState;

/// The public keys: every key that signs, will sign, or signed a token not yet expired.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "metadata",
    responses((status = 200, description = "The JWK set", content_type = "application/jwk-set+json")))]
pub(crate) async fn jwks(State(state): State<StsState>) -> Response {
    let body = state.keys.state().jwks_body.to_string();
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={}", state.config.jwks_max_age())) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}

/// The authorization server's metadata.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "metadata",
    responses((status = 200, description = "RFC 8414 metadata", body = Object)))]
pub(crate) async fn metadata(State(state): State<StsState>) -> Json<serde_json::Value> {
    let issuer = state.verifier.issuer();
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    Json(serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "grant_types_supported": ["client_credentials"],
        // No authorization endpoint: only the client credentials grant is offered.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "token_endpoint_auth_signing_alg_values_supported": [],
        "access_token_signing_alg_values_supported": ["EdDSA", "ES256"],
    }))
}
