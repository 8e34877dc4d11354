//! `caracal-cli`: the `caracal` command. It is what operators type during an outage, so it is
//! fast, says exactly what it could and could not check, and never hides a failure.
//!
//! # Layout
//! - [`Cli`] (below): the arguments; [`run`] dispatches them and returns the exit code.
//! - [`state`]: the `.caracal/` directory (`state.json`, secrets, data, logs, pid files).
//! - [`local`]: the local PostgreSQL and Redis daemons; [`services`]: the platform's services.
//! - [`up`]: `up` (with its live readiness display) and `down`.
//! - [`probe`] and [`status`]: probing endpoints; the table, the JSON, the exit codes.
//! - [`doctor`]: authenticated, in-depth findings with remedies.
//! - [`apply`]: declared targets from files, planned and applied through the API.
//! - [`error`]: the error type, [`CliError`].
//!
//! Exit codes: 0 success / all pass, 1 failure / something fails, 2 usage, 3 could not check.

// Printing the results is this crate's job.
#![allow(clippy::print_stdout)]

pub mod apply;
pub mod doctor;
pub mod error;
pub mod local;
pub mod probe;
pub mod services;
pub mod state;
pub mod status;
pub mod up;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

pub use error::CliError;
use probe::{Endpoint, Outcome};
use services::SERVICES;
use state::{Home, Ports, State, read_secret};

/// Run and inspect a Caracal platform.
#[derive(Debug, Parser)]
#[command(name = "caracal", version)]
pub struct Cli {
    /// The directory holding `.caracal/` (default: the current directory).
    #[arg(long, global = true, env = "CARACAL_DIR", default_value = ".")]
    pub dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start PostgreSQL, Redis and every service locally, and wait until they are ready.
    Up(UpArgs),
    /// Stop everything `up` started (services, then Redis, then PostgreSQL).
    Down {
        /// Also delete the data, logs and secrets.
        #[arg(short = 'v', long = "volumes")]
        volumes: bool,
    },
    /// Probe every service's /health (or /ready) at once.
    Status(StatusArgs),
    /// Authenticated, in-depth checks with a remedy for each finding.
    Doctor(TargetArgs),
    /// Make the registry hold the targets declared in files (YAML or JSON), through the API:
    /// print the plan (create/update/delete, one line each) and apply it.
    Apply(ApplyArgs),
}

/// `apply`'s options.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file of targets (one or a list; YAML, or JSON for `.json`), or a directory of them
    /// (repeatable).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Print the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the targets created through the API that no file declares (never the
    /// platform's own, never those caracal-control manages).
    #[arg(long)]
    pub prune: bool,
    /// The API's base URL (default: the local platform's).
    #[arg(long, env = "CARACAL_API_URL")]
    pub api: Option<String>,
    /// A file holding a bearer with `targets:write`: the admin token or an STS token
    /// (default: CARACAL_ADMIN_TOKEN_FILE, else the local admin token).
    #[arg(long, env = "CARACAL_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Deployment modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Development: open metrics, details shown.
    Dev,
    /// Release candidate: strict.
    Rc,
    /// Production: strict.
    Stable,
}

/// `up`'s options; ports default to the last `up` here, else Caracal's defaults.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The services' mode (default: the last `up` here, else dev).
    #[arg(long, value_enum, env = "CARACAL_MODE")]
    pub mode: Option<ModeArg>,
    /// Port of caracal-api.
    #[arg(long)]
    pub api_port: Option<u16>,
    /// Port of caracal-coordinator.
    #[arg(long)]
    pub coordinator_port: Option<u16>,
    /// Port of caracal-audit.
    #[arg(long)]
    pub audit_port: Option<u16>,
    /// Port of caracal-sts.
    #[arg(long)]
    pub sts_port: Option<u16>,
    /// Port of caracal-gateway.
    #[arg(long)]
    pub gateway_port: Option<u16>,
    /// Port of caracal-control.
    #[arg(long)]
    pub control_port: Option<u16>,
    /// Port of the local PostgreSQL.
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// Port of the local Redis.
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// How long to wait for readiness.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    pub timeout: Duration,
}

