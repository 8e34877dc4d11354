//! Instance status: the one [`Status`] type, the coordinator's writes (a change with its
//! transition and outbox event in one transaction, a certificate first seen or renewed) and
//! every read of `instance_status` and `status_transitions` (the API's `/v1/status` and
//! history, the status page's fleet, the platform's own summary).

use std::fmt;

use serde::Serialize;
use sqlx::PgConnection;

use crate::degraded::Detector;
use crate::{Error, NewEvent, outbox, rfc3339};

/// An instance's recorded status.
/// Ordered worst first (`unknown` < `down` < `unready` < `degraded` < `up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not probed yet (or its status row holds only a certificate).
    Unknown,
    /// Not live: `/health` failed, the connection failed, or the gRPC service is not serving.
    Down,
    /// Live but not ready.
    Unready,
    /// Live and ready, but slow, flaky or flapping (a gray-failure detector fired).
    Degraded,
    /// Live and ready.
    Up,
}

impl Status {
    /// Every status, best first.
    pub const ALL: [Status; 5] = [Status::Up, Status::Degraded, Status::Unready, Status::Down, Status::Unknown];

    /// The word stored and served: `unknown`, `down`, `unready`, `degraded` or `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Down => "down",
            Status::Unready => "unready",
            Status::Degraded => "degraded",
            Status::Up => "up",
        }
    }

    /// The status a stored word names; anything else (no row, a word from a later release)
    /// reads as `unknown`.
    pub fn from_word(word: &str) -> Self {
        Status::ALL.into_iter().find(|s| s.as_str() == word).unwrap_or(Status::Unknown)
    }

    /// Whether the instance serves: `up` or `degraded`.
    pub fn serves(self) -> bool {
        matches!(self, Status::Up | Status::Degraded)
    }

    /// Whether it counts as an outage: `down` or `unready`.
    pub fn is_outage(self) -> bool {
        matches!(self, Status::Down | Status::Unready)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an instance is degraded: the detector that fired and what it saw, in figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The detector that fired.
    pub reason: Detector,
    /// What it saw ("p50 154 ms over the last 12 probes against its own 4.1 ms ...").
    pub detail: String,
}

/// The certificate a server presented: the earliest `notAfter` of its chain and the leaf's
/// SHA-256 (hex), which tells a renewal from the same certificate seen again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
    /// The leaf certificate's SHA-256, hex.
    pub sha256: String,
}

/// What the store holds for one instance: its status, the certificate it last presented and,
/// while degraded, the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `unknown` when it has no status row.
    pub status: Status,
    /// The certificate last recorded.
    pub certificate: Option<Certificate>,
    /// The verdict, while degraded.
    pub verdict: Option<Verdict>,
}

impl Recorded {
    /// Nothing recorded yet: `unknown`, no certificate, no verdict.
    pub const NONE: Recorded = Recorded { status: Status::Unknown, certificate: None, verdict: None };
}

/// The instance's recorded status, certificate and verdict (so a new owner adopts them).
///
/// # Errors
/// When the query fails.
pub async fn recorded(pool: &sqlx::PgPool, instance_id: i64) -> Result<Recorded, Error> {
    let mut all = recorded_many(pool, &[instance_id]).await?;
    Ok(all.remove(&instance_id).unwrap_or(Recorded::NONE))
}

/// The statement of [`recorded_many`]: one primary-key lookup per id asked for. Written as
/// `instance_id = ANY($1)`, the prepared statement's generic plan, made while the statistics
/// still counted a new fleet's table as nearly empty, read the whole table for every call
/// (0.5 ms a call at 8,000 instances, each registration's first probe paying it); a `LIMIT`
/// inside the lateral subquery keeps the planner from turning it back into a join.
pub const RECORDED_MANY: &str = "SELECT s.instance_id, s.status, \
       extract(epoch FROM s.certificate_expires_at)::bigint, s.certificate_sha256, \
       s.degraded->>'reason', s.degraded->>'detail' \
     FROM unnest($1::bigint[]) AS asked(id) CROSS JOIN LATERAL ( \
       SELECT * FROM instance_status WHERE instance_id = asked.id LIMIT 1) s";

