//! The outbox relay: claims undispatched rows and marks them dispatched in one statement
//! (`FOR UPDATE SKIP LOCKED`, so replicas share the work without sending a row twice at once),
//! `XADD`s them to `caracal.events` with their outbox id in one pipeline, and commits. The
//! batch is whatever is due, up to `batch`: a lone event goes out alone at once, a backlog in
//! full batches.
//!
//! An idle relay sleeps until PostgreSQL tells it a transaction inserted outbox rows (the
//! `outbox_notify` trigger's `NOTIFY caracal_outbox`, delivered at commit), and claims anyway
//! every `idle_wait` for rows due after a retry delay or a notification lost with its
//! connection. So a lone event leaves within milliseconds and an idle platform costs no
//! polling.
//!
//! When Redis is unreachable the whole batch stays undispatched and the relay backs off
//! (capped, exponential): an outage must not use up rows' attempts. When Redis refuses an
//! entry, rows are sent one by one so only the bad one is retried, and after `max_attempts`
//! marked dead (an alert, never unready). A batch sent but not marked (a crash in between) is
//! sent again; consumers are idempotent on the outbox id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caracal_core::RedisConnection;
use caracal_core::telemetry::{self, KeyValue, MessageKind, MessageSpan};
use caracal_store::outbox::{self, Retry};
use caracal_store::{Error, stream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::RelayConfig;
use crate::metrics::Metrics;

/// The channel the outbox trigger notifies (migration 0005).
pub const OUTBOX_CHANNEL: &str = "caracal_outbox";
/// How often dispatched rows past their retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Relays the outbox to the event stream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: sqlx::PgPool,
    redis: RedisConnection,
    metrics: Metrics,
    config: RelayConfig,
}

impl Relay {
    /// A relay from `pool`'s outbox to `redis`.
    pub fn new(pool: sqlx::PgPool, redis: RedisConnection, metrics: Metrics, config: RelayConfig) -> Self {
        Self { pool, redis, metrics, config }
    }

    /// Relays until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        tokio::spawn(listen(self.pool.clone(), Arc::clone(&wake), stop.clone()));
        let mut backoff = self.config.backoff_base;
        let mut last_purge = Instant::now();
        while !stop.is_cancelled() {
            let round = self.relay_once().await;
            let (wait, idle) = match round {
                Ok(0) => (self.config.idle_wait, true),
                Ok(_) => {
                    backoff = self.config.backoff_base;
                    (Duration::ZERO, false)
                }
                Err(e) => {
                    self.metrics.relay_failures.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "relaying the outbox failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.config.backoff_cap);
                    (wait, false)
                }
            };
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                match outbox::purge(&self.pool, self.config.retention, 10_000).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged dispatched outbox rows"),
                    Err(e) => tracing::warn!(error = %e, "purging the outbox failed"),
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // Only an idle relay is woken early: a failing one keeps its backoff.
                    () = wake.notified(), if idle => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }

