//! `caracal doctor`: authenticated, in-depth checks of a deployment, each finding with a
//! severity and a one-line remedy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::probe::{self, Endpoint, Outcome};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Worth a look; nothing is broken for users yet.
    Warn,
    /// Broken: fix it.
    Critical,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was examined (`api /ready`, `clock skew: postgres`).
    pub subject: String,
    /// How bad.
    pub severity: Severity,
    /// What was found.
    pub message: String,
    /// What to do, in one line (empty when fine).
    pub remedy: String,
}

fn finding(
    subject: impl Into<String>,
    severity: Severity,
    message: impl Into<String>,
    remedy: impl Into<String>,
) -> Finding {
    Finding { subject: subject.into(), severity, message: message.into(), remedy: remedy.into() }
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct Target {
    /// `(service, base URL)` pairs.
    pub services: Vec<(String, String)>,
    /// The metrics bearer, if known.
    pub bearer: Option<String>,
    /// PostgreSQL URL, if known.
    pub database_url: Option<String>,
    /// Redis URL, if known.
    pub redis_url: Option<String>,
}

/// Runs every examination.
pub async fn examine(target: &Target) -> Vec<Finding> {
    let mut findings = Vec::new();
    let timeout = Duration::from_millis(2000);
    let probes = probe::probe_all(&target.services, Endpoint::Ready, timeout, target.bearer.as_deref()).await;
    for p in &probes {
        let subject = format!("{} /ready", p.service);
        match p.outcome {
            Outcome::Unreachable => findings.push(finding(
                &subject,
                Severity::Critical,
                format!("no answer at {} ({})", p.url, p.detail),
                "start it (`caracal up`) or check its log in .caracal/logs/",
            )),
            Outcome::Pass if p.failing.is_empty() => {
                findings.push(finding(&subject, Severity::Ok, "every check passes", ""))
            }
            _ => {
                for c in p.failing.iter().filter(|c| c.status != "skipped") {
                    let severity = if c.status == "fail" { Severity::Critical } else { Severity::Warn };
                    let output = c.output.as_deref().map(|o| format!(": {o}")).unwrap_or_default();
                    findings.push(finding(
                        &subject,
                        severity,
                        format!("{} ({}) {}{output}", c.name, c.rung, c.status),
                        remedy_for(&c.name),
                    ));
                }
            }
        }
        if p.outcome != Outcome::Unreachable {
            findings
                .extend(metrics_auth(&p.service, &p.url, p.mode.as_deref(), target.bearer.as_deref(), timeout).await);
        }
    }
    if let Some(url) = &target.database_url {
        findings.extend(database(url).await);
    }
    if let Some(url) = &target.redis_url {
        findings.extend(redis_findings(url).await);
    }
    findings
}

/// What to do about a failing check, by name.
fn remedy_for(check: &str) -> &'static str {
    match check.split(':').next().unwrap_or("") {
        "postgres" if check.ends_with("schema_version") => "run `caracal-api --migrate` (caracal up does it)",
        "postgres" if check.ends_with("writable") => {
            "DATABASE_URL leads to a standby or a read-only database: during a failover, wait for the promotion \
             (or switch the Service/proxy to the new primary); the service reconnects by itself"
        }
        "redis" if check.ends_with(":tls") => {
            "the output names the TLS problem: check redis_tls.ca_file (the CA that issued Redis's certificate), \
             the client certificate files, and the host name in REDIS_URL"
        }
        "postgres" => {
            "is PostgreSQL running and reachable? `caracal up` starts the local one; see .caracal/postgres/postgres.log"
        }
        "redis" => "is Redis running and reachable? `caracal up` starts the local one; see .caracal/redis/redis.log",
        "outbox" if check.ends_with("dead") => {
            "inspect `SELECT id, last_error FROM outbox WHERE dead_at IS NOT NULL`, fix the cause, then clear dead_at"
        }
        "outbox" => "is the coordinator's relay running? check `caracal status --ready` and its log",
        "stream" if check.ends_with("invalidations") => {
            "registry changes travel outbox -> coordinator relay -> caracal.invalidations: are Redis and the relay up?"
        }
        "stream" => "is the audit consumer running and keeping up? check its log and `XINFO GROUPS caracal.events`",
        "dns" => "control's nameservers do not answer: check /etc/resolv.conf (the cluster DNS) or control.nameservers",
        "discovery" => {
            "`GET /v1/targets/<name>` shows discovery_status (when and why); check the DNS name and control's log"
        }
        "targets_dir" => "control's /ready output names file:line; `caracal apply -f <file> --dry-run` shows the same",
        "dlq" => "read `XRANGE caracal.events.dlq - +`: each entry carries its reason",
        "audit" => {
            "caracal-audit heals the ledger from the outbox within seconds: is it running? see its log and docs/runbooks.md"
        }
        "prober" => "the coordinator's prober loop is stuck; check its log and restart it",
        "sts" if check.ends_with("signing_key") => {
            "check the STS log: a CARACAL_STS_KEY_ENCRYPTION_FILE other than the one that sealed the keys cannot open them"
        }
        "sts" => "is the STS running and reachable at `tokens.sts_url`? its JWKS must load",
        "revocations" => {
            "revocations travel outbox -> coordinator relay -> caracal.revocations: are Redis and the relay up?"
        }
        _ => "see the service's log",
    }
}

