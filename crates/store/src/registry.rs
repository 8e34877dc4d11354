//! The targets registry's reads and writes, shared by every writer (the API, control's declared
//! files and its DNS discovery). Each write commits, in one transaction, the change, its own
//! outbox event (`target.created`, `target.updated`, ...) and a `registry.changed` event, which
//! the relay also publishes to `caracal.invalidations`: followers (the coordinator, the gateway)
//! re-read just that target instead of the whole registry.

use caracal_core::telemetry;
use sqlx::PgConnection;
use tracing::Instrument;

pub mod batch;

use crate::discovery::DiscoveryStatus;
use crate::target::{Target, TargetDigest, TargetSpec};
use crate::{Error, NewEvent, outbox, rfc3339};

/// The event type announcing that one target changed (payload `{"name"}`); the relay sends it
/// to `caracal.invalidations` as well as `caracal.events`.
pub const CHANGED: &str = "registry.changed";

/// Who writes: the API (on anyone's behalf) or control (for the file that declares the target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// A request to `/v1/targets`.
    Api,
    /// Control, reconciling the declared file at this path.
    Control {
        /// The file that declares the target.
        file: String,
    },
    /// The API registering the platform's own services (`api.platform`) as targets: deleting
    /// one through the API is refused, as it would be registered again.
    Platform,
}

impl Writer {
    fn managed_by(&self) -> &'static str {
        match self {
            Writer::Api => "api",
            Writer::Control { .. } => "control",
            Writer::Platform => "platform",
        }
    }

    fn file(&self) -> Option<&str> {
        match self {
            Writer::Api | Writer::Platform => None,
            Writer::Control { file } => Some(file),
        }
    }
}

/// Why a write is refused (each has a stable code the API answers with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such target.
    #[error("no target named `{0}`")]
    NotFound(String),
    /// The name is taken (by a target this writer may not touch, for control).
    #[error("a target named `{0}` exists already")]
    Conflict(String),
    /// The target's instances are discovered: only control writes them.
    #[error("target `{0}` discovers its instances from DNS; its `instances` are written by caracal-control")]
    Discovered(String),
    /// The target is declared in a file control reconciles; change the file instead.
    #[error("target `{name}` is declared in `{file}` and managed by caracal-control; change that file instead")]
    ManagedByControl {
        /// The target.
        name: String,
        /// The file declaring it.
        file: String,
    },
    /// The target is one of the platform's own services: a delete would not last (the API
    /// registers it again), so it is refused; take it out of `api.platform` instead.
    #[error(
        "target `{0}` is one of the platform's own services and is registered again at every start; \
         take it out of `api.platform` to stop watching it"
    )]
    PlatformTarget(String),
}

impl Refused {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::NotFound(_) => "not_found",
            Refused::Conflict(_) => "conflict",
            Refused::Discovered(_) => "discovered_instances",
            Refused::ManagedByControl { .. } => "managed_by_control",
            Refused::PlatformTarget(_) => "platform_target",
        }
    }
}

/// The columns of a target document, read by both [`select!`] and [`read`] (the document's
/// JSON columns are written by the store from validated documents, so one that does not parse
/// reads as absent rather than failing the read).
#[derive(sqlx::FromRow)]
struct SpecColumns {
    name: String,
    labels: serde_json::Value,
    health_path: String,
    ready_path: String,
    metrics_path: String,
    interval_ms: i32,
    timeout_ms: i32,
    discovery: Option<serde_json::Value>,
    tls: Option<serde_json::Value>,
    grpc_service: Option<String>,
    credential: Option<String>,
    degraded: Option<serde_json::Value>,
    instances: Vec<String>,
}

