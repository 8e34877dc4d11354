//! Gray failure: judging an instance `degraded` — live and ready, but slow, flaky or flapping —
//! from what its probes already measure (no extra requests).
//!
//! Four detectors, each set by the target's `degraded` block ([`DegradedSpec`]):
//! - **latency**: the median of the last [`RECENT`] successful probes against the instance's
//!   own baseline, the median and MAD of the [`BASELINE`] before them. Medians, not means: one
//!   spike moves neither, and a heavy tail widens the MAD rather than the verdict.
//! - **errors**: failed probes among the last `error_window` while the instance was shown up
//!   (failures `failure_threshold` in a row already make it `unready` or `down`).
//! - **outlier**: the recent median against the other instances' of the same target this
//!   replica probes ([`Peers`]): their lower median and MAD, so two bad instances of four do
//!   not hide each other. From 3 instances.
//! - **flapping**: status changes among the last `flap_window` probes.
//!
//! A verdict needs [`ENTER`] firing evaluations in a row to enter, and [`LEAVE`] in a row with
//! every detector clearly quiet (below half its threshold) to leave, so an instance neither
//! flaps between `degraded` and `up` nor stays degraded once healed. No detector fires or
//! clears before its window is full: a new owner (a hand-over, a restart) keeps a recorded
//! verdict and flags nothing new until then. While degraded, the baseline is frozen, so a
//! lasting slowdown does not become the new normal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use caracal_store::target::{DegradedSpec, Detector};

/// Successful probes whose median is the instance's current latency.
pub const RECENT: usize = 12;
/// Successful probes before those, whose median and MAD are its baseline.
pub const BASELINE: usize = 48;
/// Firing evaluations in a row before an instance becomes degraded.
pub const ENTER: u8 = 3;
/// Quiet evaluations in a row before it is up again.
pub const LEAVE: u8 = 20;
/// How far above the median a latency must be, in robust standard deviations (1.4826 × MAD).
const SIGMAS: f64 = 3.0;
/// MAD × this estimates a standard deviation for normally distributed values.
const MAD_SCALE: f64 = 1.4826;
/// The outlier detector compares an instance with its peers from this many instances.
pub const MIN_PEERS: usize = 3;

/// One probe, as the detectors see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// How long a successful probe took (`None` for a failed one).
    pub latency: Option<Duration>,
    /// Whether the probe failed (`/health` or `/ready` did not answer 2xx).
    pub failed: bool,
    /// Whether the instance is shown live and ready after this probe (the consecutive-failure
    /// judge's status is `up`).
    pub up: bool,
    /// Whether this probe changed that status.
    pub changed: bool,
}

/// Why an instance is degraded: the store's type, recorded beside the status.
pub use caracal_store::status::Verdict;

/// A change of verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The instance became degraded.
    Entered(Verdict),
    /// It is no longer degraded.
    Left,
}

/// The other instances of a target, as the outlier detector compares them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerView {
    /// Instances reporting (this one included).
    pub instances: usize,
    /// The lower median of their recent medians, in microseconds.
    pub median_us: u32,
    /// The lower median of their distances from it (MAD), in microseconds.
    pub mad_us: u32,
    /// The lower median of their failed shares.
    pub failed: f64,
}

/// A fixed ring of the last `N` values, oldest overwritten.
#[derive(Debug, Clone)]
struct Ring<const N: usize> {
    values: [u32; N],
    len: u8,
    next: u8,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Self {
        Self { values: [0; N], len: 0, next: 0 }
    }

    fn full(&self) -> bool {
        usize::from(self.len) == N
    }

    /// Adds `value`; the value it replaced, when full.
    fn push(&mut self, value: u32) -> Option<u32> {
        let at = usize::from(self.next);
        let evicted = self.full().then_some(self.values[at]);
        self.values[at] = value;
        self.next = u8::try_from((at + 1) % N).unwrap_or(0);
        if !self.full() {
            self.len += 1;
        }
        evicted
    }

