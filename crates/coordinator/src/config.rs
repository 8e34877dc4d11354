//! The `[coordinator]` settings (`CARACAL_COORDINATOR__*` in the environment).

use std::time::Duration;

use serde::Deserialize;

/// Settings of the coordinator.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Consecutive failed observations before an instance's status changes to a worse one.
    pub failure_threshold: u32,
    /// Consecutive observations of a better status before it changes.
    pub success_threshold: u32,
    /// Probes in flight at once, across all instances.
    pub max_concurrency: usize,
    /// How often the prober looks at the membership (in memory) and beats its heartbeat.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// The safety net: the whole registry is re-read this often even when no change was
    /// announced on `caracal.invalidations` (which covers Redis losing the stream).
    #[serde(with = "humantime_serde")]
    pub full_resync: Duration,
    /// `stream:invalidations` fails when the stream was not read for this long.
    #[serde(with = "humantime_serde")]
    pub invalidations_max_age: Duration,
    /// Replica membership.
    pub membership: MembershipConfig,
    /// The outbox relay.
    pub relay: RelayConfig,
    /// Client certificates for TLS probes: only files in `tls.client_dir` are ever read.
    pub tls: caracal_store::tls::ClientFiles,
}

/// How replicas find each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// How often a replica renews its membership.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A replica silent for longer is dead and its instances move to the others.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Redis key of the members' sorted set.
    pub key: String,
}

/// The outbox relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Most rows claimed per batch: a backlog goes out in batches this big, a lone event alone.
    pub batch: i64,
    /// The longest an idle relay waits before claiming again when no `NOTIFY caracal_outbox`
    /// arrived (rows due after a retry delay, a notification lost with its connection).
    #[serde(with = "humantime_serde")]
    pub idle_wait: Duration,
    /// First retry delay after a failed delivery; doubled per attempt.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Attempts after which a row is dead.
    pub max_attempts: i32,
    /// `outbox:oldest_pending_age` fails (unready) beyond this relay lag.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Approximate length the stream is trimmed to.
    pub stream_max_len: usize,
    /// Dispatched rows are deleted after this long (once the ledger holds them). The ledger
    /// keeps its rows at least this long (`audit.retention` may not be shorter).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often dispatched rows past `retention` are purged.
    #[serde(with = "humantime_serde")]
    pub purge_every: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 2,
            success_threshold: 2,
            max_concurrency: 512,
            refresh: Duration::from_secs(2),
            full_resync: Duration::from_secs(600),
            invalidations_max_age: Duration::from_secs(10),
            membership: MembershipConfig::default(),
            relay: RelayConfig::default(),
            tls: caracal_store::tls::ClientFiles::default(),
        }
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(5),
            key: "caracal:coordinator:members".into(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 2_000,
            idle_wait: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            max_attempts: 10,
            max_lag: Duration::from_secs(60),
            stream_max_len: 1_000_000,
            retention: caracal_store::outbox::DEFAULT_RETENTION,
            purge_every: Duration::from_secs(60),
        }
    }
}
