//! The detectors on synthetic series: heavy tails, spikes, slow drifts, slowdowns, random
//! failures and flapping, each over many seeds. The same consecutive-failure judge the prober
//! uses decides what `up` means.

use std::time::Duration;

use caracal_store::target::{DegradedSpec, Detector};

use super::{Change, Gray, LEAVE, PeerView, Peers, Sample};
use crate::prober::{Judge, Status};

/// A lognormal latency with the given median (ms) and σ, from `rng`.
fn lognormal(rng: &mut fastrand::Rng, median_ms: f64, sigma: f64) -> Duration {
    let (u1, u2) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    Duration::from_secs_f64(median_ms * (sigma * z).exp() / 1000.0)
}

/// The healthy-but-noisy instance of the issue: lognormal (median 4 ms, σ 0.9) plus 0.5 %
/// spikes of 150–300 ms.
fn noisy(rng: &mut fastrand::Rng) -> Duration {
    if rng.f64() < 0.005 { Duration::from_millis(rng.u64(150..=300)) } else { lognormal(rng, 4.0, 0.9) }
}

/// One instance as the prober runs it: the judge, then the detectors; what it is shown as.
struct Instance {
    judge: Judge,
    gray: Gray,
    spec: DegradedSpec,
}

impl Instance {
    fn new() -> Self {
        Self { judge: Judge::new(Status::Unknown, 2, 2), gray: Gray::new(), spec: DegradedSpec::default() }
    }

    /// One probe: `None` failed (503), else its latency. The status shown after it.
    fn probe(&mut self, result: Option<Duration>, peers: Option<&PeerView>) -> Status {
        let observed = if result.is_some() { Status::Up } else { Status::Unready };
        let changed = self.judge.observe(observed).is_some();
        let up = self.judge.status() == Status::Up;
        let sample = Sample { latency: result, failed: result.is_none(), up, changed };
        self.gray.observe(&sample, &self.spec, peers);
        self.shown()
    }

    fn shown(&self) -> Status {
        match (self.judge.status(), self.gray.verdict()) {
            (Status::Up, Some(_)) => Status::Degraded,
            (status, _) => status,
        }
    }
}

#[test]
fn a_healthy_noisy_instance_is_never_degraded() {
    for seed in 0..40 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = Instance::new();
        for n in 0..5_000 {
            let shown = instance.probe(Some(noisy(&mut rng)), None);
            assert_eq!(shown, Status::Up, "seed {seed}, probe {n}: {:?}", instance.gray.verdict());
        }
    }
}

#[test]
fn a_slow_but_steady_instance_is_never_degraded() {
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = Instance::new();
        for _ in 0..3_000 {
            assert_eq!(instance.probe(Some(lognormal(&mut rng, 250.0, 0.2)), None), Status::Up, "seed {seed}");
        }
    }
}

#[test]
fn a_slow_drift_is_the_new_normal_not_a_failure() {
    // Four times slower over 2,000 probes (a growing cache, a filling disk): each window
    // sees its predecessor's latency, never a jump.
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = Instance::new();
        for n in 0..2_000 {
            let median = 4.0 * 4f64.powf(f64::from(n) / 2_000.0);
            assert_eq!(instance.probe(Some(lognormal(&mut rng, median, 0.5)), None), Status::Up, "seed {seed}");
        }
    }
}

#[test]
fn bursts_of_spikes_do_not_make_it_degraded() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut instance = Instance::new();
    for n in 0..3_000 {
        // Four spikes in a row (a 2 s stall at 500 ms) every 100 probes: a third of the
        // recent window.
        let latency = if n % 100 < 4 { Duration::from_millis(800) } else { lognormal(&mut rng, 4.0, 0.9) };
        assert_eq!(instance.probe(Some(latency), None), Status::Up, "probe {n}");
    }
}

/// Warms an instance up on noisy latencies; returns it.
fn warmed(rng: &mut fastrand::Rng) -> Instance {
    let mut instance = Instance::new();
    for _ in 0..120 {
        assert_eq!(instance.probe(Some(noisy(rng)), None), Status::Up);
    }
    instance
}

