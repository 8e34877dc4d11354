//! `/v1/status` (every instance's current status) and `/v1/targets/{name}/history`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use caracal_store::status::{self as store, Status};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::state::ApiState;

/// One instance's current status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstanceStatus {
    target: String,
    instance: String,
    /// `unknown` (not probed yet), `up`, `degraded` (live and ready, but slow, flaky or
    /// flapping), `unready` (live but not ready) or `down`.
    status: Status,
    /// Since when (RFC 3339), once probed.
    since: Option<String>,
    last_error: Option<String>,
    /// Whether probing its target is paused (the status is then the last one known).
    paused: bool,
    /// When the certificate it last presented expires (RFC 3339), for TLS instances.
    certificate_expires_at: Option<String>,
    /// Whether its certificate is not verified (`tls.insecure_skip_verify`).
    insecure_skip_verify: bool,
    /// Why it is degraded, while it is (`null` otherwise).
    degraded: Option<Degraded>,
}

/// A degraded instance's verdict.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Degraded {
    /// The detector that fired: `latency`, `errors`, `outlier` or `flapping`.
    reason: String,
    /// What it saw, with figures ("p50 154 ms over the last 12 probes against its own 4.1 ms
    /// over the 48 before").
    detail: String,
    /// Since when (RFC 3339).
    since: String,
}

/// Every instance's status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusPage {
    instances: Vec<InstanceStatus>,
}

/// The current status of every registered instance.
#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = StatusPage),
    (status = 401, description = "No valid token"), (status = 403, description = "The token lacks targets:read")))]
pub(crate) async fn current(State(state): State<ApiState>) -> Result<Json<StatusPage>, ApiError> {
    let instances = store::current(&state.pool)
        .await?
        .into_iter()
        .map(|row| {
            let degraded = match (row.degraded.map(|b| *b), &row.since) {
                (Some((reason, detail)), Some(since)) => Some(Degraded { reason, detail, since: since.clone() }),
                _ => None,
            };
            InstanceStatus {
                target: row.target,
                instance: row.instance,
                status: row.status,
                since: row.since,
                last_error: row.last_error,
                paused: row.paused,
                certificate_expires_at: row.certificate_expires_at,
                insecure_skip_verify: row.insecure_skip_verify,
                degraded,
            }
        })
        .collect();
    Ok(Json(StatusPage { instances }))
}

/// Paging of the history, newest first.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Page size, 1 to the configured maximum (default 50; the maximum defaults to 500).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    cursor: Option<String>,
}

/// One recorded transition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Transition {
    id: i64,
    instance: String,
    from: Status,
    to: Status,
    reason: Option<String>,
    occurred_at: String,
}

/// A page of transitions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryPage {
    transitions: Vec<Transition>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
    /// When the oldest transition still kept (of any target) occurred (RFC 3339): history
    /// before it was purged (`store.retention.history`). `null` when none is kept.
    #[schema(format = DateTime)]
    oldest: Option<String>,
}

/// A target's status transitions, newest first, paginated (kept after the target is deleted).
#[utoipa::path(get, path = "/v1/targets/{name}/history", tag = "status", params(("name" = String, Path, description = "Target name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks targets:read"), (status = 404, description = "No such target and no history"),
              (status = 422, description = "Bad, repeated or unknown limit or cursor")))]
pub(crate) async fn history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    // A repeated or malformed parameter: the same answer as a bad value.
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    // No target ever had a name outside the registry's pattern: no such history.
    if !caracal_store::target::valid_name(&name) {
        return Err(ApiError::NotFound(name));
    }
    let max = state.config.max_page;
    let limit = match params.limit.as_deref() {
        None => 50.min(max),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", format!("a whole number from 1 to {max}")))?,
    };
    let cursor = match params.cursor.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| ApiError::invalid("cursor", "a cursor from a previous page"))?,
        ),
    };
    let rows = store::history(&state.pool, &name, cursor, limit).await?;
    if rows.is_empty() && cursor.is_none() && !caracal_store::registry::exists(&state.pool, &name).await? {
        return Err(ApiError::NotFound(name));
    }
    let oldest =
        caracal_store::retention::oldest_rfc3339(&state.pool, caracal_store::retention::Table::History).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    let transitions = rows
        .into_iter()
        .map(|t| Transition {
            id: t.id,
            instance: t.instance,
            from: t.from,
            to: t.to,
            reason: t.reason,
            occurred_at: t.occurred_at,
        })
        .collect();
    Ok(Json(HistoryPage { transitions, next_cursor, oldest }))
}
