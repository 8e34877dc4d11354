//! `caracal-sts`: the token service (port 8080).

fn main() -> std::process::ExitCode {
    caracal_core::main(
        "sts",
        env!("CARGO_PKG_VERSION"),
        caracal_sts::PORT,
        |app| async move { caracal_sts::build(app) },
    )
}
