//! `caracal up` and `caracal down`.

use std::io::{IsTerminal, Write};
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
    let targets = home.targets_dir();
    std::fs::create_dir_all(&targets).map_err(CliError::io(format!("create {}", targets.display())))?;
    step("PostgreSQL", || postgres.start(home))?;
    step("Redis", || redis.start())?;
    let env = services::environment(home, &state, &postgres.url(), &redis.url());
    step("migrations", || services::migrate(&bin, &env))?;
    for service in SERVICES {
        let started = services::start(home, &bin, service, &state, &env)?;
        eprintln!("  {:<12} {}", service.name, if started { "started" } else { "already running" });
    }
    let probes = wait_ready(home, &state, timeout).await?;
    print!("{}", crate::status::render_table(&probes, std::io::stdout().is_terminal()));
    println!();
    println!("Caracal is up (mode {}) in {}", state.mode, home.root.display());
    // In dev, `/v1` reads are open, so the page shows errors to everyone.
    let sign_in = if state.mode == "dev" { "to pause probing" } else { "to see errors and pause probing" };
    println!("  {:<12} http://127.0.0.1:{}/  (sign in with the admin token {sign_in})", "status page", state.ports.api);
    for service in SERVICES {
        println!("  {:<12} http://127.0.0.1:{}", service.name, service.port(&state.ports));
    }
    println!("  {:<12} {}", "postgres", postgres.url());
    println!("  {:<12} {}", "redis", redis.url());
    println!("  secrets      {} and {}", home.metrics_bearer().display(), home.admin_token().display());
    println!("  targets      {} (YAML or JSON files; caracal-control keeps the registry in step)", targets.display());
    println!(
        "  credentials  {} (a bearer file per name a target may give as `credential`; the gateway presents nothing else)",
        home.credentials().display()
    );
    println!("Next: `caracal status --ready`, `caracal doctor`, `caracal down` (add -v to delete the data)");
    Ok(())
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
async fn wait_ready(home: &Home, state: &State, timeout: Duration) -> Result<Vec<Probe>, CliError> {
    let targets: Vec<(String, String)> =
        SERVICES.iter().map(|s| (s.name.to_string(), format!("http://127.0.0.1:{}", s.port(&state.ports)))).collect();
    let bearer = read_secret(&home.metrics_bearer());
    let tty = std::io::stderr().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut shown: Vec<String> = Vec::new();
    loop {
        let probes = probe::probe_all(&targets, Endpoint::Ready, Duration::from_millis(1500), bearer.as_deref()).await;
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
