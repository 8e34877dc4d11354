//! The `[gateway]` settings (`CARACAL_GATEWAY__*` in the environment).

use std::time::Duration;

use caracal_core::ConfigError;
use serde::Deserialize;

/// Settings of the federation gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Largest body taken from one instance; a larger one is `too_large`.
    pub instance_body_cap_bytes: usize,
    /// Largest sum of bodies one federation request takes.
    pub request_body_cap_bytes: usize,
    /// Instances scraped at once by one request.
    pub request_concurrency: usize,
    /// Instances scraped at once by the whole gateway.
    pub global_concurrency: usize,
    /// The safety net: the registry is re-read whole this often even when no change was
    /// announced on `caracal.invalidations` (which covers Redis losing the stream).
    #[serde(with = "humantime_serde")]
    pub full_resync: Duration,
    /// `stream:invalidations` fails when the stream was not read for this long.
    #[serde(with = "humantime_serde")]
    pub invalidations_max_age: Duration,
    /// Taken off `X-Prometheus-Scrape-Timeout-Seconds`, so the answer is back before Prometheus
    /// gives up.
    #[serde(with = "humantime_serde")]
    pub timeout_margin: Duration,
    /// Most `match[]` parameters in one request.
    pub max_matchers: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            instance_body_cap_bytes: 32 * 1024 * 1024,
            request_body_cap_bytes: 512 * 1024 * 1024,
            request_concurrency: 32,
            global_concurrency: 128,
            full_resync: Duration::from_secs(600),
            invalidations_max_age: Duration::from_secs(10),
            timeout_margin: Duration::from_millis(500),
            max_matchers: 32,
        }
    }
}

impl GatewayConfig {
    /// Checks the settings fit together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError {
            key: format!("gateway.{key}"),
            origin: "configuration".into(),
            message: message.into(),
        };
        if self.instance_body_cap_bytes == 0 || self.request_body_cap_bytes < self.instance_body_cap_bytes {
            return Err(bad(
                "request_body_cap_bytes",
                "expected caps above zero, the request's at least the instance's",
            ));
        }
        if self.request_concurrency == 0 || self.global_concurrency == 0 {
            return Err(bad("request_concurrency", "expected at least 1"));
        }
        Ok(())
    }
}
