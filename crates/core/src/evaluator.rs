//! Runs every check in the background and publishes the snapshot `/ready` reads.
//!
//! One task per check: it runs the probe on a jittered interval, with a timeout, never two at
//! once (a run is awaited, or aborted at its timeout, before the next starts). A check whose
//! rung is closed (a lower rung fails) does not run; it waits until the rung opens and then
//! runs at once, so recovery does not wait a whole interval per rung.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::check::{Check, Failure, ProbeResult, Rung, Timing};
use crate::config::CheckDefaults;
use crate::ladder::{self, CheckState, Status};
use crate::lifecycle::Lifecycle;
use crate::metrics::{CheckLabels, CheckRungLabels, FailingLabels, Metrics, ServiceLabels};

/// The checks of one service, their states, and the published snapshot.
#[derive(Debug)]
pub(crate) struct Evaluator {
    service: String,
    checks: Vec<Check>,
    /// Each check's state, written only by its own task.
    states: Vec<Mutex<CheckState>>,
    /// The latest copy of all states; `/ready` loads it without locking anything.
    snapshot: ArcSwap<Snapshot>,
    /// The highest rung whose checks may run.
    open: watch::Sender<Rung>,
    /// The generation of the latest snapshot, for those who follow changes (gRPC `Watch`).
    published: watch::Sender<u64>,
    publishing: Mutex<()>,
    metrics: Metrics,
    /// Read so that `caracal_ready` stays 0 once draining has started.
    lifecycle: Arc<Lifecycle>,
}

impl Evaluator {
    pub(crate) fn new(
        service: &str,
        checks: Vec<Check>,
        defaults: &CheckDefaults,
        metrics: Metrics,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        let states: Vec<CheckState> = checks
            .iter()
            .map(|c| CheckState::new(c.name.clone(), c.rung, c.required, c.component_type, c.timing(defaults)))
            .collect();
        for s in &states {
            metrics
                .check_up
                .get_or_create(&CheckRungLabels { check: s.name.clone(), rung: s.rung.as_str().into() })
                .set(0);
            metrics.check_failing.get_or_create(&failing_labels(s)).set(0);
        }
        metrics.ready.get_or_create(&ServiceLabels { service: service.into() }).set(0);
        // Rungs with no required check are open from the start.
        let open = ladder::open_rung(&states, Instant::now());
        Self {
            service: service.into(),
            checks,
            snapshot: ArcSwap::from_pointee(Snapshot { generation: 0, states: states.clone() }),
            states: states.into_iter().map(Mutex::new).collect(),
            open: watch::Sender::new(open),
            published: watch::Sender::new(0),
            publishing: Mutex::new(()),
            metrics,
            lifecycle,
        }
    }

    /// The latest published states.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Follows the snapshot's generation: changed on every publication.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Spawns one task per check; they stop when `stop` is cancelled.
    pub(crate) fn spawn(self: &Arc<Self>, stop: CancellationToken) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for index in 0..self.checks.len() {
            let this = Arc::clone(self);
            let stop = stop.clone();
            tasks.spawn(async move { this.run_check(index, stop).await });
        }
        tasks
    }

    async fn run_check(&self, index: usize, stop: CancellationToken) {
        let check = &self.checks[index];
        let timing = self.timing(index);
        let mut open = self.open.subscribe();
        loop {
            if check.rung <= *open.borrow_and_update() {
                let started = Instant::now();
                let result = tokio::select! {
                    r = run_once(check, timing.timeout) => r,
                    () = stop.cancelled() => return,
                };
                self.record(index, result, started.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(jittered(timing.interval)) => {}
                    () = stop.cancelled() => return,
                }
            } else {
                self.skip(index);
                tokio::select! {
                    changed = open.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    fn timing(&self, index: usize) -> Timing {
        self.snapshot.load().states[index].timing
    }

    fn record(&self, index: usize, result: ProbeResult, took: Duration) {
        let passed = result.is_ok();
        let (flipped, state) = {
            let Ok(mut state) = self.states[index].lock() else { return };
            let flipped = state.record(result, took, Instant::now());
            (flipped, state.clone())
        };
        let labels = CheckLabels { check: state.name.clone() };
        self.metrics.check_duration.get_or_create(&labels).observe(took.as_secs_f64());
        if passed {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            self.metrics.check_last_success.get_or_create(&labels).set(now);
        }
        if flipped {
            self.metrics.check_transitions.get_or_create(&labels).inc();
            if state.up == Some(true) {
                tracing::info!(check = %state.name, "check passing again");
            } else {
                tracing::warn!(check = %state.name, output = state.output.as_deref().unwrap_or(""), "check failing");
            }
        }
        self.publish();
    }

    fn skip(&self, index: usize) {
        let changed = self.states[index].lock().map(|mut s| s.skip()).unwrap_or(false);
        if changed {
            self.publish();
        }
    }

    /// Copies every state into a new snapshot, updates the gauges, and opens or closes rungs.
    fn publish(&self) {
        // Serialized, so a slower publisher cannot store an older copy over a newer one.
        let Ok(_publishing) = self.publishing.lock() else { return };
        let states: Vec<CheckState> = self.states.iter().filter_map(|s| s.lock().ok().map(|s| s.clone())).collect();
        let now = Instant::now();
        let report = ladder::report(&states, now);
        for c in &report.checks {
            let up = i64::from(c.status == Status::Pass);
            self.metrics
                .check_up
                .get_or_create(&CheckRungLabels { check: c.state.name.clone(), rung: c.state.rung.as_str().into() })
                .set(up);
            let failing = i64::from(matches!(c.status, Status::Fail | Status::Warn));
            self.metrics.check_failing.get_or_create(&failing_labels(c.state)).set(failing);
        }
        let ready = i64::from(report.status != Status::Fail && !self.lifecycle.is_draining());
        self.metrics.ready.get_or_create(&ServiceLabels { service: self.service.clone() }).set(ready);
        let open = ladder::open_rung(&states, now);
        // The generation tells readers (the rendered `/ready` body cache) that something changed.
        let generation = self.snapshot.load().generation + 1;
        self.snapshot.store(Arc::new(Snapshot { generation, states }));
        self.published.send_replace(generation);
        self.open.send_if_modified(|current| std::mem::replace(current, open) != open);
    }

    /// Marks the service unready in the gauge (while draining).
    pub(crate) fn set_unready(&self) {
        self.metrics.ready.get_or_create(&ServiceLabels { service: self.service.clone() }).set(0);
    }
}

fn failing_labels(state: &CheckState) -> FailingLabels {
    FailingLabels { check: state.name.clone(), rung: state.rung.as_str().into(), required: state.required.to_string() }
}

/// Every check's state at one moment, numbered so readers can cache what they derive from it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) states: Vec<CheckState>,
}

/// Runs the probe once as its own task, so a panic becomes a failure and a timeout aborts it
/// (a hung query is dropped, never left running beside the next run).
async fn run_once(check: &Check, timeout: Duration) -> ProbeResult {
    let task = tokio::spawn((check.probe)());
    let abort = task.abort_handle();
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => Err(Failure::new("the check panicked")),
        Ok(Err(_)) => Err(Failure::new("the check was cancelled")),
        Err(_) => {
            abort.abort();
            Err(Failure::new(format!("timed out after {}", humantime::format_duration(timeout))))
        }
    }
}

/// `interval` ± 10 %, so checks of many replicas do not hit a dependency in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}