    /// The median and MAD of the values, when full.
    fn median_mad(&self) -> Option<(u32, u32)> {
        if !self.full() {
            return None;
        }
        let mut sorted = self.values;
        let median = median(&mut sorted);
        let mut distances = self.values.map(|v| v.abs_diff(median));
        Some((median, self::median(&mut distances)))
    }
}

/// The median (of an even count, the mean of the middle two), reordering `values`.
fn median(values: &mut [u32]) -> u32 {
    let (middle, odd) = (values.len() / 2, values.len() % 2 == 1);
    let (below, upper, _) = values.select_nth_unstable(middle);
    let upper = *upper;
    if odd {
        return upper;
    }
    let lower = below.iter().copied().max().unwrap_or(upper);
    u32::try_from((u64::from(lower) + u64::from(upper)) / 2).unwrap_or(upper)
}

fn lower_median(values: &mut [u32]) -> u32 {
    let middle = values.len().saturating_sub(1) / 2;
    *values.select_nth_unstable(middle).1
}

/// The last up to 64 yes/no facts, newest in bit 0.
#[derive(Debug, Clone, Copy, Default)]
struct Bits {
    bits: u64,
    len: u8,
}

impl Bits {
    fn push(&mut self, yes: bool) {
        self.bits = (self.bits << 1) | u64::from(yes);
        self.len = self.len.saturating_add(1).min(64);
    }

    /// How many of the last `window` were yes, once `window` were pushed.
    fn count(&self, window: u32) -> Option<u32> {
        if u32::from(self.len) < window {
            return None;
        }
        let mask = if window >= 64 { u64::MAX } else { (1u64 << window) - 1 };
        Some((self.bits & mask).count_ones())
    }
}

/// What one detector says about the latest probe: fire (with the sentence), stay quiet, or
/// neither (its window is not full, or it is between its two thresholds).
#[derive(Debug)]
struct Reading {
    fire: Option<String>,
    quiet: bool,
}

impl Reading {
    const UNKNOWN: Reading = Reading { fire: None, quiet: false };
}

/// The threshold a median must exceed, given a reference median and MAD (µs).
fn threshold(median: u32, mad: u32, factor: f64, min_increase_us: u32) -> f64 {
    let median = f64::from(median);
    (median * factor).max(median + SIGMAS * MAD_SCALE * f64::from(mad)).max(median + f64::from(min_increase_us))
}

