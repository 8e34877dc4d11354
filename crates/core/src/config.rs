//! Configuration: built-in defaults ← `caracal.toml` ← `CARACAL_*` ← well-known names.
//!
//! [`Config::load`] layers the sources with figment, extracts the settings every service
//! shares ([`CoreConfig`]) and keeps the layered figment so a service can extract its own
//! section with [`Config::section`]. Every error names the key, where its value came from and
//! what was expected, and makes the binary exit with status 2.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::env;

/// How strict a deployment is. Blank means `stable`; any other value is a start-up error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Local development: metrics open unless a bearer is configured, details shown, human logs.
    Dev,
    /// Release candidate: as strict as `stable`.
    Rc,
    /// Production.
    #[default]
    Stable,
}

impl Mode {
    /// The name as written in config and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Rc => "rc",
            Mode::Stable => "stable",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim() {
            "dev" => Ok(Mode::Dev),
            "rc" => Ok(Mode::Rc),
            "" | "stable" => Ok(Mode::Stable),
            other => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(other),
                &"one of `dev`, `rc`, `stable` (blank means `stable`)",
            )),
        }
    }
}

/// A secret string (token, URL with a password): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The settings every Caracal service shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoreConfig {
    /// `dev`, `rc` or `stable`.
    pub mode: Mode,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on; probes and metrics share it with the service's own routes.
    pub port: u16,
    /// PostgreSQL URL, when the service uses PostgreSQL.
    pub database_url: Option<Secret>,
    /// Redis URL, when the service uses Redis (`rediss://` for TLS).
    pub redis_url: Option<Secret>,
    /// A file holding the Redis password (ACL user in the URL), so it stays out of the
    /// environment and the URL.
    pub redis_password_file: Option<PathBuf>,
    /// Redis over TLS: the CA and client certificate files, for a `rediss://` URL (or
    /// `rediss://` Sentinels).
    pub redis_tls: RedisTlsConfig,
    /// Redis behind Sentinels, instead of `redis_url`: the master's name and the Sentinels.
    pub redis_sentinel: RedisSentinelConfig,
    /// Who may read `/metrics` and readiness details.
    pub metrics: MetricsConfig,
    /// The admin bearer token, for services with an admin API.
    pub admin_token: Option<Secret>,
    /// A file holding the admin bearer (one or two tokens, one per line).
    pub admin_token_file: Option<PathBuf>,
    /// Draining on SIGTERM.
    pub shutdown: ShutdownConfig,
    /// Defaults for checks that do not set their own timing.
    pub checks: CheckDefaults,
    /// Limits applied to every request.
    pub http: HttpConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// The address policy of every connection to a target (`[outbound]`).
    #[serde(default)]
    pub outbound: crate::outbound::OutboundConfig,
}

/// Metrics bearer settings; see [`crate::auth`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// The bearer token itself.
    pub bearer: Option<Secret>,
    /// A file holding one token, or two during a rotation (one per line).
    pub bearer_file: Option<PathBuf>,
}

/// Redis behind Sentinels (`redis_sentinel.master`, `redis_sentinel.nodes`): every connection
/// asks the Sentinels for the master, and asks again after losing it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisSentinelConfig {
    /// The name the Sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master: Option<String>,
    /// The Sentinels' URLs (`redis://host:26379`; `rediss://` when the Sentinels and the data
    /// nodes serve TLS). A password in them authenticates to the Sentinels; the data nodes'
    /// password comes from `redis_password_file`.
    pub nodes: Vec<Secret>,
}

impl RedisSentinelConfig {
    /// Whether either setting is given.
    pub fn is_set(&self) -> bool {
        self.master.is_some() || !self.nodes.is_empty()
    }
}

/// Files for Redis over TLS (`rediss://`): mounted from Secrets, read at start-up, never logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedisTlsConfig {
    /// PEM CA certificate(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one (`tls-auth-clients yes`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

