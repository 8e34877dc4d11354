//! The ledger's consumer: read a batch from group `audit`, insert it once, acknowledge after
//! the commit; take over entries a dead consumer left pending; send poison to the DLQ.
//!
//! At-least-once delivery, exactly-once effect: an entry is acknowledged only after its row is
//! committed, and the insert is idempotent on the outbox id, so a crash anywhere at worst
//! delivers an entry again and changes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use caracal_core::RedisConnection;
use caracal_core::telemetry::{KeyValue, MessageKind, MessageSpan};
use caracal_store::event::BadEntry;
use caracal_store::stream::Entry;
use caracal_store::{Event, ledger, stream};
use redis::streams::{StreamAutoClaimReply, StreamInfoGroupsReply, StreamPendingCountReply};
use tokio_util::sync::CancellationToken;

use crate::GROUP;
use crate::config::AuditConfig;
use crate::metrics::{Metrics, ResetLabels};

/// A `process caracal.events` CONSUMER span for each entry that carries a trace, continuing it
/// (the relay's `create` span is the parent), so the ledger insert shows in the trace of the
/// request that made the change. Empty while spans are not exported.
fn processing_spans(ids: &[String], events: &[Event]) -> Vec<MessageSpan> {
    ids.iter()
        .zip(events)
        .filter_map(|(id, event)| {
            MessageSpan::continuing(
                event.trace_context.as_deref(),
                "process",
                stream::EVENTS,
                MessageKind::Consumer,
                [
                    KeyValue::new("messaging.consumer.group.name", GROUP),
                    KeyValue::new("messaging.message.id", id.clone()),
                    KeyValue::new("caracal.outbox_id", event.id),
                ],
            )
        })
        .collect()
}

/// Why an entry goes to the DLQ.
#[derive(Debug)]
enum Poison {
    /// It cannot be read as an event.
    Bad(BadEntry),
    /// PostgreSQL refuses its values.
    Refused(String),
    /// It was delivered too often without being acknowledged.
    TooManyDeliveries(u64),
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Poison::Bad(e) => write!(f, "unreadable entry: {e}"),
            Poison::Refused(e) => write!(f, "the ledger refused it: {e}"),
            Poison::TooManyDeliveries(n) => write!(f, "delivered {n} times without being acknowledged"),
        }
    }
}

/// What went wrong in one round; the round is retried after a pause.
#[derive(Debug)]
enum RoundError {
    Redis(redis::RedisError),
    Db(caracal_store::Error),
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Redis(e) => write!(f, "redis: {e}"),
            RoundError::Db(caracal_store::Error::Database(e)) => write!(f, "postgres: {e}"),
            RoundError::Db(e) => write!(f, "postgres: {e}"),
        }
    }
}

impl From<redis::RedisError> for RoundError {
    fn from(e: redis::RedisError) -> Self {
        RoundError::Redis(e)
    }
}

impl From<caracal_store::Error> for RoundError {
    fn from(e: caracal_store::Error) -> Self {
        RoundError::Db(e)
    }
}

/// The consumer.
#[derive(Debug)]
pub struct Consumer {
    pool: sqlx::PgPool,
    redis: RedisConnection,
    metrics: Metrics,
    config: AuditConfig,
    name: String,
    /// Whether this consumer has read from the group: the group vanishing after that means
    /// Redis lost its data (the stream went backwards), not a first start.
    had_group: bool,
}

