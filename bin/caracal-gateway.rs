//! `caracal-gateway`: metrics federation (port 8081).

fn main() -> std::process::ExitCode {
    caracal_core::main("gateway", env!("CARGO_PKG_VERSION"), caracal_gateway::PORT, |app| async move {
        caracal_gateway::build(app)
    })
}
