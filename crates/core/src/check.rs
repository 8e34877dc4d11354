//! What a readiness check is: a name, a rung, timing, and an async probe.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::CheckDefaults;

/// The ladder's rungs, lowest first. A rung is evaluated only while every rung below passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    /// The process itself (configuration loaded, keys present).
    Process,
    /// PostgreSQL and Redis.
    Storage,
    /// Streams, outbox, revocations.
    Delivery,
    /// Service-specific checks.
    Service,
}

impl Rung {
    /// Every rung, lowest first.
    pub const ALL: [Rung; 4] = [Rung::Process, Rung::Storage, Rung::Delivery, Rung::Service];

    /// The name used in metrics labels and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Process => "process",
            Rung::Storage => "storage",
            Rung::Delivery => "delivery",
            Rung::Service => "service",
        }
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A measured figure a check reports with its result (`observedValue` + `observedUnit`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    /// The figure, if the check measures one.
    pub value: Option<f64>,
    /// Its unit (`ms`, `s`, `entries`, `rows`, ...).
    pub unit: Option<&'static str>,
}

impl Observed {
    /// A figure with its unit.
    pub fn new(value: f64, unit: &'static str) -> Self {
        Self { value: Some(value), unit: Some(unit) }
    }
}

/// Why one run of a check failed, with whatever it measured before failing.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Error text (shown only in dev mode or to a caller presenting the metrics bearer).
    pub output: String,
    /// What was measured, if anything.
    pub observed: Observed,
}

impl Failure {
    /// A failure with a message and no figure.
    pub fn new(output: impl Into<String>) -> Self {
        Self { output: output.into(), observed: Observed::default() }
    }

    /// A failure with a message and the figure that crossed a threshold.
    pub fn with(output: impl Into<String>, observed: Observed) -> Self {
        Self { output: output.into(), observed }
    }
}

/// The result of one run of a check's probe.
pub type ProbeResult = Result<Observed, Failure>;

type ProbeFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ProbeResult> + Send>> + Send + Sync>;

/// A readiness check: `component:measurement` name, rung, timing and the probe that runs it.
///
/// Built with [`Check::new`] and adjusted with the builder methods; timing left unset comes
/// from the service's `checks.*` configuration.
#[derive(Clone)]
pub struct Check {
    pub(crate) name: String,
    pub(crate) rung: Rung,
    pub(crate) required: bool,
    pub(crate) component_type: &'static str,
    pub(crate) interval: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) failure_threshold: Option<u32>,
    pub(crate) success_threshold: Option<u32>,
    pub(crate) probe: ProbeFn,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("rung", &self.rung)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A required check named `name` (`component:measurement`) on `rung`, running `probe`.
    ///
    /// # Panics
    /// When `name` is not of the form `component:measurement` (lowercase letters, digits, `_`,
    /// `.` and `-` on each side): names are written in code, so this is a programming error.
    pub fn new<F, Fut>(name: impl Into<String>, rung: Rung, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ProbeResult> + Send + 'static,
    {
        let name = name.into();
        assert!(valid_name(&name), "check name {name:?} is not `component:measurement`");
        Self {
            name,
            rung,
            required: true,
            component_type: "component",
            interval: None,
            timeout: None,
            failure_threshold: None,
            success_threshold: None,
            probe: Arc::new(move || Box::pin(probe())),
        }
    }

    /// Whether a failure makes the service unready (`true`, the default) or only `warn`.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// The IETF `componentType` (`datastore`, `component`, `system`).
    pub fn component_type(mut self, component_type: &'static str) -> Self {
        self.component_type = component_type;
        self
    }

    /// Time between runs.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Longest a run may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Consecutive failures before reporting failing, successes before reporting passing.
    pub fn thresholds(mut self, failure: u32, success: u32) -> Self {
        self.failure_threshold = Some(failure.max(1));
        self.success_threshold = Some(success.max(1));
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The check's rung.
    pub fn rung(&self) -> Rung {
        self.rung
    }

    /// Fills timing left unset from the service's defaults.
    pub(crate) fn timing(&self, defaults: &CheckDefaults) -> Timing {
        Timing {
            interval: self.interval.unwrap_or(defaults.interval),
            timeout: self.timeout.unwrap_or(defaults.timeout),
            failure_threshold: self.failure_threshold.unwrap_or(defaults.failure_threshold),
            success_threshold: self.success_threshold.unwrap_or(defaults.success_threshold),
        }
    }
}

/// A check's timing once defaults are applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) success_threshold: u32,
}

fn valid_name(name: &str) -> bool {
    let part_ok =
        |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    matches!(name.split_once(':'), Some((component, measurement)) if part_ok(component) && part_ok(measurement))
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_component_colon_measurement() {
        assert!(valid_name("postgres:connectivity"));
        assert!(valid_name("caracal.events:lag"));
        assert!(!valid_name("postgres"));
        assert!(!valid_name(":lag"));
        assert!(!valid_name("Postgres:up"));
        assert!(!valid_name("a:b:c"));
    }
}
