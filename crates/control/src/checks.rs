//! Control's readiness checks, beyond the storage rung: `dns:resolver`, `discovery:fresh`
//! (warn) and `targets_dir:valid` (warn). Each reads what its worker last saw; none touches a
//! nameserver, a file or the database itself.

use std::sync::Arc;

use caracal_core::{Check, Failure, Observed, Rung};

use crate::discovery::Health;
use crate::reconcile::Problems;

/// Resolutions in a row with no answer from any nameserver that fail `dns:resolver`.
const RESOLVER_DOWN_AFTER: u32 = 3;

/// `dns:resolver` (service rung, required): the nameservers answer. Fails after three
/// resolutions in a row got no answer at all (timeouts, unreachable servers); a refusal or
/// SERVFAIL is an answer about one name, and a single target's failure is
/// `discovery:fresh`'s business. Observes those failures in a row.
pub fn resolver(health: Arc<Health>) -> Check {
    Check::new("dns:resolver", Rung::Service, move || {
        let health = Arc::clone(&health);
        async move {
            let (failures, last) = health.failures_in_a_row();
            let observed = Observed::new(f64::from(failures), "failures");
            if failures >= RESOLVER_DOWN_AFTER {
                Err(Failure::with(
                    format!("the last {failures} resolutions got no answer ({})", last.unwrap_or_default()),
                    observed,
                ))
            } else {
                Ok(observed)
            }
        }
    })
    .component_type("component")
}

/// `discovery:fresh` (service rung, warn): every discovered target was resolved within three
/// of its refreshes. Observes how many were not.
pub fn fresh(health: Arc<Health>) -> Check {
    Check::new("discovery:fresh", Rung::Service, move || {
        let health = Arc::clone(&health);
        async move {
            let stale = health.stale();
            let observed = Observed::new(stale.len() as f64, "targets");
            if stale.is_empty() {
                return Ok(observed);
            }
            let names: Vec<String> =
                stale.iter().take(5).map(|(name, age)| format!("{name} ({:.0}s)", age.as_secs_f64())).collect();
            Err(Failure::with(
                format!(
                    "{} of {} discovered targets not resolved for over three refreshes: {}",
                    stale.len(),
                    health.targets(),
                    names.join(", ")
                ),
                observed,
            ))
        }
    })
    .required(false)
    .component_type("component")
}

/// `targets_dir:valid` (service rung, warn): every declared file parses, validates and could
/// be applied. Observes the problems; the output names each file and line.
pub fn targets_dir(problems: Arc<Problems>) -> Check {
    Check::new("targets_dir:valid", Rung::Service, move || {
        let problems = Arc::clone(&problems);
        async move {
            let current = problems.current();
            let observed = Observed::new(current.len() as f64, "problems");
            if current.is_empty() {
                return Ok(observed);
            }
            let lines: Vec<String> = current.iter().take(5).map(ToString::to_string).collect();
            Err(Failure::with(lines.join("; "), observed))
        }
    })
    .required(false)
    .component_type("component")
}
