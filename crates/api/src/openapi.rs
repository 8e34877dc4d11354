//! `/openapi.json`, generated from the handlers' annotations and the types they exchange.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Caracal API", description = "Targets registry, status and history of the Caracal platform."),
    paths(
        crate::targets::list,
        crate::targets::get_one,
        crate::targets::create,
        crate::targets::replace,
        crate::targets::remove,
        crate::status::current,
        crate::status::history,
        crate::healthchecks::aggregate,
    ),
    components(schemas(crate::target::TargetSpec, crate::target::Target)),
    tags((name = "targets", description = "The targets registry"), (name = "status", description = "Current status and history"))
)]
struct ApiDoc;

/// The OpenAPI document.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