/// [`recorded`] for many instances in one query (a coordinator starting or taking over
/// thousands of instances reads them at once, not one query each); an instance with no status
/// row is left out (it is [`Recorded::NONE`]).
///
/// # Errors
/// When the query fails.
pub async fn recorded_many(
    pool: &sqlx::PgPool,
    instance_ids: &[i64],
) -> Result<std::collections::HashMap<i64, Recorded>, Error> {
    /// Instance, status, certificate expiry and fingerprint, verdict reason and detail.
    type Row = (i64, String, Option<i64>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(RECORDED_MANY).bind(instance_ids).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, expires_at, sha256, reason, detail)| {
            let status = Status::from_word(&status);
            let verdict = (status == Status::Degraded).then(|| Verdict {
                reason: reason.as_deref().and_then(Detector::parse).unwrap_or(Detector::Latency),
                detail: detail.unwrap_or_default(),
            });
            let certificate = expires_at.zip(sha256).map(|(expires_at, sha256)| Certificate { expires_at, sha256 });
            (id, Recorded { status, certificate, verdict })
        })
        .collect())
}

/// One observed change of an instance's status, as the coordinator records it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `instances.id`.
    pub instance_id: i64,
    /// The target's name and the instance's URL, as the history and the event carry them.
    pub target: &'a str,
    /// The instance's URL.
    pub instance: &'a str,
    /// The status the recorder believes is stored.
    pub from: Status,
    /// The new status.
    pub to: Status,
    /// Why, when the new status is a failure.
    pub error: Option<&'a str>,
    /// The verdict, for a change to `degraded`.
    pub verdict: Option<&'a Verdict>,
}

/// Records `change` in one transaction: the status row (only if it still holds `from`, so two
/// recorders never record the same change twice), the transition and its
/// `instance.status_changed` outbox event. `Ok(false)` when the stored status had moved on.
///
/// # Errors
/// When a statement fails (nothing is written then).
pub async fn record(pool: &sqlx::PgPool, change: &Change<'_>) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let recorded = record_in(&mut tx, change).await?;
    if recorded {
        tx.commit().await?;
    }
    Ok(recorded)
}

