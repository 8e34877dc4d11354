//! The revocations in force, and the follower that keeps them current.
//!
//! A verifier must never forget a revocation, even across its own restart or a Redis that lost
//! data. So the follower (1) notes the stream's last entry id, (2) loads every revocation still
//! in force from PostgreSQL, then (3) reads `caracal.revocations` from that id on; and it
//! re-reads PostgreSQL every `revocations_reload`, and after any stream error, so whatever
//! the stream lost is learned within that time. Revocations expire with the tokens they cover.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::RedisConnection;
use caracal_store::revocation::{self, Revocation};
use caracal_store::{Event, stream};
use tokio_util::sync::CancellationToken;

use crate::config::TokensConfig;
use crate::verifier::Verifier;

/// Revoked token ids and clients, each with when it can be forgotten.
#[derive(Debug, Default)]
pub struct RevocationSet {
    inner: Mutex<Sets>,
}

#[derive(Debug, Default)]
struct Sets {
    /// `jti` → expiry of the revocation.
    tokens: HashMap<String, i64>,
    /// client → (revoked at, expiry): tokens issued at or before `revoked at` are revoked.
    clients: HashMap<String, (i64, i64)>,
    /// When the set was last known to be current; `None` before the first load.
    current_at: Option<Instant>,
}

impl RevocationSet {
    /// Whether a token with `jti`, issued to `client_id` at `iat`, is revoked.
    pub fn is_revoked(&self, jti: &str, client_id: &str, iat: u64) -> bool {
        let Ok(sets) = self.inner.lock() else { return true }; // fail closed on a poisoned lock
        sets.tokens.contains_key(jti)
            || sets
                .clients
                .get(client_id)
                .is_some_and(|(revoked_at, _)| i64::try_from(iat).unwrap_or(i64::MAX) <= *revoked_at)
    }

    /// Whether every token of `client_id` is revoked (the client was disabled).
    pub fn client_revoked(&self, client_id: &str) -> bool {
        self.inner.lock().map_or(true, |sets| sets.clients.contains_key(client_id))
    }

    /// Adds one revocation.
    pub fn insert(&self, revocation: &Revocation) {
        if let Ok(mut sets) = self.inner.lock() {
            sets.add(revocation);
        }
    }

    /// Replaces the whole set with `revocations` (a fresh load from PostgreSQL), keeping any
    /// held revocation the load did not see yet rather than forgetting it.
    pub fn replace(&self, revocations: &[Revocation]) {
        if let Ok(mut sets) = self.inner.lock() {
            let now = crate::claims::now_unix() as i64;
            sets.tokens.retain(|_, expires| *expires > now);
            sets.clients.retain(|_, (_, expires)| *expires > now);
            for r in revocations {
                sets.add(r);
            }
            sets.current_at = Some(Instant::now());
        }
    }

    /// Records that the set is current as of now (a stream read returned).
    pub fn mark_current(&self) {
        if let Ok(mut sets) = self.inner.lock() {
            sets.current_at = Some(Instant::now());
        }
    }

    /// How long ago the set was last known current; `None` before the first load.
    pub fn lag(&self) -> Option<Duration> {
        self.inner.lock().ok().and_then(|s| s.current_at).map(|t| t.elapsed())
    }

    /// How many revocations are held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.tokens.len() + s.clients.len())
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sets {
    fn add(&mut self, r: &Revocation) {
        if let Some(jti) = &r.jti {
            self.tokens.insert(jti.clone(), r.expires_at);
        }
        if let Some(client) = &r.client_id {
            let entry = self.clients.entry(client.clone()).or_insert((r.revoked_at, r.expires_at));
            *entry = (entry.0.max(r.revoked_at), entry.1.max(r.expires_at));
        }
    }
}

/// Keeps a verifier's revocation set current: PostgreSQL, then the stream.
pub struct Follower {
    verifier: Arc<Verifier>,
    pool: sqlx::PgPool,
    redis: RedisConnection,
    reload_every: Duration,
}

impl Follower {
    /// A follower for `verifier`, reading `pool` and `redis` (a connection of its own: it blocks).
    pub fn new(verifier: Arc<Verifier>, pool: sqlx::PgPool, redis: RedisConnection, config: &TokensConfig) -> Self {
        Self { verifier, pool, redis, reload_every: config.revocations_reload }
    }

    /// Follows until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut last_id: Option<String> = None;
        let mut loaded_at: Option<Instant> = None;
        let mut pause = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let round = async {
                if last_id.is_none() || loaded_at.is_none_or(|t| t.elapsed() >= self.reload_every) {
                    last_id = Some(self.load().await?);
                    loaded_at = Some(Instant::now());
                }
                let from = last_id.clone().unwrap_or_else(|| "0-0".into());
                if let Some(newest) = self.read(&from).await? {
                    last_id = Some(newest);
                }
                Ok::<(), String>(())
            };
            let result = tokio::select! {
                r = round => r,
                () = stop.cancelled() => break,
            };
            match result {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "following revocations failed; reloading from PostgreSQL next");
                    last_id = None;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Notes the stream's newest id, then loads every revocation in force; returns that id, so
    /// reading resumes where nothing can have been missed.
    async fn load(&mut self) -> Result<String, String> {
        let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(stream::REVOCATIONS)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let from = newest.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone());
        let active = revocation::active(&self.pool).await.map_err(|e| format!("postgres: {e}"))?;
        self.verifier.revocations().replace(&active);
        self.verifier.note_revocations();
        Ok(from)
    }

    /// Reads new entries after `from` (waiting up to a second); returns the newest id read.
    async fn read(&mut self, from: &str) -> Result<Option<String>, String> {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream::REVOCATIONS)
            .arg(from)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let entries = stream::read_reply(reply).map_err(|e| format!("redis: {e}"))?;
        let mut newest = None;
        for entry in entries {
            // An entry that is not a revocation is skipped, never fatal: the set is re-read
            // from PostgreSQL regularly, which is the record.
            match Event::from_entry(&entry).ok().and_then(|e| Revocation::from_payload(&e.payload)) {
                Some(r) => self.verifier.revocations().insert(&r),
                None => tracing::warn!(entry = %entry.id, "skipping an unreadable entry of {}", stream::REVOCATIONS),
            }
            newest = Some(entry.id);
        }
        self.verifier.revocations().mark_current();
        self.verifier.note_revocations();
        Ok(newest)
    }
}
