//! The token families every verifying service exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a presented token was refused (`reason` label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A [`crate::VerifyError::reason`].
    pub reason: &'static str,
}

/// Token verification figures.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `caracal_token_verifications_total`: tokens verified and accepted.
    pub verified: Counter,
    /// `caracal_token_verification_failures_total{reason}`.
    pub failures: Family<ReasonLabels, Counter>,
    /// `caracal_revocations_lag`: seconds since the revocation set was last known current
    /// (`-1` until it has been loaded once).
    pub revocations_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `caracal_revocations_in_force`: revocations held.
    pub revocations_in_force: Gauge,
    /// `caracal_token_keys_loaded`: verification keys held.
    pub keys_loaded: Gauge,
}

impl Metrics {
    /// Registers the families in `registry` (names as above).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("caracal_token_verifications", "Access tokens verified and accepted", m.verified.clone());
        registry.register(
            "caracal_token_verification_failures",
            "Access tokens refused, by reason",
            m.failures.clone(),
        );
        registry.register(
            "caracal_revocations_lag",
            "Seconds since the token revocation set was last known current (-1 before the first load)",
            m.revocations_lag.clone(),
        );
        registry.register("caracal_revocations_in_force", "Token revocations held", m.revocations_in_force.clone());
        registry.register("caracal_token_keys_loaded", "Token verification keys held", m.keys_loaded.clone());
        m.revocations_lag.set(-1.0);
        m
    }
}
