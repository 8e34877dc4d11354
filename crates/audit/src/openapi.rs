//! `/openapi.json`, generated from the handler's annotations and the types it answers.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Caracal audit", description = "The event ledger: every change of the platform, once, by outbox id."),
    paths(crate::events::list),
    modifiers(&Security),
    tags((name = "events", description = "The ledger"))
)]
struct AuditDoc;

/// The bearer `/v1/events` takes: the admin token, or an STS token with `events:read`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The OpenAPI document.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(AuditDoc::openapi())
}
