use std::time::{Duration, Instant};

use super::*;

fn timing(failure: u32, success: u32) -> Timing {
    Timing {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        failure_threshold: failure,
        success_threshold: success,
    }
}

fn state(name: &str, rung: Rung, required: bool) -> CheckState {
    CheckState::new(name.into(), rung, required, "component", timing(1, 1))
}

fn ok() -> ProbeResult {
    Ok(Observed::default())
}

fn bad() -> ProbeResult {
    Err(Failure::new("boom"))
}

#[test]
fn thresholds_hold_a_state_until_enough_results_agree() {
    let now = Instant::now();
    let mut s = CheckState::new("a:b".into(), Rung::Storage, true, "component", timing(3, 2));
    assert!(!s.record(ok(), Duration::ZERO, now), "the first result is not a transition");
    assert_eq!(s.up, Some(true));
    assert!(!s.record(bad(), Duration::ZERO, now));
    assert!(!s.record(bad(), Duration::ZERO, now));
    assert_eq!(s.up, Some(true), "two failures are below a threshold of three");
    assert!(s.record(bad(), Duration::ZERO, now), "the third failure flips the state");
    assert_eq!(s.up, Some(false));
    assert!(!s.record(ok(), Duration::ZERO, now));
    assert_eq!(s.up, Some(false), "one success is below a threshold of two");
    assert!(s.record(ok(), Duration::ZERO, now));
    assert_eq!(s.up, Some(true));
}

#[test]
fn a_result_older_than_three_intervals_is_stale() {
    let start = Instant::now();
    let mut s = state("a:b", Rung::Storage, true);
    s.record(ok(), Duration::ZERO, start);
    assert!(s.passing(start + Duration::from_secs(3)));
    assert!(!s.passing(start + Duration::from_secs(4)), "3 x 1 s + 0.5 s timeout has passed");
    let report = report(std::slice::from_ref(&s), start + Duration::from_secs(4));
    assert_eq!(report.status, Status::Fail);
    assert!(report.checks[0].output.as_deref().unwrap_or("").starts_with("stale"));
}

#[test]
fn checks_above_a_failing_rung_are_skipped() {
    let now = Instant::now();
    let mut states = vec![
        state("postgres:connectivity", Rung::Storage, true),
        state("outbox:oldest_pending_age", Rung::Delivery, true),
        state("app:thing", Rung::Service, true),
    ];
    states[0].record(bad(), Duration::ZERO, now);
    states[1].record(ok(), Duration::ZERO, now);
    assert_eq!(open_rung(&states, now), Rung::Storage);
    let r = report(&states, now);
    let statuses: Vec<Status> = r.checks.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Status::Fail, Status::Skipped, Status::Skipped]);
    assert_eq!(r.status, Status::Fail);
}

#[test]
fn an_optional_failure_warns_and_does_not_block_the_rungs_above() {
    let now = Instant::now();
    let mut states = vec![
        state("postgres:connectivity", Rung::Storage, true),
        state("outbox:dead", Rung::Storage, false),
        state("app:thing", Rung::Service, true),
    ];
    states[0].record(ok(), Duration::ZERO, now);
    states[1].record(bad(), Duration::ZERO, now);
    states[2].record(ok(), Duration::ZERO, now);
    assert_eq!(open_rung(&states, now), Rung::Service);
    let r = report(&states, now);
    assert_eq!(r.checks[1].status, Status::Warn);
    assert_eq!(r.checks[2].status, Status::Pass);
    assert_eq!(r.status, Status::Warn);
}

#[test]
fn a_check_never_evaluated_fails_readiness() {
    let now = Instant::now();
    let states = vec![state("redis:connectivity", Rung::Storage, true)];
    let r = report(&states, now);
    assert_eq!(r.status, Status::Fail);
    assert_eq!(r.checks[0].output.as_deref(), Some("not evaluated yet"));
}

#[test]
fn skipping_forgets_old_results() {
    let now = Instant::now();
    let mut s = state("a:b", Rung::Delivery, true);
    s.record(ok(), Duration::ZERO, now);
    assert!(s.skip());
    assert_eq!(s.up, None);
    assert!(!s.skip(), "skipping twice reports no change");
}
