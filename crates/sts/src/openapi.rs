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
pub(crate) async fn document() -> Json<serde_json::Value> {
    let mut doc = serde_json::to_value(StsDoc::openapi()).unwrap_or_default();
    if let Some(schema) = doc.pointer_mut("/components/schemas/Introspection") {
        *schema = introspection();
    }
    Json(doc)
}

/// RFC 7662's answer in its two shapes, which the derive (a flattened optional) cannot say:
/// `{"active": false}` alone for anything not valid now, or `active: true` with every claim.
fn introspection() -> serde_json::Value {
    let text = serde_json::json!({"type": "string"});
    let seconds = serde_json::json!({"type": "integer", "minimum": 0});
    let claims = ["scope", "client_id", "token_type", "exp", "iat", "nbf", "sub", "aud", "iss", "jti"];
    let mut properties = serde_json::Map::new();
    properties.insert(
        "active".into(),
        serde_json::json!({"type": "boolean", "description": "Whether the token is valid now"}),
    );
    for claim in claims {
        let schema = if matches!(claim, "exp" | "iat" | "nbf") { seconds.clone() } else { text.clone() };
        properties.insert(claim.into(), schema);
    }
    serde_json::json!({
        "type": "object",
        "description": "What introspection says of a token (RFC 7662 §2.2)",
        "properties": properties,
        "required": ["active"],
        "additionalProperties": false,
        "oneOf": [
            {"properties": {"active": {"const": false}}, "maxProperties": 1},
            {"properties": {"active": {"const": true}}, "required": claims}
        ]
    })
}