    /// Relays one batch; returns how many rows it dispatched.
    ///
    /// # Errors
    /// When PostgreSQL fails, or Redis cannot be reached (nothing is marked then).
    pub async fn relay_once(&mut self) -> Result<usize, Error> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let mut events = outbox::claim(&mut tx, self.config.batch).await?;
        if events.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        self.metrics.relay_stage("claim", started.elapsed().as_secs_f64());
        let mut traced = Traced::start(&mut events);
        let max_len = self.config.stream_max_len;
        let started = Instant::now();
        let published =
            stream::publish(&mut self.redis, stream::EVENTS, &events, max_len).instrument(traced.batch.clone()).await;
        self.metrics.relay_stage("xadd", started.elapsed().as_secs_f64());
        let dispatched: usize = match published {
            Ok(()) => events.len(),
            Err(e) if unreachable(&e) => {
                traced.fail("redis_unreachable");
                return Err(e);
            }
            Err(_) => {
                // Redis refused something: find the row, keep the rest flowing.
                let retry = Retry {
                    base: self.config.backoff_base,
                    cap: self.config.backoff_cap,
                    max_attempts: self.config.max_attempts,
                };
                let mut sent = 0;
                for (i, event) in events.iter().enumerate() {
                    match stream::publish(&mut self.redis, stream::EVENTS, std::slice::from_ref(event), max_len).await {
                        Ok(()) => sent += 1,
                        Err(e) if unreachable(&e) => {
                            // Redis went away mid-way: what was not sent stays undispatched.
                            let rest: Vec<i64> = events[i..].iter().map(|e| e.id).collect();
                            outbox::release(&mut tx, &rest).await?;
                            break;
                        }
                        Err(e) => {
                            // Keep Redis's own words (`WRONGTYPE ...`) for the operator.
                            let why = match &e {
                                Error::Redis(redis) => redis.to_string(),
                                other => other.to_string(),
                            };
                            if outbox::record_failure(&mut tx, event.id, &why, retry).await? {
                                self.metrics.relay_dead.inc();
                                tracing::error!(outbox_id = event.id, error = %e, "outbox row is dead after too many attempts");
                            }
                        }
                    }
                }
                sent
            }
        };
        let started = Instant::now();
        tx.commit().await?;
        self.metrics.relay_stage("commit", started.elapsed().as_secs_f64());
        self.metrics.relay_batch.observe(dispatched as f64);
        self.metrics.relay_published.inc_by(dispatched as u64);
        Ok(dispatched)
    }
}

/// The spans of one batch whose rows carry traces: a `create caracal.events` PRODUCER span in
/// each row's own trace (the trace of the request that wrote it), whose context the stream
/// entry carries on to the consumers, and one `send caracal.events` span for the batch's
/// `XADD`s (its Redis pipeline a child), linked to every one of them (a batch mixes many
/// traces). Nothing while spans are not exported or no row carries a trace. The spans end
/// when this is dropped.
struct Traced {
    batch: tracing::Span,
    messages: Vec<MessageSpan>,
}

impl Traced {
    /// Starts the spans and points each traced event at its `create` span.
    fn start(events: &mut [caracal_store::Event]) -> Self {
        let messages: Vec<MessageSpan> = events
            .iter_mut()
            .filter_map(|event| {
                let span = MessageSpan::continuing(
                    event.trace_context.as_deref(),
                    "create",
                    stream::EVENTS,
                    MessageKind::Producer,
                    [
                        KeyValue::new("caracal.outbox_id", event.id),
                        KeyValue::new("caracal.event.type", event.event_type.clone()),
                    ],
                )?;
                event.trace_context = Some(span.traceparent());
                Some(span)
            })
            .collect();
        let batch = telemetry::send_span(stream::EVENTS, events.len(), &messages);
        Self { batch, messages }
    }

    /// Marks every span failed.
    fn fail(&mut self, error_type: &str) {
        telemetry::record_client_error(&self.batch, error_type);
        for span in &mut self.messages {
            span.fail(error_type);
        }
    }
}

/// Listens on [`OUTBOX_CHANNEL`] on a connection of its own and wakes the relay for each
/// notification, until `stop`. When the connection is lost (or cannot be made) it retries
/// every second, waking the relay after each reconnect for whatever was missed meanwhile;
/// the relay's own `idle_wait` claims cover the gap.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(OUTBOX_CHANNEL).await?;
            wake.notify_one();
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
        };
        let result: Result<(), sqlx::Error> = tokio::select! {
            r = listening => r,
            () = stop.cancelled() => return,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "listening for outbox rows failed; claiming on the timer until it works again");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Whether a failure means Redis could not be reached at all (rather than refusing an entry).
fn unreachable(error: &Error) -> bool {
    match error {
        Error::Redis(e) => {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_unrecoverable_error()
        }
        _ => true,
    }
}
