//! Every environment variable name caracal-core reads, declared once.
//!
//! Besides these well-known names, any setting can be given as `CARACAL_<KEY>` with `__`
//! between nested keys (`CARACAL_SHUTDOWN__DRAIN_DELAY=2s`).

/// PostgreSQL connection URL (config key `database_url`).
pub const DATABASE_URL: &str = "DATABASE_URL";
/// Redis connection URL (config key `redis_url`).
pub const REDIS_URL: &str = "REDIS_URL";
/// A file holding the Redis password (config key `redis_password_file`).
pub const REDIS_PASSWORD_FILE: &str = "REDIS_PASSWORD_FILE";
/// The CA file for Redis over TLS (config key `redis_tls.ca_file`; read by the generic
/// `CARACAL_<KEY>` rule, named here for operators and the chart).
pub const CARACAL_REDIS_TLS__CA_FILE: &str = "CARACAL_REDIS_TLS__CA_FILE";
/// The client certificate file for Redis over TLS (config key `redis_tls.client_cert_file`).
pub const CARACAL_REDIS_TLS__CLIENT_CERT_FILE: &str = "CARACAL_REDIS_TLS__CLIENT_CERT_FILE";
/// The client key file for Redis over TLS (config key `redis_tls.client_key_file`).
pub const CARACAL_REDIS_TLS__CLIENT_KEY_FILE: &str = "CARACAL_REDIS_TLS__CLIENT_KEY_FILE";
/// The name the Sentinels monitor the Redis master under (config key `redis_sentinel.master`).
pub const CARACAL_REDIS_SENTINEL__MASTER: &str = "CARACAL_REDIS_SENTINEL__MASTER";
/// The Sentinels, a list of URLs: `'["redis://h1:26379","redis://h2:26379"]'` (config key
/// `redis_sentinel.nodes`).
pub const CARACAL_REDIS_SENTINEL__NODES: &str = "CARACAL_REDIS_SENTINEL__NODES";
/// The api's Alertmanager, for the firing alerts in `/healthchecks` (config key
/// `api.alertmanager_url`; read by the generic rule, named here for the chart).
pub const CARACAL_API__ALERTMANAGER_URL: &str = "CARACAL_API__ALERTMANAGER_URL";
/// The api's Prometheus, for the `TSDB` entry of `/healthchecks` (config key `api.prometheus_url`).
pub const CARACAL_API__PROMETHEUS_URL: &str = "CARACAL_API__PROMETHEUS_URL";
/// The outbound address policy's allowed ranges (`outbound.allow`), a list.
pub const CARACAL_OUTBOUND__ALLOW: &str = "CARACAL_OUTBOUND__ALLOW";
/// The outbound address policy's denied ranges (`outbound.deny`), a list replacing the default.
pub const CARACAL_OUTBOUND__DENY: &str = "CARACAL_OUTBOUND__DENY";
/// The only directory targets' client certificates are read from (`coordinator.tls.client_dir`).
pub const CARACAL_COORDINATOR__TLS__CLIENT_DIR: &str = "CARACAL_COORDINATOR__TLS__CLIENT_DIR";
/// The gateway's scrape credentials, one bearer file per name (`gateway.credentials_dir`).
pub const CARACAL_GATEWAY__CREDENTIALS_DIR: &str = "CARACAL_GATEWAY__CREDENTIALS_DIR";
/// Listening port (config key `port`).
pub const PORT: &str = "PORT";
/// `dev`, `rc` or `stable`; blank means `stable` (config key `mode`).
pub const CARACAL_MODE: &str = "CARACAL_MODE";
/// The metrics bearer token itself (config key `metrics.bearer`).
pub const METRICS_BEARER: &str = "METRICS_BEARER";
/// A file holding the metrics bearer, one or two tokens, one per line (config key
/// `metrics.bearer_file`).
pub const METRICS_BEARER_FILE: &str = "METRICS_BEARER_FILE";
/// OTLP/HTTP endpoint for spans (config key `telemetry.otlp_endpoint`).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `service.name` of exported spans (config key `telemetry.service_name`).
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// The sampler: `parentbased_traceidratio` (default), `parentbased_always_on`, `always_on`,
/// `always_off`, `traceidratio`, `parentbased_always_off` (config key `telemetry.sampler`).
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The ratio of the ratio samplers, 0 to 1 (config key `telemetry.sample_ratio`).
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Spans for `/health`, `/ready` and `/metrics` too (config key `telemetry.trace_probes`; read
/// by the generic rule, named here for the chart).
pub const CARACAL_TELEMETRY__TRACE_PROBES: &str = "CARACAL_TELEMETRY__TRACE_PROBES";
/// Path of the TOML config file; `caracal.toml` in the working directory when unset.
pub const CARACAL_CONFIG: &str = "CARACAL_CONFIG";
/// Prefix of the generic `CARACAL_<KEY>` variables.
pub const PREFIX: &str = "CARACAL_";
/// The admin bearer token (config key `admin_token`).
pub const CARACAL_ADMIN_TOKEN: &str = "CARACAL_ADMIN_TOKEN";
/// A file holding the admin bearer, one or two tokens (config key `admin_token_file`).
pub const CARACAL_ADMIN_TOKEN_FILE: &str = "CARACAL_ADMIN_TOKEN_FILE";
/// A file holding the STS's key-encryption key, 32 random bytes in base64 (config key
/// `sts.key_encryption_file`); required by the STS in `rc` and `stable`.
pub const CARACAL_STS_KEY_ENCRYPTION_FILE: &str = "CARACAL_STS_KEY_ENCRYPTION_FILE";
/// Log filter in `tracing-subscriber` syntax (config key `telemetry.log`).
pub const RUST_LOG: &str = "RUST_LOG";

/// Well-known variable names and the config key each one sets; they win over `CARACAL_*`.
pub const WELL_KNOWN: &[(&str, &str)] = &[
    (DATABASE_URL, "database_url"),
    (REDIS_URL, "redis_url"),
    (REDIS_PASSWORD_FILE, "redis_password_file"),
    (PORT, "port"),
    (CARACAL_MODE, "mode"),
    (METRICS_BEARER, "metrics.bearer"),
    (METRICS_BEARER_FILE, "metrics.bearer_file"),
    (OTEL_EXPORTER_OTLP_ENDPOINT, "telemetry.otlp_endpoint"),
    (OTEL_SERVICE_NAME, "telemetry.service_name"),
    (OTEL_TRACES_SAMPLER, "telemetry.sampler"),
    (OTEL_TRACES_SAMPLER_ARG, "telemetry.sample_ratio"),
    (RUST_LOG, "telemetry.log"),
    (CARACAL_STS_KEY_ENCRYPTION_FILE, "sts.key_encryption_file"),
];
