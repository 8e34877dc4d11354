//! `caracal-api`: the management and status API (port 3000). `--migrate` applies the schema
//! migrations and exits; serving never migrates by itself, so replicas never race to.

fn main() -> std::process::ExitCode {
    caracal_bin::api()
}
