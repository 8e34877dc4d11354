//! The target document: what operators register (through the API, a declared file or
//! `caracal apply`), its validation and its defaults. One definition for every writer, so a
//! file control reconciles is judged exactly as the API judges a request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::degraded::{DegradedSpec, Detector};
pub use crate::discovery::{Discovery, DnsDiscovery, RecordType};
pub use crate::tls::TlsSpec;

/// Why a target document is refused, naming the field (a JSON path: `instances[1]`,
/// `discovery.dns.port`). The API answers it 422; control reports it with the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as a JSON path.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl Invalid {
    /// A validation error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Probe intervals accepted, in milliseconds.
pub const INTERVAL_MS: std::ops::RangeInclusive<i32> = 100..=3_600_000;
/// Probe timeouts accepted, in milliseconds (and below the interval).
pub const TIMEOUT_MS: std::ops::RangeInclusive<i32> = 50..=60_000;
/// Instances per target.
pub const MAX_INSTANCES: usize = 100;
/// Labels per target.
pub const MAX_LABELS: usize = 32;

/// Target names: 1–63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";
/// Probe paths: `/` then up to 255 RFC 3986 path characters.
pub const PATH_PATTERN: &str = "^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,255}$";
/// Instance URLs: `http(s)://host[:port][/prefix]` (no query or fragment), or
/// `tcp://host:port`, `grpc://host:port`, `grpcs://host:port`; ports 1–65535. A host is a
/// dotted quad or a name whose last label starts with a letter: numbers written any other way
/// (`2852039166`, `0x7f.1`, `127.1`) are read as addresses by resolvers, so none is accepted.
pub const INSTANCE_PATTERN: &str = "^(https?://(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])|([A-Za-z0-9.-]{0,189}\\.)?[A-Za-z][A-Za-z0-9-]{0,62}\\.?)\
     (:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?\
     (/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,255})?\
     |(tcp|grpcs?)://(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])|([A-Za-z0-9.-]{0,189}\\.)?[A-Za-z][A-Za-z0-9-]{0,62}\\.?)\
     :(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))$";
/// gRPC health service names (`grpc.health.v1` `HealthCheckRequest.service`): empty for the
/// server as a whole, else a fully qualified service name.
pub const GRPC_SERVICE_PATTERN: &str = "^[A-Za-z0-9._/-]{0,200}$";
/// Label keys, like Prometheus label names.
pub const LABEL_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,62}$";
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 256;

/// Whether `name` is one the registry could hold.
pub fn valid_name(name: &str) -> bool {
    matches(NAME_PATTERN, name)
}

/// Whether `value` matches `pattern`, one of this module's constants. The OpenAPI document
/// states the same patterns, so what the schema allows is exactly what the server accepts
/// (schemathesis checks both directions).
pub(crate) fn matches(pattern: &'static str, value: &str) -> bool {
    use std::sync::LazyLock;
    static COMPILED: LazyLock<[(&str, regex::Regex); 7]> = LazyLock::new(|| {
        [
            NAME_PATTERN,
            GRPC_SERVICE_PATTERN,
            PATH_PATTERN,
            INSTANCE_PATTERN,
            LABEL_KEY_PATTERN,
            crate::discovery::DNS_NAME_PATTERN,
            crate::discovery::DISCOVERED_URL_PATTERN,
        ]
        .map(|p| (p, regex::Regex::new(p).unwrap_or_else(|e| unreachable!("a constant pattern: {e}"))))
    });
    COMPILED.iter().find(|(p, _)| *p == pattern).is_some_and(|(_, regex)| regex.is_match(value))
}

