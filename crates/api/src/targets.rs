//! `/v1/targets`: create, read, replace and delete targets. Each write commits its outbox event
//! in the same transaction.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use caracal_store::{NewEvent, outbox, rfc3339};
use sqlx::PgConnection;

use crate::target::{Target, TargetSpec};
use crate::{ApiError, ApiState};

type Row = (String, serde_json::Value, String, String, String, i32, i32, String, String, Option<String>, Vec<String>);

/// The target query, with `$tail` (a `WHERE` and `GROUP BY`) appended at compile time.
macro_rules! select_targets {
    ($tail:literal) => {
        concat!(
            "SELECT t.name, t.labels, t.health_path, t.ready_path, t.metrics_path, t.interval_ms, t.timeout_ms, ",
            rfc3339!("t.created_at"),
            ", ",
            rfc3339!("t.updated_at"),
            ", ",
            rfc3339!("t.paused_at"),
            ", COALESCE(array_agg(i.url ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL), '{}') \
             FROM targets t LEFT JOIN instances i ON i.target_id = t.id",
            $tail
        )
    };
}

fn to_target(row: Row) -> Target {
    let (
        name,
        labels,
        health_path,
        ready_path,
        metrics_path,
        interval_ms,
        timeout_ms,
        created_at,
        updated_at,
        paused_at,
        instances,
    ) = row;
    let labels = serde_json::from_value(labels).unwrap_or_default();
    Target {
        spec: TargetSpec { name, instances, health_path, ready_path, metrics_path, interval_ms, timeout_ms, labels },
        created_at,
        updated_at,
        paused_at,
    }
}

async fn fetch(conn: &mut PgConnection, name: &str) -> Result<Option<Target>, ApiError> {
    let row: Option<Row> =
        sqlx::query_as(select_targets!(" WHERE t.name = $1 GROUP BY t.id")).bind(name).fetch_optional(conn).await?;
    Ok(row.map(to_target))
}

/// List every target.
#[utoipa::path(get, path = "/v1/targets", tag = "targets",
    responses((status = 200, description = "All targets, by name", body = [Target]), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:read")))]
pub(crate) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<Target>>, ApiError> {
    let rows: Vec<Row> =
        sqlx::query_as(select_targets!(" GROUP BY t.id ORDER BY t.name")).fetch_all(&state.pool).await?;
    Ok(Json(rows.into_iter().map(to_target).collect()))
}

/// One target.
#[utoipa::path(get, path = "/v1/targets/{name}", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, body = Target), (status = 401, description = "No valid token"), (status = 403, description = "The token lacks targets:read"),
              (status = 404, description = "No such target")))]
pub(crate) async fn get_one(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Json<Target>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    fetch(&mut conn, &name).await?.map(Json).ok_or(ApiError::NotFound(name))
}

/// Register a target.
#[utoipa::path(post, path = "/v1/targets", tag = "targets", request_body = TargetSpec,
    responses((status = 201, body = Target), (status = 400, description = "Malformed JSON"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write"), (status = 409, description = "Name taken"),
              (status = 413, description = "Body too large"), (status = 415, description = "The body is not application/json"),
              (status = 422, description = "A field is invalid")))]
pub(crate) async fn create(
    State(state): State<ApiState>,
    body: Result<Json<TargetSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body?;
    spec.validate()?;
    let mut tx = state.pool.begin().await?;
    let id: Option<i64> = bind_spec(
        sqlx::query_scalar(
            "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
        ),
        &spec,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Err(ApiError::Conflict(spec.name)) };
    sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
        .bind(id)
        .bind(&spec.instances)
        .execute(&mut *tx)
        .await?;
    outbox::enqueue(&mut tx, &event("target.created", &spec)).await?;
    let target = fetch(&mut tx, &spec.name).await?.ok_or_else(|| ApiError::NotFound(spec.name.clone()))?;
    tx.commit().await?;
    let location = format!("/v1/targets/{}", spec.name);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(target)).into_response())
}