impl From<SpecColumns> for TargetSpec {
    fn from(c: SpecColumns) -> Self {
        TargetSpec {
            name: c.name,
            instances: c.instances,
            discovery: c.discovery.and_then(|d| serde_json::from_value(d).ok()),
            health_path: c.health_path,
            ready_path: c.ready_path,
            metrics_path: c.metrics_path,
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            labels: serde_json::from_value(c.labels).unwrap_or_default(),
            tls: c.tls.and_then(|t| serde_json::from_value(t).ok()),
            grpc_service: c.grpc_service,
            credential: c.credential,
            degraded: c.degraded.and_then(|d| serde_json::from_value(d).ok()),
        }
    }
}

/// A target row with its instances and discovery status, as [`select!`] reads it.
#[derive(sqlx::FromRow)]
struct Row {
    #[sqlx(flatten)]
    spec: SpecColumns,
    created_at: String,
    updated_at: String,
    paused_at: Option<String>,
    managed_by: String,
    declared_in: Option<String>,
    certificates: serde_json::Value,
    degraded_instances: serde_json::Value,
    attempted_at: Option<String>,
    outcome: Option<String>,
    resolved_at: Option<String>,
    records: Option<i32>,
    ttl_s: Option<i32>,
    error: Option<String>,
}

/// The target query, with `$tail` (a `WHERE`, then `GROUP BY` and order) appended.
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT t.name, t.labels, t.health_path, t.ready_path, t.metrics_path, t.interval_ms, t.timeout_ms, ",
            rfc3339!("t.created_at"),
            " AS created_at, ",
            rfc3339!("t.updated_at"),
            " AS updated_at, ",
            rfc3339!("t.paused_at"),
            " AS paused_at, t.managed_by, t.declared_in, t.discovery, t.tls, t.grpc_service, t.credential, t.degraded, \
             COALESCE(array_agg(i.url ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL), '{}') AS instances, \
             COALESCE(jsonb_agg(jsonb_build_object('instance', i.url, 'certificate_expires_at', ",
            rfc3339!("s.certificate_expires_at"),
            ") ORDER BY i.id) FILTER (WHERE s.certificate_expires_at IS NOT NULL), '[]') AS certificates, \
             COALESCE(jsonb_agg(jsonb_build_object('instance', i.url, 'reason', s.degraded->>'reason', \
             'detail', s.degraded->>'detail', 'since', ",
            rfc3339!("s.since"),
            ") ORDER BY i.id) FILTER (WHERE s.status = 'degraded' AND s.degraded IS NOT NULL), '[]') AS degraded_instances, ",
            rfc3339!("d.attempted_at"),
            " AS attempted_at, d.outcome, ",
            rfc3339!("d.resolved_at"),
            " AS resolved_at, d.records, d.ttl_s, d.error \
             FROM targets t LEFT JOIN instances i ON i.target_id = t.id \
             LEFT JOIN instance_status s ON s.instance_id = i.id \
             LEFT JOIN discovery_status d ON d.target_id = t.id",
            $tail
        )
    };
}

