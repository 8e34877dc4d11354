//! Many registry writes in one transaction: a declared file of 50,000 targets, or `caracal
//! apply` sending its plan, costs a statement per kind of write and batch rather than a
//! transaction per target. Each target keeps its own history event (`target.created`, ...),
//! all written by one statement; the followers hear of the whole batch from one
//! `registry.changed` event that names every target it changed (see [`announce_batch`]).
//!
//! A change that cannot be made (a name taken, a target gone, another owner's target) is
//! refused alone, with the same [`Refused`] the single writes answer; the rest of the batch
//! commits.

use std::collections::HashMap;

use caracal_core::telemetry;
use sqlx::PgConnection;

use super::{CHANGED, Refused, Writer, traced};
use crate::target::TargetSpec;
use crate::{Error, NewEvent, outbox};

/// The most changes one call takes (a caller splits a larger plan): the arrays bound to one
/// statement and the names in one `registry.changed` event stay small.
pub const MAX: usize = 1_000;

/// One write of a batch, and on whose behalf.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Register a (validated) document.
    Create(&'a TargetSpec, &'a Writer),
    /// Replace a target's (validated) document, as [`super::replace`] does.
    Replace(&'a TargetSpec, &'a Writer),
    /// Delete a target, as [`super::delete`] does.
    Delete(&'a str, &'a Writer),
}

impl Change<'_> {
    /// The target the change is about.
    pub fn name(&self) -> &str {
        match self {
            Change::Create(spec, _) | Change::Replace(spec, _) => &spec.name,
            Change::Delete(name, _) => name,
        }
    }
}

/// What became of a batch: the changes made and the ones refused, each by its index in the
/// batch.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Indexes of the changes made.
    pub done: Vec<usize>,
    /// Indexes of the changes refused, with why.
    pub refused: Vec<(usize, Refused)>,
}

/// The `registry.changed` event of a batch: no single target, its payload `{"names": [...]}`.
/// [`crate::invalidations`] reads both shapes.
pub fn batch_event(names: &[&str]) -> NewEvent {
    NewEvent {
        event_type: CHANGED.into(),
        target: None,
        instance: None,
        payload: serde_json::json!({ "names": names }),
    }
}

