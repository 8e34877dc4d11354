//! The platform's own services' ladders, read from each instance's public `/ready` (names,
//! rungs and statuses; no error text) by a background loop, so rendering the page never waits
//! on another service.

use std::time::Duration;

use caracal_core::ready_body::{CheckEntry, ReadyBody};

/// The rungs, bottom first, as `/ready` names them.
pub(crate) const RUNGS: [&str; 4] = ["process", "storage", "delivery", "service"];

/// One platform service and its instances' ladders.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceLadder {
    pub name: String,
    pub instances: Vec<InstanceLadder>,
}

/// One instance's ladder, as its `/ready` last answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InstanceLadder {
    pub url: String,
    /// `pass`, `warn` or `fail`; `None` when `/ready` could not be read.
    pub status: Option<String>,
    /// Every check, in `/ready`'s (name) order.
    pub checks: Vec<CheckEntry>,
}

impl InstanceLadder {
    /// A rung's status: `fail` when a required check fails, `warn` when only optional ones
    /// do, `skipped` when a lower rung holds it back, `pass`, or `none` (no checks; the
    /// process rung passes by answering at all).
    pub(crate) fn rung_status(&self, rung: &str) -> &'static str {
        let checks: Vec<&CheckEntry> = self.checks.iter().filter(|c| c.rung == rung).collect();
        if checks.is_empty() {
            // A service that answered `/ready` is a running process, checked or not.
            if rung == "process" && self.status.is_some() { "pass" } else { "none" }
        } else if checks.iter().any(|c| c.required && c.status == "fail") {
            "fail"
        } else if checks.iter().all(|c| c.status == "skipped") {
            "skipped"
        } else if checks.iter().any(|c| c.status != "pass") {
            "warn"
        } else {
            "pass"
        }
    }

    /// The checks holding the service back: the failing required checks of the lowest failing
    /// rung; when none fail, the checks that only warn.
    pub(crate) fn held_back_by(&self) -> (bool, Vec<&str>) {
        for rung in RUNGS {
            let failing: Vec<&str> = self
                .checks
                .iter()
                .filter(|c| c.rung == rung && c.required && c.status == "fail")
                .map(|c| c.name.as_str())
                .collect();
            if !failing.is_empty() {
                return (true, failing);
            }
        }
        let warning = self
            .checks
            .iter()
            .filter(|c| c.status == "warn" || (!c.required && c.status == "fail"))
            .map(|c| c.name.as_str())
            .collect();
        (false, warning)
    }
}

/// Reads a `/ready` body into a ladder. Anything not shaped like one reads as unreachable.
pub(crate) fn parse(url: &str, body: &[u8]) -> InstanceLadder {
    let body = ReadyBody::parse(body);
    let status = body.status.filter(|s| ["pass", "warn", "fail"].contains(&s.as_str()));
    InstanceLadder { url: url.to_string(), status, checks: body.checks }
}

/// Reads every configured platform instance's `/ready` at once.
pub(crate) async fn read(
    client: &reqwest::Client,
    platform: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<ServiceLadder> {
    let reads = platform.iter().map(|(name, urls)| async move {
        let instances = futures_util::future::join_all(urls.iter().map(|url| read_one(client, url))).await;
        ServiceLadder { name: name.clone(), instances }
    });
    futures_util::future::join_all(reads).await
}

async fn read_one(client: &reqwest::Client, url: &str) -> InstanceLadder {
    let ready = format!("{}/ready", url.trim_end_matches('/'));
    // 503 is an answer too: a ladder that fails.
    match client.get(ready).timeout(Duration::from_secs(1)).send().await {
        Ok(response) => match response.bytes().await {
            Ok(body) => parse(url, &body),
            Err(_) => InstanceLadder { url: url.to_string(), status: None, checks: Vec::new() },
        },
        Err(_) => InstanceLadder { url: url.to_string(), status: None, checks: Vec::new() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_storage_rung_holds_the_service_back_and_skips_the_rest() {
        let body = br#"{"status":"fail","checks":{
            "process:runtime":[{"status":"pass","rung":"process","required":true}],
            "postgres:connect":[{"status":"fail","rung":"storage","required":true}],
            "redis:ping":[{"status":"pass","rung":"storage","required":true}],
            "outbox:oldest_pending_age":[{"status":"skipped","rung":"delivery","required":true}]}}"#;
        let ladder = parse("http://a", body);
        assert_eq!(ladder.status.as_deref(), Some("fail"));
        assert_eq!(ladder.rung_status("process"), "pass");
        assert_eq!(ladder.rung_status("storage"), "fail");
        assert_eq!(ladder.rung_status("delivery"), "skipped");
        assert_eq!(ladder.rung_status("service"), "none");
        assert_eq!(parse("http://a", br#"{"status":"pass","checks":{}}"#).rung_status("process"), "pass");
        assert_eq!(ladder.held_back_by(), (true, vec!["postgres:connect"]));
    }

    #[test]
    fn an_optional_failure_only_degrades_and_garbage_reads_as_unreachable() {
        let body =
            br#"{"status":"warn","checks":{"audit:ledger_gap":[{"status":"fail","rung":"service","required":false}]}}"#;
        let ladder = parse("http://a", body);
        assert_eq!(ladder.rung_status("service"), "warn");
        assert_eq!(ladder.held_back_by(), (false, vec!["audit:ledger_gap"]));
        let garbage = parse("http://a", b"<html>");
        assert_eq!(garbage.status, None);
        assert!(garbage.checks.is_empty());
    }
}