/// Records every change in `changes` as [`record`] does, all in one transaction: one commit
/// (one flush of PostgreSQL's log) for the lot, which is what a fleet's first probes or a
/// network blip cost. Each answer is that change's own (`false`: its stored status had moved
/// on, and nothing of it is written).
///
/// # Errors
/// When a statement fails: nothing of any of them is written then.
pub async fn record_many(pool: &sqlx::PgPool, changes: &[Change<'_>]) -> Result<Vec<bool>, Error> {
    let mut tx = pool.begin().await?;
    let mut recorded = Vec::with_capacity(changes.len());
    for change in changes {
        recorded.push(record_in(&mut tx, change).await?);
    }
    if recorded.contains(&true) {
        tx.commit().await?;
    }
    Ok(recorded)
}

/// One change's writes within `tx`; `false` (and nothing written) when the stored status is
/// not `change.from`.
async fn record_in(tx: &mut sqlx::PgConnection, change: &Change<'_>) -> Result<bool, Error> {
    let degraded = change.verdict.map(|v| serde_json::json!({ "reason": v.reason.as_str(), "detail": v.detail }));
    // The history and `last_error` say why in one line: the failure, or the verdict.
    let reason = match change.verdict {
        Some(v) => Some(format!("{}: {}", v.reason.as_str(), v.detail)),
        None => change.error.map(str::to_string),
    };
    let (from, to) = (change.from.as_str(), change.to.as_str());
    let updated = sqlx::query(
        "INSERT INTO instance_status (instance_id, status, last_error, degraded) VALUES ($1, $2, $3, $5) \
         ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, since = now(), last_error = excluded.last_error, \
         degraded = excluded.degraded \
         WHERE instance_status.status = $4",
    )
    .bind(change.instance_id)
    .bind(to)
    .bind(reason.as_deref())
    .bind(from)
    .bind(&degraded)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(change.target)
    .bind(change.instance)
    .bind(from)
    .bind(to)
    .bind(reason.as_deref())
    .execute(&mut *tx)
    .await?;
    let payload = match change.verdict {
        Some(v) => serde_json::json!({ "from": from, "to": to, "reason": v.reason.as_str(), "detail": v.detail }),
        None => serde_json::json!({ "from": from, "to": to, "reason": change.error }),
    };
    let event = NewEvent {
        event_type: "instance.status_changed".into(),
        target: Some(change.target.to_string()),
        instance: Some(change.instance.to_string()),
        payload,
    };
    outbox::enqueue(&mut *tx, &event).await?;
    Ok(true)
}

/// Records a certificate an instance presents for the first time, or a new one (a renewal):
/// its expiry and fingerprint on the status row and a `target.certificate_changed` event, in
/// one transaction. Returns the expiry as RFC 3339.
///
/// # Errors
/// When a statement fails (nothing is written then).
pub async fn record_certificate(
    pool: &sqlx::PgPool,
    (instance_id, target, instance): (i64, &str, &str),
    previous: Option<&Certificate>,
    presented: &Certificate,
) -> Result<String, Error> {
    let mut tx = pool.begin().await?;
    let expires_at = write_certificate(&mut tx, instance_id, presented).await?;
    let payload = serde_json::json!({
        "expires_at": expires_at,
        "sha256": presented.sha256,
        "previous_sha256": previous.map(|p| p.sha256.as_str()),
    });
    let event = NewEvent {
        event_type: "target.certificate_changed".into(),
        target: Some(target.to_string()),
        instance: Some(instance.to_string()),
        payload,
    };
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    Ok(expires_at)
}

async fn write_certificate(tx: &mut PgConnection, instance_id: i64, presented: &Certificate) -> Result<String, Error> {
    Ok(sqlx::query_scalar(concat!(
        "INSERT INTO instance_status (instance_id, status, certificate_expires_at, certificate_sha256) \
         VALUES ($1, 'unknown', to_timestamp($2), $3) \
         ON CONFLICT (instance_id) DO UPDATE SET certificate_expires_at = excluded.certificate_expires_at, \
         certificate_sha256 = excluded.certificate_sha256 RETURNING ",
        rfc3339!("certificate_expires_at")
    ))
    .bind(instance_id)
    .bind(presented.expires_at as f64)
    .bind(&presented.sha256)
    .fetch_one(tx)
    .await?)
}

/// One registered instance's current status, as `/v1/status` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// The target's name.
    pub target: String,
    /// The instance's URL.
    pub instance: String,
    /// Its status (`unknown` before the first probe).
    pub status: Status,
    /// Since when (RFC 3339), once probed.
    pub since: Option<String>,
    /// Why it is not up.
    pub last_error: Option<String>,
    /// Whether probing its target is paused.
    pub paused: bool,
    /// When the certificate it last presented expires (RFC 3339).
    pub certificate_expires_at: Option<String>,
    /// Whether its target skips certificate verification.
    pub insecure_skip_verify: bool,
    /// The verdict's reason word and sentence, while degraded (boxed: most instances are not,
    /// and a fleet holds one of these per instance).
    pub degraded: Option<Box<(String, String)>>,
}

/// Every registered instance's current status, by target and URL.
///
/// # Errors
/// When the query fails.
pub async fn current(pool: &sqlx::PgPool) -> Result<Vec<Current>, Error> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
        Option<String>,
        bool,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT t.name, i.url, s.status, ",
        rfc3339!("s.since"),
        ", s.last_error, t.paused_at IS NOT NULL, ",
        rfc3339!("s.certificate_expires_at"),
        ", COALESCE((t.tls->>'insecure_skip_verify')::boolean, false), \
         s.degraded->>'reason', s.degraded->>'detail' \
         FROM instances i JOIN targets t ON t.id = i.target_id \
         LEFT JOIN instance_status s ON s.instance_id = i.id ORDER BY t.name, i.url"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                target,
                instance,
                status,
                since,
                last_error,
                paused,
                certificate_expires_at,
                insecure,
                reason,
                detail,
            )| {
                let status = status.as_deref().map_or(Status::Unknown, Status::from_word);
                let degraded = reason.zip(detail).filter(|_| status == Status::Degraded).map(Box::new);
                Current {
                    target,
                    instance,
                    status,
                    since,
                    last_error,
                    paused,
                    certificate_expires_at,
                    insecure_skip_verify: insecure,
                    degraded,
                }
            },
        )
        .collect())
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Its id: newer transitions have larger ids.
    pub id: i64,
    /// The instance's URL.
    pub instance: String,
    /// The status before.
    pub from: Status,
    /// The status after.
    pub to: Status,
    /// Why, as recorded.
    pub reason: Option<String>,
    /// When (RFC 3339).
    pub occurred_at: String,
}

