//! `/healthchecks`, the public aggregate, in two shapes: the Microsegmentation Console's at
//! `/healthchecks` (a JSON array, Go-style durations), so tools written for the console read
//! it; and Caracal's own at `/v1/healthchecks`, for the status page and the CLI.
//!
//! Both read only the ladder's latest results, the platform view and the monitoring snapshot
//! that workers refresh, so a flood of requests never reaches a dependency; neither shows any
//! error text (they are public).

use std::time::Duration;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caracal_core::Status;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::monitoring::{Alerts, Tsdb};
use crate::platform::Fleet;
use crate::state::ApiState;

/// A component's state as a status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) enum Condition {
    /// Working.
    Operational,
    /// Working with trouble.
    Degraded,
    /// Not working.
    Down,
}

impl Condition {
    /// The console's word: `Offline` for down.
    fn console(self) -> &'static str {
        match self {
            Self::Operational => "Operational",
            Self::Degraded => "Degraded",
            Self::Down => "Offline",
        }
    }
}

/// One part of the platform, as both shapes describe it.
#[derive(Debug, Clone)]
struct Part {
    kind: &'static str,
    name: &'static str,
    status: Condition,
    took: Option<Duration>,
    alerts: Option<Vec<String>>,
}

/// Every part, the overall state and the HTTP status both shapes answer with.
struct Summary {
    parts: Vec<Part>,
    worst: Condition,
    code: StatusCode,
}

fn summarize(state: &ApiState) -> Summary {
    let from_check = |kind: &'static str, name: &'static str, check: &str, failing: Condition| {
        let view = state.readiness.check(check);
        let status = match view.as_ref().map(|v| v.status) {
            Some(Status::Pass) => Condition::Operational,
            _ => failing,
        };
        Part { kind, name, status, took: view.and_then(|v| v.took), alerts: None }
    };
    let database = from_check("Database", "PostgreSQL", "postgres:connectivity", Condition::Down);
    let database_down = database.status != Condition::Operational;
    let mut parts = vec![
        database,
        from_check("Cache", "Redis", "redis:connectivity", Condition::Down),
        from_check("MessagingSystem", "Outbox", "outbox:oldest_pending_age", Condition::Degraded),
        Part {
            kind: "Service",
            name: "Platform services",
            status: match state.platform.fleet() {
                Fleet::AllUp | Fleet::Empty => Condition::Operational,
                Fleet::SomeDown => Condition::Degraded,
                Fleet::AllDown => Condition::Down,
            },
            took: None,
            alerts: None,
        },
    ];
    let monitoring = state.monitoring.get();
    if let Some(tsdb) = &monitoring.tsdb {
        let (status, took) = match tsdb {
            Tsdb::Ready(took) => (Condition::Operational, Some(*took)),
            Tsdb::NotReady => (Condition::Degraded, None),
            Tsdb::Unreachable => (Condition::Down, None),
        };
        parts.push(Part { kind: "TSDB", name: "Prometheus", status, took, alerts: None });
    }
    if let Some(alerts) = &monitoring.alerts {
        let (status, sentences) = match alerts {
            Alerts::Unavailable => (Condition::Degraded, vec!["alerts unavailable".to_string()]),
            Alerts::Firing(none) if none.is_empty() => (Condition::Operational, Vec::new()),
            Alerts::Firing(sentences) => (Condition::Degraded, sentences.clone()),
        };
        parts.push(Part { kind: "General", name: "Monitoring", status, took: None, alerts: Some(sentences) });
    }
    let worst = parts.iter().map(|p| p.status).max_by_key(|c| *c as u8).unwrap_or(Condition::Operational);
    let code = if database_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else if worst == Condition::Operational {
        StatusCode::OK
    } else {
        // 218 "This is fine": answered, but something behind it is not.
        StatusCode::from_u16(218).unwrap_or(StatusCode::OK)
    };
    Summary { parts, worst, code }
}

/// One entry of the console's `/healthchecks` array.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsoleEntry {
    /// `Database`, `Cache`, `MessagingSystem`, `Service`, `TSDB` or `General`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// What the entry is (`PostgreSQL`, `Monitoring`, ...).
    name: &'static str,
    /// `Operational`, `Degraded` or `Offline`.
    status: &'static str,
    /// How long its latest check took, as Go prints a duration (`195µs`, `2ms`, `0s` when not
    /// timed).
    response_time: String,
    /// For `General`/`Monitoring`: one sentence per severity and type of the active alerts,
    /// or `alerts unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts: Option<Vec<String>>,
}

