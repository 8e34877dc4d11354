//! The discovery worker: keeps every DNS-discovered target's instances in step with its
//! records.
//!
//! It holds the discovered targets in memory (read whole at start and on the periodic safety
//! net, and one by one as `caracal.invalidations` announces changes), resolves each when due —
//! every `min(refresh_ms, record TTL)`, at least 1 s — and writes a target's instances only when
//! they change. A failed resolution keeps the last known set; an authoritative empty answer
//! empties it only when the next one agrees. How each resolution went is written in one batched
//! statement a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caracal_store::discovery::DnsDiscovery;
use caracal_store::invalidations::Notice;
use caracal_store::registry;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::{FailureLabels, Metrics, TargetLabels};
use crate::resolve::{Answer, Resolver};

/// Authoritative empty answers in a row that empty a target.
const EMPTY_CONFIRMATIONS: i32 = 2;
/// A failed resolution is retried this soon (or at the target's refresh, when that is sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Never resolve one target more often than this, whatever its TTL.
const FLOOR: Duration = Duration::from_secs(1);
/// Resolutions due this close together share one round.
const COALESCE: Duration = Duration::from_millis(50);
/// How often resolution outcomes are written (one statement for all of them).
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One discovered target as the worker holds it.
#[derive(Debug, Clone)]
struct Entry {
    id: i64,
    name: String,
    dns: DnsDiscovery,
    /// The instances in the registry (sorted).
    known: Vec<String>,
    /// Authoritative empty answers in a row.
    empty_streak: i32,
    /// When it is next resolved.
    due: Instant,
}

/// What the checks read: when each target was last resolved, and whether the resolver
/// answers at all.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Target → (last success, or when first seen; its refresh interval).
    targets: HashMap<String, (Instant, Duration)>,
    /// Resolutions in a row that got no answer from any nameserver (a success resets it).
    failures_in_a_row: u32,
    /// The last such failure's words.
    last_failure: Option<String>,
}

impl Health {
    /// Targets whose last successful resolution is older than three refreshes, oldest first.
    pub fn stale(&self) -> Vec<(String, Duration)> {
        let Ok(state) = self.inner.lock() else { return Vec::new() };
        let mut stale: Vec<(String, Duration)> = state
            .targets
            .iter()
            .filter(|(_, (at, every))| at.elapsed() > *every * 3)
            .map(|(name, (at, _))| (name.clone(), at.elapsed()))
            .collect();
        stale.sort_by_key(|s| std::cmp::Reverse(s.1));
        stale
    }

    /// How many targets are discovered.
    pub fn targets(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.targets.len())
    }

    /// Resolutions in a row that got no answer, and the last one's reason.
    pub fn failures_in_a_row(&self) -> (u32, Option<String>) {
        self.inner.lock().map_or((0, None), |s| (s.failures_in_a_row, s.last_failure.clone()))
    }

    fn seen(&self, name: &str, every: Duration, succeeded: bool) {
        if let Ok(mut state) = self.inner.lock() {
            let entry = state.targets.entry(name.to_string()).or_insert((Instant::now(), every));
            entry.1 = every;
            if succeeded {
                entry.0 = Instant::now();
            }
        }
    }

    fn outcome(&self, answered: bool, failure: Option<String>) {
        if let Ok(mut state) = self.inner.lock() {
            if answered {
                state.failures_in_a_row = 0;
            } else {
                state.failures_in_a_row += 1;
                state.last_failure = failure;
            }
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut state) = self.inner.lock() {
            state.targets.remove(name);
        }
    }
}

use caracal_store::discovery::Outcome as StatusRow;

/// Resolves the discovered targets and writes their instances.
pub struct Discoverer {
    pool: sqlx::PgPool,
    resolver: Resolver,
    metrics: Metrics,
    health: Arc<Health>,
    concurrency: usize,
}

impl Discoverer {
    /// A worker resolving with `resolver` at most `concurrency` names at once.
    pub fn new(pool: sqlx::PgPool, resolver: Resolver, metrics: Metrics, concurrency: usize) -> Self {
        Self { pool, resolver, metrics, health: Arc::default(), concurrency: concurrency.max(1) }
    }