/// A target's transitions with ids below `before` (all when `None`), newest first, at most
/// `limit`. History outlives its target; it is kept for `store.retention.history`.
///
/// # Errors
/// When the query fails.
pub async fn history(
    pool: &sqlx::PgPool,
    target: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Transition>, Error> {
    type Row = (i64, String, String, String, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "SELECT id, instance_url, from_status, to_status, reason, ",
        rfc3339!("occurred_at"),
        " FROM status_transitions WHERE target_name = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(target)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, instance, from, to, reason, occurred_at)| Transition {
            id,
            instance,
            from: Status::from_word(&from),
            to: Status::from_word(&to),
            reason,
            occurred_at,
        })
        .collect())
}

/// One row of the fleet: a target, and one of its instances with its status (none for a
/// target without instances).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    /// The target's name.
    pub target: String,
    /// One of the platform's own services (label `caracal=platform`).
    pub platform: bool,
    /// Since when probing is paused (Unix seconds).
    pub paused_since: Option<f64>,
    /// When the target was registered (Unix seconds).
    pub created: f64,
    /// Whether its certificates go unverified.
    pub insecure: bool,
    /// The instance, if the target has any.
    pub instance: Option<FleetInstance>,
}

/// An instance's status as the fleet view holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetInstance {
    /// The instance's URL.
    pub url: String,
    /// Its status.
    pub status: Status,
    /// Since when (Unix seconds), once probed.
    pub since: Option<f64>,
    /// Why it is not up.
    pub last_error: Option<String>,
    /// When its certificate expires (Unix seconds).
    pub certificate_expires: Option<f64>,
    /// The verdict's reason word and sentence, while degraded (boxed: most instances are not,
    /// and a fleet holds one of these per instance).
    pub degraded: Option<Box<(String, String)>>,
}

/// One transition as the fleet's timelines hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPoint {
    /// The target's name.
    pub target: String,
    /// The instance's URL.
    pub instance: String,
    /// The status before.
    pub from: Status,
    /// The status after.
    pub to: Status,
    /// When (Unix seconds).
    pub at: f64,
}

/// What [`fleet`] reads besides its items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetClock {
    /// The store's clock at the read (Unix seconds).
    pub as_of: f64,
    /// When the oldest transition still kept occurred (Unix seconds): history before it was
    /// purged (`store.retention.history`) or never recorded.
    pub oldest: Option<f64>,
}

/// One item of the fleet as [`fleet`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetItem {
    /// A target and one of its instances (or none), by target name in byte order (`COLLATE
    /// "C"`, as Rust compares strings), then instance URL; all of them come first.
    Row(FleetRow),
    /// A transition of the last 24 hours, oldest first.
    Point(FleetPoint),
}

/// How far back [`fleet`] reads transitions: the status page's timelines, in seconds.
pub const FLEET_WINDOW_SECS: f64 = 24.0 * 3600.0;