/// A target as registered: a named service with one or more instances to probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Unique name: 1–63 of `a-z 0-9 - _ .`, starting with a letter or digit. Optional in a
    /// `PUT`, where it must equal the path's.
    #[serde(default)]
    #[schema(schema_with = name_schema, required = true)]
    pub name: String,
    /// Instance URLs, one per instance; 1 to 100, distinct, one scheme: `http(s)://host[:port][/prefix]`
    /// (probed with GETs of the paths below), `tcp://host:port` (up when a connection opens)
    /// or `grpc(s)://host:port` (`grpc.health.v1.Health/Check`).
    /// Exclusive with `discovery`: a discovered target's instances are control's to write.
    #[serde(default)]
    #[schema(schema_with = instances_schema)]
    pub instances: Vec<String>,
    /// Where the instances come from instead of `instances`: DNS, resolved by caracal-control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// Liveness path, default `/health`.
    #[serde(default = "default_health")]
    #[schema(schema_with = path_schema)]
    pub health_path: String,
    /// Readiness path, default `/ready`; the same as `health_path` for a service with one health
    /// endpoint (each probe then asks it once).
    #[serde(default = "default_ready")]
    #[schema(schema_with = path_schema)]
    pub ready_path: String,
    /// Metrics path, default `/metrics`.
    #[serde(default = "default_metrics")]
    #[schema(schema_with = path_schema)]
    pub metrics_path: String,
    /// Probe interval, 100 ms to 1 h; default 5,000.
    #[serde(default = "default_interval", deserialize_with = "whole_number")]
    #[schema(minimum = 100, maximum = 3_600_000, default = 5_000)]
    pub interval_ms: i32,
    /// Probe timeout, 50 ms to 60 s; default 1,000. A probe slower than the interval delays
    /// the next one (probes of one instance never overlap).
    #[serde(default = "default_timeout", deserialize_with = "whole_number")]
    #[schema(minimum = 50, maximum = 60_000, default = 1_000)]
    pub timeout_ms: i32,
    /// Free-form labels (up to 32; keys like Prometheus label names).
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
    /// How `https://` and `grpcs://` instances are verified; refused for other schemes.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::tls::object")]
    pub tls: Option<TlsSpec>,
    /// The service a `grpc(s)://` instance is asked about (default `""`, the server as a
    /// whole); refused for other schemes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._/-]{0,200}$")]
    pub grpc_service: Option<String>,
    /// The credential the gateway presents when it scrapes this target's metrics: the name of
    /// a bearer file an operator put in the gateway's credential directory
    /// (`gateway.credentials_dir`). Without one, nothing is presented: no platform secret is
    /// ever sent to a registered target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub credential: Option<String>,
    /// How its instances are judged `degraded` (slow, flaky or flapping while up); every
    /// field defaults, and `{"enabled": false}` turns detection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<DegradedSpec>,
}

/// How a target's instances are probed, from their URLs' scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`: GETs of the health and ready paths.
    Http,
    /// `https://`: the same over TLS, recording the certificate's expiry.
    Https,
    /// `tcp://`: a connection opening.
    Tcp,
    /// `grpc://`: `grpc.health.v1.Health/Check`.
    Grpc,
    /// `grpcs://`: the same over TLS.
    Grpcs,
}

impl Scheme {
    /// The scheme of `url`, when it is one probes speak.
    pub fn of(url: &str) -> Option<Self> {
        let (scheme, _) = url.split_once("://")?;
        Self::parse(scheme)
    }

    /// The scheme named `name` (`https`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "tcp" => Scheme::Tcp,
            "grpc" => Scheme::Grpc,
            "grpcs" => Scheme::Grpcs,
            _ => return None,
        })
    }

    /// Its name in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tcp => "tcp",
            Scheme::Grpc => "grpc",
            Scheme::Grpcs => "grpcs",
        }
    }

    /// Whether it speaks TLS (and takes a `tls` block).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Grpcs)
    }

    /// Whether it speaks gRPC (and takes `grpc_service`).
    pub fn is_grpc(self) -> bool {
        matches!(self, Scheme::Grpc | Scheme::Grpcs)
    }
}