impl From<Row> for Target {
    fn from(row: Row) -> Self {
        let discovery_status = match (row.attempted_at, row.outcome) {
            (Some(attempted_at), Some(outcome)) => Some(DiscoveryStatus {
                attempted_at,
                outcome,
                resolved_at: row.resolved_at,
                records: row.records.unwrap_or(0),
                ttl_s: row.ttl_s,
                error: row.error,
            }),
            _ => None,
        };
        Target {
            spec: row.spec.into(),
            certificates: serde_json::from_value(row.certificates).unwrap_or_default(),
            degraded_instances: serde_json::from_value(row.degraded_instances).unwrap_or_default(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            paused_at: row.paused_at,
            managed_by: row.managed_by,
            declared_in: row.declared_in,
            discovery_status,
        }
    }
}

/// One target, by name.
///
/// # Errors
/// When the query fails.
pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Option<Target>, Error> {
    traced(telemetry::db_span("postgresql", "SELECT", "targets"), async move {
        let row: Option<Row> = sqlx::query_as(select!(" WHERE t.name = $1 GROUP BY t.id, d.target_id"))
            .bind(name)
            .fetch_optional(conn)
            .await?;
        Ok(row.map(Target::from))
    })
    .await
}

/// Every target, by name.
///
/// # Errors
/// When the query fails.
pub async fn list(pool: &sqlx::PgPool) -> Result<Vec<Target>, Error> {
    traced(telemetry::db_span("postgresql", "SELECT", "targets"), async move {
        let rows: Vec<Row> =
            sqlx::query_as(select!(" GROUP BY t.id, d.target_id ORDER BY t.name")).fetch_all(pool).await?;
        Ok(rows.into_iter().map(Target::from).collect())
    })
    .await
}

/// The statement of [`digests`]: each target's document columns, owner and file, with its
/// instances; none of the status tables the listing of documents joins.
const DIGESTS: &str = "SELECT t.name, t.labels, t.health_path, t.ready_path, t.metrics_path, t.interval_ms, \
       t.timeout_ms, t.discovery, t.tls, t.grpc_service, t.credential, t.degraded, t.managed_by, t.declared_in, \
       COALESCE(array_agg(i.url ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL), '{}') AS instances \
     FROM targets t LEFT JOIN instances i ON i.target_id = t.id GROUP BY t.id";

/// A target's document columns with its owner, as [`DIGESTS`] reads them.
#[derive(sqlx::FromRow)]
struct DigestRow {
    #[sqlx(flatten)]
    spec: SpecColumns,
    managed_by: String,
    declared_in: Option<String>,
}

/// Every target's digest, by name ([`TargetSpec::digest`]): what a planner needs to tell which
/// documents differ from a declared file's without reading them all.
///
/// # Errors
/// When the query fails.
pub async fn digests(pool: &sqlx::PgPool) -> Result<Vec<TargetDigest>, Error> {
    traced(telemetry::db_span("postgresql", "SELECT", "targets"), async move {
        let rows: Vec<DigestRow> = sqlx::query_as(DIGESTS).fetch_all(pool).await?;
        // Sorted here rather than by the statement, whose sort of 50,000 rows spilled to disk.
        let mut digests: Vec<TargetDigest> = rows
            .into_iter()
            .map(|row| {
                let spec = TargetSpec::from(row.spec);
                let digest = spec.digest();
                TargetDigest { digest, name: spec.name, managed_by: row.managed_by, declared_in: row.declared_in }
            })
            .collect();
        digests.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(digests)
    })
    .await
}

/// Every target control owns, by name.
///
/// # Errors
/// When the query fails.
pub async fn list_declared(pool: &sqlx::PgPool) -> Result<Vec<Target>, Error> {
    let rows: Vec<Row> =
        sqlx::query_as(select!(" WHERE t.managed_by = 'control' GROUP BY t.id, d.target_id ORDER BY t.name"))
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(Target::from).collect())
}

/// Writes `registry.changed` for `name` in the caller's transaction.
///
/// # Errors
/// When the insert fails.
pub async fn announce(tx: &mut PgConnection, name: &str) -> Result<(), Error> {
    let event = NewEvent {
        event_type: CHANGED.into(),
        target: Some(name.into()),
        instance: None,
        payload: serde_json::json!({ "name": name }),
    };
    outbox::enqueue(tx, &event).await.map(drop)
}

/// Writes `event_type` (payload: the document) and `registry.changed` for `spec`.
async fn record(tx: &mut PgConnection, event_type: &str, spec: &TargetSpec) -> Result<(), Error> {
    let event = NewEvent {
        event_type: event_type.into(),
        target: Some(spec.name.clone()),
        instance: None,
        payload: serde_json::to_value(spec).unwrap_or_default(),
    };
    outbox::enqueue(tx, &event).await?;
    announce(tx, &spec.name).await
}

/// A statement over a target's columns that returns its id.
type IdQuery<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>;

