//! `caracal-coordinator`: probes every registered instance and relays the outbox (port 4000).

fn main() -> std::process::ExitCode {
    caracal_core::main("coordinator", env!("CARGO_PKG_VERSION"), caracal_coordinator::PORT, |app| async move {
        caracal_coordinator::build(app)
    })
}
