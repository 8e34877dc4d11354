//! `caracal-audit`: the event ledger, consuming `caracal.events` (port 9090).

fn main() -> std::process::ExitCode {
    caracal_core::main("audit", env!("CARGO_PKG_VERSION"), caracal_audit::PORT, |app| async move {
        caracal_audit::build(app)
    })
}
