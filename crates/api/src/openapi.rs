//! `/openapi.json`, generated from the handlers' annotations and the types they exchange.

use axum::Json;
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Object, ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Caracal API", description = "Targets registry, status and history of the Caracal platform."),
    paths(
        crate::targets::list,
        crate::targets::digests,
        crate::targets::get_one,
        crate::targets::create,
        crate::targets::replace,
        crate::targets::remove,
        crate::batch::apply,
        crate::targets::pause,
        crate::targets::resume,
        crate::status::current,
        crate::status::history,
        crate::healthchecks::console,
        crate::healthchecks::aggregate,
    ),
    components(schemas(
        caracal_store::target::TargetSpec,
        caracal_store::target::Target,
        caracal_store::target::TargetDigest,
        caracal_store::discovery::Discovery,
        caracal_store::discovery::DnsDiscovery,
        caracal_store::discovery::RecordType,
        caracal_store::discovery::DiscoveryStatus,
        caracal_store::tls::TlsSpec,
        caracal_store::target::InstanceCertificate,
        caracal_store::target::InstanceDegraded,
        caracal_store::target::DegradedSpec,
        caracal_store::target::Detector,
        caracal_store::status::Status,
        crate::batch::Batch,
        crate::batch::BatchOutcome,
        crate::batch::BatchItem,
        crate::batch::BatchRefusal,
    )),
    tags((name = "targets", description = "The targets registry"), (name = "status", description = "Current status and history")),
    modifiers(&Shapes)
)]
struct ApiDoc;

/// What the derives cannot say: the bearer on `/v1`, and the two shapes derived from
/// `TargetSpec` — `Target` (the spec with every field, plus its times) and `TargetUpdate`
/// (a `PUT` body, whose name the path gives).
struct Shapes;

impl Modify for Shapes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // The admin token, or an STS token with the route's scope.
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        if let Some(RefOr::T(Schema::Object(spec))) = components.schemas.get("TargetSpec").cloned() {
            components.schemas.insert("Target".into(), RefOr::T(Schema::Object(answered(spec.clone()))));
            let mut update = spec;
            update.properties.remove("name");
            update.required.retain(|r| r != "name");
            update.description = Some("A target's new document; the path names it.".into());
            components.schemas.insert("TargetUpdate".into(), RefOr::T(Schema::Object(update)));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            // /v1/healthchecks is public, like /healthchecks, and documents its own 503.
            if !path.starts_with("/v1/") || path == "/v1/healthchecks" {
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete].into_iter().flatten() {
                operation.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                // Every /v1 operation reads or writes PostgreSQL.
                let unavailable = utoipa::openapi::ResponseBuilder::new()
                    .description(
                        "The database cannot take the request now (a failover, a restart): `store_unavailable`; \
                         retry after `Retry-After` seconds",
                    )
                    .header(
                        "Retry-After",
                        utoipa::openapi::HeaderBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                            .build(),
                    )
                    .build();
                operation.responses.responses.entry("503".into()).or_insert_with(|| RefOr::T(unavailable));
            }
            if let Some(RefOr::T(body)) = item.put.as_mut().and_then(|p| p.request_body.as_mut()) {
                for content in body.content.values_mut() {
                    if let RefOr::T(content) = content {
                        content.schema = Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("TargetUpdate")));
                    }
                }
            }
        }
    }
}

