//! `GET /v1/events?target=&type=&since=&cursor=&limit=`: the ledger, oldest first, paginated
//! by outbox id.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caracal_core::error_response;
use caracal_store::rfc3339;
use serde::{Deserialize, Serialize};

/// What the handler reads.
#[derive(Debug, Clone)]
pub(crate) struct EventsState {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) max_page: i64,
}

/// Filters and paging; all optional.
#[derive(Debug, Deserialize)]
pub(crate) struct Params {
    target: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// RFC 3339; events that occurred at or after it.
    since: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<String>,
}

/// One ledger entry.
#[derive(Debug, Serialize)]
struct EventOut {
    id: i64,
    #[serde(rename = "type")]
    event_type: String,
    target: Option<String>,
    instance: Option<String>,
    payload: serde_json::Value,
    occurred_at: String,
}

/// A page.
#[derive(Debug, Serialize)]
struct Page {
    events: Vec<EventOut>,
    next_cursor: Option<String>,
}

/// Outbox id, type, target, instance, payload, occurred at.
type Row = (i64, String, Option<String>, Option<String>, serde_json::Value, String);

pub(crate) async fn list(State(state): State<EventsState>, Query(params): Query<Params>) -> Response {
    let invalid = |field: &str, message: &str| {
        let body = serde_json::json!({ "error": { "code": "validation_failed", "message": message, "field": field } });
        (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
    };
    let limit = match params.limit.as_deref().map(str::parse::<i64>) {
        None => 100.min(state.max_page),
        Some(Ok(l)) if (1..=state.max_page).contains(&l) => l,
        Some(_) => return invalid("limit", &format!("a whole number from 1 to {}", state.max_page)),
    };
    let cursor = match params.cursor.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(c)) if c >= 0 => c,
        Some(_) => return invalid("cursor", "a cursor from a previous page"),
    };
    if let Some(since) = params.since.as_deref()
        && humantime::parse_rfc3339_weak(since).is_err()
    {
        return invalid("since", "an RFC 3339 time, such as 2026-11-21T14:00:00Z");
    }
    let rows: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(concat!(
        "SELECT outbox_id, event_type, target, instance, payload, ",
        rfc3339!("occurred_at"),
        " FROM audit_events WHERE outbox_id > $1 AND ($2::text IS NULL OR target = $2) \
         AND ($3::text IS NULL OR event_type = $3) AND ($4::timestamptz IS NULL OR occurred_at >= $4::timestamptz) \
         ORDER BY outbox_id LIMIT $5"
    ))
    .bind(cursor)
    .bind(params.target)
    .bind(params.event_type)
    .bind(params.since)
    .bind(limit)
    .fetch_all(&state.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "reading the ledger failed");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        }
    };
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.0.to_string())).flatten();
    let events = rows
        .into_iter()
        .map(|(id, event_type, target, instance, payload, occurred_at)| EventOut {
            id,
            event_type,
            target,
            instance,
            payload,
            occurred_at,
        })
        .collect();
    Json(Page { events, next_cursor }).into_response()
}
