//! `caracal-control`: the control plane (port 8082) — resolves DNS-discovered targets,
//! reconciles declared target files, and announces registry changes.

fn main() -> std::process::ExitCode {
    caracal_bin::control()
}
