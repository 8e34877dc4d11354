//! `caracal up` and `caracal down`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::CliError;
use crate::local::{LocalPostgres, LocalRedis};
use crate::probe::{self, Endpoint, Outcome, Probe};
use crate::services::{self, SERVICES};
use crate::state::{Home, State, read_secret};

/// Starts everything (idempotently), waits for readiness with a live display, then prints
/// the status, the URLs and the next commands.
///
/// # Errors
/// A missing binary, a taken port, a failing step, or services not ready within `timeout`.
pub async fn up(home: &Home, state: State, timeout: Duration) -> Result<(), CliError> {
    let bin = services::bin_dir()?;
    let postgres = LocalPostgres::new(home, state.ports.postgres)?;
    let redis = LocalRedis::new(home, state.ports.redis);
    home.save(&state)?;
    home.ensure_secrets()?;
    let env = services::environment(home, &state, &postgres.url(), &redis.url(), |k| std::env::var(k).ok());
    for key in &env.from_caller {
        eprintln!("  {key} from your environment: {}", without_password(env.get(key).unwrap_or_default()));
    }
    let targets = PathBuf::from(env.get(services::TARGETS_DIR).unwrap_or_default());
    std::fs::create_dir_all(&targets).map_err(CliError::io(format!("create {}", targets.display())))?;
    // A store the caller named is theirs to run: the local one is not started for nothing.
    let theirs = |key: &str| env.from_caller.iter().any(|k| k == key);
    if !theirs("DATABASE_URL") {
        step("PostgreSQL", || postgres.start(home))?;
    }
    if !theirs("REDIS_URL") {
        step("Redis", || redis.start())?;
    }
    step("migrations", || services::migrate(&bin, &env))?;
    for service in SERVICES {
        let started = services::start(home, &bin, service, &state, &env)?;
        eprintln!("  {:<12} {}", service.name, if started { "started" } else { "already running" });
    }
    let bearer = env.get("METRICS_BEARER_FILE").and_then(|file| read_secret(Path::new(file)));
    let deadline = Instant::now() + timeout;
    let probes = wait_ready(home, &state, bearer.as_deref(), timeout).await?;
    // Every service answers ready; the platform's own view of itself (the coordinator's probes
    // of it, as `/healthchecks` shows them) follows a few probes later. `up` returns only once
    // that view agrees, so `caracal up && curl -f …/healthchecks` holds.
    wait_fleet_view(home, &format!("http://127.0.0.1:{}", state.ports.api), deadline, timeout).await?;
    print!("{}", crate::status::render_table(&probes, std::io::stdout().is_terminal()));
    println!();
    println!("Caracal is up (mode {}) in {}", state.mode, home.root.display());
    // In dev, `/v1` reads are open, so the page shows errors to everyone.
    let sign_in = if state.mode == "dev" { "to pause probing" } else { "to see errors and pause probing" };
    println!("  {:<12} http://127.0.0.1:{}/  (sign in with the admin token {sign_in})", "status page", state.ports.api);
    for service in SERVICES {
        println!("  {:<12} http://127.0.0.1:{}", service.name, service.port(&state.ports));
    }
    println!("  {:<12} {}", "postgres", without_password(env.get("DATABASE_URL").unwrap_or_default()));
    println!("  {:<12} {}", "redis", without_password(env.get("REDIS_URL").unwrap_or_default()));
    let var = |key: &str| env.get(key).unwrap_or_default().to_string();
    println!("  secrets      {} and {}", var("METRICS_BEARER_FILE"), var("CARACAL_ADMIN_TOKEN_FILE"));
    println!(
        "  targets      {} (caracal-control reads declared targets here, YAML or JSON files; {} moves it)",
        targets.display(),
        services::TARGETS_DIR
    );
    println!(
        "  credentials  {} (a bearer file per name a target may give as `credential`; the gateway presents nothing else)",
        var("CARACAL_GATEWAY__CREDENTIALS_DIR")
    );
    println!("Next: `caracal status --ready`, `caracal doctor`, `caracal down` (add -v to delete the data)");
    Ok(())
}

/// `value` with a URL's password masked (`postgres://me:****@db/x`): a URL the caller exported
/// may hold one, and the terminal is no place for it.
fn without_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else { return value.to_string() };
    let rest = &value[scheme_end..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:****{}", &value[..scheme_end], &authority[..colon], &rest[at..])
        }
        _ => value.to_string(),
    }
}

fn step(what: &str, run: impl FnOnce() -> Result<(), CliError>) -> Result<(), CliError> {
    eprint!("  {what:<12} ");
    let started = Instant::now();
    let result = run();
    match &result {
        Ok(()) => eprintln!("ok ({} ms)", started.elapsed().as_millis()),
        Err(_) => eprintln!("failed"),
    }
    result
}