/// Replace a target (instances no longer listed are dropped, new ones added).
#[utoipa::path(put, path = "/v1/targets/{name}", tag = "targets", request_body = TargetSpec, params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, body = Target), (status = 400, description = "Malformed JSON"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write"), (status = 404, description = "No such target"),
              (status = 413, description = "Body too large"), (status = 415, description = "The body is not application/json"),
              (status = 422, description = "A field is invalid, or the name differs from the path's")))]
pub(crate) async fn replace(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<TargetSpec>, JsonRejection>,
) -> Result<Json<Target>, ApiError> {
    let Json(mut spec) = body?;
    // The body may leave the name out (the path names the target) or repeat it.
    if spec.name.is_empty() {
        spec.name.clone_from(&name);
    } else if spec.name != name {
        return Err(ApiError::invalid("name", format!("must match the path (`{name}`); targets are not renamed")));
    }
    spec.validate()?;
    let mut tx = state.pool.begin().await?;
    let id: Option<i64> = bind_spec(
        sqlx::query_scalar(
            "UPDATE targets SET labels = $2, health_path = $3, ready_path = $4, metrics_path = $5, interval_ms = $6, \
         timeout_ms = $7, updated_at = now() WHERE name = $1 RETURNING id",
        ),
        &spec,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Err(ApiError::NotFound(name)) };
    sqlx::query("DELETE FROM instances WHERE target_id = $1 AND url <> ALL($2::text[])")
        .bind(id)
        .bind(&spec.instances)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(&spec.instances)
        .execute(&mut *tx)
        .await?;
    outbox::enqueue(&mut tx, &event("target.updated", &spec)).await?;
    let target = fetch(&mut tx, &name).await?.ok_or_else(|| ApiError::NotFound(name.clone()))?;
    tx.commit().await?;
    Ok(Json(target))
}

/// Delete a target and its instances (its history is kept).
#[utoipa::path(delete, path = "/v1/targets/{name}", tag = "targets", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:write"), (status = 404, description = "No such target")))]
pub(crate) async fn remove(State(state): State<ApiState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    let deleted: Option<i64> = sqlx::query_scalar("DELETE FROM targets WHERE name = $1 RETURNING id")
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?;
    if deleted.is_none() {
        return Err(ApiError::NotFound(name));
    }
    let payload = serde_json::json!({ "name": name });
    outbox::enqueue(
        &mut tx,
        &NewEvent { event_type: "target.deleted".into(), target: Some(name), instance: None, payload },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Binds a target's columns as `$1`..`$7`: name, labels, the three paths, interval, timeout.
fn bind_spec<'q>(query: TargetQuery<'q>, spec: &'q TargetSpec) -> TargetQuery<'q> {
    query
        .bind(&spec.name)
        .bind(serde_json::to_value(&spec.labels).unwrap_or_default())
        .bind(&spec.health_path)
        .bind(&spec.ready_path)
        .bind(&spec.metrics_path)
        .bind(spec.interval_ms)
        .bind(spec.timeout_ms)
}

/// A statement over a target's columns returning its id.
type TargetQuery<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>;

fn event(event_type: &str, spec: &TargetSpec) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        target: Some(spec.name.clone()),
        instance: None,
        payload: serde_json::to_value(spec).unwrap_or_default(),
    }
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

/// Pauses or resumes probing `name`, with its outbox event (`target.paused` or
/// `target.resumed`) when that changes anything; the target as it now is. Shared by the API
/// and the status page's forms.
pub(crate) async fn set_paused(pool: &sqlx::PgPool, name: &str, paused: bool) -> Result<Target, ApiError> {
    let mut tx = pool.begin().await?;
    let changed = sqlx::query(
        "UPDATE targets SET paused_at = CASE WHEN $2 THEN now() END, updated_at = now() \
         WHERE name = $1 AND (paused_at IS NULL) = $2",
    )
    .bind(name)
    .bind(paused)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed > 0 {
        let event_type = if paused { "target.paused" } else { "target.resumed" };
        let payload = serde_json::json!({ "name": name });
        let event = NewEvent { event_type: event_type.into(), target: Some(name.into()), instance: None, payload };
        outbox::enqueue(&mut tx, &event).await?;
    }
    let target = fetch(&mut tx, name).await?.ok_or_else(|| ApiError::NotFound(name.into()))?;
    tx.commit().await?;
    Ok(target)
}
