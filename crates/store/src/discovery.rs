//! DNS discovery as a target declares it (`"discovery": {"dns": {...}}`), and how control last
//! resolved it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::target::{Invalid, matches};

/// A DNS name: dot-separated labels of `A-Z a-z 0-9 - _` (SRV names start `_http._tcp.`),
/// each 1–63 characters not starting or ending with `-`, optionally ending with a dot; at most
/// 253 characters in all ([`MAX_DNS_NAME`]).
pub const DNS_NAME_PATTERN: &str = "^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\
     (\\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\\.?$";
/// A discovered instance's URL: `scheme://host:port` where the host is a DNS name (SRV targets
/// may hold `_`) or a bracketed IPv6 address. What `GET /v1/targets` may answer in `instances`.
pub const DISCOVERED_URL_PATTERN: &str = "^(https?|tcp|grpcs?)://([A-Za-z0-9._-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\])(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$";

/// An instance URL as `GET /v1/targets` answers it: a listed one (`target::INSTANCE_PATTERN`)
/// or a discovered one ([`DISCOVERED_URL_PATTERN`]).
pub const ANSWERED_URL_PATTERN: &str = "^(https?|tcp|grpcs?)://([A-Za-z0-9._-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\])\
     (:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?\
     (/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,255})?$";

/// Whether `url` is one discovery may write ([`DISCOVERED_URL_PATTERN`]).
pub fn valid_url(url: &str) -> bool {
    matches(DISCOVERED_URL_PATTERN, url)
}

/// Longest DNS name, in characters.
pub const MAX_DNS_NAME: usize = 253;
/// Refresh intervals accepted, in milliseconds (control never resolves more often than 1 s).
pub const REFRESH_MS: std::ops::RangeInclusive<i32> = 1_000..=3_600_000;
/// Schemes a discovered instance may be probed with.
pub const SCHEMES: &[&str] = &["http", "https", "tcp", "grpc", "grpcs"];

/// Where a target's instances come from, instead of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Resolve a DNS name into instances.
    pub dns: DnsDiscovery,
}

/// A DNS name whose records are the target's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// The name to resolve (`shop.prod.svc.cluster.local`, `_http._tcp.shop.prod.svc...` for SRV).
    #[schema(
        pattern = "^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\\.?$",
        max_length = 253
    )]
    pub name: String,
    /// The record type: `A`, `AAAA` or `SRV` (SRV records give host and port).
    #[serde(rename = "type", default)]
    pub record_type: RecordType,
    /// The instances' port: required for `A`/`AAAA`, refused for `SRV`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "whole_port")]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u32>,
    /// How instances are probed: `http` (default), `https`, `tcp`, `grpc` or `grpcs`.
    #[serde(default = "default_scheme")]
    #[schema(pattern = "^(https?|tcp|grpcs?)$", default = "http")]
    pub scheme: String,
    /// How often to resolve, 1 s to 1 h (default 30,000); a record's shorter TTL wins, never
    /// below 1 s.
    #[serde(default = "default_refresh", deserialize_with = "crate::target::whole_number")]
    #[schema(minimum = 1000, maximum = 3_600_000, default = 30_000)]
    pub refresh_ms: i32,
}

/// A DNS record type discovery reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RecordType {
    /// IPv4 addresses, with the declared port.
    #[default]
    A,
    /// IPv6 addresses, with the declared port.
    #[serde(rename = "AAAA")]
    Aaaa,
    /// Host and port per record.
    #[serde(rename = "SRV")]
    Srv,
}

impl RecordType {
    /// Its name in DNS.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Srv => "SRV",
        }
    }
}

/// A JSON number with no fractional part (`8080` or `8080.0`: JSON Schema's `integer`), or
/// null, as a port.
fn whole_port<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let Some(value) = Option::<f64>::deserialize(deserializer)? else { return Ok(None) };
    if value.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&value) {
        return Err(serde::de::Error::custom(format!("expected a whole number, got {value}")));
    }
    // Whole and in range: the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Some(value as u32))
}

fn default_scheme() -> String {
    "http".into()
}
fn default_refresh() -> i32 {
    30_000
}

