//! `/openapi.json`, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, RefOr, Schema, SchemaFormat, Type};
use utoipa::{Modify, OpenApi};

use crate::federate::{LABEL_SELECTOR_PATTERN, MAX_MATCH_LEN, METRICS_PATH_PATTERN};

#[derive(OpenApi)]
#[openapi(
    info(title = "Caracal gateway", description = "Metrics federation: every instance of a target, merged, with identity labels."),
    paths(crate::federate::target, crate::federate::selected),
    modifiers(&Security, &Parameters),
    tags((name = "federation", description = "Merged metrics of registered targets"))
)]
struct GatewayDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("metrics_bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("sts_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The query parameters' exact shapes (the derive knows only their types): what the server
/// checks, stated as patterns, so the document allows exactly what is accepted.
struct Parameters;

impl Modify for Parameters {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let string = |pattern: Option<&str>, max: Option<usize>| {
            ObjectBuilder::new().schema_type(Type::String).pattern(pattern).max_length(max)
        };
        let max_matchers = crate::config::GatewayConfig::default().max_matchers;
        for item in openapi.paths.paths.values_mut() {
            let Some(get) = item.get.as_mut() else { continue };
            for param in get.parameters.iter_mut().flatten() {
                let RefOr::T(param) = param else { continue };
                let schema: Schema = match param.name.as_str() {
                    // A flag: bare (`?only_target_metrics`) means true, as Prometheus reads it.
                    "only_target_metrics" => ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(["", "true", "false", "1", "0"]))
                        .build()
                        .into(),
                    "metrics_path" => string(Some(METRICS_PATH_PATTERN), Some(256)).build().into(),
                    "label" => ArrayBuilder::new()
                        .items(string(Some(LABEL_SELECTOR_PATTERN), None).build())
                        .min_items(Some(1))
                        .build()
                        .into(),
                    // A regex (RE2 syntax, anchored): its validity is checked by compiling it.
                    "match[]" => ArrayBuilder::new()
                        .items(
                            string(None, Some(MAX_MATCH_LEN))
                                .min_length(Some(1))
                                .format(Some(SchemaFormat::Custom("regex".into())))
                                .build(),
                        )
                        .max_items(Some(max_matchers))
                        .build()
                        .into(),
                    _ => continue,
                };
                param.schema = Some(RefOr::T(schema));
            }
        }
    }
}

/// The OpenAPI document.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(GatewayDoc::openapi())
}
