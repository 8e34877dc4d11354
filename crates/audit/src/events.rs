//! `GET /v1/events?target=&type=&since=&cursor=&limit=`: the ledger, oldest first, paginated
//! by outbox id.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caracal_core::error_response;
use caracal_store::ledger::{self, PageQuery};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

/// `since`: an RFC 3339 date-time: the local time, then `Z` or an offset (PostgreSQL checks
/// the ranges of the local time's fields; the offset is applied here, as RFC 3339 allows
/// offsets PostgreSQL's own parser refuses, such as `+16:26`).
const SINCE_PATTERN: &str =
    "^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?)([Zz]|([+-])([0-9]{2}):([0-9]{2}))$";

/// What the handler reads.
#[derive(Debug, Clone)]
pub(crate) struct EventsState {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) max_page: i64,
}

/// Filters and paging; all optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Params {
    /// Only events about this target.
    #[param(pattern = "^[^\\x00]*$")]
    target: Option<String>,
    /// Only events of this type (`instance.status_changed`, `target.created`, ...).
    #[serde(rename = "type")]
    #[param(rename = "type", pattern = "^[^\\x00]*$")]
    event_type: Option<String>,
    /// RFC 3339; events that occurred at or after it (one before the ledger's `oldest` is
    /// answered with what the ledger holds).
    #[param(format = DateTime)]
    since: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    cursor: Option<String>,
    /// Page size, 1 to the configured maximum (default 100; the maximum defaults to 500).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

/// One ledger entry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventOut {
    /// The outbox id: one ledger row per id.
    id: i64,
    #[serde(rename = "type")]
    event_type: String,
    target: Option<String>,
    instance: Option<String>,
    /// Everything else about the event.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// When the change happened (RFC 3339).
    occurred_at: String,
    /// The trace of the request that made the change (32 hex digits), when it was traced:
    /// look it up in the trace store to follow the change from the API to this row.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    trace_id: Option<String>,
}

/// A page.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page {
    events: Vec<EventOut>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
    /// When the oldest event the ledger still holds occurred (RFC 3339): older events were
    /// purged (`audit.retention`). A `since` before it is answered from it. `null` while the
    /// ledger is empty.
    #[schema(format = DateTime)]
    oldest: Option<String>,
}

/// The ledger, oldest first, paginated by outbox id.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(Params),
    responses((status = 200, body = Page), (status = 401, description = "No valid token"),
              (status = 403, description = "The token lacks events:read"),
              (status = 422, description = "A bad, repeated or unknown filter, limit or cursor"),
              (status = 503, description = "The database cannot take the request now (`store_unavailable`); retry after `Retry-After` seconds")),
    security(("bearer" = [])))]
pub(crate) async fn list(State(state): State<EventsState>, params: Result<Query<Params>, QueryRejection>) -> Response {
    let invalid = |field: &str, message: &str| {
        let body = serde_json::json!({ "error": { "code": "validation_failed", "message": message, "field": field } });
        (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
    };
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return invalid("query", &e.body_text()),
    };
    if [&params.target, &params.event_type].into_iter().flatten().any(|v| v.contains('\0')) {
        return invalid("target", "filters cannot contain NUL (U+0000)");
    }
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
    let since = match params.since.as_deref().map(since_parts) {
        None => None,
        Some(Some(parts)) => Some(parts),
        Some(None) => return invalid("since", "an RFC 3339 time, such as 2026-11-21T14:00:00Z"),
    };
    let query = PageQuery {
        after: cursor,
        target: params.target.as_deref(),
        event_type: params.event_type.as_deref(),
        since_local: since.as_ref().map(|(local, _)| local.as_str()),
        since_offset_mins: since.as_ref().map_or(0, |(_, offset)| *offset),
        limit,
    };
    let read = async {
        Ok::<_, caracal_store::Error>((
            ledger::page(&state.pool, &query).await?,
            caracal_store::retention::oldest_rfc3339(&state.pool, caracal_store::retention::Table::Ledger).await?,
        ))
    }
    .instrument(caracal_core::telemetry::db_span("postgresql", "SELECT", "audit_events"))
    .await;
    let (rows, oldest) = match read {
        Ok(read) => read,
        // PostgreSQL refused a value (a date with a month 13, say): the caller's mistake.
        Err(e) if ledger::is_data_error(&e) => {
            return invalid("since", "an RFC 3339 time, such as 2026-11-21T14:00:00Z");
        }
        Err(caracal_store::Error::Database(e)) if caracal_core::unavailable::postgres_unavailable(&e) => {
            tracing::warn!(error = %e, "reading the ledger failed; answered 503");
            return caracal_core::unavailable::unavailable_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the ledger failed");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        }
    };
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    let events = rows
        .into_iter()
        .map(|r| EventOut {
            id: r.id,
            event_type: r.event_type,
            target: r.target,
            instance: r.instance,
            payload: r.payload,
            occurred_at: r.occurred_at,
            trace_id: r.trace_id,
        })
        .collect();
    Json(Page { events, next_cursor, oldest }).into_response()
}

/// `since` ([`SINCE_PATTERN`]) as its local date-time and its offset east of UTC in minutes;
/// `None` when it is not RFC 3339.
fn since_parts(since: &str) -> Option<(String, i32)> {
    use std::sync::LazyLock;
    static SINCE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(SINCE_PATTERN).unwrap_or_else(|e| unreachable!("a constant: {e}")));
    let parts = SINCE.captures(since)?;
    let local = format!("{} {}", &parts[1], &parts[2]);
    let offset = match (parts.get(5), parts.get(6), parts.get(7)) {
        (Some(sign), Some(hours), Some(minutes)) => {
            let minutes = hours.as_str().parse::<i32>().ok()? * 60 + minutes.as_str().parse::<i32>().ok()?;
            if sign.as_str() == "-" { -minutes } else { minutes }
        }
        _ => 0,
    };
    Some((local, offset))
}

#[cfg(test)]
mod tests {
    use super::since_parts;

    #[test]
    fn since_is_read_as_rfc_3339_with_any_offset() {
        assert_eq!(since_parts("2026-11-21T14:00:00Z"), Some(("2026-11-21 14:00:00".into(), 0)));
        assert_eq!(since_parts("2026-11-21t14:00:00.25+16:26"), Some(("2026-11-21 14:00:00.25".into(), 986)));
        assert_eq!(since_parts("2026-11-21T14:00:00-05:30"), Some(("2026-11-21 14:00:00".into(), -330)));
        assert_eq!(since_parts("yesterday"), None);
        assert_eq!(since_parts("2026-11-21 14:00:00Z"), None);
    }
}