/// Where the services are, for `status` and `doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// A service's base URL, as NAME=URL or a bare URL named by its host:port (repeatable);
    /// default: the local platform.
    #[arg(long = "url", value_parser = parse_url)]
    pub urls: Vec<(String, String)>,
    /// File holding the metrics bearer (default: METRICS_BEARER_FILE, else the local secret).
    #[arg(long, env = "METRICS_BEARER_FILE")]
    pub bearer_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `status`'s options.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Probe /ready (the full ladder) instead of /health.
    #[arg(long)]
    pub ready: bool,
    /// Retry until every service passes or this much time has passed.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Timeout of each probe.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1500ms")]
    pub timeout: Duration,
    /// Where to look.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `NAME=URL`, or a bare `URL` named by its `host:port`.
fn parse_url(raw: &str) -> Result<(String, String), String> {
    let is_url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
    let (name, url) = match raw.split_once('=') {
        Some((name, url)) if !is_url(raw) => (Some(name.to_string()), url),
        _ => (None, raw),
    };
    if !is_url(url) {
        return Err(format!(
            "`{url}` is not an http:// URL (expected URL or NAME=URL, e.g. api=http://127.0.0.1:3000)"
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("`{url}` has no host"))?;
    let name = match name {
        Some(name) if !name.is_empty() => name,
        Some(_) => return Err("the NAME in NAME=URL is empty".into()),
        None => format!("{host}:{}", parsed.port_or_known_default().unwrap_or(80)),
    };
    Ok((name, url.trim_end_matches('/').to_string()))
}

/// Runs a parsed command; returns the exit code.
pub fn run(cli: Cli) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caracal: cannot start: {e}");
            return 1;
        }
    };
    let home = Home::new(&cli.dir);
    runtime.block_on(async move {
        let result = match cli.command {
            Command::Up(args) => up_command(&home, args).await.map(|()| 0),
            Command::Down { volumes } => up::down(&home, volumes).map(|()| 0),
            Command::Status(args) => status_command(&home, args).await,
            Command::Doctor(args) => doctor_command(&home, args).await,
            Command::Apply(args) => apply_command(&home, args).await,
        };
        result.unwrap_or_else(|e| {
            eprintln!("caracal: {e}");
            1
        })
    })
}

async fn up_command(home: &Home, args: UpArgs) -> Result<(), CliError> {
    let previous = home.load()?;
    let base = previous.clone().unwrap_or(State { mode: "dev".into(), ports: Ports::default() });
    let ports = Ports {
        api: args.api_port.unwrap_or(base.ports.api),
        coordinator: args.coordinator_port.unwrap_or(base.ports.coordinator),
        audit: args.audit_port.unwrap_or(base.ports.audit),
        sts: args.sts_port.unwrap_or(base.ports.sts),
        gateway: args.gateway_port.unwrap_or(base.ports.gateway),
        control: args.control_port.unwrap_or(base.ports.control),
        postgres: args.pg_port.unwrap_or(base.ports.postgres),
        redis: args.redis_port.unwrap_or(base.ports.redis),
    };
    let mode = match args.mode {
        Some(ModeArg::Dev) => "dev".to_string(),
        Some(ModeArg::Rc) => "rc".to_string(),
        Some(ModeArg::Stable) => "stable".to_string(),
        None => base.mode,
    };
    let state = State { mode, ports };
    if let Some(previous) = previous
        && previous != state
        && SERVICES.iter().any(|s| s.running(home))
    {
        return Err(CliError::Step("the platform already runs here with other settings; `caracal down` first".into()));
    }
    up::up(home, state, args.timeout).await
}

/// `(name, base URL)` of each service to look at.
type Services = Vec<(String, String)>;

