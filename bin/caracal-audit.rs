//! `caracal-audit`: the event ledger, consuming `caracal.events` (port 9090).

fn main() -> std::process::ExitCode {
    caracal_bin::audit()
}