/// Draining settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownConfig {
    /// How long `/ready` fails before the listener stops accepting; 5 s by default, 0 in dev.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Option<Duration>,
    /// How long in-flight requests get to finish after the listener stops.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Default timing for checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckDefaults {
    /// Time between two runs of a check (jittered by up to ±10 %).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one run may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures before a passing check reports failing.
    pub failure_threshold: u32,
    /// Consecutive successes before a failing check reports passing.
    pub success_threshold: u32,
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpConfig {
    /// A request that takes longer is answered 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413.
    pub body_limit_bytes: usize,
    /// A client that has not sent a request's whole header within this is disconnected (also
    /// how long an idle keep-alive connection is kept).
    #[serde(with = "humantime_serde", default = "header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Connections served at once; beyond, only probes are answered (on `probe_connections`
    /// more), then connections are closed at once.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Connections beyond `max_connections` that still answer `/health`, `/ready`, `/metrics`
    /// and gRPC health (and `503` to anything else).
    #[serde(default = "probe_connections")]
    pub probe_connections: usize,
}

fn header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn max_connections() -> usize {
    1024
}
fn probe_connections() -> usize {
    64
}

/// Logging and tracing settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetryConfig {
    /// Log filter (`tracing-subscriber` syntax).
    pub log: String,
    /// OTLP/HTTP endpoint; spans are exported only when set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported spans; the program's file name (`caracal-api`) when unset.
    #[serde(default)]
    pub service_name: Option<String>,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`'s values).
    #[serde(default)]
    pub sampler: Sampler,
    /// The ratio of the ratio samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`).
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Whether `/health`, `/ready` and `/metrics` get spans too (off: they would drown the rest).
    #[serde(default)]
    pub trace_probes: bool,
}

fn one() -> f64 {
    1.0
}

/// The OpenTelemetry samplers by their `OTEL_TRACES_SAMPLER` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// A ratio of traces, by trace id, ignoring the caller's decision.
    Traceidratio,
    /// The caller's decision; every trace this service starts.
    ParentbasedAlwaysOn,
    /// The caller's decision; none of the traces this service starts.
    ParentbasedAlwaysOff,
    /// The caller's decision; a ratio of the traces this service starts (the default).
    #[default]
    ParentbasedTraceidratio,
}

impl CoreConfig {
    /// Built-in defaults for a service listening on `port`.
    pub fn defaults(port: u16) -> Self {
        Self {
            mode: Mode::Stable,
            bind: IpAddr::from([0, 0, 0, 0]),
            port,
            database_url: None,
            redis_url: None,
            redis_password_file: None,
            redis_tls: RedisTlsConfig::default(),
            redis_sentinel: RedisSentinelConfig::default(),
            metrics: MetricsConfig::default(),
            admin_token: None,
            admin_token_file: None,
            shutdown: ShutdownConfig { drain_delay: None, timeout: Duration::from_secs(15) },
            checks: CheckDefaults {
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                failure_threshold: 1,
                success_threshold: 1,
            },
            http: HttpConfig {
                request_timeout: Duration::from_secs(30),
                body_limit_bytes: 1024 * 1024,
                header_read_timeout: header_read_timeout(),
                max_connections: max_connections(),
                probe_connections: probe_connections(),
            },
            telemetry: TelemetryConfig {
                log: "info".into(),
                otlp_endpoint: None,
                service_name: None,
                sampler: Sampler::default(),
                sample_ratio: 1.0,
                trace_probes: false,
            },
            outbound: crate::outbound::OutboundConfig::default(),
        }
    }

    /// The drain delay in force: the configured one, else 0 in dev and 5 s elsewhere.
    pub fn drain_delay(&self) -> Duration {
        self.shutdown.drain_delay.unwrap_or(match self.mode {
            Mode::Dev => Duration::ZERO,
            Mode::Rc | Mode::Stable => Duration::from_secs(5),
        })
    }
}

/// Loaded configuration: the shared settings and the layered sources for service sections.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings every service shares.
    pub core: CoreConfig,
    figment: Figment,
}

impl Config {
    /// Loads configuration for a service whose default port is `default_port`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key, its source and what was expected.
    pub fn load(default_port: u16) -> Result<Self, ConfigError> {
        let figment = layered(default_port)?;
        let core: CoreConfig = figment.extract().map_err(|e| ConfigError::from_figment(e, None))?;
        validate(&core)?;
        Ok(Self { core, figment })
    }

    /// Configuration from values built in code, with no file or environment: for embedding
    /// and tests. `sections` become the tables [`section`](Self::section) reads.
    ///
    /// # Errors
    /// [`ConfigError`] when `core` fails the same validation as loaded configuration.
    pub fn from_core(core: CoreConfig, sections: serde_json::Value) -> Result<Self, ConfigError> {
        validate(&core)?;
        let figment = Figment::from(Serialized::defaults(&core)).merge(Serialized::defaults(sections));
        Ok(Self { core, figment })
    }