/// A JSON number with no fractional part (`5000` or `5000.0`: JSON Schema's `integer`) as an
/// `i32`.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.fract() != 0.0 || value < f64::from(i32::MIN) || value > f64::from(i32::MAX) {
        return Err(serde::de::Error::custom(format!("expected a whole number, got {value}")));
    }
    // In range and whole: the conversion is exact.
    #[allow(clippy::cast_possible_truncation)]
    Ok(value as i32)
}

fn string_schema(pattern: &str, description: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .build()
}

fn name_schema() -> utoipa::openapi::Object {
    string_schema(NAME_PATTERN, "Unique name: 1–63 of a-z 0-9 - _ ., starting with a letter or digit")
}

fn path_schema() -> utoipa::openapi::Object {
    string_schema(PATH_PATTERN, "A path starting with '/'")
}

fn instances_schema() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(string_schema(INSTANCE_PATTERN, "An instance's base URL"))
        // At least one unless the target discovers its instances: the API's document states
        // that across the two fields (`oneOf`); a discovered target answers `[]` until
        // resolved.
        .max_items(Some(MAX_INSTANCES))
        .unique_items(true)
        .description(Some("Base URLs, one per instance"))
        .build()
}

fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::AdditionalProperties;
    let value = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .max_length(Some(MAX_LABEL_VALUE))
        .pattern(Some("^[^\\x00]*$"))
        .build();
    utoipa::openapi::ObjectBuilder::new()
        .property_names(Some(string_schema(LABEL_KEY_PATTERN, "A label key")))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .max_properties(Some(MAX_LABELS))
        .description(Some("Free-form labels"))
        .build()
}

fn default_health() -> String {
    "/health".into()
}
fn default_ready() -> String {
    "/ready".into()
}
fn default_metrics() -> String {
    "/metrics".into()
}
fn default_interval() -> i32 {
    5_000
}
fn default_timeout() -> i32 {
    1_000
}

impl TargetSpec {
    /// Checks every field; the first problem is returned, naming its field.
    ///
    /// # Errors
    /// [`Invalid`], naming the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !matches(NAME_PATTERN, &self.name) {
            return Err(Invalid::new("name", "1 to 63 of a-z, 0-9, '-', '_', '.', starting with a letter or digit"));
        }
        match &self.discovery {
            Some(_) if !self.instances.is_empty() => {
                return Err(Invalid::new(
                    "discovery",
                    "a target has either `instances` or `discovery`, not both: discovered instances are written by caracal-control",
                ));
            }
            Some(discovery) => discovery.validate()?,
            None if self.instances.is_empty() || self.instances.len() > MAX_INSTANCES => {
                return Err(Invalid::new(
                    "instances",
                    format!("between 1 and {MAX_INSTANCES} base URLs (or `discovery` instead)"),
                ));
            }
            None => {}
        }
        for (i, url) in self.instances.iter().enumerate() {
            if let Err(why) = check_base_url(url) {
                return Err(Invalid::new(format!("instances[{i}]"), why));
            }
            if self.instances[..i].contains(url) {
                return Err(Invalid::new(format!("instances[{i}]"), "listed twice"));
            }
            if i > 0 && Scheme::of(url) != Scheme::of(&self.instances[0]) {
                return Err(Invalid::new(
                    format!("instances[{i}]"),
                    "every instance of a target uses the same scheme (register another target for another scheme)",
                ));
            }
        }
        let scheme = self.scheme();
        if let Some(tls) = &self.tls {
            if !scheme.is_tls() {
                return Err(Invalid::new(
                    "tls",
                    format!("only for https:// and grpcs:// instances, not {}://", scheme.as_str()),
                ));
            }
            tls.validate()?;
        }
        if let Some(service) = &self.grpc_service {
            if !scheme.is_grpc() {
                return Err(Invalid::new(
                    "grpc_service",
                    format!("only for grpc:// and grpcs:// instances, not {}://", scheme.as_str()),
                ));
            }
            if !matches(GRPC_SERVICE_PATTERN, service) {
                return Err(Invalid::new("grpc_service", "up to 200 of A-Z a-z 0-9 . _ / -"));
            }
        }
        if let Some(credential) = &self.credential
            && !matches(NAME_PATTERN, credential)
        {
            return Err(Invalid::new(
                "credential",
                "the name of a credential file: 1 to 63 of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
            ));
        }
        if let Some(degraded) = &self.degraded {
            degraded.validate()?;
        }
        for (field, path) in
            [("health_path", &self.health_path), ("ready_path", &self.ready_path), ("metrics_path", &self.metrics_path)]
        {
            if !matches(PATH_PATTERN, path) {
                return Err(Invalid::new(
                    field,
                    "a path starting with '/', at most 256 characters of a-z A-Z 0-9 . _ ~ ! $ & ' ( ) * + , ; = : @ % / -",
                ));
            }
        }
        if !INTERVAL_MS.contains(&self.interval_ms) {
            return Err(Invalid::new(
                "interval_ms",
                format!("between {} and {}", INTERVAL_MS.start(), INTERVAL_MS.end()),
            ));
        }
        if !TIMEOUT_MS.contains(&self.timeout_ms) {
            return Err(Invalid::new("timeout_ms", format!("between {} and {}", TIMEOUT_MS.start(), TIMEOUT_MS.end())));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(Invalid::new("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (key, value) in &self.labels {
            if !matches(LABEL_KEY_PATTERN, key) {
                return Err(Invalid::new(format!("labels.{key}"), "label keys are 1 to 63 of A-Z, a-z, 0-9, '_'"));
            }
            if value.contains('\0') {
                // PostgreSQL's text (and jsonb) cannot hold NUL.
                return Err(Invalid::new(format!("labels.{key}"), "label values cannot contain NUL (U+0000)"));
            }
            if value.chars().count() > MAX_LABEL_VALUE {
                return Err(Invalid::new(format!("labels.{key}"), "label values are at most 256 characters"));
            }
        }
        Ok(())
    }
}