/// Binds a document's columns as `$2`..`$12`, after the `$1` the caller bound: labels, the
/// three paths, interval, timeout, discovery, TLS settings, gRPC service, credential and degraded settings.
fn bind_document<'q>(query: IdQuery<'q>, spec: &'q TargetSpec) -> IdQuery<'q> {
    query
        .bind(serde_json::to_value(&spec.labels).unwrap_or_default())
        .bind(&spec.health_path)
        .bind(&spec.ready_path)
        .bind(&spec.metrics_path)
        .bind(spec.interval_ms)
        .bind(spec.timeout_ms)
        .bind(spec.discovery.as_ref().map(|d| serde_json::to_value(d).unwrap_or_default()))
        .bind(spec.tls.as_ref().map(|t| serde_json::to_value(t).unwrap_or_default()))
        .bind(spec.grpc_service.as_deref())
        .bind(spec.credential.as_deref())
        .bind(spec.degraded.as_ref().map(|d| serde_json::to_value(d).unwrap_or_default()))
}

/// Registers `spec` (already validated) on behalf of `writer`.
///
/// # Errors
/// [`Refused::Conflict`] when the name is taken; a database error.
pub async fn create(pool: &sqlx::PgPool, spec: &TargetSpec, writer: &Writer) -> Result<Target, Error> {
    traced(telemetry::db_span("postgresql", "INSERT", "targets"), async move {
        let mut tx = pool.begin().await?;
        let insert = sqlx::query_scalar(
            "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms, \
                                  discovery, tls, grpc_service, credential, degraded, managed_by, declared_in) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(&spec.name);
        let id: Option<i64> =
            bind_document(insert, spec).bind(writer.managed_by()).bind(writer.file()).fetch_optional(&mut *tx).await?;
        let Some(id) = id else { return Err(Refused::Conflict(spec.name.clone()).into()) };
        sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[])")
            .bind(id)
            .bind(&spec.instances)
            .execute(&mut *tx)
            .await?;
        record(&mut tx, "target.created", spec).await?;
        let target = get(&mut tx, &spec.name).await?.ok_or_else(|| Refused::NotFound(spec.name.clone()))?;
        tx.commit().await?;
        Ok(target)
    })
    .await
}

/// Who owns a stored target, and whether it discovers its instances.
#[derive(sqlx::FromRow)]
struct Ownership {
    id: i64,
    managed_by: String,
    declared_in: Option<String>,
    discovered: bool,
}

