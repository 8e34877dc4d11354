//! `caracal-api`: the management and status API (port 3000). `--migrate` applies the schema
//! migrations and exits; serving never migrates by itself, so replicas never race to.

use std::process::ExitCode;

use clap::Parser;

/// Caracal's management and status API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Apply the database migrations and exit.
    #[arg(long)]
    migrate: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let version = env!("CARGO_PKG_VERSION");
    if args.migrate {
        return caracal_core::task("api", version, caracal_api::PORT, |config| async move {
            let app = caracal_core::App::new("api", version, config)?;
            let pool = app.postgres()?;
            caracal_store::migrate(&pool).await.map_err(|e| caracal_core::Error::startup("apply migrations", e))?;
            eprintln!("api: schema at version {}", caracal_store::expected_version());
            Ok(())
        });
    }
    caracal_core::main("api", version, caracal_api::PORT, |app| async move { caracal_api::build(app) })
}
