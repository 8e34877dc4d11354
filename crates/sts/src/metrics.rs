//! The `caracal_sts_*` families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The outcome of a token request (`result` label): `issued`, or the OAuth error code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// `issued`, `invalid_request`, `invalid_client`, `unsupported_grant_type`,
    /// `invalid_scope`, `server_error`.
    pub result: &'static str,
}

/// The STS's figures; registered under the `caracal_sts` prefix.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `caracal_sts_tokens_issued_total{result}`.
    pub issued: Family<ResultLabels, Counter>,
    /// `caracal_sts_active_key_expiry_timestamp_seconds`: when signing stops being covered by
    /// the keys made so far (the active key's end, or its pre-published successor's).
    pub active_key_expiry: Gauge,
    /// `caracal_sts_keys_published`: keys in the JWKS.
    pub keys_published: Gauge,
    /// `caracal_sts_key_rotations_total`: keys this replica created.
    pub rotations: Counter,
    /// `caracal_sts_revocations_total`: revocations this replica recorded.
    pub revocations: Counter,
}

impl Metrics {
    /// Registers the families in `registry` (already prefixed `caracal_sts`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("tokens_issued", "Token requests, by result (issued or the OAuth error)", m.issued.clone());
        registry.register(
            "active_key_expiry_timestamp_seconds",
            "When signing stops being covered by the keys made so far (Unix time)",
            m.active_key_expiry.clone(),
        );
        registry.register("keys_published", "Keys in the JWKS", m.keys_published.clone());
        registry.register("key_rotations", "Signing keys this replica created", m.rotations.clone());
        registry.register("revocations", "Revocations this replica recorded", m.revocations.clone());
        m
    }
}
