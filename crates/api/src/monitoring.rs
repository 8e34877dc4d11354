//! The platform's monitoring as `/healthchecks` reports it: the alerts Alertmanager has firing
//! (`api.alertmanager_url`) and whether Prometheus answers (`api.prometheus_url`). A worker
//! polls both; requests read only its latest snapshot, so an Alertmanager that is slow or gone
//! never slows an answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The longest a single read of Alertmanager or Prometheus may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of Alertmanager's answer read (about 10,000 alerts).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The most sentences listed; the rest are counted in one more.
const MAX_SENTENCES: usize = 20;
/// The longest alert type shown (the label value is cut there).
const MAX_TYPE_LEN: usize = 64;

/// What the worker last learnt; `None` for what is not configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    /// Alertmanager's firing alerts, when `api.alertmanager_url` is set.
    pub alerts: Option<Alerts>,
    /// Prometheus, when `api.prometheus_url` is set.
    pub tsdb: Option<Tsdb>,
}

/// The alerts Alertmanager reports active, neither silenced nor inhibited.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Alerts {
    /// Alertmanager could not be read (or has not been yet).
    Unavailable,
    /// One sentence per severity and type, criticals first (empty: nothing firing).
    Firing(Vec<String>),
}

/// Prometheus as a metrics store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tsdb {
    /// Ready, and a trivial query took this long.
    Ready(Duration),
    /// It answers, but is not ready or its query failed.
    NotReady,
    /// Unreachable.
    Unreachable,
}

/// The latest snapshot, written by [`run`], read by the handlers and the status page.
#[derive(Debug)]
pub struct MonitoringView {
    snapshot: ArcSwap<Snapshot>,
}

impl MonitoringView {
    /// A view for what is configured, every part unavailable until first read.
    pub(crate) fn new(alertmanager: bool, prometheus: bool) -> Self {
        let snapshot = Snapshot {
            alerts: alertmanager.then_some(Alerts::Unavailable),
            tsdb: prometheus.then_some(Tsdb::Unreachable),
        };
        Self { snapshot: ArcSwap::from_pointee(snapshot) }
    }

    /// The latest snapshot.
    pub(crate) fn get(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The firing alerts' sentences (empty when none, or when alerts are not configured).
    pub(crate) fn sentences(&self) -> Vec<String> {
        match &self.get().alerts {
            Some(Alerts::Firing(sentences)) => sentences.clone(),
            _ => Vec::new(),
        }
    }
}

/// Where the worker reads, and how often.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub alertmanager: Option<String>,
    pub prometheus: Option<String>,
    pub every: Duration,
}

