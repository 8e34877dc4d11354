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
    /// Alertmanager (`http://alertmanager:9093`): its active, unsilenced alerts are summarised
    /// in `/healthchecks` (`General`/`Monitoring`) and on the status page.
    pub alertmanager_url: Option<String>,
    /// Prometheus (`http://prometheus:9090`): `/healthchecks` gets a `TSDB` entry from its
    /// `/-/ready` and the time of a trivial query.
    pub prometheus_url: Option<String>,
    /// How often Alertmanager and Prometheus are read.
    #[serde(with = "humantime_serde")]
    pub monitoring_interval: Duration,
    /// The status page.
    pub page: PageConfig,
}

/// The `[api.page]` settings: what the status page lets a visitor hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageConfig {
    /// Live feeds a signed-out visitor may hold open at once (each closed after 2 minutes; the
    /// page reconnects); beyond, `503` with `Retry-After`.
    pub public_streams: usize,
    /// The page is served over HTTPS (a TLS front end): the session cookie is `Secure` and
    /// `__Host-` prefixed. Never guessed from a request header.
    pub secure_cookies: bool,
}

impl Default for PageConfig {
    fn default() -> Self {
        Self { public_streams: crate::page::live::MAX_PUBLIC_STREAMS, secure_cookies: false }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            outbox_max_age: Duration::from_secs(60),
            platform: BTreeMap::new(),
            max_page: 500,
            alertmanager_url: None,
            prometheus_url: None,
            monitoring_interval: Duration::from_secs(5),
            page: PageConfig::default(),
        }
    }
}

impl ApiConfig {
    /// Checks what serde cannot: the monitoring URLs are `http(s)://` URLs.
    ///
    /// # Errors
    /// A [`caracal_core::ConfigError`] naming the key.
    pub fn validate(&self) -> Result<(), caracal_core::ConfigError> {
        for (key, url) in
            [("api.alertmanager_url", &self.alertmanager_url), ("api.prometheus_url", &self.prometheus_url)]
        {
            let Some(url) = url else { continue };
            let parsed =
                reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if parsed.is_none() {
                return Err(caracal_core::ConfigError {
                    key: key.into(),
                    origin: format!("`CARACAL_{}` or the config file", key.replace('.', "__").to_ascii_uppercase()),
                    // Not echoed: a URL may carry a password.
                    message: "expected an http:// or https:// URL such as http://alertmanager:9093".into(),
                });
            }
        }
        Ok(())
    }
}
