//! `caracal status`: probe every service, render a table or a stable JSON document, and the
//! exit code: 0 all pass, 1 some fail, 3 could not check (and nothing failed).

use std::fmt::Write;

use serde_json::json;

use crate::probe::{Endpoint, Outcome, Probe};

/// The exit code for a set of probes: a definite failure (1) wins over a service that could
/// not be checked (3); 0 only when every service passes.
pub fn exit_code(probes: &[Probe]) -> u8 {
    if probes.iter().any(|p| p.outcome == Outcome::Fail) {
        1
    } else if probes.iter().any(|p| p.outcome == Outcome::Unreachable) {
        3
    } else {
        0
    }
}

/// The table: service, port, mode, status, detail; colour only when `color`.
pub fn render_table(probes: &[Probe], color: bool) -> String {
    let rows: Vec<[String; 5]> = probes
        .iter()
        .map(|p| {
            [
                p.service.clone(),
                p.port.map_or("-".into(), |port| port.to_string()),
                p.mode.clone().unwrap_or_else(|| "-".into()),
                p.outcome.as_str().to_string(),
                p.detail.clone(),
            ]
        })
        .collect();
    let header = ["SERVICE", "PORT", "MODE", "STATUS", "DETAIL"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String; 5], status_color: Option<&str>| {
        for (i, cell) in row.iter().enumerate() {
            let padded = if i == 4 { cell.clone() } else { format!("{cell:<w$}  ", w = widths[i]) };
            match (i, status_color) {
                (3, Some(code)) => {
                    let _ = write!(out, "\u{1b}[{code}m{padded}\u{1b}[0m");
                }
                _ => out.push_str(&padded),
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &header, None);
    for (row, probe) in rows.iter().zip(probes) {
        let code = color.then_some(match probe.outcome {
            Outcome::Pass => "32",
            Outcome::Fail => "31",
            Outcome::Unreachable => "33",
        });
        line(&mut out, row, code);
    }
    out
}

/// The machine-readable document (stable field names).
pub fn render_json(probes: &[Probe], endpoint: Endpoint) -> serde_json::Value {
    let count = |o: Outcome| probes.iter().filter(|p| p.outcome == o).count();
    json!({
        "endpoint": match endpoint { Endpoint::Health => "health", Endpoint::Ready => "ready" },
        "services": probes,
        "summary": { "pass": count(Outcome::Pass), "fail": count(Outcome::Fail), "unreachable": count(Outcome::Unreachable) },
        "exit_code": exit_code(probes),
    })
}