/// Reads Alertmanager and Prometheus every `sources.every` until `stop`, replacing the
/// snapshot after each round.
pub(crate) async fn run(sources: Sources, view: Arc<MonitoringView>, stop: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("caracal-api/", env!("CARGO_PKG_VERSION"), " (healthchecks)"))
        .build()
        .unwrap_or_default();
    loop {
        let (alerts, tsdb) = tokio::join!(
            async {
                match &sources.alertmanager {
                    Some(url) => Some(read_alerts(&client, url).await),
                    None => None,
                }
            },
            async {
                match &sources.prometheus {
                    Some(url) => Some(read_tsdb(&client, url).await),
                    None => None,
                }
            }
        );
        view.snapshot.store(Arc::new(Snapshot { alerts, tsdb }));
        tokio::select! {
            () = tokio::time::sleep(sources.every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One alert as Alertmanager's API v2 lists it; only its labels are read.
#[derive(Debug, Deserialize)]
struct ListedAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

async fn read_alerts(client: &reqwest::Client, base: &str) -> Alerts {
    let url = format!("{}/api/v2/alerts?active=true&silenced=false&inhibited=false", base.trim_end_matches('/'));
    let read = async {
        let response = client.get(url).send().await.ok()?.error_for_status().ok()?;
        if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return None;
        }
        let body = response.bytes().await.ok()?;
        if body.len() > MAX_BODY {
            return None;
        }
        serde_json::from_slice::<Vec<ListedAlert>>(&body).ok()
    };
    match read.await {
        Some(alerts) => Alerts::Firing(sentences(alerts.iter().map(|a| &a.labels))),
        None => {
            tracing::debug!("Alertmanager could not be read; /healthchecks says alerts unavailable");
            Alerts::Unavailable
        }
    }
}

/// One sentence per severity (critical, then warning) and type, counting the alerts:
/// "1 critical active alert reported for database type." The type is the alert's `type` or
/// `component` label, else its `alertname`; nothing else of an alert is shown (the endpoint
/// is public). Alerts of other severities do not degrade anything and are not listed.
fn sentences<'a>(alerts: impl Iterator<Item = &'a BTreeMap<String, String>>) -> Vec<String> {
    let mut counts: BTreeMap<(u8, String), usize> = BTreeMap::new();
    for labels in alerts {
        let rank = match labels.get("severity").map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("critical") => 0,
            Some("warning") => 1,
            _ => continue,
        };
        let kind =
            ["type", "component", "alertname"].iter().find_map(|k| labels.get(*k)).map_or("unknown", String::as_str);
        *counts.entry((rank, shown_type(kind))).or_default() += 1;
    }
    let total = counts.len();
    let mut out: Vec<String> = counts
        .into_iter()
        .take(MAX_SENTENCES)
        .map(|((rank, kind), n)| {
            let severity = if rank == 0 { "critical" } else { "warning" };
            let plural = if n == 1 { "" } else { "s" };
            format!("{n} {severity} active alert{plural} reported for {kind} type.")
        })
        .collect();
    if total > MAX_SENTENCES {
        out.push(format!("{} more alert types active.", total - MAX_SENTENCES));
    }
    out
}

/// A label value fit for a public page: printable characters of a name, at most
/// [`MAX_TYPE_LEN`].
fn shown_type(value: &str) -> String {
    let kept: String = value
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | ' '))
        .take(MAX_TYPE_LEN)
        .collect();
    let kept = kept.trim();
    if kept.is_empty() { "unknown".into() } else { kept.to_string() }
}

async fn read_tsdb(client: &reqwest::Client, base: &str) -> Tsdb {
    let base = base.trim_end_matches('/');
    let ready = match client.get(format!("{base}/-/ready")).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => return Tsdb::Unreachable,
    };
    if !ready {
        return Tsdb::NotReady;
    }
    let start = Instant::now();
    let answered = async {
        let response = client.get(format!("{base}/api/v1/query?query=1")).send().await.ok()?.error_for_status().ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        (body["status"] == "success").then_some(())
    };
    match answered.await {
        Some(()) => Tsdb::Ready(start.elapsed()),
        None => Tsdb::NotReady,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::sentences;

    fn alert(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn sentences_count_by_severity_and_type_and_show_nothing_else() {
        let alerts = [
            alert(&[("alertname", "PgDown"), ("severity", "critical"), ("type", "Database")]),
            alert(&[("alertname", "Lag"), ("severity", "warning"), ("component", "cache"), ("secret", "s3cret")]),
            alert(&[("alertname", "Lag2"), ("severity", "warning"), ("component", "cache")]),
            alert(&[("alertname", "CaracalServiceNotReady"), ("severity", "critical")]),
            alert(&[("alertname", "Info"), ("severity", "info")]),
            alert(&[("alertname", "x"), ("severity", "critical"), ("type", "<script>\u{7}")]),
        ];
        let got = sentences(alerts.iter());
        assert_eq!(
            got,
            [
                "1 critical active alert reported for CaracalServiceNotReady type.",
                "1 critical active alert reported for Database type.",
                "1 critical active alert reported for script type.",
                "2 warning active alerts reported for cache type.",
            ]
        );
        assert!(!got.join(" ").contains("s3cret"));
        assert!(sentences(std::iter::empty()).is_empty());
        let many: Vec<_> = (0..30).map(|i| alert(&[("severity", "warning"), ("type", &format!("t{i:02}"))])).collect();
        let got = sentences(many.iter());
        assert_eq!(got.len(), 21);
        assert_eq!(got[20], "10 more alert types active.");
    }
}