/// Locks `name`'s row and checks that `writer` may change it.
async fn lock_for(tx: &mut PgConnection, name: &str, writer: &Writer) -> Result<Ownership, Error> {
    let owner: Option<Ownership> = sqlx::query_as(
        "SELECT id, managed_by, declared_in, discovery IS NOT NULL AS discovered FROM targets WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(owner) = owner else { return Err(Refused::NotFound(name.into()).into()) };
    match writer {
        Writer::Api if owner.managed_by == "control" => {
            Err(Refused::ManagedByControl { name: name.into(), file: owner.declared_in.unwrap_or_default() }.into())
        }
        // Control never touches a target created through the API: a name clash.
        Writer::Control { .. } if owner.managed_by != "control" => Err(Refused::Conflict(name.into()).into()),
        _ => Ok(owner),
    }
}

/// Replaces `spec.name`'s document (validated) on behalf of `writer`: instances no longer listed
/// are dropped, new ones added. A discovered target keeps the instances control resolved.
///
/// # Errors
/// [`Refused::NotFound`]; [`Refused::ManagedByControl`] for the API on a declared target;
/// [`Refused::Conflict`] for control on an API target; [`Refused::Discovered`] when the API
/// lists instances for a discovered target; a database error.
pub async fn replace(pool: &sqlx::PgPool, spec: &TargetSpec, writer: &Writer) -> Result<Target, Error> {
    traced(telemetry::db_span("postgresql", "UPDATE", "targets"), async move {
        let mut tx = pool.begin().await?;
        let Ownership { id, discovered, .. } = lock_for(&mut tx, &spec.name, writer).await?;
        if discovered && spec.discovery.is_none() && *writer == Writer::Api {
            return Err(Refused::Discovered(spec.name.clone()).into());
        }
        let update = sqlx::query_scalar(
            "UPDATE targets SET labels = $2, health_path = $3, ready_path = $4, metrics_path = $5, interval_ms = $6, \
             timeout_ms = $7, discovery = $8, tls = $9, grpc_service = $10, credential = $11, degraded = $12, declared_in = COALESCE($13, declared_in), \
             updated_at = now() \
             WHERE id = $1 RETURNING id",
        )
        .bind(id);
        bind_document(update, spec).bind(writer.file()).fetch_one(&mut *tx).await?;
        // Listed instances replace the stored ones; a discovered target's stay until control
        // resolves its (possibly new) name: a blip must never empty a target.
        if spec.discovery.is_none() {
            sqlx::query("DELETE FROM instances WHERE target_id = $1 AND url <> ALL($2::text[])")
                .bind(id)
                .bind(&spec.instances)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(&spec.instances)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM discovery_status WHERE target_id = $1").bind(id).execute(&mut *tx).await?;
        }
        record(&mut tx, "target.updated", spec).await?;
        let target = get(&mut tx, &spec.name).await?.ok_or_else(|| Refused::NotFound(spec.name.clone()))?;
        tx.commit().await?;
        Ok(target)
    })
    .await
}

/// Deletes `name` and its instances (history is kept) on behalf of `writer`.
///
/// # Errors
/// As [`replace`]'s ownership refusals; [`Refused::PlatformTarget`] for one of the platform's
/// own services; a database error.
pub async fn delete(pool: &sqlx::PgPool, name: &str, writer: &Writer) -> Result<(), Error> {
    traced(telemetry::db_span("postgresql", "DELETE", "targets"), async move {
        let mut tx = pool.begin().await?;
        let owner = lock_for(&mut tx, name, writer).await?;
        if owner.managed_by == Writer::Platform.managed_by() {
            return Err(Refused::PlatformTarget(name.into()).into());
        }
        let id = owner.id;
        sqlx::query("DELETE FROM targets WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let event = NewEvent {
            event_type: "target.deleted".into(),
            target: Some(name.into()),
            instance: None,
            payload: serde_json::json!({ "name": name }),
        };
        outbox::enqueue(&mut tx, &event).await?;
        announce(&mut tx, name).await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Settles which targets are the platform's own after the API registered `names`
/// (`api.platform`): a target of such a name labelled `caracal=platform` that the API holds
/// (registered by a release before ownership was recorded) becomes the platform's, and a
/// platform target no longer configured becomes an ordinary API target, deletable again.
/// Reads only targets labelled `caracal=platform` (a partial index), never the fleet.
///
/// # Errors
/// A database error.
pub async fn settle_platform(pool: &sqlx::PgPool, names: &[String]) -> Result<(), Error> {
    sqlx::query(
        "UPDATE targets SET managed_by = CASE WHEN name = ANY($1) THEN 'platform' ELSE 'api' END \
         WHERE labels @> '{\"caracal\": \"platform\"}' \
           AND ((name = ANY($1) AND managed_by = 'api') OR (name <> ALL($1) AND managed_by = 'platform'))",
    )
    .bind(names)
    .execute(pool)
    .await?;
    Ok(())
}

/// Pauses or resumes probing `name`, with its outbox event (`target.paused` or
/// `target.resumed`) and `registry.changed` when that changes anything; the target as it now
/// is. Anyone who may write targets may pause one, whoever owns it.
///
/// # Errors
/// [`Refused::NotFound`]; a database error.
pub async fn set_paused(pool: &sqlx::PgPool, name: &str, paused: bool) -> Result<Target, Error> {
    traced(telemetry::db_span("postgresql", "UPDATE", "targets"), async move {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE targets SET paused_at = CASE WHEN $2 THEN now() END, updated_at = now() \
             WHERE name = $1 AND (paused_at IS NULL) = $2",
        )
        .bind(name)
        .bind(paused)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            let event_type = if paused { "target.paused" } else { "target.resumed" };
            let payload = serde_json::json!({ "name": name });
            let event = NewEvent { event_type: event_type.into(), target: Some(name.into()), instance: None, payload };
            outbox::enqueue(&mut tx, &event).await?;
            announce(&mut tx, name).await?;
        }
        let target = get(&mut tx, name).await?.ok_or_else(|| Refused::NotFound(name.into()))?;
        tx.commit().await?;
        Ok(target)
    })
    .await
}

/// What a discovery write changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancesChanged {
    /// Instance URLs added.
    pub added: Vec<String>,
    /// Instance URLs removed.
    pub removed: Vec<String>,
}

/// Sets a discovered target's instances to `urls` (control's resolution), with a
/// `target.instances_changed` event (`added`, `removed`) and `registry.changed` when that
/// changes anything. `None` when the target is gone or no longer discovered.
///
/// # Errors
/// A database error.
pub async fn set_discovered(
    pool: &sqlx::PgPool,
    target_id: i64,
    urls: &[String],
) -> Result<Option<InstancesChanged>, Error> {
    let mut tx = pool.begin().await?;
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM targets WHERE id = $1 AND discovery IS NOT NULL FOR UPDATE")
            .bind(target_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(name) = name else { return Ok(None) };
    let removed: Vec<String> =
        sqlx::query_scalar("DELETE FROM instances WHERE target_id = $1 AND url <> ALL($2::text[]) RETURNING url")
            .bind(target_id)
            .bind(urls)
            .fetch_all(&mut *tx)
            .await?;
    let added: Vec<String> = sqlx::query_scalar(
        "INSERT INTO instances (target_id, url) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING url",
    )
    .bind(target_id)
    .bind(urls)
    .fetch_all(&mut *tx)
    .await?;
    let mut change = InstancesChanged { added, removed };
    if change.added.is_empty() && change.removed.is_empty() {
        tx.commit().await?;
        return Ok(Some(change));
    }
    change.added.sort();
    change.removed.sort();
    let event = NewEvent {
        event_type: "target.instances_changed".into(),
        target: Some(name.clone()),
        instance: None,
        payload: serde_json::json!({ "added": change.added, "removed": change.removed }),
    };
    outbox::enqueue(&mut tx, &event).await?;
    announce(&mut tx, &name).await?;
    tx.commit().await?;
    Ok(Some(change))
}

/// Whether a target of that name is registered.
///
/// # Errors
/// When the query fails.
pub async fn exists(pool: &sqlx::PgPool, name: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM targets WHERE name = $1)").bind(name).fetch_one(pool).await?)
}

/// Which targets a follower of the registry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every target (the gateway federates them all).
    All,
    /// Targets being probed: not paused (the coordinator).
    Probed,
    /// Targets discovered from DNS (control resolves them).
    Discovered,
}