    /// Extracts a service's own settings from the `[name]` table (or `CARACAL_<NAME>__*`); an
    /// absent table deserializes from nothing, so `T` should default every field.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad key, as for [`load`](Self::load).
    pub fn section<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ConfigError> {
        // `focus` makes an absent table an empty one, so a section of all-default settings
        // needs no table at all; keys in errors are then relative, so they get the prefix back.
        self.figment.focus(name).extract().map_err(|e| ConfigError::from_figment(e, Some(name)))
    }
}

fn layered(default_port: u16) -> Result<Figment, ConfigError> {
    let (file, named) = match std::env::var_os(env::CARACAL_CONFIG) {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from("caracal.toml"), false),
    };
    if named && !file.is_file() {
        return Err(ConfigError {
            key: "(config file)".into(),
            origin: format!("environment variable `{}`", env::CARACAL_CONFIG),
            message: format!("the file {} does not exist or is not a file", file.display()),
        });
    }
    let well_known: Vec<&str> = env::WELL_KNOWN.iter().map(|(name, _)| *name).collect();
    let mut figment = Figment::from(Serialized::defaults(CoreConfig::defaults(default_port)));
    if file.is_file() {
        figment = figment.merge(Toml::file_exact(file));
    }
    Ok(figment.merge(Env::prefixed(env::PREFIX).split("__").ignore(&["config", "mode"])).merge(
        Env::raw().only(&well_known).map(|name| {
            let key = env::WELL_KNOWN.iter().find(|(n, _)| name == *n).map_or("", |(_, key)| key);
            key.into()
        }),
    ))
}

fn validate(core: &CoreConfig) -> Result<(), ConfigError> {
    if core.checks.failure_threshold == 0 || core.checks.success_threshold == 0 {
        return Err(ConfigError {
            key: "checks.failure_threshold / checks.success_threshold".into(),
            origin: "configuration".into(),
            message: "expected a whole number of at least 1".into(),
        });
    }
    if core.checks.timeout.is_zero() || core.checks.interval.is_zero() {
        return Err(ConfigError {
            key: "checks.interval / checks.timeout".into(),
            origin: "configuration".into(),
            message: "expected a duration above zero, such as `2s`".into(),
        });
    }
    let ratio = core.telemetry.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(ConfigError {
            key: "telemetry.sample_ratio".into(),
            origin: format!("environment variable `{}` (or config key)", env_var_for("telemetry.sample_ratio")),
            message: format!("expected a ratio from 0 to 1, such as `0.25`, not {ratio}"),
        });
    }
    Ok(())
}

/// A configuration value that cannot be used: which key, from where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{key}` from {origin}: {message}")]
pub struct ConfigError {
    /// The setting, as a dotted config key (or the env var name for well-known ones).
    pub key: String,
    /// Where the value came from: a file path, an environment variable, the defaults.
    pub origin: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// Names the key in full (with `section`, the table [`Config::section`] read, in front)
    /// and the variable or file it came from.
    fn from_figment(error: figment::Error, section: Option<&str>) -> Self {
        let mut path: Vec<String> = section.map(str::to_owned).into_iter().chain(error.path.iter().cloned()).collect();
        // An unknown key's path usually ends with it; when it does not, the kind names it.
        if let figment::error::Kind::UnknownField(field, _) = &error.kind
            && path.last() != Some(field)
        {
            path.push(field.clone());
        }
        let path = path.join(".");
        let key = if path.is_empty() { "(root)".to_string() } else { path.clone() };
        let source = match &error.metadata {
            Some(md) => match &md.source {
                Some(figment::Source::File(file)) => format!("file {}", file.display()),
                _ if md.name.contains("environment") => format!("environment variable `{}`", env_var_for(&path)),
                _ => md.name.to_string(),
            },
            None => "configuration".into(),
        };
        Self { key, origin: source, message: error.kind.to_string() }
    }
}

