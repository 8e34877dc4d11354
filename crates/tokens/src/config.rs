//! The `[tokens]` settings (`CARACAL_TOKENS__*` in the environment), shared by every service
//! that issues or verifies access tokens.

use std::time::Duration;

use serde::Deserialize;

/// Where the STS is and what a valid token must say.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// The STS's base URL (`http://caracal-sts:8080`). Unset: this service verifies no tokens
    /// and accepts only the static admin token.
    pub sts_url: Option<String>,
    /// The `iss` every token must carry; the STS's URL when unset.
    pub issuer: Option<String>,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How often the JWKS is fetched again (shorter than the STS's pre-publication window).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The least time between two fetches, so a flood of unknown `kid`s cannot hammer the STS.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// `revocations:lag` fails when the revocation set was last known current longer ago.
    #[serde(with = "humantime_serde")]
    pub revocations_max_lag: Duration,
    /// How often the whole revocation set is re-read from PostgreSQL, so a revocation the
    /// stream lost (Redis restarted empty) is still learned.
    #[serde(with = "humantime_serde")]
    pub revocations_reload: Duration,
    /// Verified tokens remembered, so a token presented again skips the signature check.
    pub cache_size: usize,
    /// Outside `dev`, `sts_url` must be `https://` or a loopback address (the JWKS it serves
    /// decides which tokens are genuine); `true` allows plain HTTP to another host, for a
    /// network path protected otherwise (a service mesh's mTLS).
    pub insecure_sts_url: bool,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            sts_url: None,
            issuer: None,
            audience: "caracal".into(),
            leeway: Duration::from_secs(5),
            jwks_refresh: Duration::from_secs(60),
            jwks_min_refresh: Duration::from_secs(5),
            revocations_max_lag: Duration::from_secs(5),
            revocations_reload: Duration::from_secs(30),
            cache_size: 10_000,
            insecure_sts_url: false,
        }
    }
}

impl TokensConfig {
    /// The issuer tokens must name: `issuer`, else `sts_url` (without a trailing slash).
    pub fn expected_issuer(&self) -> Option<String> {
        self.issuer.clone().or_else(|| self.sts_url.clone()).map(|s| s.trim_end_matches('/').to_string())
    }

    /// Checks `sts_url` for `mode`: an `http(s)://` URL, and outside `dev` `https://` or
    /// loopback unless `insecure_sts_url`.
    ///
    /// # Errors
    /// A [`caracal_core::ConfigError`] naming `tokens.sts_url`.
    pub fn validate(&self, mode: caracal_core::Mode) -> Result<(), caracal_core::ConfigError> {
        let Some(url) = &self.sts_url else { return Ok(()) };
        let error = |message: &str| caracal_core::ConfigError {
            key: "tokens.sts_url".into(),
            origin: "`CARACAL_TOKENS__STS_URL` or the config file".into(),
            message: message.into(),
        };
        let parsed = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        let Some(parsed) = parsed else {
            return Err(error("expected an http:// or https:// URL such as https://caracal-sts:8080"));
        };
        let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if mode != caracal_core::Mode::Dev && parsed.scheme() == "http" && !loopback && !self.insecure_sts_url {
            return Err(error(
                "outside dev the STS is reached over https:// (or on loopback): its JWKS decides which tokens are genuine; \
                 set tokens.insecure_sts_url = true only where the network path is protected otherwise",
            ));
        }
        Ok(())
    }

    /// The STS's JWKS URL, when an STS is configured.
    pub fn jwks_url(&self) -> Option<String> {
        self.sts_url.as_ref().map(|s| format!("{}/.well-known/jwks.json", s.trim_end_matches('/')))
    }
}