/// `/metrics` must refuse without the bearer (outside dev) and accept with it.
async fn metrics_auth(
    service: &str,
    url: &str,
    mode: Option<&str>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Vec<Finding> {
    let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
    let subject = format!("{service} /metrics");
    let status = |bearer: Option<&str>| {
        let mut request = client.get(format!("{}/metrics", url.trim_end_matches('/')));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.map(|r| r.status().as_u16()).ok() }
    };
    let mut out = Vec::new();
    let strict = mode != Some("dev");
    match (status(None).await, strict) {
        (Some(401), _) => out.push(finding(&subject, Severity::Ok, "refuses scrapes without the bearer", "")),
        (Some(200), true) => out.push(finding(
            &subject,
            Severity::Critical,
            "open without a bearer outside dev mode",
            "set METRICS_BEARER_FILE on the service",
        )),
        (Some(200), false) => out.push(finding(
            &subject,
            Severity::Warn,
            "open without a bearer (dev mode)",
            "configure a bearer before exposing it",
        )),
        (other, _) => out.push(finding(
            &subject,
            Severity::Warn,
            format!("unexpected answer without a bearer: {other:?}"),
            "check the service's log",
        )),
    }
    match bearer {
        Some(token) => match status(Some(token)).await {
            Some(200) => out.push(finding(&subject, Severity::Ok, "accepts the managed bearer", "")),
            other => out.push(finding(
                &subject,
                Severity::Critical,
                format!("refuses the managed bearer ({other:?})"),
                "the service and this machine disagree on the token: check METRICS_BEARER_FILE",
            )),
        },
        None => out.push(finding(
            &subject,
            Severity::Warn,
            "no bearer known here, so an authorized scrape was not tried",
            "pass --bearer-file",
        )),
    }
    out
}