/// Polls every service's `/ready` (with the metrics bearer, for details) until all pass,
/// showing each service's rungs as they come up.
async fn wait_ready(
    home: &Home,
    state: &State,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Probe>, CliError> {
    let targets: Vec<(String, String)> =
        SERVICES.iter().map(|s| (s.name.to_string(), format!("http://127.0.0.1:{}", s.port(&state.ports)))).collect();
    let tty = std::io::stderr().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut shown: Vec<String> = Vec::new();
    loop {
        let probes = probe::probe_all(&targets, Endpoint::Ready, Duration::from_millis(1500), bearer).await;
        let lines: Vec<String> = probes.iter().map(progress_line).collect();
        if tty {
            let mut err = std::io::stderr();
            if !shown.is_empty() {
                let _ = write!(err, "\u{1b}[{}A", shown.len());
            }
            for line in &lines {
                let _ = writeln!(err, "\u{1b}[2K{line}");
            }
        } else {
            for (i, line) in lines.iter().enumerate() {
                if shown.get(i) != Some(line) {
                    eprintln!("{line}");
                }
            }
        }
        shown = lines;
        if probes.iter().all(|p| p.outcome == Outcome::Pass) {
            return Ok(probes);
        }
        if Instant::now() >= deadline {
            let detail = probes
                .iter()
                .filter(|p| p.outcome != Outcome::Pass)
                .map(|p| format!("{}: {}", p.service, p.detail))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(CliError::NotReady {
                seconds: timeout.as_secs(),
                detail,
                logs: home.logs().display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The entries of `/healthchecks` that the platform decides for itself: its stores, its
/// outbox and its own services. (`TSDB` and `General` report an operator's Prometheus and
/// Alertmanager when configured: shown, but not waited for.)
const OWN_ENTRIES: [&str; 4] = ["Database", "Cache", "MessagingSystem", "Service"];

/// Polls the API's `/healthchecks` until every entry the platform decides for itself is
/// `Operational`, saying once what it waits for.
async fn wait_fleet_view(home: &Home, api: &str, deadline: Instant, timeout: Duration) -> Result<(), CliError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "type")]
        kind: String,
        name: String,
        status: String,
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let mut said = false;
    loop {
        let entries: Result<Vec<Entry>, String> = match client.get(format!("{api}/healthchecks")).send().await {
            Ok(answer) => answer.json().await.map_err(|e| format!("unreadable /healthchecks: {e}")),
            Err(e) => Err(format!("/healthchecks: {e}")),
        };
        let waiting: Vec<String> = match &entries {
            Ok(entries) => entries
                .iter()
                .filter(|e| OWN_ENTRIES.contains(&e.kind.as_str()) && e.status != "Operational")
                .map(|e| format!("{} {}", e.name, e.status))
                .collect(),
            Err(why) => vec![why.clone()],
        };
        if waiting.is_empty() {
            for e in entries.iter().flatten().filter(|e| e.status != "Operational") {
                eprintln!("  note: /healthchecks shows {} ({}) {}", e.name, e.kind, e.status);
            }
            return Ok(());
        }
        if !said {
            eprintln!("  the platform's own view (/healthchecks): waiting for {}", waiting.join(", "));
            said = true;
        }
        if Instant::now() >= deadline {
            return Err(CliError::NotReady {
                seconds: timeout.as_secs(),
                detail: format!("/healthchecks shows {}", waiting.join(", ")),
                logs: home.logs().display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `  api          storage ok  delivery waiting  service waiting`
fn progress_line(p: &Probe) -> String {
    let rungs: Vec<String> = if p.rungs.is_empty() {
        vec![if p.outcome == Outcome::Unreachable { "starting".into() } else { p.detail.clone() }]
    } else {
        p.rungs.iter().map(|r| format!("{} {}", r.rung, r.state)).collect()
    };
    format!("  {:<12} {}", p.service, rungs.join("  "))
}

/// Stops the services, then Redis, then PostgreSQL; with `delete`, removes `.caracal/`.
///
/// # Errors
/// When something does not stop, or the directory cannot be removed.
pub fn down(home: &Home, delete: bool) -> Result<(), CliError> {
    let Some(state) = home.load()? else {
        if delete && home.root.exists() {
            std::fs::remove_dir_all(&home.root).map_err(CliError::io(format!("remove {}", home.root.display())))?;
        }
        eprintln!("nothing to stop in {}", home.root.display());
        return Ok(());
    };
    // Drain delay and shutdown timeout (5 s + 15 s outside dev) plus a margin.
    let grace = Duration::from_secs(25);
    for service in SERVICES.iter().rev() {
        let stopped = services::stop(home, *service, grace)?;
        eprintln!("  {:<12} {}", service.name, if stopped { "stopped" } else { "not running" });
    }
    step("redis", || LocalRedis::new(home, state.ports.redis).stop())?;
    match LocalPostgres::new(home, state.ports.postgres) {
        Ok(pg) => step("postgres", || pg.stop())?,
        Err(e) => eprintln!("  postgres     not checked: {e}"),
    }
    if delete && let Some(elsewhere) = home.relocated_postgres() {
        std::fs::remove_dir_all(&elsewhere).map_err(CliError::io(format!("remove {}", elsewhere.display())))?;
        eprintln!("  removed {}", elsewhere.display());
    }
    if delete {
        std::fs::remove_dir_all(&home.root).map_err(CliError::io(format!("remove {}", home.root.display())))?;
        eprintln!("  removed {}", home.root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_password_in_a_url_is_masked_and_nothing_else_changes() {
        assert_eq!(without_password("postgres://me:s3cret@db:5432/x"), "postgres://me:****@db:5432/x");
        assert_eq!(without_password("redis://:pw@127.0.0.1:6379/0"), "redis://:****@127.0.0.1:6379/0");
        assert_eq!(without_password("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(without_password("/tmp/targets"), "/tmp/targets");
        assert_eq!(without_password("http://127.0.0.1:3000/a@b"), "http://127.0.0.1:3000/a@b");
    }
}