/// The services to look at and the bearer to present.
fn targets(home: &Home, args: &TargetArgs) -> Result<(Services, Option<String>), CliError> {
    let services = if args.urls.is_empty() {
        let ports = home.load()?.map(|s| s.ports).unwrap_or_default();
        SERVICES.iter().map(|s| (s.name.to_string(), format!("http://127.0.0.1:{}", s.port(&ports)))).collect()
    } else {
        args.urls.clone()
    };
    let bearer = match &args.bearer_file {
        Some(path) => Some(
            read_secret(path).ok_or_else(|| CliError::Step(format!("cannot read a token from {}", path.display())))?,
        ),
        None => read_secret(&home.metrics_bearer()),
    };
    Ok((services, bearer))
}

async fn status_command(home: &Home, args: StatusArgs) -> Result<u8, CliError> {
    let (services, bearer) = targets(home, &args.target)?;
    let endpoint = if args.ready { Endpoint::Ready } else { Endpoint::Health };
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let probes = loop {
        let probes = probe::probe_all(&services, endpoint, args.timeout, bearer.as_deref()).await;
        let waiting = args.wait.is_some_and(|wait| started.elapsed() < wait);
        if probes.iter().all(|p| p.outcome == Outcome::Pass) || !waiting {
            if tty && args.wait.is_some() {
                eprint!("\r\u{1b}[2K");
            }
            break probes;
        }
        let passing = probes.iter().filter(|p| p.outcome == Outcome::Pass).count();
        let line = format!("waiting: {passing}/{} pass after {}s", probes.len(), started.elapsed().as_secs());
        if tty {
            eprint!("\r\u{1b}[2K{line}");
        } else {
            eprintln!("{line}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&status::render_json(&probes, endpoint)).unwrap_or_default());
    } else {
        print!("{}", status::render_table(&probes, std::io::stdout().is_terminal()));
    }
    Ok(status::exit_code(&probes))
}

async fn doctor_command(home: &Home, args: TargetArgs) -> Result<u8, CliError> {
    let (services, bearer) = targets(home, &args)?;
    let local = home.load()?.filter(|_| args.urls.is_empty());
    let target = doctor::Target {
        services,
        bearer,
        database_url: local
            .as_ref()
            .map(|s| format!("postgres://postgres@127.0.0.1:{}/{}", s.ports.postgres, local::DATABASE)),
        redis_url: local.as_ref().map(|s| format!("redis://127.0.0.1:{}/", s.ports.redis)),
    };
    let findings = doctor::examine(&target).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "findings": findings })).unwrap_or_default());
    } else {
        print!("{}", doctor::render(&findings));
    }
    Ok(u8::from(findings.iter().any(|f| f.severity == doctor::Severity::Critical)))
}

async fn apply_command(home: &Home, args: ApplyArgs) -> Result<u8, CliError> {
    let api = match args.api {
        Some(api) => api,
        None => format!("http://127.0.0.1:{}", home.load()?.map(|s| s.ports).unwrap_or_default().api),
    };
    let token = match &args.token_file {
        Some(path) => Some(
            read_secret(path).ok_or_else(|| CliError::Step(format!("cannot read a token from {}", path.display())))?,
        ),
        None => read_secret(&home.admin_token()),
    };
    apply::apply(apply::Apply { files: args.files, api, token, dry_run: args.dry_run, prune: args.prune }).await
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn a_url_is_named_or_named_by_its_host_and_port() {
        let parsed = |raw: &str| parse_url(raw).map(|(n, u)| format!("{n} {u}"));
        assert_eq!(parsed("api=http://10.0.0.5:3000/"), Ok("api http://10.0.0.5:3000".into()));
        assert_eq!(parsed("http://10.0.0.5:3000"), Ok("10.0.0.5:3000 http://10.0.0.5:3000".into()));
        assert_eq!(parsed("https://caracal.example"), Ok("caracal.example:443 https://caracal.example".into()));
        assert_eq!(parsed("http://host:9090/?a=b"), Ok("host:9090 http://host:9090/?a=b".into()));
        assert!(parsed("api=ftp://x").is_err());
        assert!(parsed("localhost:3000").is_err());
        assert!(parsed("=http://x:1").is_err());
    }
}