    /// What the checks read.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Runs until `stop` (or until `notices` closes), reading the registry when told to.
    pub async fn run(self, mut notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut pending: Vec<StatusRow> = Vec::new();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A registry read that failed is retried here, rather than waiting for the next notice.
        let mut retry: Option<Notice> = None;
        loop {
            let next = entries.values().map(|e| e.due).min();
            let sleep =
                tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into());
            tokio::select! {
                notice = notices.recv() => match notice {
                    Some(notice) => retry = self.load(&mut entries, notice).await,
                    None => break,
                },
                () = sleep => self.resolve_due(&mut entries, &mut pending).await,
                _ = flush.tick() => {
                    if let Some(notice) = retry.take() {
                        retry = self.load(&mut entries, notice).await;
                    }
                    self.flush(&mut pending).await;
                }
                () = stop.cancelled() => break,
            }
        }
        self.flush(&mut pending).await;
    }

    /// Applies a notice: re-reads every discovered target, or the named ones. Returns the
    /// notice again when the registry could not be read, to retry.
    async fn load(&self, entries: &mut HashMap<String, Entry>, notice: Notice) -> Option<Notice> {
        let names = match &notice {
            Notice::Resync => None,
            Notice::Changed(names) => Some(names.clone()),
        };
        let rows = match registry::read(&self.pool, names.as_deref(), registry::Filter::Discovered).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading the discovered targets failed; will retry");
                return Some(notice);
            }
        };
        let mut fresh: HashMap<String, Entry> = HashMap::new();
        for target in rows {
            let (id, empty_streak, name, known) =
                (target.id, target.empty_streak, target.spec.name, target.spec.instances);
            let Some(discovery) = target.spec.discovery else {
                tracing::warn!(target = %name, "a stored discovery document does not parse; skipping it");
                continue;
            };
            // A target whose name or record type is unchanged keeps its schedule; a new or
            // changed one is resolved at once.
            let due = match entries.get(&name) {
                Some(old) if old.id == id && old.dns == discovery.dns => old.due,
                _ => Instant::now(),
            };
            fresh.insert(name.clone(), Entry { id, name, dns: discovery.dns, known, empty_streak, due });
        }
        let gone: Vec<String> = match &names {
            None => entries.keys().filter(|n| !fresh.contains_key(*n)).cloned().collect(),
            Some(names) => names.iter().filter(|n| !fresh.contains_key(*n)).cloned().collect(),
        };
        for name in gone {
            if entries.remove(&name).is_some() {
                self.metrics.forget(&name);
                self.health.forget(&name);
            }
        }
        for (name, entry) in fresh {
            self.metrics
                .discovered_instances
                .get_or_create(&TargetLabels { target: name.clone() })
                .set(entry.known.len() as i64);
            self.health.seen(&name, refresh(&entry.dns), false);
            entries.insert(name, entry);
        }
        None
    }

    /// Resolves every due target (at most `concurrency` at once) and applies the answers.
    async fn resolve_due(&self, entries: &mut HashMap<String, Entry>, pending: &mut Vec<StatusRow>) {
        // Whatever falls due within the next moment goes in this round: one wake-up for many.
        let now = Instant::now() + COALESCE;
        let due: Vec<(String, DnsDiscovery)> =
            entries.values().filter(|e| e.due <= now).map(|e| (e.name.clone(), e.dns.clone())).collect();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut lookups = JoinSet::new();
        for (name, dns) in due {
            let resolver = self.resolver.clone();
            let permits = Arc::clone(&permits);
            lookups.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let answer = resolver.resolve(&dns).await;
                (name, answer)
            });
        }
        while let Some(done) = lookups.join_next().await {
            let Ok((name, answer)) = done else { continue };
            let Some(entry) = entries.get_mut(&name) else { continue };
            if let Some(row) = self.apply(entry, answer).await {
                pending.push(row);
            } else {
                // Gone from the registry, or no longer discovered.
                entries.remove(&name);
                self.metrics.forget(&name);
                self.health.forget(&name);
            }
        }
    }

    /// Applies one answer to `entry`: writes its instances when they change, schedules its next
    /// resolution, and returns the status row (`None` when the target is gone).
    async fn apply(&self, entry: &mut Entry, answer: Answer) -> Option<StatusRow> {
        let every = refresh(&entry.dns);
        let labels = TargetLabels { target: entry.name.clone() };
        let mut row = StatusRow {
            id: entry.id,
            at: unix_now(),
            outcome: answer.outcome(),
            resolved: false,
            records: 0,
            ttl_s: None,
            empty_streak: entry.empty_streak,
            error: None,
        };
        let (wanted, next) = match answer {
            Answer::Records { urls, ttl } => {
                entry.empty_streak = 0;
                row.records = i32::try_from(urls.len()).unwrap_or(i32::MAX);
                row.ttl_s = ttl.map(|t| i32::try_from(t.as_secs()).unwrap_or(i32::MAX));
                let next = ttl.map_or(every, |t| t.min(every)).max(FLOOR);
                (Some(urls), next)
            }
            Answer::Empty { .. } => {
                entry.empty_streak += 1;
                let confirmed = entry.empty_streak >= EMPTY_CONFIRMATIONS;
                (confirmed.then(Vec::new), every)
            }
            Answer::Failed { reason, detail } => {
                self.metrics
                    .discovery_failures
                    .get_or_create(&FailureLabels { target: entry.name.clone(), reason })
                    .inc();
                tracing::warn!(target = %entry.name, dns = %entry.dns.name, reason, error = %detail, "resolving failed; keeping the last known instances");
                row.error = Some(format!("{reason}: {detail}"));
                // A nameserver that refuses or fails one name still answers: only silence
                // (timeouts, unreachable servers) says the resolver is gone. One target whose
                // name is refused must not take control's readiness with it.
                let silent = matches!(reason, "timeout" | "unreachable");
                self.health.outcome(!silent, row.error.clone());
                self.health.seen(&entry.name, every, false);
                entry.due = Instant::now() + every.min(RETRY_AFTER_FAILURE).max(FLOOR);
                return Some(row);
            }
        };
        row.resolved = true;
        row.empty_streak = entry.empty_streak;
        self.health.outcome(true, None);
        self.health.seen(&entry.name, every, true);
        self.metrics.last_success.get_or_create(&labels).set(row.at);
        // 90–100 % of the interval (never past the TTL): targets that started together drift
        // apart instead of hitting the nameservers in one burst every refresh.
        entry.due = Instant::now() + next.mul_f64(0.9 + fastrand::f64() * 0.1);
        if let Some(urls) = wanted.filter(|urls| *urls != entry.known) {
            match registry::set_discovered(&self.pool, entry.id, &urls).await {
                Ok(Some(change)) => {
                    self.metrics.instance_changes.inc();
                    tracing::info!(target = %entry.name, added = ?change.added, removed = ?change.removed, "discovered instances changed");
                    entry.known = urls;
                }
                Ok(None) => return None,
                // The next resolution tries again (the set still differs).
                Err(e) => tracing::warn!(target = %entry.name, error = %e, "writing discovered instances failed"),
            }
        }
        self.metrics.discovered_instances.get_or_create(&labels).set(entry.known.len() as i64);
        Some(row)
    }

    /// Writes the pending status rows in one statement (rows of targets deleted meanwhile are
    /// skipped).
    async fn flush(&self, pending: &mut Vec<StatusRow>) {
        if pending.is_empty() {
            return;
        }
        let rows = std::mem::take(pending);
        let written = caracal_store::discovery::record_outcomes(&self.pool, &rows).await;
        if let Err(e) = written {
            tracing::warn!(error = %e, rows = rows.len(), "writing resolution outcomes failed; they show at the next resolution");
        }
    }
}

/// A target's refresh interval, at least [`FLOOR`].
fn refresh(dns: &DnsDiscovery) -> Duration {
    Duration::from_millis(u64::try_from(dns.refresh_ms).unwrap_or(30_000)).max(FLOOR)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