impl Consumer {
    /// A consumer named by `config.consumer` or a fresh unique name.
    pub fn new(pool: sqlx::PgPool, redis: RedisConnection, metrics: Metrics, config: AuditConfig) -> Self {
        let name = config
            .consumer
            .clone()
            .unwrap_or_else(|| format!("audit-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        Self { pool, redis, metrics, config, name, had_group: false }
    }

    /// Consumes until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        // Our own pending entries first (left by a failed round), then new ones.
        let mut own_pending = true;
        let mut last_claim: Option<Instant> = None;
        let mut pause = Duration::from_millis(100);
        // The batch read while the previous one was recorded (a backlog only).
        let mut ahead: Option<Vec<Entry>> = None;
        while !stop.is_cancelled() {
            let round = async {
                if last_claim.is_none_or(|t| t.elapsed() >= self.config.claim_idle / 2) {
                    self.check_position().await?;
                    self.claim_stale().await?;
                    last_claim = Some(Instant::now());
                }
                let entries = match ahead.take() {
                    Some(entries) => entries,
                    None => self.read(if own_pending { "0" } else { ">" }).await?,
                };
                if own_pending && entries.is_empty() {
                    own_pending = false;
                }
                if own_pending || entries.len() < self.config.batch {
                    return self.process(entries, &[]).await;
                }
                // A full batch of new entries: a backlog.
                let (processed, next) = self.process_reading_ahead(entries).await;
                // A failed read ahead may still have delivered entries to this consumer.
                match next {
                    Some(next) => ahead = Some(next),
                    None => own_pending = true,
                }
                processed
            };
            let result = tokio::select! {
                r = round => r,
                () = stop.cancelled() => break,
            };
            match result {
                Ok(()) => pause = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "audit round failed");
                    if let RoundError::Redis(e) = &e
                        && e.code() == Some("NOGROUP")
                    {
                        let _ = self.ensure_group().await;
                    }
                    // What was read ahead is pending with us: read it again from there.
                    ahead = None;
                    own_pending = true;
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stop.cancelled() => break,
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Creates the group (from the stream's start, so nothing in it is skipped) and the stream
    /// if missing. A group that vanished after this consumer read from it means Redis lost its
    /// data: that is logged once, by whichever replica recreates it, and counted.
    async fn ensure_group(&mut self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream::EVENTS)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis)
            .await;
        match created {
            Ok(()) if self.had_group => {
                tracing::warn!(
                    stream = stream::EVENTS,
                    group = GROUP,
                    "the stream went backwards: the consumer group was gone (Redis lost its data); \
                     recreated it from the stream's start, and the ledger heals what the stream lost"
                );
                self.metrics.stream_resets.get_or_create(&ResetLabels { reason: "group_missing" }).inc();
                Ok(())
            }
            Ok(()) => {
                tracing::info!(stream = stream::EVENTS, group = GROUP, "created the consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Notices a group whose last-delivered id is ahead of the stream's last id (the stream
    /// was replaced by an older or empty one under the group): new entries would sort below
    /// the group's position and never be delivered. Resets the group to the stream's start.
    async fn check_position(&mut self) -> Result<(), RoundError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XINFO").arg("STREAM").arg(stream::EVENTS).cmd("XINFO").arg("GROUPS").arg(stream::EVENTS);
        let (info, groups): (HashMap<String, redis::Value>, StreamInfoGroupsReply) =
            match pipe.query_async(&mut self.redis).await {
                Ok(reply) => reply,
                // No stream (or no group) yet: the read creates them.
                Err(e) if e.code() == Some("ERR") || e.code() == Some("NOGROUP") => return Ok(()),
                Err(e) => return Err(e.into()),
            };
        let Some(last_generated) =
            info.get("last-generated-id").and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        else {
            return Ok(());
        };
        let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else { return Ok(()) };
        if stream_id(&group.last_delivered_id) > stream_id(&last_generated) {
            let () = redis::cmd("XGROUP")
                .arg("SETID")
                .arg(stream::EVENTS)
                .arg(GROUP)
                .arg("0")
                .query_async(&mut self.redis)
                .await?;
            tracing::warn!(
                stream = stream::EVENTS,
                group = GROUP,
                last_delivered = %group.last_delivered_id,
                last_generated = %last_generated,
                "the stream went backwards: the group's position was past the stream's last entry; \
                 reset it to the stream's start, and the ledger heals what the stream lost"
            );
            self.metrics.stream_resets.get_or_create(&ResetLabels { reason: "stream_behind" }).inc();
        }
        Ok(())
    }

    async fn read(&mut self, from: &str) -> Result<Vec<Entry>, RoundError> {
        let block = (from == ">").then_some(self.config.block);
        let read = read_group(&mut self.redis, &self.name, self.config.batch, from, block, &self.metrics).await;
        match read {
            Ok(entries) => {
                self.had_group = true;
                Ok(entries)
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a full batch of new entries while reading the next one (without waiting for
    /// it: in a backlog it is already there). Recording is PostgreSQL's work and reading
    /// Redis's, and in a backlog they took about as long as each other; overlapped, a batch
    /// costs the longer of the two instead of their sum. The entries read ahead are pending
    /// with this consumer until recorded, like any others: when this round fails they are
    /// read again from the group's pending list.
    async fn process_reading_ahead(&mut self, entries: Vec<Entry>) -> (Result<(), RoundError>, Option<Vec<Entry>>) {
        let mut redis = self.redis.clone();
        let (name, batch, metrics) = (self.name.clone(), self.config.batch, self.metrics.clone());
        let next = async move { read_group(&mut redis, &name, batch, ">", None, &metrics).await };
        let (processed, next) = tokio::join!(self.process(entries, &[]), next);
        match next {
            Ok(next) => (processed, Some(next)),
            Err(e) => {
                tracing::debug!(error = %e, "reading the next batch ahead failed; reading it again from the pending list");
                (processed, None)
            }
        }
    }

    /// Takes over entries idle longer than `claim_idle` (their consumer is presumably dead);
    /// those delivered too often go to the DLQ, the rest are processed here.
    async fn claim_stale(&mut self) -> Result<(), RoundError> {
        let min_idle = u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let mut start = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = match redis::cmd("XAUTOCLAIM")
                .arg(stream::EVENTS)
                .arg(GROUP)
                .arg(&self.name)
                .arg(min_idle)
                .arg(&start)
                .arg("COUNT")
                .arg(self.config.batch)
                .query_async(&mut self.redis)
                .await
            {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") => return Ok(self.ensure_group().await?),
                Err(e) => return Err(e.into()),
            };
            if !reply.claimed.is_empty() {
                self.metrics.claimed.inc_by(reply.claimed.len() as u64);
                let claimed: Vec<Entry> = reply.claimed.into_iter().map(Entry::from).collect();
                let overused = self.overused(&claimed).await?;
                self.process(claimed, &overused).await?;
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Which of `entries` (now pending with us) were delivered more than `max_deliveries`
    /// times, with their counts.
    async fn overused(&mut self, entries: &[Entry]) -> Result<Vec<(String, u64)>, RoundError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(Vec::new()) };
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(stream::EVENTS)
            .arg(GROUP)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.name)
            .query_async(&mut self.redis)
            .await?;
        Ok(pending
            .ids
            .into_iter()
            .filter(|p| p.times_delivered as u64 > self.config.max_deliveries)
            .map(|p| (p.id, p.times_delivered as u64))
            .collect())
    }

    /// Records `entries` and acknowledges them; poison (and the `overused`) go to the DLQ.
    async fn process(&mut self, entries: Vec<Entry>, overused: &[(String, u64)]) -> Result<(), RoundError> {
        if entries.is_empty() {
            return Ok(());
        }
        // The readable entries: their stream ids and their events, side by side.
        let mut ids: Vec<String> = Vec::with_capacity(entries.len());
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut poison: Vec<(Entry, Poison)> = Vec::new();
        for entry in entries {
            if let Some((_, n)) = overused.iter().find(|(id, _)| *id == entry.id) {
                poison.push((entry, Poison::TooManyDeliveries(*n)));
                continue;
            }
            match Event::from_entry(&entry) {
                Ok(event) => {
                    ids.push(entry.id);
                    events.push(event);
                }
                Err(bad) => poison.push((entry, Poison::Bad(bad))),
            }
        }
        let mut traced = processing_spans(&ids, &events);
        let started = Instant::now();
        let inserting: Vec<MessageSpan> = traced
            .iter()
            .map(|span| {
                span.child(
                    "INSERT audit_events",
                    MessageKind::Client,
                    vec![
                        KeyValue::new("db.system", "postgresql"),
                        KeyValue::new("db.system.name", "postgresql"),
                        KeyValue::new("db.operation.name", "INSERT"),
                        KeyValue::new("db.collection.name", "audit_events"),
                        KeyValue::new("db.operation.batch.size", events.len() as i64),
                    ],
                )
            })
            .collect();
        let inserted = ledger::insert(&self.pool, &events).await;
        drop(inserting);
        if let Err(e) = &inserted
            && !ledger::is_data_error(e)
        {
            traced.iter_mut().for_each(|span| span.fail("ledger_unavailable"));
        }
        match inserted {
            Ok(recorded) => self.count(recorded, events.len()),
            Err(e) if ledger::is_data_error(&e) => {
                // One bad value spoils the batch: find it row by row.
                for (id, event) in ids.iter().zip(&events) {
                    match ledger::insert(&self.pool, std::slice::from_ref(event)).await {
                        Ok(recorded) => self.count(recorded, 1),
                        Err(e) if ledger::is_data_error(&e) => {
                            let entry = Entry::new(id.clone());
                            poison.push((entry, Poison::Refused(e.to_string())));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.metrics.stage("insert", started.elapsed().as_secs_f64());
        for (entry, why) in &poison {
            self.dead_letter(entry, why).await?;
            ids.push(entry.id.clone());
        }
        if !ids.is_empty() {
            let started = Instant::now();
            let _: u64 =
                redis::cmd("XACK").arg(stream::EVENTS).arg(GROUP).arg(&ids).query_async(&mut self.redis).await?;
            self.metrics.stage("ack", started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn count(&self, recorded: u64, delivered: usize) {
        self.metrics.recorded.inc_by(recorded);
        self.metrics.duplicates.inc_by((delivered as u64).saturating_sub(recorded));
    }

    /// Copies an entry to the DLQ with the reason and its original id.
    async fn dead_letter(&mut self, entry: &Entry, why: &Poison) -> redis::RedisResult<()> {
        tracing::warn!(entry = %entry.id, reason = %why, "entry moved to the DLQ");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream::EVENTS_DLQ).arg("*").arg("reason").arg(why.to_string()).arg("entry_id").arg(&entry.id);
        for (field, value) in entry.fields() {
            cmd.arg([b"original.".as_slice(), field].concat());
            match value {
                redis::Value::BulkString(bytes) => cmd.arg(bytes.as_slice()),
                other => cmd.arg(format!("{other:?}")),
            };
        }
        let _: String = cmd.query_async(&mut self.redis).await?;
        self.metrics.dead_lettered.inc();
        Ok(())
    }
}

/// A stream id (`ms-seq`) as a pair that orders like Redis orders ids; unreadable ids sort first.
/// `XREADGROUP` of up to `count` entries for consumer `name` from `from` (`>` new ones, `0`
/// its own pending ones), waiting up to `block` for new ones when given; times a read that
/// returned entries as the `read` stage (one that waited for nothing is idle, not work).
async fn read_group(
    redis: &mut RedisConnection,
    name: &str,
    count: usize,
    from: &str,
    block: Option<Duration>,
    metrics: &Metrics,
) -> redis::RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(GROUP).arg(name).arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(u64::try_from(block.as_millis()).unwrap_or(1000));
    }
    cmd.arg("STREAMS").arg(stream::EVENTS).arg(from);
    let started = Instant::now();
    let reply: redis::Value = cmd.query_async(redis).await?;
    let entries = stream::read_reply(reply).map_err(redis::RedisError::from)?;
    if !entries.is_empty() {
        metrics.stage("read", started.elapsed().as_secs_f64());
    }
    Ok(entries)
}

fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::stream_id;

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        assert!(stream_id("1700000000000-5") > stream_id("1700000000000-4"));
        assert!(stream_id("1700000000001-0") > stream_id("1700000000000-99"));
        assert!(stream_id("99-0") > stream_id("0-0"));
        assert_eq!(stream_id("42"), (42, 0));
    }
}
