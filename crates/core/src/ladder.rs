//! The readiness ladder as plain data: each check's state, the snapshot `/ready` reads, and the
//! pure function that turns a snapshot into a report.
//!
//! Nothing here does I/O or keeps time itself; the evaluator feeds results in and `/ready`
//! reads reports out, so the rules (thresholds, staleness, rung gating) are tested directly.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::check::{Failure, Observed, ProbeResult, Rung, Timing};

/// The status of one check, or of the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passing.
    Pass,
    /// Failing, but not required: readiness holds.
    Warn,
    /// Failing (or stale, or not evaluated yet) and required.
    Fail,
    /// Not evaluated because a lower rung fails.
    Skipped,
}

impl Status {
    /// The lowercase name used in bodies and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// What the evaluator knows about one check; updated only by that check's own task.
#[derive(Debug, Clone)]
pub(crate) struct CheckState {
    pub(crate) name: String,
    pub(crate) rung: Rung,
    pub(crate) required: bool,
    pub(crate) component_type: &'static str,
    pub(crate) timing: Timing,
    /// `None` until the first result after start (or after being skipped).
    pub(crate) up: Option<bool>,
    ok_streak: u32,
    fail_streak: u32,
    /// The latest run's measurement and error text.
    pub(crate) observed: Observed,
    pub(crate) output: Option<String>,
    /// How long the latest run took.
    pub(crate) took: Option<Duration>,
    /// When the latest run finished (wall clock for the body, monotonic for staleness).
    pub(crate) time: Option<SystemTime>,
    pub(crate) evaluated_at: Option<Instant>,
}

impl CheckState {
    pub(crate) fn new(name: String, rung: Rung, required: bool, component_type: &'static str, timing: Timing) -> Self {
        Self {
            name,
            rung,
            required,
            component_type,
            timing,
            up: None,
            ok_streak: 0,
            fail_streak: 0,
            observed: Observed::default(),
            output: None,
            took: None,
            time: None,
            evaluated_at: None,
        }
    }

    /// Records one run's result. The first result decides the state at once; after that,
    /// `failure_threshold` consecutive failures (or `success_threshold` successes) are needed
    /// to change it. Returns `true` when the state flipped between up and down.
    pub(crate) fn record(&mut self, result: ProbeResult, took: Duration, now: Instant) -> bool {
        self.took = Some(took);
        let ok = result.is_ok();
        match result {
            Ok(observed) => {
                self.observed = observed;
                self.output = None;
            }
            Err(Failure { output, observed }) => {
                self.observed = observed;
                self.output = Some(output);
            }
        }
        self.time = Some(SystemTime::now());
        self.evaluated_at = Some(now);
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        let before = self.up;
        self.up = match before {
            None => Some(ok),
            Some(true) if self.fail_streak >= self.timing.failure_threshold => Some(false),
            Some(false) if self.ok_streak >= self.timing.success_threshold => Some(true),
            unchanged => unchanged,
        };
        before.is_some() && before != self.up
    }

    /// Forgets results: the check is above a failing rung and will start afresh when it runs.
    pub(crate) fn skip(&mut self) -> bool {
        let was_evaluated = self.up.is_some();
        *self = Self::new(std::mem::take(&mut self.name), self.rung, self.required, self.component_type, self.timing);
        was_evaluated
    }

    /// Whether the check counts as passing at `now`: up, and not stale (older than 3x its
    /// interval plus its timeout, so a slow-but-alive run is not called stale).
    pub(crate) fn passing(&self, now: Instant) -> bool {
        self.up == Some(true) && !self.stale(now)
    }

    fn stale(&self, now: Instant) -> bool {
        self.evaluated_at.is_some_and(|at| now.saturating_duration_since(at) > stale_after(self))
    }
}

/// One check as `/ready` reports it.
#[derive(Debug, Clone)]
pub(crate) struct CheckReport<'a> {
    pub(crate) state: &'a CheckState,
    pub(crate) status: Status,
    /// Error text, or why the check is not passing (`stale`, `skipped`, not evaluated yet).
    pub(crate) output: Option<String>,
}

/// The whole ladder at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Report<'a> {
    pub(crate) status: Status,
    pub(crate) checks: Vec<CheckReport<'a>>,
}

/// The highest rung whose checks may run: every rung below it passes (all its *required*
/// checks are up and fresh).
pub(crate) fn open_rung(states: &[CheckState], now: Instant) -> Rung {
    let mut open = Rung::Process;
    for rung in Rung::ALL {
        open = rung;
        let failing = states.iter().any(|s| s.rung == rung && s.required && !s.passing(now));
        if failing {
            break;
        }
    }
    open
}

/// Turns states into the report `/ready` serves: checks above a failing rung are `skipped`,
/// failing required checks `fail`, failing optional ones `warn`.
pub(crate) fn report(states: &[CheckState], now: Instant) -> Report<'_> {
    let open = open_rung(states, now);
    let mut status = Status::Pass;
    let checks = states
        .iter()
        .map(|state| {
            let (check_status, output) = if state.rung > open {
                (Status::Skipped, Some(format!("skipped: a check on a lower rung than `{}` fails", state.rung)))
            } else if state.passing(now) {
                (Status::Pass, None)
            } else {
                let why = match (&state.up, &state.output) {
                    (None, _) => "not evaluated yet".to_string(),
                    (Some(true), _) => {
                        format!("stale: no result for more than {}", humantime::format_duration(stale_after(state)))
                    }
                    (Some(false), Some(output)) => output.clone(),
                    (Some(false), None) => "failing".to_string(),
                };
                (if state.required { Status::Fail } else { Status::Warn }, Some(why))
            };
            status = match (status, check_status, state.required) {
                (Status::Fail, _, _) => Status::Fail,
                (_, Status::Fail, _) | (_, Status::Skipped, true) => Status::Fail,
                (_, Status::Warn, _) | (_, Status::Skipped, false) => Status::Warn,
                (current, _, _) => current,
            };
            CheckReport { state, status: check_status, output }
        })
        .collect();
    Report { status, checks }
}

/// The first instant at which a passing check in `states` turns stale, so anything derived
/// from the states stays true until then (`None`: nothing can turn stale).
pub(crate) fn fresh_until(states: &[CheckState]) -> Option<Instant> {
    states.iter().filter(|s| s.up == Some(true)).filter_map(|s| Some(s.evaluated_at? + stale_after(s))).min()
}

fn stale_after(state: &CheckState) -> Duration {
    state.timing.interval * 3 + state.timing.timeout
}

#[cfg(test)]
mod tests;
