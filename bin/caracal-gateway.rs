//! `caracal-gateway`: metrics federation (port 8081).

fn main() -> std::process::ExitCode {
    caracal_bin::gateway()
}