impl TargetSpec {
    /// How its instances are probed: the scheme of its instances, or of its discovery.
    pub fn scheme(&self) -> Scheme {
        let named = match (&self.discovery, self.instances.first()) {
            (Some(d), _) => Scheme::parse(&d.dns.scheme),
            (None, Some(url)) => Scheme::of(url),
            (None, None) => None,
        };
        named.unwrap_or(Scheme::Http)
    }

    /// A digest of what a plan compares (`caracal apply`, caracal-control's declared files):
    /// two documents a plan would leave as they are have the same digest. Instances count as a
    /// set, and not at all for a discovered target (they are control's); no `degraded` block
    /// and a block of defaults are alike. The name is not part of it.
    ///
    /// SHA-256 over a JSON rendering, as 32 hex digits: the same in every release that renders
    /// the compared fields alike. A digest that differs only makes a planner fetch the
    /// document and compare field by field, so a later release's digest is never wrong, only
    /// slower.
    pub fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        #[derive(Serialize)]
        struct Compared<'a> {
            instances: &'a [String],
            discovery: &'a Option<Discovery>,
            health_path: &'a str,
            ready_path: &'a str,
            metrics_path: &'a str,
            interval_ms: i32,
            timeout_ms: i32,
            labels: &'a BTreeMap<String, String>,
            tls: &'a Option<TlsSpec>,
            grpc_service: &'a Option<String>,
            credential: &'a Option<String>,
            degraded: Option<&'a DegradedSpec>,
        }
        static DEFAULTS: std::sync::LazyLock<DegradedSpec> = std::sync::LazyLock::new(DegradedSpec::default);
        // Instances as a set: in order, each once (a copy only when they are not already).
        let sorted: Vec<String>;
        let instances: &[String] = match self.discovery {
            Some(_) => &[],
            None if self.instances.is_sorted_by(|a, b| a < b) => &self.instances,
            None => {
                let mut copy = self.instances.clone();
                copy.sort_unstable();
                copy.dedup();
                sorted = copy;
                &sorted
            }
        };
        let compared = Compared {
            instances,
            discovery: &self.discovery,
            health_path: &self.health_path,
            ready_path: &self.ready_path,
            metrics_path: &self.metrics_path,
            interval_ms: self.interval_ms,
            timeout_ms: self.timeout_ms,
            labels: &self.labels,
            tls: &self.tls,
            grpc_service: &self.grpc_service,
            credential: &self.credential,
            // No block and a block of defaults are alike: both render as `null`.
            degraded: self.degraded.as_ref().filter(|d| **d != *DEFAULTS),
        };
        // Rendering plain data to JSON cannot fail.
        let rendered = serde_json::to_vec(&compared).unwrap_or_default();
        let mut hex = String::with_capacity(32);
        for byte in &Sha256::digest(&rendered)[..16] {
            // Writing to a String cannot fail.
            let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{byte:02x}"));
        }
        hex
    }
}

