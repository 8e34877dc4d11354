//! Following `caracal.invalidations`: the names of targets that changed, as the relay
//! publishes their `registry.changed` outbox rows, so a service that keeps the registry in
//! memory re-reads just those targets instead of the whole registry on a timer.
//!
//! The stream is the fast path and the registry in PostgreSQL the record: the follower asks
//! for a full re-read ([`Notice::Resync`]) when it starts, after any Redis error (entries may
//! have been missed), and every `full_every` as the safety net that covers Redis losing the
//! stream (a restart without persistence, `FLUSHALL`, a failover to a replica that lacks the
//! tail).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use caracal_core::RedisConnection;
use caracal_core::{Check, Failure, Observed, Rung};
use redis::streams::StreamRangeReply;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Event, stream};

/// How long one `XREAD` waits for entries. Below redis-rs's default response timeout
/// (500 ms), so a connection manager with default settings never mistakes a quiet stream for
/// a dead Redis (which would turn every quiet second into a full re-read).
const BLOCK: Duration = Duration::from_millis(400);

/// What a follower tells its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Re-read the whole registry (start-up, after an error, the periodic safety net).
    Resync,
    /// These targets changed (created, updated, deleted, paused, resumed, rediscovered):
    /// re-read each; one that is gone was deleted.
    Changed(Vec<String>),
}

impl Notice {
    /// Folds `later` into this notice, so a service that fell behind applies what waited as
    /// one: a resync covers everything, names are joined (each once).
    pub fn absorb(&mut self, later: Notice) {
        match (&mut *self, later) {
            (Notice::Resync, _) => {}
            (_, Notice::Resync) => *self = Notice::Resync,
            (Notice::Changed(names), Notice::Changed(more)) => {
                for name in more {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
    }
}

/// When the follower last heard from the stream, for `stream:invalidations`.
#[derive(Debug)]
pub struct Freshness {
    last: Mutex<Option<Instant>>,
}

impl Freshness {
    fn mark(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Instant::now());
        }
    }

    /// Time since the stream was last read successfully; `None` before the first read.
    pub fn age(&self) -> Option<Duration> {
        self.last.lock().ok().and_then(|l| *l).map(|t| t.elapsed())
    }
}

/// Follows `caracal.invalidations` on a Redis connection of its own (it blocks in `XREAD`).
pub struct Follower {
    redis: RedisConnection,
    full_every: Duration,
    freshness: std::sync::Arc<Freshness>,
}

impl Follower {
    /// A follower on `redis` that asks for a full re-read every `full_every` as well.
    pub fn new(redis: RedisConnection, full_every: Duration) -> Self {
        Self { redis, full_every, freshness: std::sync::Arc::new(Freshness { last: Mutex::new(None) }) }
    }

    /// Its freshness, for [`check`].
    pub fn freshness(&self) -> std::sync::Arc<Freshness> {
        std::sync::Arc::clone(&self.freshness)
    }

