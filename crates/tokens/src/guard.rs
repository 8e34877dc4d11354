//! [`Access`]: who may call a `/v1` route. The static admin token (the bootstrap credential)
//! may call every route; an STS access token may call a route whose scope it carries.
//!
//! In `dev`, reads are open (as they were before tokens). A missing or invalid credential is
//! 401 `unauthorized`; a valid token without the route's scope is 403 `insufficient_scope`
//! (RFC 6750 §3.1), each with its `WWW-Authenticate` challenge.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use caracal_core::Mode;
use caracal_core::auth::BearerAuth;

use crate::claims::AccessClaims;
use crate::scope::Scope;
use crate::verifier::Verifier;

/// The credentials a service accepts on its `/v1` routes.
#[derive(Debug, Clone)]
pub struct Access {
    admin: Arc<BearerAuth>,
    verifier: Option<Arc<Verifier>>,
}

/// The scopes a group of routes asks for: `read` for GET and HEAD, `write` for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Scope for GET and HEAD.
    pub read: Scope,
    /// Scope for every other method.
    pub write: Scope,
}

impl Guard {
    /// One scope for every method.
    pub fn all(scope: Scope) -> Self {
        Self { read: scope, write: scope }
    }
}

/// Who called, once let through.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The static admin token (or anyone, for a read in dev).
    Admin,
    /// An STS token.
    Token(AccessClaims),
}

impl Caller {
    /// Whether the caller may do what `scope` allows: the admin token may do anything.
    pub fn holds(&self, scope: Scope) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Token(claims) => scope.granted_by(&claims.scope),
        }
    }
}

impl Access {
    /// Accepts the admin token, and STS tokens when `verifier` is given.
    pub fn new(admin: Arc<BearerAuth>, verifier: Option<Arc<Verifier>>) -> Self {
        Self { admin, verifier }
    }

    /// Whether the admin token whose SHA-256 is `digest` is (still) the admin token.
    pub fn admin_allows_digest(&self, digest: &[u8; 32]) -> bool {
        self.admin.allows_digest(digest)
    }

    /// The verifier, when this service accepts STS tokens.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.verifier.as_ref()
    }

    /// Decides whether a request with `headers` may call a route asking for `scope`.
    ///
    /// # Errors
    /// The response refusing it (401 or 403).
    pub async fn authorize(&self, method: &Method, headers: &HeaderMap, scope: Scope) -> Result<Caller, Response> {
        let read = matches!(*method, Method::GET | Method::HEAD);
        if (read && self.admin.mode() == Mode::Dev) || self.admin.allows(headers) {
            return Ok(Caller::Admin);
        }
        let Some(verifier) = &self.verifier else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
                None,
            ));
        };
        let Some(token) = caracal_core::auth::bearer_token(headers) else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required: the admin token or an STS access token",
                None,
            ));
        };
        match verifier.verify(token).await {
            Ok(claims) if scope.granted_by(&claims.scope) => Ok(Caller::Token(claims)),
            Ok(_) => Err(refuse(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                &format!("the token lacks the scope `{scope}`"),
                Some(&format!("Bearer realm=\"caracal\", error=\"insufficient_scope\", scope=\"{scope}\"")),
            )),
            Err(e) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                &e.to_string(),
                Some("Bearer realm=\"caracal\", error=\"invalid_token\""),
            )),
        }
    }
}

/// Middleware guarding routes with `guard`'s scopes. Use with
/// `axum::middleware::from_fn_with_state((access, guard), require)`.
pub async fn require(State((access, guard)): State<(Access, Guard)>, request: Request, next: Next) -> Response {
    let scope = if matches!(*request.method(), Method::GET | Method::HEAD) { guard.read } else { guard.write };
    match access.authorize(request.method(), request.headers(), scope).await {
        Ok(caller) => {
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(response) => response,
    }
}

/// The boxed future of [`require`], so its layer has a nameable type.
type Guarded = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;
/// The middleware function behind [`Access::layer`].
type GuardFn = fn(State<(Access, Guard)>, Request, Next) -> Guarded;
/// The layer [`Access::layer`] returns.
pub type GuardLayer = axum::middleware::FromFnLayer<GuardFn, (Access, Guard), (State<(Access, Guard)>, Request)>;

impl Access {
    /// A layer guarding routes with `guard`.
    pub fn layer(&self, guard: Guard) -> GuardLayer {
        fn boxed(state: State<(Access, Guard)>, request: Request, next: Next) -> Guarded {
            Box::pin(require(state, request, next))
        }
        axum::middleware::from_fn_with_state((self.clone(), guard), boxed as GuardFn)
    }
}

fn refuse(status: StatusCode, code: &str, message: &str, challenge: Option<&str>) -> Response {
    let mut response = caracal_core::error_response(status, code, message);
    if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(c).ok()) {
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    }
    response
}
