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
//!
//! No index names `dispatched_at` (so the mark is a HOT update, written in place): pending
//! rows are found by walking the primary key up from the outbox's floor, which every relay
//! moves up (every 200 ms while rows flow, every second when idle) to just below the first
//! row still pending, but never past an id below which every transaction has ended (ids
//! commit out of order). In a backlog the next batch is claimed while the current one is
//! sent, walking up from the current batch's last id; every few seconds, and whenever a claim
//! comes back short, the walk starts at the floor again. While rows trickle in (claims short
//! of a batch), a claim walks up from the highest id claimed so far, and from the floor every
//! 100 ms and whenever that finds nothing. So a row that committed late, was released or came
//! due after a failure is never left behind, and the relay only idles after a claim from the
//! floor found nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caracal_core::RedisConnection;
use caracal_core::telemetry::{self, KeyValue, MessageKind, MessageSpan};
use caracal_store::ledger;
use caracal_store::outbox::{self, Retry};
use caracal_store::{Error, stream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::RelayConfig;
use crate::metrics::Metrics;

/// The channel the outbox trigger notifies (migration 0005).
pub const OUTBOX_CHANNEL: &str = "caracal_outbox";
/// How often the outbox's floor is moved up while rows are flowing: the sooner it follows
/// them, the fewer dispatched rows a claim walking up from it reads (right after a backlog,
/// every row of it until the floor passes them).
const FLOOR_EVERY_BUSY: Duration = Duration::from_millis(200);
/// How often the outbox's floor is moved up while the relay is idle (with its idle claim).
const FLOOR_EVERY_IDLE: Duration = Duration::from_secs(1);
/// How long to wait, after reading the outbox's highest id, before reading the transaction
/// horizon that proves every lower id final (as the ledger's reconciler does).
const FLOOR_SETTLE: Duration = Duration::from_secs(1);
/// The longest a backlog is claimed walking up from the last batch before a claim walks up
/// from the floor again (for rows that committed late, were released, or came due again).
const FLOOR_WALK_EVERY: Duration = Duration::from_secs(5);
/// The longest rows trickling in (each claim short of a batch) are claimed walking up from the
/// highest id claimed so far before a claim walks up from the floor again. Every claim from
/// the floor reads the rows dispatched since the floor's last move, a second's worth and more
/// (4 ms a claim while 500 registrations a second flowed, and a claim every 12 ms: 45 % of a
/// core of PostgreSQL); a row that committed late below the highest id waits at most this long.
const FLOOR_WALK_WHILE_FLOWING: Duration = Duration::from_millis(100);

/// Relays the outbox to the event stream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: sqlx::PgPool,
    redis: RedisConnection,
    metrics: Metrics,
    config: RelayConfig,
    /// Which outbox ids are final, for moving the floor.
    horizon: ledger::Horizon,
    /// When a claim last walked up from the floor.
    floor_walked: Instant,
    /// The highest outbox id this relay has claimed (0 before its first claim).
    claimed_to: i64,
}

impl Relay {
    /// A relay from `pool`'s outbox to `redis`.
    pub fn new(pool: sqlx::PgPool, redis: RedisConnection, metrics: Metrics, config: RelayConfig) -> Self {
        Self {
            pool,
            redis,
            metrics,
            config,
            horizon: ledger::Horizon::new(FLOOR_SETTLE),
            floor_walked: Instant::now(),
            claimed_to: 0,
        }
    }

