//! Probing services' endpoints over HTTP, with a timeout, concurrently.

use std::time::Duration;

use serde::Serialize;

/// What probing one service found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// The service's name.
    pub service: String,
    /// Its base URL.
    pub url: String,
    /// Its port, when the URL names one.
    pub port: Option<u16>,
    /// `dev`, `rc` or `stable`, as the service says.
    pub mode: Option<String>,
    /// The verdict.
    pub outcome: Outcome,
    /// One line of detail (failing checks, the error).
    pub detail: String,
    /// Checks not passing (with `--ready`).
    pub failing: Vec<FailingCheck>,
    /// Each rung's state, lowest first (with `--ready`).
    pub rungs: Vec<RungState>,
}

/// One rung of a service's ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RungState {
    /// `process`, `storage`, `delivery` or `service`.
    pub rung: String,
    /// `ok`, `failing` or `waiting` (skipped above a failing rung).
    pub state: String,
}

/// A check that is not passing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingCheck {
    /// `component:measurement`.
    pub name: String,
    /// Its rung.
    pub rung: String,
    /// `fail`, `warn` or `skipped`.
    pub status: String,
    /// Error text, when the service shows it (dev mode or with the bearer).
    pub output: Option<String>,
}

/// The verdict on one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It answered 200.
    Pass,
    /// It answered, and not 200.
    Fail,
    /// No answer: unreachable, refused or timed out. Not the same as failing.
    Unreachable,
}

impl Outcome {
    /// The word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Unreachable => "unreachable",
        }
    }
}

/// Which endpoint to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/health`.
    Health,
    /// `/ready`.
    Ready,
}

/// Probes `path` of every `(service, url)` at once, each within `timeout`, presenting `bearer`
/// when given (so readiness bodies carry their details).
pub async fn probe_all(
    targets: &[(String, String)],
    endpoint: Endpoint,
    timeout: Duration,
    bearer: Option<&str>,
) -> Vec<Probe> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let tasks: Vec<_> = targets
        .iter()
        .map(|(service, url)| {
            let (client, service, url, bearer) =
                (client.clone(), service.clone(), url.clone(), bearer.map(str::to_string));
            tokio::spawn(async move { probe_one(&client, &service, &url, endpoint, bearer.as_deref()).await })
        })
        .collect();
    let mut probes = Vec::with_capacity(tasks.len());
    for (task, (service, url)) in tasks.into_iter().zip(targets) {
        probes.push(task.await.unwrap_or_else(|_| Probe {
            service: service.clone(),
            url: url.clone(),
            port: None,
            mode: None,
            outcome: Outcome::Unreachable,
            detail: "probe crashed".into(),
            failing: Vec::new(),
            rungs: Vec::new(),
        }));
    }
    probes
}

async fn probe_one(
    client: &reqwest::Client,
    service: &str,
    url: &str,
    endpoint: Endpoint,
    bearer: Option<&str>,
) -> Probe {
    let path = match endpoint {
        Endpoint::Health => "/health",
        Endpoint::Ready => "/ready",
    };
    let port = reqwest::Url::parse(url).ok().and_then(|u| u.port_or_known_default());
    let mut probe = Probe {
        service: service.into(),
        url: url.into(),
        port,
        mode: None,
        outcome: Outcome::Unreachable,
        detail: String::new(),
        failing: Vec::new(),
        rungs: Vec::new(),
    };
    let mut request = client.get(format!("{}{path}", url.trim_end_matches('/')));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            probe.detail = if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection refused".into()
            } else {
                "request failed".into()
            };
            return probe;
        }
    };
    let code = response.status().as_u16();
    let body = caracal_core::ready_body::ReadyBody::parse(&response.bytes().await.unwrap_or_default());
    probe.outcome = if code == 200 { Outcome::Pass } else { Outcome::Fail };
    probe.failing = body
        .checks
        .iter()
        .filter(|c| c.status != "pass")
        .map(|c| FailingCheck {
            name: c.name.clone(),
            rung: c.rung.clone(),
            status: c.status.clone(),
            output: c.output.clone(),
        })
        .collect();
    for rung in ["process", "storage", "delivery", "service"] {
        let statuses: Vec<&str> = body.rung(rung).map(|c| c.status.as_str()).collect();
        if statuses.is_empty() {
            continue;
        }
        let state = if statuses.contains(&"fail") {
            "failing"
        } else if statuses.contains(&"skipped") {
            "waiting"
        } else {
            "ok"
        };
        probe.rungs.push(RungState { rung: rung.to_string(), state: state.to_string() });
    }
    probe.detail = summary(code, body.output.as_deref(), &probe.failing);
    probe.mode = body.mode;
    probe
}

/// One line: the failing checks with their rungs (skipped ones counted), else the HTTP status.
fn summary(code: u16, output: Option<&str>, failing: &[FailingCheck]) -> String {
    let named: Vec<String> = failing
        .iter()
        .filter(|c| c.status != "skipped")
        .map(|c| format!("{} ({}) {}", c.name, c.rung, c.status))
        .collect();
    let skipped = failing.iter().filter(|c| c.status == "skipped").count();
    let mut parts = named;
    if skipped > 0 {
        parts.push(format!("{skipped} skipped above"));
    }
    if let Some(output) = output {
        parts.insert(0, output.to_string());
    }
    if parts.is_empty() && code != 200 { format!("HTTP {code}") } else { parts.join(", ") }
}