/// A target as the followers of `caracal.invalidations` hold it: its document (instances
/// sorted by URL), the instances' ids, and what the followers need beyond the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// `targets.id`.
    pub id: i64,
    /// The document; `spec.instances` sorted by URL.
    pub spec: TargetSpec,
    /// `instances.id` of each of `spec.instances`, in the same order.
    pub instance_ids: Vec<i64>,
    /// Whether probing it is paused.
    pub paused: bool,
    /// Consecutive empty DNS answers (discovered targets; 0 otherwise).
    pub empty_streak: i32,
}

/// The followers' read row.
#[derive(sqlx::FromRow)]
struct FollowerRow {
    id: i64,
    #[sqlx(flatten)]
    spec: SpecColumns,
    paused: bool,
    instance_ids: Vec<i64>,
    empty_streak: i32,
}

/// The followers' read of every target (`$1` is unused and `NULL`; `$2` the [`Filter`]): one
/// pass over each table, joined by hash.
pub const READ_ALL: &str = "SELECT t.id, t.name, t.labels, t.health_path, t.ready_path, t.metrics_path, t.interval_ms, \
        t.timeout_ms, t.discovery, t.tls, t.grpc_service, t.credential, t.degraded, t.paused_at IS NOT NULL AS paused, \
        COALESCE(array_agg(i.id ORDER BY i.url) FILTER (WHERE i.id IS NOT NULL), '{}') AS instance_ids, \
        COALESCE(array_agg(i.url ORDER BY i.url) FILTER (WHERE i.id IS NOT NULL), '{}') AS instances, \
        COALESCE(max(d.empty_streak), 0) AS empty_streak \
    FROM targets t LEFT JOIN instances i ON i.target_id = t.id LEFT JOIN discovery_status d ON d.target_id = t.id \
    WHERE $1::text[] IS NULL AND ($2 <> 'probed' OR t.paused_at IS NULL) AND ($2 <> 'discovered' OR t.discovery IS NOT NULL) \
    GROUP BY t.id ORDER BY t.name";

