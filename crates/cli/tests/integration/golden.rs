//! Golden files: `tests/golden/status.txt` and `status.json`. Run with `UPDATE_GOLDEN=1` to
//! rewrite them after an intended change, and review the diff.

use std::path::PathBuf;

use caracal_cli::probe::{Endpoint, FailingCheck, Outcome, Probe, RungState};
use caracal_cli::status::{exit_code, render_json, render_table};

fn probes() -> Vec<Probe> {
    vec![
        Probe {
            service: "api".into(),
            url: "http://127.0.0.1:3000".into(),
            port: Some(3000),
            mode: Some("rc".into()),
            outcome: Outcome::Pass,
            detail: String::new(),
            failing: vec![],
            rungs: vec![
                RungState { rung: "storage".into(), state: "ok".into() },
                RungState { rung: "delivery".into(), state: "ok".into() },
            ],
        },
        Probe {
            service: "coordinator".into(),
            url: "http://127.0.0.1:4000".into(),
            port: Some(4000),
            mode: Some("rc".into()),
            outcome: Outcome::Fail,
            detail: "redis:connectivity (storage) fail, 3 skipped above".into(),
            failing: vec![FailingCheck {
                name: "redis:connectivity".into(),
                rung: "storage".into(),
                status: "fail".into(),
                output: Some("PING failed: connection refused".into()),
            }],
            rungs: vec![
                RungState { rung: "storage".into(), state: "failing".into() },
                RungState { rung: "delivery".into(), state: "waiting".into() },
            ],
        },
        Probe {
            service: "audit".into(),
            url: "http://127.0.0.1:9090".into(),
            port: Some(9090),
            mode: None,
            outcome: Outcome::Unreachable,
            detail: "connection refused".into(),
            failing: vec![],
            rungs: vec![],
        },
    ]
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}

#[test]
fn the_status_table_matches_its_golden_file() {
    golden("status.txt", &render_table(&probes(), false));
}

#[test]
fn the_status_json_matches_its_golden_file() {
    let json = serde_json::to_string_pretty(&render_json(&probes(), Endpoint::Ready)).expect("json");
    golden("status.json", &format!("{json}\n"));
}

#[test]
fn colour_only_when_asked_and_exit_codes_rank_failure_over_unknown() {
    let plain = render_table(&probes(), false);
    let coloured = render_table(&probes(), true);
    assert!(!plain.contains('\u{1b}'));
    assert!(coloured.contains("\u{1b}[31mfail"), "{coloured:?}");
    let all = probes();
    assert_eq!(exit_code(&all), 1, "a failure wins over an unreachable service");
    assert_eq!(exit_code(&[all[0].clone(), all[2].clone()]), 3, "could not check is its own code");
    assert_eq!(exit_code(&all[..1]), 0);
}