impl Discovery {
    /// Checks every field, naming the first bad one (`discovery.dns.port`).
    ///
    /// # Errors
    /// [`Invalid`].
    pub fn validate(&self) -> Result<(), Invalid> {
        let dns = &self.dns;
        let field = |name: &str| format!("discovery.dns.{name}");
        if dns.name.len() > MAX_DNS_NAME || !matches(DNS_NAME_PATTERN, &dns.name) {
            return Err(Invalid::new(
                field("name"),
                "a DNS name: dot-separated labels of 1 to 63 of A-Z a-z 0-9 - _, at most 253 characters",
            ));
        }
        match (dns.record_type, dns.port) {
            (RecordType::Srv, Some(_)) => {
                return Err(Invalid::new(field("port"), "SRV records carry their own ports; leave `port` out"));
            }
            (RecordType::A | RecordType::Aaaa, None) => {
                return Err(Invalid::new(field("port"), "required for A and AAAA records (1 to 65535)"));
            }
            (_, Some(port)) if !(1..=65_535).contains(&port) => {
                return Err(Invalid::new(field("port"), "between 1 and 65535"));
            }
            _ => {}
        }
        if !SCHEMES.contains(&dns.scheme.as_str()) {
            return Err(Invalid::new(field("scheme"), format!("one of: {}", SCHEMES.join(", "))));
        }
        if !REFRESH_MS.contains(&dns.refresh_ms) {
            return Err(Invalid::new(
                field("refresh_ms"),
                format!("between {} and {}", REFRESH_MS.start(), REFRESH_MS.end()),
            ));
        }
        Ok(())
    }
}

/// How control last resolved a discovered target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiscoveryStatus {
    /// The last attempt (RFC 3339).
    pub attempted_at: String,
    /// Its outcome: `ok`, `empty`, `nxdomain`, `timeout`, `servfail`, `refused` or `error`.
    pub outcome: String,
    /// The last successful resolution (RFC 3339), if any.
    pub resolved_at: Option<String>,
    /// Records in the last answer.
    pub records: i32,
    /// The lowest TTL among them, in seconds.
    pub ttl_s: Option<i32>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// One resolution's outcome, as `discovery_status` stores it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `targets.id`.
    pub id: i64,
    /// When it was attempted (Unix seconds).
    pub at: f64,
    /// `ok`, `empty`, `nxdomain`, `timeout`, `servfail`, `refused` or `error`.
    pub outcome: &'static str,
    /// Whether it resolved (its records replace the last known ones).
    pub resolved: bool,
    /// Records in the answer.
    pub records: i32,
    /// The lowest TTL among them, in seconds.
    pub ttl_s: Option<i32>,
    /// Authoritative empty answers in a row.
    pub empty_streak: i32,
    /// Why it failed.
    pub error: Option<String>,
}

/// Writes resolution outcomes in one statement (rows of targets deleted meanwhile are
/// skipped); a failed attempt keeps the last resolution's records and TTL.
///
/// # Errors
/// When the statement fails.
pub async fn record_outcomes(pool: &sqlx::PgPool, rows: &[Outcome]) -> Result<(), crate::Error> {
    sqlx::query(
        "INSERT INTO discovery_status (target_id, attempted_at, outcome, resolved_at, records, ttl_s, empty_streak, error) \
         SELECT u.id, to_timestamp(u.at), u.outcome, CASE WHEN u.resolved THEN to_timestamp(u.at) END, u.records, u.ttl_s, \
                u.empty_streak, u.error \
         FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::bool[], $5::int[], $6::int[], $7::int[], $8::text[]) \
              AS u(id, at, outcome, resolved, records, ttl_s, empty_streak, error) \
         JOIN targets t ON t.id = u.id \
         ON CONFLICT (target_id) DO UPDATE SET attempted_at = excluded.attempted_at, outcome = excluded.outcome, \
            resolved_at = COALESCE(excluded.resolved_at, discovery_status.resolved_at), \
            records = CASE WHEN excluded.resolved_at IS NULL THEN discovery_status.records ELSE excluded.records END, \
            ttl_s = CASE WHEN excluded.resolved_at IS NULL THEN discovery_status.ttl_s ELSE excluded.ttl_s END, \
            empty_streak = excluded.empty_streak, error = excluded.error",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.outcome).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.resolved).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.records).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ttl_s).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.empty_streak).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Discovered targets not resolved within three refresh intervals: how many, and their names