#[test]
fn a_slowdown_is_caught_within_a_dozen_probes_and_said_with_figures() {
    for seed in 0..40 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = warmed(&mut rng);
        let caught = (1..=40).find(|_| {
            let slow = Duration::from_millis(150) + lognormal(&mut rng, 4.0, 0.9);
            instance.probe(Some(slow), None) == Status::Degraded
        });
        let caught = caught.unwrap_or_else(|| panic!("seed {seed}: never caught"));
        assert!(caught <= 12, "seed {seed}: caught after {caught} probes");
        let verdict = instance.gray.verdict().expect("a verdict");
        assert_eq!(verdict.reason, Detector::Latency);
        assert!(verdict.detail.starts_with("p50 15"), "{}", verdict.detail);
        assert!(verdict.detail.contains("against its own"), "{}", verdict.detail);
    }
}

#[test]
fn a_lasting_slowdown_stays_degraded_then_heals_without_flapping() {
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = warmed(&mut rng);
        for _ in 0..20 {
            instance.probe(Some(Duration::from_millis(300) + lognormal(&mut rng, 4.0, 0.9)), None);
        }
        // A frozen baseline: 1,000 slow probes later it is still degraded.
        for n in 0..1_000 {
            let slow = Duration::from_millis(300) + lognormal(&mut rng, 4.0, 0.9);
            assert_eq!(instance.probe(Some(slow), None), Status::Degraded, "seed {seed}, slow probe {n}");
        }
        let mut shown = Vec::new();
        for _ in 0..1_000 {
            shown.push(instance.probe(Some(noisy(&mut rng)), None));
        }
        let healed = shown.iter().position(|s| *s == Status::Up).expect("healed");
        assert!(healed <= 12 + usize::from(LEAVE), "seed {seed}: up again after {healed} probes");
        assert!(shown[healed..].iter().all(|s| *s == Status::Up), "seed {seed}: flapped after healing");
    }
}

#[test]
fn one_failure_in_four_is_caught_and_rarely_shown_up() {
    for seed in 0..40 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut instance = warmed(&mut rng);
        let mut shown = Vec::new();
        for _ in 0..600 {
            let result = (rng.f64() >= 0.25).then(|| noisy(&mut rng));
            shown.push(instance.probe(result, None));
        }
        let caught = shown.iter().position(|s| *s == Status::Degraded).expect("caught");
        assert!(caught <= 60, "seed {seed}: caught after {caught} probes (30 s at 500 ms)");
        let after = &shown[caught..];
        let up = after.iter().filter(|s| **s == Status::Up).count();
        assert!(up * 10 <= after.len(), "seed {seed}: shown up {up} of {} probes after", after.len());
    }
}

#[test]
fn a_lone_outage_is_not_a_gray_failure() {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut instance = warmed(&mut rng);
    for _ in 0..10 {
        instance.probe(None, None);
    }
    assert_eq!(instance.shown(), Status::Unready);
    let shown: Vec<Status> = (0..200).map(|_| instance.probe(Some(noisy(&mut rng)), None)).collect();
    assert_eq!(shown[..2], [Status::Unready, Status::Up], "two successes make it up again");
    assert!(shown.iter().all(|s| *s != Status::Degraded), "{shown:?}");
}

#[test]
fn flapping_is_caught() {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut instance = warmed(&mut rng);
    // Only the flapping detector: up two probes, down two, over and over.
    instance.spec.detectors = vec![Detector::Flapping];
    let mut reasons = Vec::new();
    for n in 0..80 {
        let result = (n % 4 < 2).then(|| noisy(&mut rng));
        instance.probe(result, None);
        reasons.extend(instance.gray.verdict().map(|v| v.reason));
    }
    assert_eq!(reasons.first(), Some(&Detector::Flapping));
    assert!(instance.gray.verdict().expect("degraded").detail.contains("status changes over the last 60 probes"));
}