/// A latency in microseconds, as people read it: "4.1 ms", "154 ms", "2.3 s".
pub fn human(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// One instance's detector state: 336 bytes, whatever the fleet.
#[derive(Debug, Clone)]
pub struct Gray {
    recent: Ring<RECENT>,
    baseline: Ring<BASELINE>,
    failures: Bits,
    changes: Bits,
    verdict: Option<Verdict>,
    streak: u8,
    /// The windows' medians (and the baseline's MAD), computed once per probe.
    recent_median: Option<u32>,
    baseline_stats: Option<(u32, u32)>,
}

impl Default for Gray {
    fn default() -> Self {
        Self::new()
    }
}

impl Gray {
    /// An instance with no history.
    pub const fn new() -> Self {
        Self {
            recent: Ring::new(),
            baseline: Ring::new(),
            failures: Bits { bits: 0, len: 0 },
            changes: Bits { bits: 0, len: 0 },
            verdict: None,
            streak: 0,
            recent_median: None,
            baseline_stats: None,
        }
    }

    /// Keeps a verdict recorded by a previous owner until this one's windows are full.
    pub fn adopt(&mut self, verdict: Option<Verdict>) {
        self.verdict = verdict;
        self.streak = 0;
    }

    /// The current verdict, while degraded.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    /// The recent median latency (µs), once [`RECENT`] successful probes were seen.
    pub fn recent_us(&self) -> Option<u32> {
        self.recent_median
    }

    /// The baseline median latency (µs), once full.
    pub fn baseline_us(&self) -> Option<u32> {
        self.baseline_stats.map(|(median, _)| median)
    }

    /// The share of the last `window` probes shown up that failed, once seen.
    pub fn failed_share(&self, window: u32) -> Option<f64> {
        self.failures.count(window).map(|n| f64::from(n) / f64::from(window.max(1)))
    }

    /// Takes one probe; returns the verdict's change, if any. `peers` is the target's view
    /// for the outlier detector (`None` when too few instances report).
    pub fn observe(&mut self, sample: &Sample, spec: &DegradedSpec, peers: Option<&PeerView>) -> Option<Change> {
        self.changes.push(sample.changed);
        if !spec.enabled || spec.detectors.is_empty() {
            self.streak = 0;
            return self.verdict.take().map(|_| Change::Left);
        }
        if !sample.up {
            // Shown unready or down: the failure is visible already; judged again once up.
            return None;
        }
        self.failures.push(sample.failed);
        if let Some(latency) = sample.latency {
            let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
            // A degraded instance's latencies are not its baseline (once it has one: a new
            // owner adopting a verdict still needs one to judge by).
            if let Some(older) = self.recent.push(us)
                && (self.verdict.is_none() || !self.baseline.full())
            {
                self.baseline.push(older);
                self.baseline_stats = self.baseline.median_mad();
            }
            self.recent_median = self.recent.median_mad().map(|(median, _)| median);
        }
        let mut fire = None;
        let mut quiet = true;
        for detector in Detector::ALL {
            if !spec.uses(detector) {
                continue;
            }
            let reading = match detector {
                Detector::Latency => self.latency(spec),
                Detector::Errors => self.errors(spec),
                Detector::Outlier => self.outlier(spec, peers),
                Detector::Flapping => self.flapping(spec),
            };
            quiet &= reading.quiet;
            if fire.is_none()
                && let Some(detail) = reading.fire
            {
                fire = Some(Verdict { reason: detector, detail });
            }
        }
        match (&self.verdict, fire) {
            (None, Some(verdict)) => {
                self.streak += 1;
                if self.streak >= ENTER {
                    self.streak = 0;
                    self.verdict = Some(verdict.clone());
                    return Some(Change::Entered(verdict));
                }
            }
            (None, None) => self.streak = 0,
            (Some(_), _) if quiet => {
                self.streak += 1;
                if self.streak >= LEAVE {
                    self.streak = 0;
                    self.verdict = None;
                    return Some(Change::Left);
                }
            }
            (Some(_), _) => self.streak = 0,
        }
        None
    }

    fn latency(&self, spec: &DegradedSpec) -> Reading {
        let (Some(recent), Some((base, mad))) = (self.recent_median, self.baseline_stats) else {
            return Reading::UNKNOWN;
        };
        let min_increase = u32::try_from(spec.min_increase_ms).unwrap_or(0).saturating_mul(1000);
        let limit = threshold(base, mad, spec.latency_factor, min_increase);
        let recent_f = f64::from(recent);
        Reading {
            fire: (recent_f > limit).then(|| {
                format!(
                    "p50 {} over the last {RECENT} probes against its own {} over the {BASELINE} before",
                    human(recent_f),
                    human(f64::from(base))
                )
            }),
            quiet: recent_f < f64::from(base) + (limit - f64::from(base)) / 2.0,
        }
    }

    fn errors(&self, spec: &DegradedSpec) -> Reading {
        let window = u32::try_from(spec.error_window).unwrap_or(20);
        let needed = spec.error_count();
        let Some(failed) = self.failures.count(window) else { return Reading::UNKNOWN };
        Reading {
            fire: (failed >= needed).then(|| format!("{failed} of the last {window} probes failed")),
            quiet: failed < needed.saturating_sub(1).max(1),
        }
    }

    fn flapping(&self, spec: &DegradedSpec) -> Reading {
        let window = u32::try_from(spec.flap_window).unwrap_or(60);
        let needed = spec.flap_changes();
        let Some(changes) = self.changes.count(window) else { return Reading::UNKNOWN };
        Reading {
            fire: (changes >= needed).then(|| format!("{changes} status changes over the last {window} probes")),
            quiet: changes < (needed / 2).max(1),
        }
    }

    fn outlier(&self, spec: &DegradedSpec, peers: Option<&PeerView>) -> Reading {
        let Some(recent) = self.recent_median else { return Reading::UNKNOWN };
        // Too few instances to compare: nothing to say, which is not a reason to stay degraded.
        let Some(peers) = peers.filter(|p| p.instances >= MIN_PEERS) else {
            return Reading { fire: None, quiet: true };
        };
        let min_increase = u32::try_from(spec.min_increase_ms).unwrap_or(0).saturating_mul(1000);
        let limit = threshold(peers.median_us, peers.mad_us, spec.outlier_factor, min_increase);
        let recent_f = f64::from(recent);
        let reference = f64::from(peers.median_us);
        let slow = recent_f > limit;
        // Failing far more often than the others: at least twice their share and 20 points
        // above it, over the errors window.
        let window = u32::try_from(spec.error_window).unwrap_or(20);
        let share = self.failed_share(window).unwrap_or(0.0);
        let flaky = share >= (peers.failed * 2.0).max(peers.failed + 0.2);
        let fire = if slow {
            Some(format!(
                "p50 {} over the last {RECENT} probes against {} across the target's {} instances",
                human(recent_f),
                human(reference),
                peers.instances
            ))
        } else if flaky {
            Some(format!(
                "{:.0} % of the last {window} probes failed against {:.0} % across the target's {} instances",
                share * 100.0,
                peers.failed * 100.0,
                peers.instances
            ))
        } else {
            None
        };
        Reading { fire, quiet: recent_f < reference + (limit - reference) / 2.0 && share < peers.failed + 0.1 }
    }
}

/// What each instance tells its target's group.
#[derive(Debug, Clone, Copy)]
struct Member {
    median_us: u32,
    failed: f64,
}

/// One target's instances on this replica, and their view, computed at most once per
/// `max_age` (a probe reads it in O(1); a target of n instances costs O(n) per refresh).
#[derive(Debug, Default)]
struct Group {
    members: HashMap<i64, Member>,
    view: Option<(PeerView, Instant)>,
}

impl Group {
    fn view(&mut self, max_age: Duration) -> Option<PeerView> {
        if let Some((view, at)) = self.view
            && at.elapsed() < max_age
        {
            return Some(view);
        }
        if self.members.len() < MIN_PEERS {
            self.view = None;
            return None;
        }
        let mut medians: Vec<u32> = self.members.values().map(|m| m.median_us).collect();
        let median_us = lower_median(&mut medians);
        let mut distances: Vec<u32> = medians.iter().map(|m| m.abs_diff(median_us)).collect();
        let mad_us = lower_median(&mut distances);
        let mut failed: Vec<f64> = self.members.values().map(|m| m.failed).collect();
        failed.sort_by(f64::total_cmp);
        let view =
            PeerView { instances: self.members.len(), median_us, mad_us, failed: failed[(failed.len() - 1) / 2] };
        self.view = Some((view, Instant::now()));
        Some(view)
    }
}

/// The instances each target has on this replica, for the outlier detector. With several
/// replicas, each compares the share of a target's instances it probes.
#[derive(Debug, Default)]
pub struct Peers {
    groups: Mutex<HashMap<String, Group>>,
}

impl Peers {
    /// Records instance `id`'s recent median and failed share in `target`'s group; the
    /// group's view (refreshed when older than `max_age`), once [`MIN_PEERS`] report.
    pub fn report(&self, target: &str, id: i64, median_us: u32, failed: f64, max_age: Duration) -> Option<PeerView> {
        let mut groups = self.groups.lock().ok()?;
        let group = match groups.get_mut(target) {
            Some(group) => group,
            None => groups.entry(target.to_string()).or_default(),
        };
        group.members.insert(id, Member { median_us, failed });
        group.view(max_age)
    }

    /// Takes instance `id` out of `target`'s group (it is not up, not measured yet, or no
    /// longer probed here).
    pub fn forget(&self, target: &str, id: i64) {
        let Ok(mut groups) = self.groups.lock() else { return };
        if let Some(group) = groups.get_mut(target)
            && group.members.remove(&id).is_some()
        {
            group.view = None;
            if group.members.is_empty() {
                groups.remove(target);
            }
        }
    }
}

#[cfg(test)]
mod tests;
