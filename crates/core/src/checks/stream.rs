//! `stream:lag`: how far a Redis stream consumer group is behind.

use std::time::Duration;

use crate::RedisConnection;
use redis::AsyncCommands;
use redis::streams::{StreamInfoGroupsReply, StreamInfoStreamReply, StreamPendingCountReply};

use crate::metrics::{Metrics, StreamLabels};
use crate::{Check, Failure, Observed, Rung};

/// Which group to watch and when it counts as behind.
#[derive(Debug, Clone)]
pub struct StreamGroup {
    /// Stream key, e.g. `caracal.events`.
    pub stream: String,
    /// Consumer group, e.g. `audit`.
    pub group: String,
    /// More undelivered entries than this fails the check.
    pub max_lag: u64,
    /// An unacknowledged entry idle longer than this (or, when Redis cannot count the lag,
    /// undelivered entries older than this) fails the check.
    pub max_age: Duration,
}

/// The figures one run measures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    /// Undelivered entries, when Redis can count them (`XINFO GROUPS` answers `lag: nil`
    /// after deletions or trimming across the group's position).
    lag: Option<u64>,
    /// Time between the newest entry's ID and the group's last delivered ID (or the first
    /// entry's, when that is later).
    behind: Duration,
    pending: u64,
    oldest_pending_idle: Duration,
}

/// `stream:lag` for `spec`: fails when the group is missing, the lag or the oldest pending
/// entry's idle time crosses its threshold. Records `caracal_stream_lag`,
/// `caracal_stream_pending` and `caracal_stream_oldest_pending_age_seconds`.
pub fn stream_group(connection: RedisConnection, metrics: &Metrics, spec: StreamGroup) -> Check {
    let metrics = metrics.clone();
    Check::new("stream:lag", Rung::Delivery, move || {
        let mut connection = connection.clone();
        let metrics = metrics.clone();
        let spec = spec.clone();
        async move {
            let figures = measure(&mut connection, &spec).await?;
            let labels = StreamLabels { stream: spec.stream.clone(), group: spec.group.clone() };
            match figures.lag {
                Some(lag) => {
                    metrics.stream_lag.get_or_create(&labels).set(lag as i64);
                }
                None => {
                    // No figure is better than a stale one.
                    metrics.stream_lag.remove(&labels);
                }
            }
            metrics.stream_pending.get_or_create(&labels).set(figures.pending as i64);
            metrics.stream_oldest_pending_age.get_or_create(&labels).set(figures.oldest_pending_idle.as_secs_f64());
            judge(&spec, &figures)
        }
    })
    .component_type("component")
}

fn judge(spec: &StreamGroup, f: &Figures) -> Result<Observed, Failure> {
    let observed = match f.lag {
        Some(lag) => Observed::new(lag as f64, "entries"),
        None => Observed::new(f.behind.as_secs_f64(), "s"),
    };
    if let Some(lag) = f.lag
        && lag > spec.max_lag
    {
        return Err(Failure::with(
            format!("group `{}` is {lag} entries behind (limit {})", spec.group, spec.max_lag),
            observed,
        ));
    }
    if f.lag.is_none() && f.behind > spec.max_age {
        return Err(Failure::with(
            format!(
                "group `{}` is {} behind the newest entry (limit {})",
                spec.group,
                secs(f.behind),
                secs(spec.max_age)
            ),
            observed,
        ));
    }
    if f.oldest_pending_idle > spec.max_age {
        return Err(Failure::with(
            format!(
                "oldest unacknowledged entry idle for {} (limit {})",
                secs(f.oldest_pending_idle),
                secs(spec.max_age)
            ),
            observed,
        ));
    }
    Ok(observed)
}

async fn measure(connection: &mut RedisConnection, spec: &StreamGroup) -> Result<Figures, Failure> {
    let groups: StreamInfoGroupsReply = connection
        .xinfo_groups(&spec.stream)
        .await
        .map_err(|e| Failure::new(format!("XINFO GROUPS {} failed: {e}", spec.stream)))?;
    let group =
        groups.groups.into_iter().find(|g| g.name == spec.group).ok_or_else(|| {
            Failure::new(format!("consumer group `{}` does not exist on `{}`", spec.group, spec.stream))
        })?;
    let stream: StreamInfoStreamReply =
        connection.xinfo_stream(&spec.stream).await.map_err(|e| Failure::new(format!("XINFO STREAM failed: {e}")))?;
    // When the group's position was trimmed away, the oldest undelivered entry is the
    // stream's first one.
    let from_ms = id_millis(&group.last_delivered_id).max(id_millis(&stream.first_entry.id));
    let behind_ms = id_millis(&stream.last_generated_id).saturating_sub(from_ms);
    let oldest_pending_idle = if group.pending == 0 {
        Duration::ZERO
    } else {
        let reply: StreamPendingCountReply = connection
            .xpending_count(&spec.stream, &spec.group, "-", "+", 1)
            .await
            .map_err(|e| Failure::new(format!("XPENDING failed: {e}")))?;
        reply.ids.first().map_or(Duration::ZERO, |p| Duration::from_millis(p.last_delivered_ms as u64))
    };
    Ok(Figures {
        lag: group.lag.map(|l| l as u64),
        behind: Duration::from_millis(behind_ms),
        pending: group.pending as u64,
        oldest_pending_idle,
    })
}

/// The millisecond part of a stream ID (`<ms>-<seq>`); 0 for anything else.
fn id_millis(id: &str) -> u64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamGroup {
        StreamGroup { stream: "s".into(), group: "g".into(), max_lag: 10, max_age: Duration::from_secs(30) }
    }

    #[test]
    fn a_known_lag_is_judged_by_count() {
        let f = Figures { lag: Some(11), behind: Duration::ZERO, pending: 0, oldest_pending_idle: Duration::ZERO };
        assert!(judge(&spec(), &f).is_err());
        let f = Figures { lag: Some(10), ..f };
        assert_eq!(judge(&spec(), &f), Ok(Observed::new(10.0, "entries")));
    }

    #[test]
    fn a_null_lag_falls_back_to_the_id_time_delta() {
        let f = Figures { lag: None, behind: Duration::from_secs(31), pending: 0, oldest_pending_idle: Duration::ZERO };
        let failure = judge(&spec(), &f).expect_err("31 s behind a 30 s limit");
        assert_eq!(failure.observed, Observed::new(31.0, "s"));
        let f = Figures { behind: Duration::from_secs(5), ..f };
        assert!(judge(&spec(), &f).is_ok());
    }

    #[test]
    fn an_old_pending_entry_fails() {
        let f =
            Figures { lag: Some(0), behind: Duration::ZERO, pending: 1, oldest_pending_idle: Duration::from_secs(60) };
        assert!(judge(&spec(), &f).is_err());
    }

    #[test]
    fn stream_ids_give_their_milliseconds() {
        assert_eq!(id_millis("1700000000123-7"), 1_700_000_000_123);
        assert_eq!(id_millis("0-0"), 0);
        assert_eq!(id_millis("garbage"), 0);
    }
}
