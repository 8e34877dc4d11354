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
    /// Most samples taken from one instance; more is `sample_limit` (0: no limit).
    pub sample_limit: usize,
    /// Most labels on one sample (its own); more is `label_limit` (0: no limit).
    pub label_limit: usize,
    /// Longest label name, in bytes; longer is `label_name_length_limit` (0: no limit).
    pub label_name_length_limit: usize,
    /// Longest label value, in bytes; longer is `label_value_length_limit` (0: no limit).
    pub label_value_length_limit: usize,
    /// A directory the operator mounts with one bearer file per credential: a target naming
    /// `credential: NAME` is scraped with the first line of `NAME` here. Unset: no target gets a
    /// credential but the platform's own services (the metrics bearer, by `[api.platform]`).
    pub credentials_dir: Option<std::path::PathBuf>,
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
            sample_limit: 200_000,
            label_limit: 64,
            label_name_length_limit: 256,
            label_value_length_limit: 4096,
            credentials_dir: None,
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
    /// The sample and label limits of one instance's body.
    pub fn limits(&self) -> crate::exposition::Limits {
        crate::exposition::Limits {
            samples: self.sample_limit,
            labels: self.label_limit,
            label_name_length: self.label_name_length_limit,
            label_value_length: self.label_value_length_limit,
        }
    }

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
