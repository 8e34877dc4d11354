//! `/healthchecks`: the public aggregate, one entry per component type.
//!
//! It reads only the ladder's latest results and the platform view a worker refreshes, so a
//! flood of requests never reaches a dependency, and it shows no error text (it is public).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caracal_core::Status;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::platform::Fleet;

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

/// One component type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Component {
    /// `Database`, `Cache`, `MessagingSystem` or `Service`.
    component_type: &'static str,
    status: Condition,
    /// Milliseconds the latest check took, when known.
    response_time: Option<f64>,
}

/// Every component type.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Aggregate {
    status: Condition,
    components: Vec<Component>,
}

/// Public health of the platform: 200 when all components are operational, 218 when a
/// platform component is degraded or down while the API serves, 503 when the API cannot reach
/// its database.
#[utoipa::path(get, path = "/healthchecks", tag = "health",
    responses((status = 200, body = Aggregate), (status = 218, description = "A component is degraded or down", body = Aggregate),
              (status = 503, description = "The API cannot reach its database", body = Aggregate)))]
pub(crate) async fn aggregate(State(state): State<ApiState>) -> Response {
    let from_check = |component_type: &'static str, check: &str, failing: Condition| {
        let view = state.readiness.check(check);
        let status = match view.as_ref().map(|v| v.status) {
            Some(Status::Pass) => Condition::Operational,
            _ => failing,
        };
        let response_time = view.and_then(|v| v.took).map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        Component { component_type, status, response_time }
    };
    let database = from_check("Database", "postgres:connectivity", Condition::Down);
    let cache = from_check("Cache", "redis:connectivity", Condition::Down);
    let messaging = from_check("MessagingSystem", "outbox:oldest_pending_age", Condition::Degraded);
    let service = Component {
        component_type: "Service",
        status: match state.platform.fleet() {
            Fleet::AllUp | Fleet::Empty => Condition::Operational,
            Fleet::SomeDown => Condition::Degraded,
            Fleet::AllDown => Condition::Down,
        },
        response_time: None,
    };
    let database_down = database.status != Condition::Operational;
    let components = vec![database, cache, messaging, service];
    let worst = components.iter().map(|c| c.status).max_by_key(|c| *c as u8).unwrap_or(Condition::Operational);
    let code = if database_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else if worst == Condition::Operational {
        StatusCode::OK
    } else {
        // 218 "This is fine": answered, but something behind it is not.
        StatusCode::from_u16(218).unwrap_or(StatusCode::OK)
    };
    (code, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(Aggregate { status: worst, components }))
        .into_response()
}