/// The environment variable that sets config key `key`: a well-known name when one is set,
/// else `CARACAL_<KEY>` with `__` for dots, spelt as it is set (names are matched without
/// regard to case).
fn env_var_for(key: &str) -> String {
    if let Some((name, _)) = env::WELL_KNOWN.iter().find(|(name, k)| *k == key && std::env::var_os(name).is_some()) {
        return (*name).to_string();
    }
    let generic = format!("{}{}", env::PREFIX, key.replace('.', "__"));
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .find(|name| name.eq_ignore_ascii_case(&generic))
        .unwrap_or_else(|| generic.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Config;

    #[derive(Debug, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        #[serde(with = "humantime_serde")]
        wait: Duration,
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        count: u32,
    }

    impl Default for Section {
        fn default() -> Self {
            Self { wait: Duration::from_secs(1), inner: Inner::default() }
        }
    }

    /// Loads the configuration with `env` set and returns the error `read` ends in.
    // The closure's error type is figment's own, large by design.
    #[allow(clippy::result_large_err)]
    fn error(env: &[(&str, &str)], read: fn(&Config) -> Result<(), super::ConfigError>) -> String {
        let mut text = String::new();
        figment::Jail::expect_with(|jail| {
            for (name, value) in env {
                jail.set_env(name, value);
            }
            text = match Config::load(1) {
                Ok(config) => read(&config).expect_err("an error").to_string(),
                Err(e) => e.to_string(),
            };
            Ok(())
        });
        text
    }

    #[test]
    // The closure's error type is figment's own, large by design.
    #[allow(clippy::result_large_err)]
    fn the_outbound_policy_is_read_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CARACAL_OUTBOUND__DENY", "[\"127.0.0.0/8\"]");
            jail.set_env("CARACAL_OUTBOUND__ALLOW", "[\"10.0.0.0/8\", \"::1/128\"]");
            let config = Config::load(1).expect("loads");
            assert_eq!(config.core.outbound.deny, vec!["127.0.0.0/8".parse::<ipnet::IpNet>().expect("a range")]);
            assert_eq!(config.core.outbound.allow.len(), 2);
            Ok(())
        });
        figment::Jail::expect_with(|_| {
            let config = Config::load(1).expect("loads");
            assert_eq!(
                config.core.outbound,
                crate::outbound::OutboundConfig::default(),
                "the defaults deny link-local"
            );
            Ok(())
        });
    }

    fn section(config: &Config) -> Result<(), super::ConfigError> {
        config.section::<Section>("svc").map(drop)
    }

    #[test]
    fn errors_name_the_variable_as_written_at_every_nesting_level() {
        let at_root = error(&[("CARACAL_PORT", "eighty")], |_| Ok(()));
        assert!(at_root.contains("`port`") && at_root.contains("`CARACAL_PORT`"), "{at_root}");
        let nested = error(&[("CARACAL_SHUTDOWN__TIMEOUT", "soon")], |_| Ok(()));
        assert!(nested.contains("`shutdown.timeout`") && nested.contains("`CARACAL_SHUTDOWN__TIMEOUT`"), "{nested}");
        let in_section = error(&[("CARACAL_SVC__WAIT", "soon")], section);
        assert!(in_section.contains("`svc.wait`") && in_section.contains("`CARACAL_SVC__WAIT`"), "{in_section}");
        let deeper = error(&[("CARACAL_SVC__INNER__COUNT", "many")], section);
        assert!(deeper.contains("`svc.inner.count`") && deeper.contains("`CARACAL_SVC__INNER__COUNT`"), "{deeper}");
        let unknown = error(&[("CARACAL_SVC__ALERTMANAGER_URL", "http://am:9093")], section);
        assert!(
            unknown.contains("`svc.alertmanager_url`") && unknown.contains("`CARACAL_SVC__ALERTMANAGER_URL`"),
            "{unknown}"
        );
        let unknown_deeper = error(&[("CARACAL_SVC__INNER__TYPO", "1")], section);
        assert!(unknown_deeper.contains("`CARACAL_SVC__INNER__TYPO`"), "{unknown_deeper}");
        let range = error(&[("CARACAL_OUTBOUND__DENY", "[\"127.0.0.0/8\", \"not-a-range\"]")], |_| Ok(()));
        assert!(range.contains("`outbound.deny") && range.contains("CARACAL_OUTBOUND__DENY"), "{range}");
        let lower = error(&[("caracal_svc__wait", "soon")], section);
        assert!(lower.contains("`caracal_svc__wait`"), "spelt as set: {lower}");
    }
}
