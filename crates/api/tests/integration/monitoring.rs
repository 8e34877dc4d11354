//! `/healthchecks` in the Microsegmentation Console's shape, with the alerts a real
//! Alertmanager (Debian's `prometheus-alertmanager`) has active and a real Prometheus as the
//! `TSDB` entry; read back by a consumer written the way a console client reads it.

use std::time::Duration;

use caracal_core::Mode;
use caracal_testkit::alertmanager::Alertmanager;
use caracal_testkit::prometheus::Prometheus;
use serde::Deserialize;

use crate::support::{api_on, shared};

const WITHIN: Duration = Duration::from_secs(20);

/// One entry as a console client declares it: the console's fields and words only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsoleEntry {
    #[serde(rename = "type")]
    kind: ConsoleType,
    name: Option<String>,
    status: ConsoleStatus,
    response_time: String,
    #[serde(default)]
    alerts: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
enum ConsoleType {
    Cache,
    Database,
    General,
    MessagingSystem,
    Service,
    #[serde(rename = "TSDB")]
    Tsdb,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
enum ConsoleStatus {
    Operational,
    Degraded,
    Offline,
}

/// Parses a Go duration (`195µs`, `1.5ms`, `1m30s`) as Go's `time.ParseDuration` would.
fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" || text == "0s" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

/// `/healthchecks` read as a console client reads it: status code and entries.
async fn console(base: &str) -> (u16, Vec<ConsoleEntry>) {
    let response = reqwest::get(format!("{base}/healthchecks")).await.expect("answered");
    let code = response.status().as_u16();
    let entries: Vec<ConsoleEntry> = response.json().await.expect("the console's shape");
    for entry in &entries {
        assert!(go_duration(&entry.response_time).is_some(), "a Go duration: {entry:?}");
    }
    (code, entries)
}

fn monitoring(entries: &[ConsoleEntry]) -> &ConsoleEntry {
    entries
        .iter()
        .find(|e| e.kind == ConsoleType::General && e.name.as_deref() == Some("Monitoring"))
        .expect("Monitoring")
}

/// Posts alerts to Alertmanager's API v2; `resolved` ends them a minute ago.
async fn post_alerts(alertmanager: &str, alerts: &[(&[(&str, &str)], bool)]) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let body: Vec<serde_json::Value> = alerts
        .iter()
        .map(|(labels, resolved)| {
            let labels: serde_json::Map<String, serde_json::Value> =
                labels.iter().map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v))).collect();
            let mut alert = serde_json::json!({
                "labels": labels,
                "annotations": {"description": "an annotation that must stay private: s3cret-annotation"},
            });
            if *resolved {
                alert["endsAt"] = serde_json::json!(rfc3339(now - 60));
            }
            alert
        })
        .collect();
    let response =
        reqwest::Client::new().post(format!("{alertmanager}/api/v2/alerts")).json(&body).send().await.expect("post");
    assert!(response.status().is_success(), "Alertmanager took the alerts: {}", response.status());
}

fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (day, month) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Waits until the Monitoring entry's sentences are `want`; returns the whole answer.
async fn until_alerts(base: &str, want: &[&str]) -> (u16, Vec<ConsoleEntry>) {
    let seen = caracal_testkit::wait_for(WITHIN, Duration::from_millis(100), || async {
        let (code, entries) = console(base).await;
        (monitoring(&entries).alerts == want).then_some((code, entries))
    })
    .await;
    match seen {
        Ok(seen) => seen,
        Err(_) => panic!("alerts {want:?} within {WITHIN:?}; last: {:?}", console(base).await),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthchecks_answer_in_the_consoles_shape_with_alertmanagers_alerts_and_prometheus() {
    let mut alertmanager = Alertmanager::start().expect("alertmanager");
    let prometheus = Prometheus::start("global:\n  scrape_interval: 1m\n").expect("prometheus");
    let shared = shared();
    let sections = serde_json::json!({"api": {
        "alertmanager_url": alertmanager.url(),
        "prometheus_url": prometheus.url(),
        "monitoring_interval": "200ms",
    }});
    let (served, _pool) = api_on(&shared.postgres, &shared.redis, Mode::Dev, sections).await;
    let base = served.base.clone();

    // Nothing firing: every entry operational, 200, Prometheus timed.
    let (code, entries) = until_alerts(&base, &[]).await;
    let kinds: Vec<&ConsoleType> = entries.iter().map(|e| &e.kind).collect();
    for kind in [ConsoleType::Database, ConsoleType::Cache, ConsoleType::MessagingSystem, ConsoleType::Service] {
        assert!(kinds.contains(&&kind), "{kind:?} in {entries:?}");
    }
    let tsdb = caracal_testkit::wait_for(WITHIN, Duration::from_millis(100), || async {
        let (_, entries) = console(&base).await;
        entries.into_iter().find(|e| e.kind == ConsoleType::Tsdb && e.status == ConsoleStatus::Operational)
    })
    .await
    .expect("Prometheus as an operational TSDB");
    assert!(go_duration(&tsdb.response_time).is_some_and(|d| d > Duration::ZERO), "its query timed: {tsdb:?}");
    assert_eq!(monitoring(&entries).status, ConsoleStatus::Operational);
    assert_eq!(code, 200, "{entries:?}");

    // Alerts posted to Alertmanager appear within seconds, one sentence per severity and type.
    post_alerts(
        &alertmanager.url(),
        &[
            (&[("alertname", "PostgresDown"), ("severity", "critical"), ("type", "database")], false),
            (&[("alertname", "RedisSlow"), ("severity", "warning"), ("component", "cache"), ("pod", "redis-0")], false),
            (&[("alertname", "RedisSlower"), ("severity", "warning"), ("component", "cache")], false),
            (&[("alertname", "CaracalServiceNotReady"), ("severity", "critical")], false),
            (&[("alertname", "JustSaying"), ("severity", "info")], false),
        ],
    )
    .await;
    let firing = [
        "1 critical active alert reported for CaracalServiceNotReady type.",
        "1 critical active alert reported for database type.",
        "2 warning active alerts reported for cache type.",
    ];
    let (code, entries) = until_alerts(&base, &firing).await;
    assert_eq!(code, 218, "a degraded entry answers 218");
    assert_eq!(monitoring(&entries).status, ConsoleStatus::Degraded);
    let raw = reqwest::get(format!("{base}/healthchecks")).await.expect("answered").text().await.expect("text");
    assert!(!raw.contains("s3cret") && !raw.contains("redis-0"), "no annotation or other label: {raw}");
    // Our own shape and the status page carry the same sentences.
    let (code, rich) = served.get_json("/v1/healthchecks").await;
    assert_eq!(code, 218);
    assert_eq!(rich["alerts"], serde_json::json!(firing), "{rich}");
    let page = caracal_testkit::wait_for(WITHIN, Duration::from_millis(200), || async {
        let html = served.get("/").await.text().await.ok()?;
        html.contains(firing[1]).then_some(html)
    })
    .await;
    assert!(page.is_ok(), "the status page lists the active alerts");
    // `?quiet=true`: the code, and no entries.
    let quiet = reqwest::get(format!("{base}/healthchecks?quiet=true")).await.expect("answered");
    assert_eq!(quiet.status(), 218);
    assert_eq!(quiet.text().await.expect("body"), "[]", "quiet: no entries");
    let (code, body) = served.get_json("/healthchecks?quiet=maybe").await;
    assert_eq!((code, body["error"]["code"].as_str()), (422, Some("validation_failed")), "{body}");

    // Silenced and resolved alerts vanish.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let silence = serde_json::json!({
        "matchers": [{"name": "alertname", "value": "PostgresDown", "isRegex": false, "isEqual": true}],
        "startsAt": rfc3339(now - 5), "endsAt": rfc3339(now + 3600), "createdBy": "test", "comment": "maintenance",
    });
    let response = reqwest::Client::new()
        .post(format!("{}/api/v2/silences", alertmanager.url()))
        .json(&silence)
        .send()
        .await
        .expect("silence");
    assert!(response.status().is_success(), "silenced: {}", response.status());
    until_alerts(&base, &[firing[0], firing[2]]).await;
    post_alerts(
        &alertmanager.url(),
        &[
            (&[("alertname", "RedisSlow"), ("severity", "warning"), ("component", "cache"), ("pod", "redis-0")], true),
            (&[("alertname", "RedisSlower"), ("severity", "warning"), ("component", "cache")], true),
            (&[("alertname", "CaracalServiceNotReady"), ("severity", "critical")], true),
        ],
    )
    .await;
    let (code, _) = until_alerts(&base, &[]).await;
    assert_eq!(code, 200, "all clear again");

    // An Alertmanager that is gone: "alerts unavailable", still answered at once.
    alertmanager.stop();
    let (code, entries) = until_alerts(&base, &["alerts unavailable"]).await;
    assert_eq!((code, monitoring(&entries).status), (218, ConsoleStatus::Degraded));
    let started = std::time::Instant::now();
    let _ = console(&base).await;
    assert!(started.elapsed() < Duration::from_secs(2), "answered from the snapshot, not by asking Alertmanager");
}

#[test]
fn the_consumer_reads_go_durations_as_go_does() {
    assert_eq!(go_duration("195µs"), Some(Duration::from_micros(195)));
    assert_eq!(go_duration("1m30.5s"), Some(Duration::from_millis(90_500)));
    assert_eq!(go_duration("0s"), Some(Duration::ZERO));
    assert_eq!(go_duration("0.26"), None, "a bare number is not a Go duration");
}