    /// Relays until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let wake = Arc::new(Notify::new());
        tokio::spawn(listen(self.pool.clone(), Arc::clone(&wake), stop.clone()));
        let mut backoff = self.config.backoff_base;
        let mut last_purge = Instant::now();
        let mut last_floor = Instant::now();
        // The batch claimed while the previous one was being sent (a backlog only).
        let mut ahead: Option<Claimed> = None;
        while !stop.is_cancelled() {
            let round = self.relay_ahead(&mut ahead).await;
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
            let floor_every = if idle { FLOOR_EVERY_IDLE } else { FLOOR_EVERY_BUSY };
            if last_floor.elapsed() >= floor_every {
                last_floor = Instant::now();
                if let Err(e) = self.advance_floor().await {
                    tracing::warn!(error = %e, "moving the outbox floor up failed");
                }
            }
            if last_purge.elapsed() >= self.config.purge_every {
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
        let relayed = async {
            let claimed = self.claim().await?;
            self.send(claimed).await
        }
        .await;
        self.after_error(relayed)
    }

    /// Passes `relayed` on; after an error, the next claim walks up from the floor: rows
    /// claimed and rolled back lie below the highest id claimed, and go out first, in order.
    fn after_error<T>(&mut self, relayed: Result<T, Error>) -> Result<T, Error> {
        if relayed.is_err() {
            self.claimed_to = 0;
        }
        relayed
    }

    /// Relays one batch, as [`Relay::relay_once`] does, but takes it from `ahead` when a batch
    /// was claimed there; and while a full batch (a backlog) is being sent, claims the next
    /// into `ahead`. The two stages then overlap: PostgreSQL marks the next batch while Redis
    /// appends this one, instead of each waiting for the other (in a backlog they took about
    /// as long as each other). Batches still reach the stream one after the other, in claim
    /// order. The batch in `ahead` holds its rows in an open transaction: dropping it (an
    /// error, a stop) rolls the claim back, so those rows are simply claimed again.
    ///
    /// # Errors
    /// As [`Relay::relay_once`]; `ahead` is empty after an error.
    pub async fn relay_ahead(&mut self, ahead: &mut Option<Claimed>) -> Result<usize, Error> {
        let relayed = self.relay_ahead_once(ahead).await;
        self.after_error(relayed)
    }

    /// [`Relay::relay_ahead`], errors not yet noted.
    async fn relay_ahead_once(&mut self, ahead: &mut Option<Claimed>) -> Result<usize, Error> {
        let claimed = match ahead.take() {
            Some(claimed) => claimed,
            None => self.claim().await?,
        };
        let Some(last) = claimed.events.last().map(|e| e.id) else { return self.send(claimed).await };
        if claimed.events.len() < usize::try_from(self.config.batch).unwrap_or(usize::MAX) {
            return self.send(claimed).await;
        }
        let after = if self.floor_walked.elapsed() >= FLOOR_WALK_EVERY {
            self.floor_walked = Instant::now();
            0
        } else {
            last
        };
        let next = Self::claim_with(self.pool.clone(), self.config.batch, after, self.metrics.clone());
        let (sent, next) = tokio::join!(self.send(claimed), next);
        let sent = sent?;
        let next = next?;
        self.note_claimed(&next.events);
        *ahead = Some(next);
        Ok(sent)
    }

    /// Moves the outbox's floor up as far as it is known to hold (see [`outbox::advance_floor`]);
    /// returns it. The horizon it needs settles over calls a second or more apart, so the floor
    /// trails the newest rows by a few seconds.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn advance_floor(&mut self) -> Result<i64, Error> {
        let reading = ledger::read(&self.pool).await?;
        let settled = self.horizon.observe(reading, Instant::now());
        outbox::advance_floor(&self.pool, settled).await
    }

    /// Claims up to a batch of rows, in a transaction of its own: walking up from the highest
    /// id claimed so far while the last walk from the floor is recent (rows trickling in),
    /// from the floor otherwise, and from the floor too whenever the walk from above finds
    /// nothing. So the relay only idles after a claim from the floor found nothing, as before,
    /// and a row that committed late below the highest id is claimed within
    /// [`FLOOR_WALK_WHILE_FLOWING`].
    async fn claim(&mut self) -> Result<Claimed, Error> {
        if self.claimed_to > 0 && self.floor_walked.elapsed() < FLOOR_WALK_WHILE_FLOWING {
            let above =
                Self::claim_with(self.pool.clone(), self.config.batch, self.claimed_to, self.metrics.clone()).await?;
            if !above.events.is_empty() {
                self.note_claimed(&above.events);
                return Ok(above);
            }
            above.tx.rollback().await?;
        }
        self.floor_walked = Instant::now();
        let claimed = Self::claim_with(self.pool.clone(), self.config.batch, 0, self.metrics.clone()).await?;
        self.note_claimed(&claimed.events);
        Ok(claimed)
    }

    /// Remembers the highest id of a claimed batch (in id order).
    fn note_claimed(&mut self, events: &[caracal_store::Event]) {
        if let Some(last) = events.last() {
            self.claimed_to = self.claimed_to.max(last.id);
        }
    }

    /// Claims up to `batch` rows of `pool`'s outbox walking up from above `after` (0: the
    /// floor), timing the claim into `metrics`; owns its arguments, so it can run beside a
    /// send that borrows the relay.
    async fn claim_with(pool: sqlx::PgPool, batch: i64, after: i64, metrics: Metrics) -> Result<Claimed, Error> {
        let started = Instant::now();
        let mut tx = pool.begin().await?;
        let events = outbox::claim(&mut tx, batch, after).await?;
        if !events.is_empty() {
            metrics.relay_stage("claim", started.elapsed().as_secs_f64());
        }
        Ok(Claimed { tx, events })
    }

    /// Publishes a claimed batch and commits its marks; returns how many rows it dispatched.
    async fn send(&mut self, claimed: Claimed) -> Result<usize, Error> {
        let Claimed { mut tx, mut events } = claimed;
        if events.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
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
        if dispatched < events.len() {
            // Rows released or left to retry lie below the highest id claimed: the next
            // claim walks up from the floor, so they go out first.
            self.claimed_to = 0;
        }
        let started = Instant::now();
        tx.commit().await?;
        self.metrics.relay_stage("commit", started.elapsed().as_secs_f64());
        self.metrics.relay_batch.observe(dispatched as f64);
        self.metrics.relay_published.inc_by(dispatched as u64);
        Ok(dispatched)
    }
}

/// A claimed batch: its rows, marked dispatched and locked by `tx`, which is still open. Sent
/// and committed by the relay; dropped, it rolls back and the rows are due again.
#[derive(Debug)]
pub struct Claimed {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    events: Vec<caracal_store::Event>,
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
