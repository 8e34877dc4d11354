//! The mains of Caracal's binaries, as functions: each thin binary (`caracal-api`, ...) calls
//! one, and `caracal-all`, the multi-call binary the container image ships, picks one by the
//! name it was started as. The image then holds the shared code (tokio, axum, sqlx, the
//! crypto) once instead of seven times.

use std::process::ExitCode;

use clap::Parser;

/// The version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A binary's main.
pub type Main = fn() -> ExitCode;

/// The binaries, by the name each is started as.
pub const BINARIES: [(&str, Main); 7] = [
    ("caracal", cli),
    ("caracal-api", api),
    ("caracal-coordinator", coordinator),
    ("caracal-audit", audit),
    ("caracal-sts", sts),
    ("caracal-gateway", gateway),
    ("caracal-control", control),
];

/// `caracal`: up, down, status and doctor. Usage errors exit 2 (clap), failures 1, "could not
/// check" 3.
pub fn cli() -> ExitCode {
    ExitCode::from(caracal_cli::run(caracal_cli::Cli::parse()))
}

/// `caracal-api`'s arguments.
#[derive(Parser)]
#[command(name = "caracal-api", version, about = "Caracal's management and status API (port 3000).")]
struct ApiArgs {
    /// Apply the database migrations and exit.
    #[arg(long)]
    migrate: bool,
    /// With --migrate: also run the post-deployment steps (drops, backfills), once every
    /// replica runs this release.
    #[arg(long, requires = "migrate")]
    post_deploy: bool,
    /// With --post-deploy: how long to wait for replicas of an older release to leave (a
    /// rollout in progress) before giving up.
    #[arg(long, requires = "post_deploy", default_value = "10m", value_parser = humantime::parse_duration)]
    wait_for_replicas: std::time::Duration,
}

/// `caracal-api`: the management and status API (port 3000). `--migrate` applies the schema
/// migrations and exits; serving never migrates by itself, so replicas never race to.
pub fn api() -> ExitCode {
    let args = ApiArgs::parse();
    if args.migrate {
        return caracal_core::task("api", VERSION, caracal_api::PORT, |config| async move {
            let app = caracal_core::App::new("api", VERSION, config)?;
            let pool = caracal_store::pool(&app)?;
            let options = caracal_store::schema::MigrateOptions {
                wait_for_replicas: args.wait_for_replicas,
                ..caracal_store::schema::MigrateOptions::default()
            };
            let done = caracal_store::schema::migrate_with(&pool, &options)
                .await
                .map_err(|e| caracal_core::Error::startup("apply migrations", e))?;
            eprintln!(
                "api: schema at version {} (applied now: {:?}, in {} attempt(s))",
                caracal_store::expected_version(),
                done.applied,
                done.attempts
            );
            if args.post_deploy {
                let done = caracal_store::schema::post_deploy(&pool, &options)
                    .await
                    .map_err(|e| caracal_core::Error::startup("run the post-deployment steps", e))?;
                eprintln!("api: post-deployment steps run now: {:?}", done.applied);
            } else {
                let pending = caracal_store::schema::pending_post_deploy(&pool)
                    .await
                    .map_err(|e| caracal_core::Error::startup("read the post-deployment steps", e))?;
                if !pending.is_empty() {
                    eprintln!(
                        "api: post-deployment steps pending {pending:?}: once every replica runs this release, \
                         `caracal-api --migrate --post-deploy`"
                    );
                }
            }
            Ok(())
        });
    }
    caracal_core::main("api", VERSION, caracal_api::PORT, |app| async move { caracal_api::build(app) })
}

/// The arguments of a service configured only by its environment and `caracal.toml`:
/// `--version` and `--help`.
#[derive(Parser)]
#[command(
    version,
    after_help = "Configured by CARACAL_* environment variables and caracal.toml; see docs/operating.md."
)]
struct ServiceArgs {}

/// Parses `--version`/`--help` for the service started as `name`.
fn service_args(name: &'static str, about: &'static str) {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ServiceArgs::command().name(name).about(about).get_matches();
    // No arguments beyond clap's own: nothing to keep.
    let _ = ServiceArgs::from_arg_matches(&matches);
}

/// `caracal-coordinator`: probes every registered instance and relays the outbox (port 4000).
pub fn coordinator() -> ExitCode {
    service_args("caracal-coordinator", "Probes every registered instance and relays the outbox (port 4000).");
    caracal_core::main("coordinator", VERSION, caracal_coordinator::PORT, |app| async move {
        caracal_coordinator::build(app)
    })
}

/// `caracal-audit`: the event ledger, consuming `caracal.events` (port 9090).
pub fn audit() -> ExitCode {
    service_args("caracal-audit", "The event ledger, consuming caracal.events (port 9090).");
    caracal_core::main("audit", VERSION, caracal_audit::PORT, |app| async move { caracal_audit::build(app) })
}

/// `caracal-sts`: the token service (port 8080).
pub fn sts() -> ExitCode {
    service_args("caracal-sts", "The token service: OAuth2 client credentials, JWKS, revocation (port 8080).");
    caracal_core::main("sts", VERSION, caracal_sts::PORT, |app| async move { caracal_sts::build(app) })
}

/// `caracal-gateway`: metrics federation (port 8081).
pub fn gateway() -> ExitCode {
    service_args("caracal-gateway", "Metrics federation: every instance of a target in one scrape (port 8081).");
    caracal_core::main("gateway", VERSION, caracal_gateway::PORT, |app| async move { caracal_gateway::build(app) })
}

/// `caracal-control`: the control plane — DNS discovery, declared targets (port 8082).
pub fn control() -> ExitCode {
    service_args(
        "caracal-control",
        "The control plane: DNS discovery, declared targets, registry invalidations (port 8082).",
    );
    caracal_core::main("control", VERSION, caracal_control::PORT, |app| async move { caracal_control::build(app) })
}

/// `caracal-all`: runs the binary named by the file it was started as (a link named
/// `caracal-api` runs the API), or by its first argument (`caracal-all caracal-api ...`).
pub fn multicall() -> ExitCode {
    let mut args = std::env::args_os();
    let started_as = args
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if let Some((_, main)) = BINARIES.iter().find(|(name, _)| *name == started_as) {
        return main();
    }
    let names: Vec<&str> = BINARIES.iter().map(|(name, _)| *name).collect();
    eprintln!("caracal-all {VERSION}: start it as one of {} (a link with that name)", names.join(", "));
    ExitCode::from(2)
}