/// Public health of the platform in the Microsegmentation Console's shape: 200 when every
/// entry is operational, 218 when one is degraded or offline while the API serves, 503 when
/// the API cannot reach its database. `?quiet=true` answers the status code with no entries
/// (`[]`).
#[utoipa::path(get, path = "/healthchecks", tag = "health",
    params(("quiet" = Option<bool>, Query, description = "`true`: the status code only, with no entries (`[]`)")),
    responses((status = 200, body = Vec<ConsoleEntry>),
              (status = 218, description = "An entry is degraded or offline", body = Vec<ConsoleEntry>),
              (status = 422, description = "`quiet` is not `true` or `false` (`validation_failed`)"),
              (status = 503, description = "The API cannot reach its database", body = Vec<ConsoleEntry>)))]
pub(crate) async fn console(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let quiet = match quiet(query.as_deref()) {
        Ok(quiet) => quiet,
        Err(e) => return e.into_response(),
    };
    let summary = summarize(&state);
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    if quiet {
        // No data, still JSON: an empty array every console client parses.
        return (summary.code, no_store, Json(Vec::<ConsoleEntry>::new())).into_response();
    }
    let entries: Vec<ConsoleEntry> = summary
        .parts
        .into_iter()
        .map(|p| ConsoleEntry {
            kind: p.kind,
            name: p.name,
            status: p.status.console(),
            response_time: go_duration(p.took.unwrap_or_default()),
            alerts: p.alerts,
        })
        .collect();
    (summary.code, no_store, Json(entries)).into_response()
}

/// `quiet` from the query string: absent or `false`, or `true`; anything else is refused.
fn quiet(query: Option<&str>) -> Result<bool, ApiError> {
    let mut quiet = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("quiet", "true") => quiet = true,
            ("quiet", "false") => quiet = false,
            ("quiet", _) => return Err(ApiError::invalid("quiet", "expected true or false")),
            _ => {}
        }
    }
    Ok(quiet)
}

/// One component type of `/v1/healthchecks`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Component {
    /// `Database`, `Cache`, `MessagingSystem`, `Service`, `TSDB` or `General`.
    component_type: &'static str,
    /// What the component is (`PostgreSQL`, `Monitoring`, ...).
    name: &'static str,
    status: Condition,
    /// Milliseconds the latest check took, when known.
    response_time: Option<f64>,
}

/// Every component, and the active alerts.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Aggregate {
    status: Condition,
    components: Vec<Component>,
    /// One sentence per severity and type of the alerts Alertmanager has active (empty when
    /// none, or when no Alertmanager is configured; `alerts unavailable` when it cannot be read).
    alerts: Vec<String>,
}

/// Public health of the platform in Caracal's own shape, for the status page and the CLI:
/// the same components, states and status codes as `/healthchecks`, with response times in
/// milliseconds.
#[utoipa::path(get, path = "/v1/healthchecks", tag = "health",
    responses((status = 200, body = Aggregate), (status = 218, description = "A component is degraded or down", body = Aggregate),
              (status = 503, description = "The API cannot reach its database", body = Aggregate)))]
pub(crate) async fn aggregate(State(state): State<ApiState>) -> Response {
    let summary = summarize(&state);
    let alerts = summary.parts.iter().filter_map(|p| p.alerts.clone()).flatten().collect();
    let components = summary
        .parts
        .into_iter()
        .map(|p| Component {
            component_type: p.kind,
            name: p.name,
            status: p.status,
            response_time: p.took.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
        })
        .collect();
    let body = Aggregate { status: summary.worst, components, alerts };
    (summary.code, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `d` as Go's `time.Duration.String` prints it: `0s`, `195µs`, `1.5ms`, `2s`, `1m30s`,
/// `1h0m0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    const NS: u128 = 1;
    const US: u128 = 1_000 * NS;
    const MS: u128 = 1_000 * US;
    const S: u128 = 1_000 * MS;
    let ns = d.as_nanos();
    match ns {
        0 => "0s".into(),
        n if n < US => format!("{n}ns"),
        n if n < MS => format!("{}µs", decimal(n, US)),
        n if n < S => format!("{}ms", decimal(n, MS)),
        n => {
            let (hours, minutes) = (n / (3600 * S), n / (60 * S) % 60);
            let seconds = decimal(n % (60 * S), S);
            if hours > 0 {
                format!("{hours}h{minutes}m{seconds}s")
            } else if minutes > 0 {
                format!("{minutes}m{seconds}s")
            } else {
                format!("{seconds}s")
            }
        }
    }
}

/// `value / unit` with the fraction's trailing zeros (and a bare point) left out.
fn decimal(value: u128, unit: u128) -> String {
    let (whole, rest) = (value / unit, value % unit);
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{go_duration, quiet};

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_micros(195), "195µs"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_millis(2), "2ms"),
            (Duration::from_nanos(1_234_567), "1.234567ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn quiet_is_true_or_false_and_nothing_else() {
        assert_eq!(quiet(None).ok(), Some(false));
        assert_eq!(quiet(Some("quiet=true")).ok(), Some(true));
        assert_eq!(quiet(Some("quiet=false&x=1")).ok(), Some(false));
        assert!(quiet(Some("quiet=yes")).is_err());
    }
}
