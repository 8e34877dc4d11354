//! `caracal-coordinator`: probes every registered instance and relays the outbox (port 4000).

fn main() -> std::process::ExitCode {
    caracal_bin::coordinator()
}
