//! Replica membership and instance ownership.
//!
//! Each replica renews its entry in a Redis sorted set (score: Redis's own clock, so replicas'
//! clocks need not agree) every `heartbeat`; entries older than `ttl` are dead. Every instance
//! belongs to the live member with the highest rendezvous score for it, so all replicas that
//! see the same members agree on owners without talking to each other, and when a member dies
//! only its instances move. A replica that stops cleanly removes itself at once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use caracal_core::RedisConnection;
use tokio_util::sync::CancellationToken;

use crate::config::MembershipConfig;

/// This replica's identity and its latest view of the live members.
#[derive(Debug, Clone)]
pub struct Membership {
    id: Arc<str>,
    /// Sorted member ids; empty until the first successful read.
    members: Arc<RwLock<Vec<String>>>,
}

/// A replica id unique across restarts: host, process id and a random suffix.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

impl Membership {
    /// A membership for replica `id`, with no members known yet.
    pub fn new(id: String) -> Self {
        Self { id: id.into(), members: Arc::default() }
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The live members last read (sorted); empty before the first read.
    pub fn members(&self) -> Vec<String> {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether this replica owns `key` among the live members. Nothing is owned before the
    /// first read, so a starting replica never probes what another one holds.
    pub fn owns(&self, key: i64) -> bool {
        let Ok(members) = self.members.read() else { return false };
        owner(&members, key).is_some_and(|owner| owner == &*self.id)
    }

    /// Replaces the view of live members.
    pub fn set(&self, mut members: Vec<String>) {
        members.sort();
        if let Ok(mut current) = self.members.write() {
            *current = members;
        }
    }
}

/// The member with the highest rendezvous score for `key`.
pub fn owner(members: &[String], key: i64) -> Option<&str> {
    members.iter().max_by_key(|m| score(m, key)).map(String::as_str)
}

/// A stable 64-bit score of (member, key): FNV-1a over the member id, mixed with the key
/// through splitmix64. Stable across builds and machines, unlike `std`'s hasher.
fn score(member: &str, key: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ (key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Renews this replica's entry and reads the live members every `heartbeat` until `stop`,
/// then leaves the set so the others take over at once.
pub async fn run(
    membership: Membership,
    mut redis: RedisConnection,
    config: MembershipConfig,
    stop: CancellationToken,
) {
    loop {
        match renew(&membership, &mut redis, &config).await {
            Ok(members) => membership.set(members),
            // Keep the last view: guessing would make replicas disagree about owners.
            Err(e) => tracing::warn!(error = %e, "membership renewal failed; keeping the last view"),
        }
        tokio::select! {
            () = tokio::time::sleep(config.heartbeat) => {}
            () = stop.cancelled() => break,
        }
    }
    let left: redis::RedisResult<()> =
        redis::cmd("ZREM").arg(&config.key).arg(membership.id()).query_async(&mut redis).await;
    if let Err(e) = left {
        tracing::warn!(error = %e, "leaving the membership failed; the others take over after the ttl");
    }
}

async fn renew(
    membership: &Membership,
    redis: &mut RedisConnection,
    config: &MembershipConfig,
) -> redis::RedisResult<Vec<String>> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let oldest = now_ms - i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX);
    let (_, _, members): ((), (), Vec<String>) = redis::pipe()
        .cmd("ZADD")
        .arg(&config.key)
        .arg(now_ms)
        .arg(membership.id())
        .cmd("ZREMRANGEBYSCORE")
        .arg(&config.key)
        .arg("-inf")
        .arg(format!("({oldest}"))
        .cmd("ZRANGEBYSCORE")
        .arg(&config.key)
        .arg(oldest)
        .arg("+inf")
        .query_async(redis)
        .await?;
    Ok(members)
}

/// How long until a dead replica's instances are probed by another: its last renewal ages out
/// after `ttl`, the survivors notice at their next heartbeat and start at their next refresh.
pub fn takeover_bound(membership: &MembershipConfig, refresh: Duration) -> Duration {
    membership.ttl + membership.heartbeat + refresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_one_owner_and_a_departure_moves_only_its_keys() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let mut moved = 0;
        let mut counts = std::collections::HashMap::new();
        for key in 0..3000 {
            let before = owner(&three, key).expect("an owner");
            *counts.entry(before).or_insert(0) += 1;
            let after = owner(&two, key).expect("an owner");
            if before != "b" {
                assert_eq!(before, after, "key {key} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert_eq!(moved, counts["b"]);
        for (member, n) in counts {
            assert!((700..1300).contains(&n), "{member} owns {n} of 3000 keys: the spread is fair");
        }
        assert_eq!(owner(&[], 1), None);
    }

    #[test]
    fn a_replica_owns_nothing_before_it_knows_the_members() {
        let m = Membership::new("me".into());
        assert!(!m.owns(1));
        m.set(vec!["me".into()]);
        assert!(m.owns(1));
    }
}
