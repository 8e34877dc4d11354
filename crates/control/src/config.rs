//! The `[control]` settings (`CARACAL_CONTROL__*` in the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Nameservers to ask (`ip:port`), instead of the system's (`/etc/resolv.conf`, the
    /// cluster DNS in Kubernetes). `CARACAL_CONTROL__NAMESERVERS='["10.0.0.10:53"]'`.
    pub nameservers: Vec<SocketAddr>,
    /// How long one DNS query may take before it counts as a `timeout` (the last known
    /// instances stay).
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    /// Resolutions in flight at once.
    pub resolve_concurrency: usize,
    /// A directory of declared targets (YAML or JSON files, one target or a list each) that
    /// control reconciles into the registry; none when unset.
    pub targets_dir: Option<PathBuf>,
    /// How often the directory is checked for changed files. A check reads only the files'
    /// metadata (names, sizes, change times, inodes); the files are read when that changed, and
    /// the registry only at start and every `full_resync`.
    #[serde(with = "humantime_serde")]
    pub targets_poll: Duration,
    /// The safety net: the discovered targets and the declared ones are re-read from the
    /// registry this often even when no change was announced.
    #[serde(with = "humantime_serde")]
    pub full_resync: Duration,
    /// `stream:invalidations` fails when the stream was not read for this long.
    #[serde(with = "humantime_serde")]
    pub invalidations_max_age: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            resolve_timeout: Duration::from_secs(2),
            resolve_concurrency: 64,
            targets_dir: None,
            targets_poll: Duration::from_millis(250),
            full_resync: Duration::from_secs(600),
            invalidations_max_age: Duration::from_secs(10),
        }
    }
}