#[test]
fn turned_off_it_never_judges_and_drops_a_verdict() {
    let mut rng = fastrand::Rng::with_seed(9);
    let mut instance = warmed(&mut rng);
    for _ in 0..30 {
        instance.probe(Some(Duration::from_millis(400)), None);
    }
    assert_eq!(instance.shown(), Status::Degraded);
    instance.spec.enabled = false;
    assert_eq!(instance.probe(Some(Duration::from_millis(400)), None), Status::Up);
    for _ in 0..100 {
        assert_ne!(instance.probe(None, None), Status::Degraded);
    }
}

#[test]
fn a_new_owner_keeps_a_recorded_verdict_and_flags_nothing_before_its_window() {
    let mut rng = fastrand::Rng::with_seed(11);
    let recorded = super::Verdict { reason: Detector::Errors, detail: "4 of the last 20 probes failed".into() };
    let mut instance = Instance::new();
    instance.gray.adopt(Some(recorded.clone()));
    for n in 0..20 {
        assert_eq!(instance.probe(Some(noisy(&mut rng)), None), Status::Degraded, "probe {n}");
    }
    // And a fresh owner flags nothing new before its windows are full, however slow.
    let mut fresh = Instance::new();
    for n in 0..59 {
        assert_eq!(fresh.probe(Some(Duration::from_millis(100 + n)), None), Status::Up);
    }
}

/// Ten instances of a target, `bad` of them slow; what each is shown as after 300 probes.
fn fleet(bad: usize, instances: usize, seed: u64) -> Vec<Status> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let peers = Peers::default();
    let mut fleet: Vec<Instance> = (0..instances).map(|_| Instance::new()).collect();
    for _ in 0..300 {
        for (i, instance) in fleet.iter_mut().enumerate() {
            // Slow from the start: no baseline of its own tells; only its peers.
            let extra = if i < bad { Duration::from_millis(80) } else { Duration::ZERO };
            let latency = noisy(&mut rng) + extra;
            let view = instance.gray.recent_us().and_then(|median| {
                let failed = instance.gray.failed_share(20).unwrap_or(0.0);
                peers.report("shop", i64::try_from(i).unwrap_or(0), median, failed, Duration::ZERO)
            });
            instance.probe(Some(latency), view.as_ref());
        }
    }
    fleet.iter().map(Instance::shown).collect()
}

#[test]
fn an_outlier_among_peers_is_caught_and_two_do_not_hide_each_other() {
    for seed in 0..10 {
        let one = fleet(1, 10, seed);
        assert_eq!(one[0], Status::Degraded, "seed {seed}");
        assert!(one[1..].iter().all(|s| *s == Status::Up), "seed {seed}: {one:?}");
        let two = fleet(2, 4, seed);
        assert_eq!(two, [Status::Degraded, Status::Degraded, Status::Up, Status::Up], "seed {seed}");
        let three = fleet(1, 3, seed);
        assert_eq!(three, [Status::Degraded, Status::Up, Status::Up], "seed {seed}: works from 3 instances");
        assert!(fleet(0, 10, seed).iter().all(|s| *s == Status::Up), "seed {seed}: a healthy fleet stays up");
        // Two instances are not peers enough: neither is judged against the other.
        assert!(fleet(1, 2, seed).iter().all(|s| *s == Status::Up), "seed {seed}");
    }
}

#[test]
fn state_stays_within_its_budget() {
    // The detector's state per instance, degraded or not (a verdict's sentence is on the
    // heap, about 80 bytes, only while degraded).
    let size = std::mem::size_of::<Gray>();
    assert!(size <= 512, "{size} bytes");
    let mut gray = Gray::new();
    let spec = DegradedSpec::default();
    for _ in 0..200 {
        let sample = Sample { latency: Some(Duration::from_millis(900)), failed: false, up: true, changed: false };
        assert_ne!(gray.observe(&sample, &spec, None), Some(Change::Left));
    }
}