/// Applies `changes` (at most [`MAX`]; a name at most once) in one transaction.
///
/// # Errors
/// [`Error::Batch`] for more than [`MAX`] changes or a name given twice; a database error
/// (nothing is written then).
pub async fn apply(pool: &sqlx::PgPool, changes: &[Change<'_>]) -> Result<Outcome, Error> {
    if changes.len() > MAX {
        return Err(Error::Batch(format!("at most {MAX} changes in one batch, not {}", changes.len())));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = changes.iter().find(|c| !seen.insert(c.name())) {
        return Err(Error::Batch(format!("target `{}` is changed twice in one batch", twice.name())));
    }
    traced(telemetry::db_span("postgresql", "BATCH", "targets"), async move {
        let mut tx = pool.begin().await?;
        let mut outcome = Outcome::default();
        let mut events: Vec<NewEvent> = Vec::new();
        let owners = lock(&mut tx, changes).await?;
        let (mut creates, mut replaces, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (i, change) in changes.iter().enumerate() {
            let owner = owners.get(change.name());
            let verdict = match (*change, owner) {
                (Change::Create(..), None) => Ok(()),
                (Change::Create(spec, _), Some(_)) => Err(Refused::Conflict(spec.name.clone())),
                (Change::Replace(..) | Change::Delete(..), None) => Err(Refused::NotFound(change.name().into())),
                (Change::Replace(spec, writer), Some(owner)) => owner.allows(&spec.name, writer).and_then(|()| {
                    if owner.discovered && spec.discovery.is_none() && *writer == Writer::Api {
                        Err(Refused::Discovered(spec.name.clone()))
                    } else {
                        Ok(())
                    }
                }),
                (Change::Delete(name, writer), Some(owner)) => owner.allows(name, writer).and_then(|()| {
                    if owner.managed_by == Writer::Platform.managed_by() {
                        Err(Refused::PlatformTarget(name.into()))
                    } else {
                        Ok(())
                    }
                }),
            };
            match verdict {
                Err(refused) => outcome.refused.push((i, refused)),
                Ok(()) => match *change {
                    Change::Create(spec, writer) => creates.push((i, spec, writer)),
                    Change::Replace(spec, writer) => replaces.push((i, spec, writer, owners[&spec.name].id)),
                    Change::Delete(name, _) => deletes.push((i, name, owners[name].id)),
                },
            }
        }
        // A name created meanwhile by another writer is refused as taken, as a single create is.
        let created = insert(&mut tx, &creates).await?;
        for (i, spec, _) in &creates {
            if created.contains_key(spec.name.as_str()) {
                outcome.done.push(*i);
                events.push(history("target.created", spec));
            } else {
                outcome.refused.push((*i, Refused::Conflict(spec.name.clone())));
            }
        }
        let pairs = creates.iter().filter_map(|(_, spec, _)| Some((*created.get(spec.name.as_str())?, *spec)));
        add_instances(&mut tx, pairs).await?;
        update(&mut tx, &replaces).await?;
        for (i, spec, ..) in &replaces {
            outcome.done.push(*i);
            events.push(history("target.updated", spec));
        }
        let ids: Vec<i64> = deletes.iter().map(|(_, _, id)| *id).collect();
        sqlx::query("DELETE FROM targets WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
        for (i, name, _) in &deletes {
            outcome.done.push(*i);
            events.push(NewEvent {
                event_type: "target.deleted".into(),
                target: Some((*name).into()),
                instance: None,
                payload: serde_json::json!({ "name": name }),
            });
        }
        if !outcome.done.is_empty() {
            outcome.done.sort_unstable();
            let names: Vec<&str> = outcome.done.iter().map(|i| changes[*i].name()).collect();
            events.push(batch_event(&names));
            outbox::enqueue_many(&mut tx, &events).await?;
        }
        tx.commit().await?;
        outcome.refused.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    })
    .await
}

/// A stored target's owner, as a batch needs it.
#[derive(sqlx::FromRow)]
struct Owner {
    id: i64,
    name: String,
    managed_by: String,
    declared_in: Option<String>,
    discovered: bool,
}

impl Owner {
    /// Whether `writer` may change it (as [`super::lock_for`] judges).
    fn allows(&self, name: &str, writer: &Writer) -> Result<(), Refused> {
        match writer {
            Writer::Api if self.managed_by == "control" => {
                Err(Refused::ManagedByControl { name: name.into(), file: self.declared_in.clone().unwrap_or_default() })
            }
            Writer::Control { .. } if self.managed_by != "control" => Err(Refused::Conflict(name.into())),
            _ => Ok(()),
        }
    }
}

/// Locks the stored targets the batch names (in name order, so two batches never wait on each
/// other in a cycle) and reads their owners.
async fn lock(tx: &mut PgConnection, changes: &[Change<'_>]) -> Result<HashMap<String, Owner>, Error> {
    let names: Vec<&str> = changes.iter().map(Change::name).collect();
    let owners: Vec<Owner> = sqlx::query_as(
        "SELECT id, name, managed_by, declared_in, discovery IS NOT NULL AS discovered FROM targets \
         WHERE name = ANY($1) ORDER BY name FOR UPDATE",
    )
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    Ok(owners.into_iter().map(|o| (o.name.clone(), o)).collect())
}

/// A document's columns as arrays, one element per target, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    names: Vec<&'a str>,
    labels: Vec<serde_json::Value>,
    health: Vec<&'a str>,
    ready: Vec<&'a str>,
    metrics: Vec<&'a str>,
    interval: Vec<i32>,
    timeout: Vec<i32>,
    discovery: Vec<Option<serde_json::Value>>,
    tls: Vec<Option<serde_json::Value>>,
    grpc: Vec<Option<&'a str>>,
    credential: Vec<Option<&'a str>>,
    degraded: Vec<Option<serde_json::Value>>,
    declared_in: Vec<Option<&'a str>>,
    managed_by: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, spec: &'a TargetSpec, writer: &'a Writer) {
        let json = |v: Option<serde_json::Value>| v.filter(|v| !v.is_null());
        self.names.push(&spec.name);
        self.labels.push(serde_json::to_value(&spec.labels).unwrap_or_default());
        self.health.push(&spec.health_path);
        self.ready.push(&spec.ready_path);
        self.metrics.push(&spec.metrics_path);
        self.interval.push(spec.interval_ms);
        self.timeout.push(spec.timeout_ms);
        self.discovery.push(json(spec.discovery.as_ref().and_then(|d| serde_json::to_value(d).ok())));
        self.tls.push(json(spec.tls.as_ref().and_then(|t| serde_json::to_value(t).ok())));
        self.grpc.push(spec.grpc_service.as_deref());
        self.credential.push(spec.credential.as_deref());
        self.degraded.push(json(spec.degraded.as_ref().and_then(|d| serde_json::to_value(d).ok())));
        self.declared_in.push(writer.file());
        self.managed_by.push(writer.managed_by());
    }
}

/// The columns of `unnest`, in [`Columns`]' order, as `$1`..`$14` (a macro, so the statements
/// that use it stay literals).
macro_rules! unnest {
    () => {
        "unnest($1::text[], $2::jsonb[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], \
                $8::jsonb[], $9::jsonb[], $10::text[], $11::text[], $12::jsonb[], $13::text[], $14::text[])"
    };
}

/// Inserts the new targets (a name taken meanwhile is skipped); their ids by name.
async fn insert<'a>(
    tx: &mut PgConnection,
    creates: &[(usize, &'a TargetSpec, &'a Writer)],
) -> Result<HashMap<String, i64>, Error> {
    if creates.is_empty() {
        return Ok(HashMap::new());
    }
    let mut columns = Columns::default();
    for (_, spec, writer) in creates {
        columns.push(spec, writer);
    }
    let sql = concat!(
        "INSERT INTO targets (name, labels, health_path, ready_path, metrics_path, interval_ms, timeout_ms, \
                              discovery, tls, grpc_service, credential, degraded, declared_in, managed_by) \
         SELECT * FROM ",
        unnest!(),
        " ON CONFLICT (name) DO NOTHING RETURNING name, id"
    );
    let rows: Vec<(String, i64)> = bind(sqlx::query_as(sql), &columns).fetch_all(&mut *tx).await?;
    Ok(rows.into_iter().collect())
}

/// Binds [`Columns`] as `$1`..`$14`.
fn bind<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    c: &'q Columns<'q>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&c.names)
        .bind(&c.labels)
        .bind(&c.health)
        .bind(&c.ready)
        .bind(&c.metrics)
        .bind(&c.interval)
        .bind(&c.timeout)
        .bind(&c.discovery)
        .bind(&c.tls)
        .bind(&c.grpc)
        .bind(&c.credential)
        .bind(&c.degraded)
        .bind(&c.declared_in)
        .bind(&c.managed_by)
}