async fn database(url: &str) -> Vec<Finding> {
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            return vec![finding(
                "postgres",
                Severity::Critical,
                format!("cannot connect: {e}"),
                "is PostgreSQL running? `caracal up` starts it",
            )];
        }
    };
    let mut out = Vec::new();
    if let Ok(db_now) = sqlx::query_scalar::<_, f64>("SELECT EXTRACT(EPOCH FROM now())::float8").fetch_one(&pool).await
    {
        out.push(skew("postgres", db_now));
    }
    match caracal_store::schema::schema(&pool).await {
        Ok(state @ caracal_store::schema::Schema::Expected { .. }) => {
            out.push(finding("migrations", Severity::Ok, state.to_string(), ""))
        }
        Ok(state @ caracal_store::schema::Schema::Compatible { .. }) => out.push(finding(
            "migrations",
            Severity::Warn,
            state.to_string(),
            "finish the upgrade: roll every replica to the new release, then `caracal-api --migrate --post-deploy`",
        )),
        Ok(state @ caracal_store::schema::Schema::Ahead { .. }) => out.push(finding(
            "migrations",
            Severity::Critical,
            state.to_string(),
            "this `caracal` is older than the schema: use the new release's binaries",
        )),
        Ok(state) => {
            out.push(finding("migrations", Severity::Critical, state.to_string(), "run `caracal-api --migrate`"))
        }
        Err(e) => out.push(finding(
            "migrations",
            Severity::Critical,
            format!("cannot read the version: {e}"),
            "check the database",
        )),
    }
    match caracal_store::schema::pending_post_deploy(&pool).await {
        Ok(pending) if pending.is_empty() => {
            out.push(finding("post-deploy", Severity::Ok, "no post-deployment step pending".to_string(), ""))
        }
        Ok(pending) => out.push(finding(
            "post-deploy",
            Severity::Warn,
            format!(
                "post-deployment steps pending: {}",
                pending.iter().map(|(v, d)| format!("{v} ({d})")).collect::<Vec<_>>().join(", ")
            ),
            "once every replica runs this release: `caracal-api --migrate --post-deploy` (the chart's post-upgrade hook)",
        )),
        Err(e) => out.push(finding(
            "post-deploy",
            Severity::Critical,
            format!("cannot read the post-deployment steps: {e}"),
            "check the database",
        )),
    }
    out.push(signing_keys(&pool).await);
    out.push(ledger(&pool).await);
    out.push(discovery(&pool).await);
    out.extend(retention(&pool).await);
    let backlog = caracal_store::outbox::figures(&pool).await;
    match backlog {
        Ok((pending, age, dead)) => {
            let severity = if age > 60.0 { Severity::Warn } else { Severity::Ok };
            out.push(finding(
                "outbox backlog",
                severity,
                format!("{pending} pending, oldest {age:.1}s"),
                if age > 60.0 { "is the coordinator's relay running?" } else { "" },
            ));
            if dead > 0 {
                out.push(finding(
                    "outbox dead rows",
                    Severity::Warn,
                    format!("{dead} rows gave up"),
                    remedy_for("outbox:dead"),
                ));
            }
        }
        Err(e) => {
            let why = match e {
                caracal_store::Error::Database(e) => e.to_string(),
                other => other.to_string(),
            };
            out.push(finding("outbox backlog", Severity::Warn, format!("cannot read: {why}"), "run the migrations"))
        }
    }
    out
}

/// The audit ledger's completeness: dispatched outbox rows missing from it past the default
/// grace period (the stream lost them and no audit replica has healed them yet).
async fn ledger(pool: &sqlx::PgPool) -> Finding {
    let grace = caracal_store::ledger::DEFAULT_GRACE;
    let found = async {
        let watermark = caracal_store::ledger::watermark(pool).await?;
        let gap = caracal_store::ledger::gap(pool, watermark, grace).await?;
        Ok::<_, caracal_store::Error>((gap, watermark))
    };
    match found.await {
        Ok((0, watermark)) => finding(
            "audit ledger",
            Severity::Ok,
            format!("complete: every dispatched event is in it (checked above outbox id {watermark})"),
            "",
        ),
        Ok((gap, _)) => finding(
            "audit ledger",
            Severity::Warn,
            format!("{gap} dispatched events older than {}s are not in the ledger", grace.as_secs()),
            remedy_for("audit:ledger_gap"),
        ),
        Err(e) => finding("audit ledger", Severity::Warn, format!("cannot read: {e}"), "run the migrations"),
    }
}

/// DNS-discovered targets: how many, and which were not resolved within three refreshes.
async fn discovery(pool: &sqlx::PgPool) -> Finding {
    let found = caracal_store::discovery::stale(pool).await;
    match found {
        Ok((0, _)) => finding("discovery", Severity::Ok, "no DNS-discovered targets", ""),
        Ok((n, stale)) if stale.is_empty() => {
            finding("discovery", Severity::Ok, format!("{n} DNS-discovered targets, each resolved recently"), "")
        }
        Ok((n, stale)) => finding(
            "discovery",
            Severity::Warn,
            format!(
                "{} of {n} DNS-discovered targets not resolved for three refreshes: {}",
                stale.len(),
                stale.join(", ")
            ),
            remedy_for("discovery:fresh"),
        ),
        Err(e) => finding("discovery", Severity::Warn, format!("cannot read: {e}"), "run the migrations"),
    }
}