/// A target as answered: every field of the spec present, plus its times and whether probing is paused.
fn answered(mut spec: Object) -> Object {
    let time = |what: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
            .description(Some(what))
            .build()
    };
    spec.properties.insert("created_at".into(), time("When it was registered").into());
    spec.properties.insert("updated_at".into(), time("When it last changed").into());
    let mut paused = time("Since when probing is paused; null while it is probed");
    paused.schema_type = utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]);
    spec.properties.insert("paused_at".into(), paused.into());
    let owner = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["api", "control", "platform"]))
        .description(Some(
            "Who owns it: `api`, `control` (declared in a file), or `platform` (one of the platform's own services, \
             registered from `api.platform`; it cannot be deleted)",
        ));
    spec.properties.insert("managed_by".into(), owner.build().into());
    let mut file = ObjectBuilder::new().description(Some("The file declaring it, for a target control owns")).build();
    file.schema_type = utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]);
    spec.properties.insert("declared_in".into(), file.into());
    let status = utoipa::openapi::schema::OneOfBuilder::new()
        .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("DiscoveryStatus")))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some("How a discovered target's instances were last resolved"));
    spec.properties.insert("discovery_status".into(), RefOr::T(Schema::OneOf(status.build())));
    let certificates = utoipa::openapi::ArrayBuilder::new()
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("InstanceCertificate")))
        .description(Some("The certificate each TLS instance last presented"));
    spec.properties.insert("certificates".into(), certificates.build().into());
    let degraded = utoipa::openapi::ArrayBuilder::new()
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("InstanceDegraded")))
        .description(Some("Its instances shown degraded now, with each verdict"));
    spec.properties.insert("degraded_instances".into(), degraded.build().into());
    // `discovery`, `tls`, `grpc_service`, `credential` and `degraded` are answered only when
    // set; every other field always.
    let optional = ["discovery", "tls", "grpc_service", "credential", "degraded"];
    spec.required = spec.properties.keys().filter(|k| !optional.contains(&k.as_str())).cloned().collect();
    spec.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
    spec.description = Some("A registered target.".into());
    spec
}

/// The OpenAPI document.
pub(crate) async fn document() -> Json<serde_json::Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    exclusive_shapes(&mut doc);
    Json(doc)
}

/// The rules the server enforces across fields, stated in JSON Schema (OpenAPI 3.1), which the
/// derives cannot say: a target lists 1 to 100 `instances` (with `discovery` absent or null),
/// or has a `discovery` object (with `instances` absent or empty), never both; an SRV
/// discovery has no `port`, an A/AAAA one needs it; every instance has one scheme, `tls` is
/// for `https`/`grpcs` only and `grpc_service` for `grpc`/`grpcs` only.
fn exclusive_shapes(doc: &mut serde_json::Value) {
    use serde_json::json;
    let schemas = &mut doc["components"]["schemas"];
    let listed_or_discovered = json!([
        {"required": ["instances"], "properties": {"instances": {"minItems": 1}, "discovery": {"type": "null"}}},
        {"required": ["discovery"], "properties": {"instances": {"maxItems": 0}, "discovery": {"type": "object"}}}
    ]);
    let one_scheme: Vec<serde_json::Value> = ["http", "https", "tcp", "grpc", "grpcs"]
        .into_iter()
        .map(|scheme| {
            let tls = scheme == "https" || scheme == "grpcs";
            let grpc = scheme.starts_with("grpc");
            // A discovery names its scheme (`http` when left out).
            let discovery_scheme = if scheme == "http" {
                json!({"properties": {"dns": {"properties": {"scheme": {"const": "http"}}}}})
            } else {
                json!({"properties": {"dns": {"required": ["scheme"], "properties": {"scheme": {"const": scheme}}}}})
            };
            let mut properties = json!({
                "instances": {"items": {"pattern": format!("^{scheme}://")}},
                "discovery": {"anyOf": [{"type": "null"}, discovery_scheme]},
            });
            if !tls {
                properties["tls"] = json!({"type": "null"});
            }
            if !grpc {
                properties["grpc_service"] = json!({"type": "null"});
            }
            json!({"properties": properties})
        })
        .collect();
    for name in ["TargetSpec", "TargetUpdate"] {
        if let Some(schema) = schemas.get_mut(name).and_then(serde_json::Value::as_object_mut) {
            schema.insert("oneOf".into(), listed_or_discovered.clone());
            schema.insert("allOf".into(), json!([{"anyOf": one_scheme}]));
        }
    }
    // An answered target's instances may be discovered ones: a DNS name or a bracketed IPv6
    // address with a port, as caracal-control writes them.
    if let Some(items) =
        schemas.pointer_mut("/Target/properties/instances/items").and_then(serde_json::Value::as_object_mut)
    {
        items.insert("pattern".into(), json!(caracal_store::discovery::ANSWERED_URL_PATTERN));
    }
    if let Some(schema) = schemas.get_mut("DnsDiscovery").and_then(serde_json::Value::as_object_mut) {
        schema.insert(
            "oneOf".into(),
            // `port: null` is no port, as the server reads it.
            json!([
                {"required": ["type"], "properties": {"type": {"const": "SRV"}, "port": {"type": "null"}}},
                {"required": ["port"], "properties": {"type": {"enum": ["A", "AAAA"]}, "port": {"type": "integer"}}}
            ]),
        );
    }
}
