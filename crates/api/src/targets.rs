//! `/v1/targets`: create, read, replace and delete targets, through the store's registry (each
//! write commits its outbox events in the same transaction).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use caracal_store::registry::{self, Writer};
use caracal_tokens::{Caller, Scope};

use crate::error::ApiError;
use crate::state::ApiState;
use caracal_store::target::{Target, TargetDigest, TargetSpec};

/// List every target.
#[utoipa::path(get, path = "/v1/targets", tag = "targets",
    responses((status = 200, description = "All targets, by name", body = [Target]), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:read")))]
pub(crate) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<Target>>, ApiError> {
    Ok(Json(registry::list(&state.pool).await?))
}

/// Every target's digest: its name, owner, declaring file and a digest of the fields a plan
/// compares, so `caracal apply` reads only the documents that differ from its files.
#[utoipa::path(get, path = "/v1/targets/_digests", tag = "targets",
    responses((status = 200, description = "Every target's digest, by name", body = [TargetDigest]), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:read")))]
pub(crate) async fn digests(State(state): State<ApiState>) -> Result<Json<Vec<TargetDigest>>, ApiError> {
    Ok(Json(registry::digests(&state.pool).await?))
}

/// One target.
#[utoipa::path(get, path = "/v1/targets/{name}", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, body = Target), (status = 401, description = "No valid token"), (status = 403, description = "The token lacks targets:read"),
              (status = 404, description = "No such target")))]
pub(crate) async fn get_one(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Target>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    registry::get(&mut conn, &name).await?.map(Json).ok_or(ApiError::NotFound(name))
}

/// Turning certificate verification off is an administrator's decision: the admin token or a
/// token with `targets:admin`, never `targets:write` alone.
pub(crate) fn allowed(caller: Option<&Caller>, spec: &TargetSpec) -> Result<(), ApiError> {
    let insecure = spec.tls.as_ref().is_some_and(|t| t.insecure_skip_verify);
    // The guard puts the caller on every write; none is refused (fail closed).
    if insecure && !caller.is_some_and(|c| c.holds(Scope::TargetsAdmin)) {
        return Err(ApiError::InsufficientScope(
            "`tls.insecure_skip_verify` needs the targets:admin scope (or the admin token)".into(),
        ));
    }
    Ok(())
}

/// Register a target.
#[utoipa::path(post, path = "/v1/targets", tag = "targets", request_body = TargetSpec,
    responses((status = 201, body = Target), (status = 400, description = "Malformed JSON"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write, or targets:admin for `tls.insecure_skip_verify`"), (status = 409, description = "Name taken"),
              (status = 413, description = "Body too large"), (status = 415, description = "The body is not application/json"),
              (status = 422, description = "A field is invalid, or an instance's address is one the deployment's outbound address policy denies")))]
pub(crate) async fn create(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<TargetSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body?;
    allowed(caller.as_ref().map(|c| &c.0), &spec)?;
    admit(&state, &spec).await?;
    let target = registry::create(&state.pool, &spec, &Writer::Api).await?;
    let location = format!("/v1/targets/{}", spec.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(target)).into_response())
}

/// Replace a target (instances no longer listed are dropped, new ones added).
#[utoipa::path(put, path = "/v1/targets/{name}", tag = "targets", request_body = TargetSpec, params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, body = Target), (status = 400, description = "Malformed JSON"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write, or targets:admin for `tls.insecure_skip_verify`"), (status = 404, description = "No such target"),
              (status = 409, description = "The target is declared in a file caracal-control manages (`managed_by_control`), or it discovers its instances and the body lists some (`discovered_instances`)"),
              (status = 413, description = "Body too large"), (status = 415, description = "The body is not application/json"),
              (status = 422, description = "A field is invalid, an instance's address is one the deployment's outbound address policy denies, or the name differs from the path's")))]
pub(crate) async fn replace(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<TargetSpec>, JsonRejection>,
) -> Result<Json<Target>, ApiError> {
    let Json(mut spec) = body?;
    allowed(caller.as_ref().map(|c| &c.0), &spec)?;
    // The body may leave the name out (the path names the target) or repeat it.
    if spec.name.is_empty() {
        spec.name.clone_from(&name);
    } else if spec.name != name {
        return Err(ApiError::invalid("name", format!("must match the path (`{name}`); targets are not renamed")));
    }
    admit(&state, &spec).await?;
    Ok(Json(registry::replace(&state.pool, &spec, &Writer::Api).await?))
}

/// Checks a document before it is written: its fields; every instance whose host is an address
/// literal against the outbound policy (a name is judged each time it is resolved); and its
/// client certificate files, read on a blocking thread within a bound so no file a caller names
/// can hold a worker or the request.
pub(crate) async fn admit(state: &ApiState, spec: &TargetSpec) -> Result<(), ApiError> {
    spec.validate()?;
    for (i, url) in spec.instances.iter().enumerate() {
        let host = caracal_core::outbound::host_of(url).unwrap_or("");
        if state.outbound.check_host(host).is_err() {
            return Err(ApiError::invalid(
                format!("instances[{i}]"),
                "the address is denied by the outbound address policy (outbound.allow / outbound.deny)",
            ));
        }
    }
    let Some(tls) = spec.tls.clone().filter(|t| t.client_cert_file.is_some()) else { return Ok(()) };
    let files = std::sync::Arc::clone(&state.client_files);
    let checked = tokio::task::spawn_blocking(move || tls.check_client_files(&files));
    match tokio::time::timeout(std::time::Duration::from_secs(2), checked).await {
        Ok(Ok(result)) => Ok(result?),
        _ => Err(ApiError::invalid("tls.client_cert_file", caracal_store::tls::CLIENT_FILE_REFUSED)),
    }
}

/// Delete a target and its instances (its history is kept). The platform's own services
/// (`api.platform`) are refused: a delete of one would not last.
#[utoipa::path(delete, path = "/v1/targets/{name}", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write, or targets:admin for `tls.insecure_skip_verify`"), (status = 404, description = "No such target"),
              (status = 409, description = "The target is declared in a file caracal-control manages (`managed_by_control`), or it is one of the platform's own services, registered again at every start (`platform_target`): take it out of `api.platform` instead")))]
pub(crate) async fn remove(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    registry::delete(&state.pool, &name, &Writer::Api).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause probing a target: the coordinator stops probing its instances (within its refresh
/// interval) and their last known status stays. Pausing a paused target changes nothing.
#[utoipa::path(post, path = "/v1/targets/{name}/pause", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "Paused (or already paused)", body = Target), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write"), (status = 404, description = "No such target")))]
pub(crate) async fn pause(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Target>, ApiError> {
    set_paused(&state.pool, &name, true).await.map(Json)
}

/// Resume probing a paused target. Resuming a probed target changes nothing.
#[utoipa::path(post, path = "/v1/targets/{name}/resume", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "Probed again (or never paused)", body = Target), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write"), (status = 404, description = "No such target")))]
pub(crate) async fn resume(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Target>, ApiError> {
    set_paused(&state.pool, &name, false).await.map(Json)
}

/// Pauses or resumes probing `name` (with its events when that changes anything); shared by
/// the API and the status page's forms.
pub(crate) async fn set_paused(pool: &sqlx::PgPool, name: &str, paused: bool) -> Result<Target, ApiError> {
    Ok(registry::set_paused(pool, name, paused).await?)
}