/// The tables kept for a retention: their size, the oldest row they hold (the horizon) and
/// what the purge last did. A horizon well past the retention means the purge is behind.
async fn retention(pool: &sqlx::PgPool) -> Vec<Finding> {
    let reports = match caracal_store::retention::report(pool).await {
        Ok(reports) => reports,
        Err(e) => return vec![finding("retention", Severity::Warn, format!("cannot read: {e}"), "run the migrations")],
    };
    reports.into_iter().map(|r| retention_finding(&r)).collect()
}

fn retention_finding(r: &caracal_store::retention::Report) -> Finding {
    let days = |secs: f64| {
        if secs >= 86_400.0 { format!("{:.1} d", secs / 86_400.0) } else { format!("{secs:.0} s") }
    };
    let rows = r.rows_estimate.map_or_else(|| "rows not yet estimated".to_string(), |n| format!("about {n} rows"));
    let size = format!("{:.1} MiB, {rows}", r.bytes as f64 / (1024.0 * 1024.0));
    let horizon = r.oldest_age_secs.map_or_else(|| "empty".to_string(), |age| format!("oldest row {} old", days(age)));
    let kept = match (r.keep_secs, r.purged_ago_secs) {
        (None, _) | (_, None) => "no purge has run yet (the coordinator and the audit service run it)".to_string(),
        (Some(0.0), Some(ago)) => format!("kept forever (last checked {} ago)", days(ago)),
        (Some(keep), Some(ago)) => {
            format!("kept {}, last purge {} ago, {} rows purged so far", days(keep), days(ago), r.rows_purged)
        }
    };
    // A day of slack: the purge runs every minute, but rows may stay a while behind a long
    // transaction, and the ledger's behind the outbox's own retention.
    let behind = match (r.keep_secs, r.oldest_age_secs) {
        (Some(keep), Some(age)) => keep > 0.0 && age > keep + 86_400.0,
        _ => false,
    };
    let name = format!("retention {}", r.table.name());
    let summary = format!("{size}, {horizon}; {kept}");
    if behind {
        finding(
            &name,
            Severity::Warn,
            summary,
            "the purge is behind: see the coordinator's (history) or the audit's (ledger) log; a dead outbox row holds the ledger's back",
        )
    } else {
        finding(&name, Severity::Ok, summary, "")
    }
}

/// The STS's signing keys: how long signing is covered by the keys made so far.
async fn signing_keys(pool: &sqlx::PgPool) -> Finding {
    let coverage = caracal_sts::ring::coverage(pool).await;
    match coverage {
        Ok((0, _)) => {
            finding("sts signing keys", Severity::Warn, "no signing key yet", "start caracal-sts; it makes one")
        }
        Ok((published, Some(left))) if left > 3600.0 => finding(
            "sts signing keys",
            Severity::Ok,
            format!("{published} published, signing covered for {:.1} h", left / 3600.0),
            "",
        ),
        Ok((published, left)) => finding(
            "sts signing keys",
            if left.unwrap_or(0.0) > 0.0 { Severity::Warn } else { Severity::Critical },
            format!("{published} published, signing covered for {:.0} s only", left.unwrap_or(0.0)),
            "rotation is stalled: is caracal-sts running? see its log",
        ),
        Err(e) => finding("sts signing keys", Severity::Warn, format!("cannot read: {e}"), "run the migrations"),
    }
}

