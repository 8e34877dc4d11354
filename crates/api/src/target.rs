//! The target document: what operators register, its validation and its defaults.

use std::collections::BTreeMap;

use axum::http::Uri;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

/// Probe intervals accepted, in milliseconds.
pub const INTERVAL_MS: std::ops::RangeInclusive<i32> = 100..=3_600_000;
/// Probe timeouts accepted, in milliseconds (and below the interval).
pub const TIMEOUT_MS: std::ops::RangeInclusive<i32> = 50..=60_000;
/// Instances per target.
pub const MAX_INSTANCES: usize = 100;
/// Labels per target.
pub const MAX_LABELS: usize = 32;

/// A target as registered: a named service with one or more instances to probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Unique name: 1–63 of `a-z 0-9 - _ .`, starting with a letter or digit.
    pub name: String,
    /// Base URLs (`http://host:port`), one per instance; 1 to 100, distinct.
    pub instances: Vec<String>,
    /// Liveness path, default `/health`.
    #[serde(default = "default_health")]
    pub health_path: String,
    /// Readiness path, default `/ready`.
    #[serde(default = "default_ready")]
    pub ready_path: String,
    /// Metrics path, default `/metrics`.
    #[serde(default = "default_metrics")]
    pub metrics_path: String,
    /// Probe interval, 100 ms to 1 h; default 5,000.
    #[serde(default = "default_interval")]
    pub interval_ms: i32,
    /// Probe timeout, 50 ms to 60 s and below the interval; default 1,000.
    #[serde(default = "default_timeout")]
    pub timeout_ms: i32,
    /// Free-form labels (up to 32; keys like Prometheus label names).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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
    /// [`ApiError::Validation`].
    pub fn validate(&self) -> Result<(), ApiError> {
        let name_ok = (1..=63).contains(&self.name.len())
            && self.name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !name_ok {
            return Err(ApiError::invalid(
                "name",
                "1 to 63 of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
            ));
        }
        if self.instances.is_empty() || self.instances.len() > MAX_INSTANCES {
            return Err(ApiError::invalid("instances", format!("between 1 and {MAX_INSTANCES} base URLs")));
        }
        for (i, url) in self.instances.iter().enumerate() {
            if let Err(why) = check_base_url(url) {
                return Err(ApiError::invalid(format!("instances[{i}]"), why));
            }
            if self.instances[..i].contains(url) {
                return Err(ApiError::invalid(format!("instances[{i}]"), "listed twice"));
            }
        }
        for (field, path) in
            [("health_path", &self.health_path), ("ready_path", &self.ready_path), ("metrics_path", &self.metrics_path)]
        {
            if !path.starts_with('/') || path.len() > 256 || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ApiError::invalid(
                    field,
                    "a path starting with '/', at most 256 characters, no whitespace",
                ));
            }
        }
        if !INTERVAL_MS.contains(&self.interval_ms) {
            return Err(ApiError::invalid(
                "interval_ms",
                format!("between {} and {}", INTERVAL_MS.start(), INTERVAL_MS.end()),
            ));
        }
        if !TIMEOUT_MS.contains(&self.timeout_ms) || self.timeout_ms >= self.interval_ms {
            return Err(ApiError::invalid(
                "timeout_ms",
                format!("between {} and {}, and below interval_ms", TIMEOUT_MS.start(), TIMEOUT_MS.end()),
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(ApiError::invalid("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (key, value) in &self.labels {
            let key_ok = (1..=63).contains(&key.len())
                && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok {
                return Err(ApiError::invalid(format!("labels.{key}"), "label keys are 1 to 63 of A-Z, a-z, 0-9, '_'"));
            }
            if value.len() > 256 {
                return Err(ApiError::invalid(format!("labels.{key}"), "label values are at most 256 characters"));
            }
        }
        Ok(())
    }
}

/// An `http(s)://host[:port][/prefix]` URL with no query or fragment.
fn check_base_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    if uri.scheme_str() != Some("http") {
        // Probes speak plain HTTP (in-cluster, like kubelet's); TLS probing is not built yet.
        return Err("must start with http:// (https targets are not supported yet)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if uri.query().is_some() || url.contains('#') {
        return Err("must not have a query or fragment".into());
    }
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    Ok(())
}

/// A registered target, as answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Target {
    /// The registered document.
    #[serde(flatten)]
    pub spec: TargetSpec,
    /// When it was registered (RFC 3339).
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
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
            Err(ApiError::Validation { field, .. }) => field,
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
        s.timeout_ms = 5_000;
        assert_eq!(field_of(&s), "timeout_ms", "a timeout must be below the interval");
        let mut s = spec();
        s.labels.insert("bad-key".into(), "v".into());
        assert_eq!(field_of(&s), "labels.bad-key");
    }
}
