//! The readiness checks of a service that verifies tokens.

use std::sync::Arc;
use std::time::Duration;

use caracal_core::{Check, Failure, Observed, Rung};

use crate::metrics::Metrics;
use crate::verifier::Verifier;

/// `sts:keys_loaded` (service rung, required): the verifier holds the STS's keys, so a valid
/// token can be verified. Observes how many keys it holds.
pub fn keys_loaded(verifier: Arc<Verifier>) -> Check {
    Check::new("sts:keys_loaded", Rung::Service, move || {
        let verifier = Arc::clone(&verifier);
        async move {
            let observed = Observed::new(verifier.key_count() as f64, "keys");
            if verifier.keys_loaded() {
                Ok(observed)
            } else {
                Err(Failure::with("no signing key of the STS is loaded yet (is the STS reachable?)", observed))
            }
        }
    })
    .component_type("component")
}

/// `revocations:lag` (delivery rung, required): the revocation set was known current within
/// `max_lag`, so a revoked token is refused in time. Records `caracal_revocations_lag`.
pub fn revocations_lag(verifier: Arc<Verifier>, metrics: Metrics, max_lag: Duration) -> Check {
    Check::new("revocations:lag", Rung::Delivery, move || {
        let verifier = Arc::clone(&verifier);
        let metrics = metrics.clone();
        async move {
            verifier.note_revocations();
            let Some(lag) = verifier.revocations().lag() else {
                metrics.revocations_lag.set(-1.0);
                return Err(Failure::new("the revocation set has not been loaded yet"));
            };
            let observed = Observed::new(lag.as_secs_f64(), "s");
            if lag > max_lag {
                Err(Failure::with(
                    format!(
                        "revocations last known current {:.1}s ago (limit {:.1}s)",
                        lag.as_secs_f64(),
                        max_lag.as_secs_f64()
                    ),
                    observed,
                ))
            } else {
                Ok(observed)
            }
        }
    })
}