    /// Follows until `stop` (or until nobody listens on `notices`).
    pub async fn run(mut self, notices: mpsc::Sender<Notice>, stop: CancellationToken) {
        let mut from: Option<String> = None;
        let mut synced_at = Instant::now();
        let mut pause = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let round = async {
                if from.is_none() || synced_at.elapsed() >= self.full_every {
                    // Note the newest id first, then re-read: nothing after it is missed.
                    from = Some(self.newest().await?);
                    synced_at = Instant::now();
                    notices.send(Notice::Resync).await.map_err(|_| Closed)?;
                }
                let (next, names) = self.read(from.as_deref().unwrap_or("0-0")).await?;
                if let Some(next) = next {
                    from = Some(next);
                }
                if !names.is_empty() {
                    notices.send(Notice::Changed(names)).await.map_err(|_| Closed)?;
                }
                Ok::<(), Closed>(())
            };
            let result = tokio::select! {
                r = round => r,
                () = stop.cancelled() => break,
            };
            match result {
                Ok(()) => pause = Duration::from_millis(100),
                Err(Closed) if notices.is_closed() => break,
                Err(Closed) => {
                    from = None;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The stream's newest entry id (`0-0` when it is empty or missing).
    async fn newest(&mut self) -> Result<String, Closed> {
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(stream::INVALIDATIONS)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| Closed::warn(&e))?;
        Ok(newest.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }

    /// Reads the entries after `from` (waiting up to [`BLOCK`]): the newest id read and the
    /// changed names, deduplicated in order.
    async fn read(&mut self, from: &str) -> Result<(Option<String>, Vec<String>), Closed> {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream::INVALIDATIONS)
            .arg(from)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| Closed::warn(&e))?;
        let entries = stream::read_reply(reply).map_err(|e| Closed::warn(&e.into()))?;
        self.freshness.mark();
        let mut newest = None;
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for entry in entries {
            // An entry that names no target is skipped, never fatal: the periodic re-read
            // from PostgreSQL, the record, covers whatever it meant.
            let named = Event::from_entry(&entry).ok().map(changed_names).unwrap_or_default();
            if named.is_empty() {
                tracing::warn!(entry = %entry.id, "skipping an unreadable entry of {}", stream::INVALIDATIONS);
            }
            for name in named {
                if seen.insert(name.clone()) {
                    names.push(name);
                }
            }
            newest = Some(entry.id);
        }
        Ok((newest, names))
    }
}

/// The targets a `registry.changed` event names: its target, or a batch's `{"names": [...]}`
/// (see [`crate::registry::batch`]).
fn changed_names(event: Event) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Batch {
        names: Vec<String>,
    }
    match event.target {
        Some(name) => vec![name],
        None => serde_json::from_str::<Batch>(event.payload.get()).map(|b| b.names).unwrap_or_default(),
    }
}

/// A round that did not complete: Redis failed (logged), or the service stopped listening.
struct Closed;

impl Closed {
    fn warn(error: &redis::RedisError) -> Self {
        tracing::warn!(error = %error, "following {} failed; re-reading the registry once Redis answers", stream::INVALIDATIONS);
        Closed
    }
}

/// `stream:invalidations` (delivery rung, required): the follower read the stream within
/// `max_age`, so registry changes reach this service at once. Observes the age in seconds.
pub fn check(freshness: std::sync::Arc<Freshness>, max_age: Duration) -> Check {
    Check::new("stream:invalidations", Rung::Delivery, move || {
        let freshness = std::sync::Arc::clone(&freshness);
        async move {
            match freshness.age() {
                None => Err(Failure::new(format!("{} not read yet", stream::INVALIDATIONS))),
                Some(age) if age > max_age => Err(Failure::with(
                    format!(
                        "{} last read {:.1}s ago (limit {:.1}s); registry changes arrive only with the periodic re-read",
                        stream::INVALIDATIONS,
                        age.as_secs_f64(),
                        max_age.as_secs_f64()
                    ),
                    Observed::new(age.as_secs_f64(), "s"),
                )),
                Some(age) => Ok(Observed::new(age.as_secs_f64(), "s")),
            }
        }
    })
    .component_type("component")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(target: Option<&str>, payload: &str) -> Event {
        Event {
            id: 1,
            event_type: crate::registry::CHANGED.into(),
            target: target.map(str::to_owned),
            instance: None,
            payload: serde_json::value::RawValue::from_string(payload.into()).expect("json"),
            occurred_at: "2026-12-07T00:00:00Z".into(),
            trace_context: None,
        }
    }

    #[test]
    fn notices_that_waited_fold_into_one() {
        let changed = |names: &[&str]| Notice::Changed(names.iter().map(|n| (*n).to_string()).collect());
        let mut notice = changed(&["a", "b"]);
        notice.absorb(changed(&["b", "c"]));
        assert_eq!(notice, changed(&["a", "b", "c"]));
        notice.absorb(Notice::Resync);
        assert_eq!(notice, Notice::Resync);
        notice.absorb(changed(&["d"]));
        assert_eq!(notice, Notice::Resync, "a resync covers what follows it until it is applied");
    }

    #[test]
    fn an_event_names_its_target_or_its_batch() {
        assert_eq!(changed_names(event(Some("a"), r#"{"name": "a"}"#)), ["a"]);
        assert_eq!(changed_names(event(None, r#"{"names": ["a", "b"]}"#)), ["a", "b"]);
        // Neither: nothing, and the follower warns and goes on.
        assert!(changed_names(event(None, r#"{"names": 3}"#)).is_empty());
        assert!(changed_names(event(None, "{}")).is_empty());
    }
}
