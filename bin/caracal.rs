//! `caracal`: up, down, status and doctor. Usage errors exit 2 (clap), failures 1, "could not
//! check" 3.

fn main() -> std::process::ExitCode {
    caracal_bin::cli()
}
