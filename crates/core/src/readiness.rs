//! [`Readiness`]: a read-only view of the latest check results for a service's own endpoints
//! (a public status page, say), so they never need to call a dependency themselves.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;

use crate::check::Observed;
use crate::evaluator::Evaluator;
use crate::ladder::{self, Status};

/// A handle to the ladder's latest results; cheap to clone, filled once the app starts.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    evaluator: Arc<ArcSwapOption<Evaluator>>,
}

/// One check's latest result as `/ready` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckView {
    /// `pass`, `warn`, `fail` or `skipped`.
    pub status: Status,
    /// What the latest run measured.
    pub observed: Observed,
    /// How long the latest run took.
    pub took: Option<std::time::Duration>,
    /// When the latest run finished.
    pub time: Option<SystemTime>,
}

impl Readiness {
    pub(crate) fn attach(&self, evaluator: Arc<Evaluator>) {
        self.evaluator.store(Some(evaluator));
    }

    /// The latest result of check `name`; `None` before start or for an unknown name.
    pub fn check(&self, name: &str) -> Option<CheckView> {
        let evaluator = self.evaluator.load_full()?;
        let snapshot = evaluator.snapshot();
        let report = ladder::report(&snapshot.states, Instant::now());
        report.checks.iter().find(|c| c.state.name == name).map(|c| CheckView {
            status: c.status,
            observed: c.state.observed,
            took: c.state.took,
            time: c.state.time,
        })
    }

    /// The service's overall status (`fail` before start).
    pub fn status(&self) -> Status {
        self.evaluator.load_full().map_or(Status::Fail, |e| ladder::report(&e.snapshot().states, Instant::now()).status)
    }
}