/// Adds each target's listed instances (those it has already stay).
async fn add_instances<'a>(
    tx: &mut PgConnection,
    targets: impl Iterator<Item = (i64, &'a TargetSpec)>,
) -> Result<(), Error> {
    let (mut ids, mut urls) = (Vec::new(), Vec::new());
    for (id, spec) in targets {
        for url in &spec.instances {
            ids.push(id);
            urls.push(url.as_str());
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO instances (target_id, url) SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&urls)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Replaces the documents of targets already locked, as [`super::replace`] does each: a listed
/// target's instances become those listed; a discovered target's stay control's.
async fn update<'a>(tx: &mut PgConnection, replaces: &[(usize, &'a TargetSpec, &'a Writer, i64)]) -> Result<(), Error> {
    if replaces.is_empty() {
        return Ok(());
    }
    let mut columns = Columns::default();
    for (_, spec, writer, _) in replaces {
        columns.push(spec, writer);
    }
    let ids: Vec<i64> = replaces.iter().map(|(.., id)| *id).collect();
    let sql = concat!(
        "UPDATE targets t SET labels = d.l, health_path = d.h, ready_path = d.r, metrics_path = d.mp, \
                interval_ms = d.i, timeout_ms = d.t, discovery = d.di, tls = d.tl, grpc_service = d.g, \
                credential = d.c, degraded = d.de, declared_in = COALESCE(d.f, t.declared_in), updated_at = now() \
         FROM ",
        unnest!(),
        " AS d(n, l, h, r, mp, i, t, di, tl, g, c, de, f, m) WHERE t.name = d.n AND t.id = ANY($15) RETURNING t.id"
    );
    bind(sqlx::query_as::<_, (i64,)>(sql), &columns).bind(&ids).fetch_all(&mut *tx).await?;
    let listed: Vec<(i64, &TargetSpec)> =
        replaces.iter().filter(|(_, spec, ..)| spec.discovery.is_none()).map(|(_, spec, _, id)| (*id, *spec)).collect();
    if listed.is_empty() {
        return Ok(());
    }
    let listed_ids: Vec<i64> = listed.iter().map(|(id, _)| *id).collect();
    let (mut pair_ids, mut pair_urls) = (Vec::new(), Vec::new());
    for (id, spec) in &listed {
        for url in &spec.instances {
            pair_ids.push(*id);
            pair_urls.push(url.as_str());
        }
    }
    sqlx::query(
        "DELETE FROM instances i WHERE i.target_id = ANY($1) AND NOT EXISTS \
           (SELECT 1 FROM unnest($2::bigint[], $3::text[]) AS p(id, url) WHERE p.id = i.target_id AND p.url = i.url)",
    )
    .bind(&listed_ids)
    .bind(&pair_ids)
    .bind(&pair_urls)
    .execute(&mut *tx)
    .await?;
    add_instances(&mut *tx, listed.iter().map(|(id, spec)| (*id, *spec))).await?;
    sqlx::query("DELETE FROM discovery_status WHERE target_id = ANY($1)").bind(&listed_ids).execute(&mut *tx).await?;
    Ok(())
}

/// A target's history event, its payload the document.
fn history(event_type: &str, spec: &TargetSpec) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        target: Some(spec.name.clone()),
        instance: None,
        payload: serde_json::to_value(spec).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_event_names_every_target_and_none_alone() {
        let event = batch_event(&["a", "b"]);
        assert_eq!(event.event_type, CHANGED);
        assert_eq!(event.target, None);
        assert_eq!(event.payload, serde_json::json!({"names": ["a", "b"]}));
    }
}