/// Reads the whole fleet in one snapshot, so a transition and the status it led to agree,
/// handing each row to `each` as it arrives (a fleet of 50,000 targets is never held twice, as
/// rows and as what the caller builds of them): targets, instances and statuses in one query,
/// the transitions of the last 24 hours ([`FLEET_WINDOW_SECS`]) in another (through
/// `status_transitions_occurred_brin`: the window is written into the statement, so PostgreSQL
/// estimates it from `now()` even in a generic plan).
///
/// # Errors
/// When a query fails (`each` may have seen part of the fleet).
pub async fn fleet(pool: &sqlx::PgPool, mut each: impl FnMut(FleetItem)) -> Result<FleetClock, Error> {
    use futures_util::TryStreamExt as _;
    type Row = (
        String,
        bool,
        Option<f64>,
        f64,
        bool,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
        Option<f64>,
        Option<String>,
        Option<String>,
    );
    type PointRow = (String, String, String, String, f64);
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    let as_of: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8").fetch_one(&mut *tx).await?;
    {
        let mut rows = sqlx::query_as::<_, Row>(
            "SELECT t.name, COALESCE(t.labels->>'caracal' = 'platform', false), extract(epoch FROM t.paused_at)::float8, \
             extract(epoch FROM t.created_at)::float8, COALESCE((t.tls->>'insecure_skip_verify')::boolean, false), \
             i.url, s.status, extract(epoch FROM s.since)::float8, s.last_error, \
             extract(epoch FROM s.certificate_expires_at)::float8, s.degraded->>'reason', s.degraded->>'detail' \
             FROM targets t LEFT JOIN instances i ON i.target_id = t.id LEFT JOIN instance_status s ON s.instance_id = i.id \
             ORDER BY t.name COLLATE \"C\", i.url",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let (
                target,
                platform,
                paused_since,
                created,
                insecure,
                url,
                status,
                since,
                last_error,
                cert,
                reason,
                detail,
            ) = row;
            let instance = url.map(|url| {
                let status = status.as_deref().map_or(Status::Unknown, Status::from_word);
                let degraded = reason.zip(detail).filter(|_| status == Status::Degraded).map(Box::new);
                FleetInstance { url, status, since, last_error, certificate_expires: cert, degraded }
            });
            each(FleetItem::Row(FleetRow { target, platform, paused_since, created, insecure, instance }));
        }
    }
    {
        let mut points = sqlx::query_as::<_, PointRow>(
            "SELECT target_name, instance_url, from_status, to_status, extract(epoch FROM occurred_at)::float8 \
             FROM status_transitions WHERE occurred_at > now() - interval '24 hours' ORDER BY id",
        )
        .fetch(&mut *tx);
        while let Some((target, instance, from, to, at)) = points.try_next().await? {
            let (from, to) = (Status::from_word(&from), Status::from_word(&to));
            each(FleetItem::Point(FleetPoint { target, instance, from, to, at }));
        }
    }
    let oldest = crate::retention::oldest(&mut tx, crate::retention::Table::History).await?;
    tx.commit().await?;
    Ok(FleetClock { as_of, oldest: oldest.map(|o| o.at) })
}

/// How the platform's own services stand: instances probed, up, and serving (up or degraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlatformCounts {
    /// Instances probed at least once.
    pub probed: i64,
    /// Of those, up.
    pub up: i64,
    /// Of those, serving (up or degraded).
    pub serving: i64,
}

/// Counts the instances of targets labelled `caracal=platform` by status.
///
/// # Errors
/// When the query fails.
pub async fn platform(pool: &sqlx::PgPool) -> Result<PlatformCounts, Error> {
    let (probed, up, serving): (i64, i64, i64) = sqlx::query_as(
        // Instances not probed yet (no status row, or only a certificate recorded ahead of the
        // first status) count neither way. A degraded instance serves, slowly or flakily.
        "SELECT count(*) FILTER (WHERE s.status <> 'unknown'), count(*) FILTER (WHERE s.status = 'up'), \
         count(*) FILTER (WHERE s.status IN ('up', 'degraded')) FROM instances i \
         JOIN targets t ON t.id = i.target_id LEFT JOIN instance_status s ON s.instance_id = i.id \
         WHERE t.labels @> '{\"caracal\": \"platform\"}'",
    )
    .fetch_one(pool)
    .await?;
    Ok(PlatformCounts { probed, up, serving })
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn every_status_reads_back_from_its_word() {
        for s in Status::ALL {
            assert_eq!(Status::from_word(s.as_str()), s);
            assert_eq!(serde_json::to_value(s).expect("json"), serde_json::json!(s.as_str()));
        }
        assert_eq!(Status::from_word("sideways"), Status::Unknown, "a word from a later release");
    }
}
