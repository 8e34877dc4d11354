//! Small helpers the benchmark harnesses share: finding a tool, `wrk`'s rate, medians, and the
//! process's own CPU time and peak memory from `/proc`.

use std::process::Command;

/// The path of `binary` on `PATH`, if any.
pub fn which(binary: &str) -> Option<String> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(binary)).find(|p| p.is_file()))
        .map(|p| p.display().to_string())
}

/// Runs `wrk` with `args` against `url`; returns its requests per second.
///
/// # Panics
/// When `wrk` cannot run, saw non-2xx answers, or printed no rate: the figure would be wrong.
pub fn wrk_rate(wrk: &str, args: &[&str], url: &str) -> f64 {
    let out = Command::new(wrk).args(args).arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors for {url}:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

/// The median of `values` (sorted in place).
///
/// # Panics
/// When `values` is empty.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU seconds (user + system) this process has used.
///
/// # Panics
/// When `/proc/self/stat` cannot be read (not Linux).
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self").expect("/proc/self/stat")
}

/// CPU seconds (user + system) process `pid` (or `"self"`) has used; `None` when it is gone.
pub fn cpu_seconds_of(pid: impl std::fmt::Display) -> Option<f64> {
    stat_seconds(pid, 11)
}

/// CPU seconds (user + system) of the children process `pid` (or `"self"`) has reaped: where
/// the time of an exited process goes. PostgreSQL's postmaster reaps its backends, so a
/// session that ended during a run is counted through it; `None` when `pid` is gone.
pub fn reaped_cpu_seconds_of(pid: impl std::fmt::Display) -> Option<f64> {
    stat_seconds(pid, 13)
}

/// The sum of two consecutive clock-tick fields of `/proc/{pid}/stat`, counted from the
/// field after the command name (`utime` is 11, `cutime` 13), in seconds.
fn stat_seconds(pid: impl std::fmt::Display, first: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(first)?.parse::<f64>().ok()? + fields.get(first + 1)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds (user + system) of every running process whose command name is `comm`
/// (`postgres`, `redis-server`), per pid: take one before and one after a run and give both
/// to [`cpu_seconds_between`].
pub fn cpu_seconds_by_pid(comm: &str) -> std::collections::HashMap<u32, f64> {
    seconds_by_pid(comm, cpu_seconds_of)
}

/// [`reaped_cpu_seconds_of`] every running process named `comm`, per pid: with
/// [`cpu_seconds_by_pid`], the whole CPU time of a server whose sessions come and go.
pub fn reaped_cpu_seconds_by_pid(comm: &str) -> std::collections::HashMap<u32, f64> {
    seconds_by_pid(comm, reaped_cpu_seconds_of)
}

fn seconds_by_pid(comm: &str, seconds: fn(u32) -> Option<f64>) -> std::collections::HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Default::default() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .filter_map(|pid| Some((pid, seconds(pid)?)))
        .collect()
}

/// The CPU seconds spent between two [`cpu_seconds_by_pid`] readings, by the processes alive
/// at the second (one that started in between counts from zero; one that exited is lost).
pub fn cpu_seconds_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after.iter().map(|(pid, secs)| secs - before.get(pid).copied().unwrap_or(0.0)).sum()
}

/// This process's peak resident memory (`VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    peak_rss_mib_of("self")
}

/// The peak resident memory (`VmHWM`) of process `pid` (or `"self"`), in MiB; 0 when it is
/// gone.
pub fn peak_rss_mib_of(pid: impl std::fmt::Display) -> f64 {
    status_kib(pid, "VmHWM:") / 1024.0
}

/// The current resident memory (`VmRSS`) of process `pid` (or `"self"`), in MiB; 0 when it
/// is gone.
pub fn rss_mib_of(pid: impl std::fmt::Display) -> f64 {
    status_kib(pid, "VmRSS:") / 1024.0
}

/// A `kB` field of `/proc/{pid}/status`; 0 when missing.
fn status_kib(pid: impl std::fmt::Display, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Starts this same harness again as a child with `flag` (its fleet, say, so the fleet's CPU
/// is not counted as the measured process's) and reads the ports it prints on its first line.
///
/// # Panics
/// When the child cannot start or prints no line.
pub fn spawn_self(flag: &str) -> (std::process::Child, Vec<u16>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg(flag)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the child harness");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ports");
    (child, line.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}