/// A registered target as `GET /v1/targets/_digests` lists it: enough to plan a declared file
/// against the registry without reading every document (see [`TargetSpec::digest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TargetDigest {
    /// The target's name.
    pub name: String,
    /// Who owns it: `api`, `control` or `platform`.
    pub managed_by: String,
    /// The file that declares it, for a target control owns.
    pub declared_in: Option<String>,
    /// [`TargetSpec::digest`] of its document.
    pub digest: String,
}

/// An instance URL ([`INSTANCE_PATTERN`]): `http(s)://host[:port][/prefix]` with no query or
/// fragment, or `tcp|grpc|grpcs://host:port`.
fn check_base_url(url: &str) -> Result<(), String> {
    let Some(scheme) = Scheme::of(url) else {
        return Err("must start with http://, https://, tcp://, grpc:// or grpcs://".into());
    };
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment".into());
    }
    if caracal_core::outbound::host_of(url).is_some_and(|host| caracal_core::outbound::literal(host).is_err()) {
        return Err("a host is a dotted quad such as 10.0.0.1 or a name whose last label starts with a letter: other numeric forms (2852039166, 0x7f.1, 127.1) are refused".into());
    }
    if !matches(INSTANCE_PATTERN, url) {
        return Err(match scheme {
            Scheme::Http | Scheme::Https => {
                format!(
                    "must be {}://host[:port][/prefix] (a dotted quad, or a host of a-z A-Z 0-9 . - whose last label starts with a letter; port 1 to 65535)",
                    scheme.as_str()
                )
            }
            _ => format!(
                "must be {}://host:port (a dotted quad, or a host of a-z A-Z 0-9 . - whose last label starts with a letter; port 1 to 65535, no path)",
                scheme.as_str()
            ),
        });
    }
    Ok(())
}

/// A registered target, as answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Target {
    /// The registered document.
    #[serde(flatten)]
    pub spec: TargetSpec,
    /// When it was registered (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Since when probing is paused (RFC 3339); `null` while it is probed.
    pub paused_at: Option<String>,
    /// Who owns it: `api` (created through the API), `control` (declared in a file) or
    /// `platform` (one of the platform's own services, registered from `api.platform`).
    pub managed_by: String,
    /// The file that declares it, for a target control owns.
    pub declared_in: Option<String>,
    /// How its instances were last resolved, for a discovered target (`null` before the first
    /// resolution, and for listed instances).
    pub discovery_status: Option<crate::discovery::DiscoveryStatus>,
    /// The certificate each TLS instance last presented (instances not probed over TLS yet
    /// are left out).
    #[serde(default)]
    pub certificates: Vec<InstanceCertificate>,
    /// Its instances shown `degraded` now, each with its verdict (the others are left out).
    #[serde(default)]
    pub degraded_instances: Vec<InstanceDegraded>,
}

