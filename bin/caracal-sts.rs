//! `caracal-sts`: the token service (port 8080).

fn main() -> std::process::ExitCode {
    caracal_bin::sts()
}