/// The followers' read of the targets named in `$1` (`$2` the [`Filter`]): each target found
/// by its name's index, its instances and discovery row by theirs (subqueries per target, which
/// the planner cannot turn into a pass over the whole table however its statistics read).
pub const READ_NAMED: &str = "SELECT t.id, t.name, t.labels, t.health_path, t.ready_path, t.metrics_path, t.interval_ms, \
        t.timeout_ms, t.discovery, t.tls, t.grpc_service, t.credential, t.degraded, t.paused_at IS NOT NULL AS paused, \
        COALESCE(i.ids, '{}') AS instance_ids, COALESCE(i.urls, '{}') AS instances, \
        COALESCE((SELECT d.empty_streak FROM discovery_status d WHERE d.target_id = t.id), 0) AS empty_streak \
    FROM targets t LEFT JOIN LATERAL ( \
        SELECT array_agg(i.id ORDER BY i.url) AS ids, array_agg(i.url ORDER BY i.url) AS urls \
        FROM instances i WHERE i.target_id = t.id) i ON true \
    WHERE t.name = ANY($1::text[]) AND ($2 <> 'probed' OR t.paused_at IS NULL) AND ($2 <> 'discovered' OR t.discovery IS NOT NULL) \
    ORDER BY t.name";

/// Reads the targets `filter` selects, every one or only those named in `names` (what a
/// `registry.changed` announced), by name. The one read of the registry the coordinator, the
/// gateway and control share.
///
/// # Errors
/// When the query fails.
pub async fn read(pool: &sqlx::PgPool, names: Option<&[String]>, filter: Filter) -> Result<Vec<Registered>, Error> {
    // Two statements, not one with `$1 IS NULL OR t.name = ANY($1)`: a prepared statement's
    // generic plan must serve both readings of that, so it scanned every target and instance
    // for a read of one (a change cost the fleet). Each now has a plan of its own.
    let query = if names.is_some() { READ_NAMED } else { READ_ALL };
    let rows: Vec<FollowerRow> = sqlx::query_as(query)
        .bind(names)
        .bind(match filter {
            Filter::All => "all",
            Filter::Probed => "probed",
            Filter::Discovered => "discovered",
        })
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| Registered {
            id: row.id,
            spec: row.spec.into(),
            instance_ids: row.instance_ids,
            paused: row.paused,
            empty_streak: row.empty_streak,
        })
        .collect())
}

/// Runs `work` in `span` (a database span, or a disabled one).
async fn traced<T>(span: tracing::Span, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    work.instrument(span).await
}