/// Why an instance is degraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceDegraded {
    /// The instance's URL.
    pub instance: String,
    /// The detector that fired: `latency`, `errors`, `outlier` or `flapping`.
    pub reason: String,
    /// What it saw, with figures.
    pub detail: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// When the certificate an instance presented expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceCertificate {
    /// The instance's URL.
    pub instance: String,
    /// The earliest `notAfter` of the chain it presented (RFC 3339).
    pub certificate_expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TargetSpec {
        serde_json::from_value(serde_json::json!({"name": "shop", "instances": ["http://127.0.0.1:7001"]}))
            .expect("minimal spec")
    }

    fn field_of(spec: &TargetSpec) -> String {
        match spec.validate() {
            Err(Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_sensible_and_valid() {
        let s = spec();
        assert_eq!(
            (s.health_path.as_str(), s.ready_path.as_str(), s.metrics_path.as_str()),
            ("/health", "/ready", "/metrics")
        );
        assert_eq!((s.interval_ms, s.timeout_ms), (5_000, 1_000));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut s = spec();
        s.name = "Shop!".into();
        assert_eq!(field_of(&s), "name");
        let mut s = spec();
        s.instances = vec!["http://a:1".into(), "ftp://b".into()];
        assert_eq!(field_of(&s), "instances[1]");
        let mut s = spec();
        s.instances = vec!["http://a:1".into(), "http://a:1".into()];
        assert_eq!(field_of(&s), "instances[1]");
        let mut s = spec();
        s.instances = vec!["http://a:1/?x=1".into()];
        assert_eq!(field_of(&s), "instances[0]");
        let mut s = spec();
        s.instances.clear();
        assert_eq!(field_of(&s), "instances");
        let mut s = spec();
        s.ready_path = "ready".into();
        assert_eq!(field_of(&s), "ready_path");
        let mut s = spec();
        s.interval_ms = 10;
        assert_eq!(field_of(&s), "interval_ms");
        let mut s = spec();
        s.timeout_ms = 60_001;
        assert_eq!(field_of(&s), "timeout_ms");
        let mut s = spec();
        s.instances = vec!["http://a:65536".into()];
        assert_eq!(field_of(&s), "instances[0]", "ports stop at 65535");
        let mut s = spec();
        s.labels.insert("team".into(), "é".repeat(256));
        assert!(s.validate().is_ok(), "label values are counted in characters, as JSON Schema counts");
        let whole: TargetSpec =
            serde_json::from_value(serde_json::json!({"name": "x", "instances": ["http://a"], "interval_ms": 321.0}))
                .expect("a whole float is an integer");
        assert_eq!(whole.interval_ms, 321);
        assert!(
            serde_json::from_value::<TargetSpec>(
                serde_json::json!({"name": "x", "instances": ["http://a"], "interval_ms": 1.5})
            )
            .is_err()
        );
        let mut s = spec();
        s.labels.insert("bad-key".into(), "v".into());
        assert_eq!(field_of(&s), "labels.bad-key");
        for numeric in ["http://2852039166/", "http://0x7f.1:80", "tcp://127.1:22", "https://0177.0.0.1"] {
            let mut s = spec();
            s.instances = vec![numeric.into()];
            assert_eq!(field_of(&s), "instances[0]", "{numeric}");
        }
        let mut s = spec();
        s.credential = Some("../etc/passwd".into());
        assert_eq!(field_of(&s), "credential");
        s.credential = Some("payments-scraper".into());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn schemes_and_their_settings() {
        let of = |v: serde_json::Value| serde_json::from_value::<TargetSpec>(v).expect("a document");
        for good in [
            serde_json::json!({"name": "a", "instances": ["https://shop.test/api"], "tls": {"server_name": "shop.internal"}}),
            serde_json::json!({"name": "a", "instances": ["tcp://db.test:5432"]}),
            serde_json::json!({"name": "a", "instances": ["grpc://cart.test:50051"], "grpc_service": "shop.Cart"}),
            serde_json::json!({"name": "a", "instances": ["grpcs://cart.test:443"], "grpc_service": "", "tls": {}}),
            serde_json::json!({"name": "a", "discovery": {"dns": {"name": "x.test", "port": 443, "scheme": "https"}}, "tls": {}}),
        ] {
            assert!(of(good.clone()).validate().is_ok(), "{good}");
        }
        let field = |v: serde_json::Value| field_of(&of(v));
        assert_eq!(field(serde_json::json!({"name": "a", "instances": ["http://a:1"], "tls": {}})), "tls");
        assert_eq!(
            field(serde_json::json!({"name": "a", "instances": ["https://a:1"], "grpc_service": "x"})),
            "grpc_service"
        );
        assert_eq!(
            field(serde_json::json!({"name": "a", "instances": ["grpc://a:1"], "grpc_service": "a b"})),
            "grpc_service"
        );
        assert_eq!(
            field(serde_json::json!({"name": "a", "instances": ["tcp://a"]})),
            "instances[0]",
            "tcp needs a port"
        );
        assert_eq!(field(serde_json::json!({"name": "a", "instances": ["grpc://a:1/path"]})), "instances[0]");
        assert_eq!(field(serde_json::json!({"name": "a", "instances": ["tcp://a:1", "grpc://a:2"]})), "instances[1]");
        assert_eq!(
            field(serde_json::json!({"name": "a", "discovery": {"dns": {"name": "x.test", "port": 1}}, "tls": {}})),
            "tls",
            "a discovered target's scheme is its discovery's"
        );
        assert_eq!(Scheme::of("grpcs://a:1"), Some(Scheme::Grpcs));
        assert_eq!(Scheme::of("ftp://a"), None);
    }

    #[test]
    fn an_answered_target_reads_back() {
        let answered = serde_json::json!({
            "name": "shop", "instances": ["http://a:1"], "health_path": "/health", "ready_path": "/ready",
            "metrics_path": "/metrics", "interval_ms": 5000, "timeout_ms": 1000, "labels": {},
            "created_at": "t", "updated_at": "t", "paused_at": null, "managed_by": "api",
            "declared_in": null, "discovery_status": null, "certificates": [], "degraded_instances": []
        });
        let target: Target = serde_json::from_value(answered.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(&target).expect("json"), answered);
    }

    /// The schema's pattern and the numeric-host rule refuse exactly the same hosts, so what the
    /// OpenAPI document allows is what the server takes.
    #[test]
    fn the_pattern_and_the_numeric_host_rule_agree() {
        for host in [
            "10.0.0.1",
            "255.255.255.255",
            "256.1.1.1",
            "010.0.0.1",
            "2852039166",
            "0x7f",
            "0x7f.1",
            "127.1",
            "1.2.3.4.",
            "shop.test",
            "shop.test.",
            "a",
            "a1",
            "1a",
            "x.0a",
            "0a.x",
            "svc-2.ns.svc.cluster.local",
            "0",
            "a.1",
        ] {
            for url in [format!("http://{host}:80"), format!("tcp://{host}:80")] {
                let pattern = matches(INSTANCE_PATTERN, &url);
                let rule = caracal_core::outbound::literal(host).is_ok();
                assert_eq!(pattern, rule, "{url}");
                assert_eq!(check_base_url(&url).is_ok(), rule, "{url}");
            }
        }
    }

    #[test]
    fn instances_or_discovery_never_both() {
        let discovered: TargetSpec = serde_json::from_value(serde_json::json!({
            "name": "shop", "discovery": {"dns": {"name": "shop.test", "port": 8080}}
        }))
        .expect("a discovered target");
        assert!(discovered.instances.is_empty());
        assert!(discovered.validate().is_ok());
        let mut both = discovered.clone();
        both.instances = vec!["http://a:1".into()];
        assert_eq!(field_of(&both), "discovery");
        let mut bad = discovered;
        bad.discovery.as_mut().expect("set").dns.port = None;
        assert_eq!(field_of(&bad), "discovery.dns.port", "discovery's own fields are checked too");
        let mut neither = spec();
        neither.instances.clear();
        assert_eq!(field_of(&neither), "instances");
    }
}
