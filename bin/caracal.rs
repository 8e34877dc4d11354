//! `caracal`: up, down, status and doctor. Usage errors exit 2 (clap), failures 1, "could not
//! check" 3.

use clap::Parser;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(caracal_cli::run(caracal_cli::Cli::parse()))
}
