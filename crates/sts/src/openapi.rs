//! `/openapi.json`, generated from the handlers' annotations and the types they exchange.

use axum::Json;
use utoipa::openapi::schema::AdditionalProperties;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Caracal STS", description = "OAuth2 client credentials, JWKS, revocation and introspection; the clients registry."),
    paths(
        crate::oauth::token,
        crate::oauth::revoke,
        crate::oauth::introspect,
        crate::metadata::jwks,
        crate::metadata::metadata,
        crate::admin::create,
        crate::admin::list,
        crate::admin::get_one,
        crate::admin::disable,
    ),
    modifiers(&Security),
    tags((name = "oauth", description = "RFC 6749, 7009 and 7662 endpoints"),
         (name = "metadata", description = "JWKS and RFC 8414 metadata"),
         (name = "clients", description = "The clients registry"))
)]
struct StsDoc;

/// The security schemes the paths name.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("sts_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("client_secret_basic", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)));
        // The forms take only their parameters (an unknown one is ignored, as RFC 6749 asks,
        // but a repeated one is refused): say so, so generated forms stay within them.
        for form in ["TokenRequest", "TokenForm"] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(form) {
                object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// The OpenAPI document.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(StsDoc::openapi())
}
