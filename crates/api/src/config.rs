//! The `[api]` settings (`CARACAL_API__*` in the environment).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Settings of the API service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `outbox:oldest_pending_age` fails when the oldest undispatched event is older.
    #[serde(with = "humantime_serde")]
    pub outbox_max_age: Duration,
    /// The platform's own services, registered as targets at start-up (name → instance URLs)
    /// with the label `caracal=platform`, so the platform watches itself.
    pub platform: BTreeMap<String, Vec<String>>,
    /// Largest page of `/v1/targets/{name}/history`.
    pub max_page: i64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { outbox_max_age: Duration::from_secs(60), platform: BTreeMap::new(), max_page: 500 }
    }
}