/// (for `caracal doctor`).
///
/// # Errors
/// When the query fails.
pub async fn stale(pool: &sqlx::PgPool) -> Result<(i64, Vec<String>), crate::Error> {
    Ok(sqlx::query_as(
        "SELECT count(*), COALESCE(array_agg(t.name ORDER BY t.name) FILTER (WHERE d.resolved_at IS NULL \
                OR d.resolved_at < now() - make_interval(secs => 3 * (t.discovery->'dns'->>'refresh_ms')::float8 / 1000)), '{}') \
         FROM targets t LEFT JOIN discovery_status d ON d.target_id = t.id WHERE t.discovery IS NOT NULL",
    )
    .fetch_one(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(value: serde_json::Value) -> Discovery {
        serde_json::from_value(serde_json::json!({ "dns": value })).expect("a discovery document")
    }

    fn field_of(d: &Discovery) -> String {
        d.validate().expect_err("invalid").field
    }

    #[test]
    fn defaults_and_good_documents() {
        let d = dns(serde_json::json!({"name": "shop.prod.svc.cluster.local", "port": 8080}));
        assert_eq!((d.dns.record_type, d.dns.scheme.as_str(), d.dns.refresh_ms), (RecordType::A, "http", 30_000));
        assert!(d.validate().is_ok());
        assert!(dns(serde_json::json!({"name": "_http._tcp.shop.test.", "type": "SRV"})).validate().is_ok());
        assert!(dns(serde_json::json!({"name": "v6.test", "type": "AAAA", "port": 1})).validate().is_ok());
        let whole = dns(serde_json::json!({"name": "x.test", "port": 8080.0}));
        assert_eq!(whole.dns.port, Some(8080), "a whole float is an integer");
        assert!(serde_json::from_value::<Discovery>(serde_json::json!({"dns": {"name": "x", "port": 80.5}})).is_err());
    }

    #[test]
    fn discovered_urls_are_hostnames_or_bracketed_ipv6() {
        for good in [
            "http://127.0.0.2:8080",
            "http://[::1]:80",
            "http://a_b.svc.cluster.local:9000",
            "https://x:443",
            "grpcs://x:1",
        ] {
            assert!(valid_url(good), "{good}");
        }
        for bad in ["http://a b:80", "http://[::1]:99999", "http://x:80/path", "ftp://x:80"] {
            assert!(!valid_url(bad), "{bad}");
        }
        let answered = regex::Regex::new(ANSWERED_URL_PATTERN).expect("a pattern");
        for either in ["http://[::1]:80", "http://127.0.0.1:7001/prefix", "http://shop_1.test:9000"] {
            assert!(answered.is_match(either), "{either}: the answer schema admits listed and discovered URLs");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            field_of(&dns(serde_json::json!({"name": "_s._tcp.x", "type": "SRV", "port": 80}))),
            "discovery.dns.port"
        );
        assert_eq!(field_of(&dns(serde_json::json!({"name": "x.test"}))), "discovery.dns.port");
        assert_eq!(field_of(&dns(serde_json::json!({"name": "x.test", "port": 70000}))), "discovery.dns.port");
        assert_eq!(field_of(&dns(serde_json::json!({"name": "not a name", "port": 1}))), "discovery.dns.name");
        assert_eq!(field_of(&dns(serde_json::json!({"name": "-x.test", "port": 1}))), "discovery.dns.name");
        assert_eq!(field_of(&dns(serde_json::json!({"name": "a..b", "port": 1}))), "discovery.dns.name");
        let long = format!("{}.test", "a".repeat(63).repeat(4));
        assert_eq!(field_of(&dns(serde_json::json!({"name": long, "port": 1}))), "discovery.dns.name");
        assert_eq!(
            field_of(&dns(serde_json::json!({"name": "x", "port": 1, "scheme": "ftp"}))),
            "discovery.dns.scheme"
        );
        assert_eq!(
            field_of(&dns(serde_json::json!({"name": "x", "port": 1, "refresh_ms": 10}))),
            "discovery.dns.refresh_ms"
        );
        let unknown = serde_json::from_value::<Discovery>(serde_json::json!({"dns": {"name": "x", "type": "MX"}}));
        assert!(unknown.is_err(), "MX is not a type discovery reads");
    }
}