async fn redis_findings(url: &str) -> Vec<Finding> {
    let connection = async {
        let client = redis::Client::open(url)?;
        client.get_multiplexed_async_connection().await
    };
    let mut conn = match tokio::time::timeout(Duration::from_secs(3), connection).await {
        Ok(Ok(conn)) => conn,
        _ => {
            return vec![finding(
                "redis",
                Severity::Critical,
                "cannot connect",
                "is Redis running? `caracal up` starts it",
            )];
        }
    };
    let mut out = Vec::new();
    if let Ok((secs, micros)) = redis::cmd("TIME").query_async::<(i64, i64)>(&mut conn).await {
        out.push(skew("redis", secs as f64 + micros as f64 / 1e6));
    }
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
        redis::cmd("XINFO").arg("GROUPS").arg(caracal_store::stream::EVENTS).query_async(&mut conn).await;
    match groups {
        Ok(reply) => match reply.groups.iter().find(|g| g.name == "audit") {
            Some(g) => {
                let lag = g.lag.map_or("unknown".to_string(), |l| l.to_string());
                let severity =
                    if g.lag.unwrap_or(0) > 10_000 || g.pending > 10_000 { Severity::Warn } else { Severity::Ok };
                out.push(finding(
                    "stream caracal.events",
                    severity,
                    format!("group audit: lag {lag}, {} pending", g.pending),
                    if severity == Severity::Ok { "" } else { remedy_for("stream:lag") },
                ));
            }
            None => out.push(finding(
                "stream caracal.events",
                Severity::Critical,
                "consumer group `audit` is missing",
                "start caracal-audit; it creates the group",
            )),
        },
        Err(_) => out.push(finding(
            "stream caracal.events",
            Severity::Warn,
            "the stream does not exist yet",
            "it appears with the first event",
        )),
    }
    let dlq: u64 = redis::cmd("XLEN").arg(caracal_store::stream::EVENTS_DLQ).query_async(&mut conn).await.unwrap_or(0);
    if dlq > 0 {
        out.push(finding(
            "stream caracal.events.dlq",
            Severity::Warn,
            format!("{dlq} entries"),
            remedy_for("dlq:length"),
        ));
    }
    out
}

fn skew(what: &str, remote_epoch: f64) -> Finding {
    let local = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let skew = remote_epoch - local;
    let severity = if skew.abs() > 1.0 { Severity::Warn } else { Severity::Ok };
    finding(
        format!("clock skew: {what}"),
        severity,
        format!("{skew:+.3}s"),
        if severity == Severity::Ok { "" } else { "sync the clocks (NTP)" },
    )
}

/// Findings as a table, worst first.
pub fn render(findings: &[Finding]) -> String {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let width = sorted.iter().map(|f| f.subject.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in sorted {
        let label = match f.severity {
            Severity::Ok => "ok      ",
            Severity::Warn => "warn    ",
            Severity::Critical => "CRITICAL",
        };
        out.push_str(&format!("{label}  {:<width$}  {}", f.subject, f.message));
        if !f.remedy.is_empty() {
            out.push_str(&format!("  -> {}", f.remedy));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use caracal_store::retention::{Report, Table};

    use super::{Severity, retention_finding};

    fn report(keep_secs: Option<f64>, oldest_age_secs: Option<f64>) -> Report {
        Report {
            table: Table::History,
            bytes: 3 * 1024 * 1024,
            rows_estimate: Some(1_200),
            oldest_age_secs,
            keep_secs,
            purged_ago_secs: keep_secs.map(|_| 40.0),
            rows_purged: 77,
        }
    }

    #[test]
    fn a_horizon_a_day_past_the_retention_is_a_warning() {
        let fine = retention_finding(&report(Some(30.0 * 86_400.0), Some(29.0 * 86_400.0)));
        assert_eq!(fine.severity, Severity::Ok);
        assert_eq!(fine.subject, "retention status_transitions");
        assert!(
            fine.message.contains("3.0 MiB, about 1200 rows, oldest row 29.0 d old; kept 30.0 d"),
            "{}",
            fine.message
        );
        let behind = retention_finding(&report(Some(30.0 * 86_400.0), Some(32.0 * 86_400.0)));
        assert_eq!(behind.severity, Severity::Warn);
        assert!(behind.remedy.contains("the purge is behind"), "{}", behind.remedy);
        let forever = retention_finding(&report(Some(0.0), Some(900.0 * 86_400.0)));
        assert_eq!(forever.severity, Severity::Ok, "kept forever is never behind");
        assert!(forever.message.contains("kept forever"), "{}", forever.message);
        let never = retention_finding(&report(None, None));
        assert!(never.message.contains("empty; no purge has run yet"), "{}", never.message);
    }
}
