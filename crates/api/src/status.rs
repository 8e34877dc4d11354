//! `/v1/status` (every instance's current status) and `/v1/targets/{name}/history`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use caracal_store::rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{ApiError, ApiState};

/// One instance's current status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstanceStatus {
    target: String,
    instance: String,
    /// `unknown` (not probed yet), `up`, `degraded` (live and ready, but slow, flaky or
    /// flapping), `unready` (live but not ready) or `down`.
    status: String,
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

/// Target, instance, status, since, last error, paused, certificate expiry, unverified,
/// degraded reason and detail.
type StatusRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
);
/// Id, instance, from, to, reason, occurred at.
type TransitionRow = (i64, String, String, String, Option<String>, String);

/// The current status of every registered instance.
#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = StatusPage),
    (status = 401, description = "No valid token"), (status = 403, description = "The token lacks targets:read")))]
pub(crate) async fn current(State(state): State<ApiState>) -> Result<Json<StatusPage>, ApiError> {
    let rows: Vec<StatusRow> = sqlx::query_as(concat!(
        "SELECT t.name, i.url, COALESCE(s.status, 'unknown'), ",
        rfc3339!("s.since"),
        ", s.last_error, t.paused_at IS NOT NULL, ",
        rfc3339!("s.certificate_expires_at"),
        ", COALESCE((t.tls->>'insecure_skip_verify')::boolean, false), \
         s.degraded->>'reason', s.degraded->>'detail' \
         FROM instances i JOIN targets t ON t.id = i.target_id \
         LEFT JOIN instance_status s ON s.instance_id = i.id ORDER BY t.name, i.url"
    ))
    .fetch_all(&state.pool)
    .await?;
    let instances = rows
        .into_iter()
        .map(|row| {
            let (
                target,
                instance,
                status,
                since,
                last_error,
                paused,
                certificate_expires_at,
                insecure_skip_verify,
                reason,
                detail,
            ) = row;
            let degraded = match (status.as_str(), reason, detail, &since) {
                ("degraded", Some(reason), Some(detail), Some(since)) => {
                    Some(Degraded { reason, detail, since: since.clone() })
                }
                _ => None,
            };
            InstanceStatus {
                target,
                instance,
                status,
                since,
                last_error,
                paused,
                certificate_expires_at,
                insecure_skip_verify,
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
    from: String,
    to: String,
    reason: Option<String>,
    occurred_at: String,
}

/// A page of transitions.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryPage {
    transitions: Vec<Transition>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
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
    if !crate::target::valid_name(&name) {
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
    let rows: Vec<TransitionRow> = sqlx::query_as(concat!(
        "SELECT id, instance_url, from_status, to_status, reason, ",
        rfc3339!("occurred_at"),
        " FROM status_transitions WHERE target_name = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(&name)
    .bind(cursor)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    if rows.is_empty() && cursor.is_none() {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM targets WHERE name = $1)")
            .bind(&name)
            .fetch_one(&state.pool)
            .await?;
        if !exists {
            return Err(ApiError::NotFound(name));
        }
    }
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.0.to_string())).flatten();
    let transitions = rows
        .into_iter()
        .map(|(id, instance, from, to, reason, occurred_at)| Transition { id, instance, from, to, reason, occurred_at })
        .collect();
    Ok(Json(HistoryPage { transitions, next_cursor }))
}
