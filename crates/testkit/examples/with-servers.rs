//! Runs a command against throw-away PostgreSQL and Redis servers.
//!
//! ```text
//! cargo run -p caracal-testkit --example with-servers -- cargo run -p caracal-core --example service
//! ```
//!
//! Starts both servers on free loopback ports, runs the command with `DATABASE_URL` and
//! `REDIS_URL` set (and `CARACAL_MODE=dev` unless already set), and removes the servers when
//! the command exits. Ctrl-C goes to the command, which drains; the servers outlive it until
//! then.

use std::process::{Command, ExitCode};

use caracal_testkit::{Postgres, Redis};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: with-servers <command> [args...]");
        return ExitCode::from(2);
    };
    let postgres = match Postgres::start_default() {
        Ok(pg) => pg,
        Err(e) => return fail(&e),
    };
    let redis = match Redis::start_default() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    eprintln!("with-servers: DATABASE_URL={} REDIS_URL={}", postgres.url(), redis.url());
    let mut command = Command::new(program);
    command.args(rest).env("DATABASE_URL", postgres.url()).env("REDIS_URL", redis.url());
    if std::env::var_os("CARACAL_MODE").is_none() {
        command.env("CARACAL_MODE", "dev");
    }
    // The terminal's Ctrl-C reaches the command too; we wait for it to drain instead of dying
    // first and taking its databases away. Ignored only after the spawn, so the command does
    // not inherit the ignored signals.
    let code = match command.spawn().and_then(|mut child| {
        ignore_interrupts();
        child.wait()
    }) {
        Ok(status) => status.code().unwrap_or(1),
        Err(e) => {
            eprintln!("with-servers: cannot run {program}: {e}");
            127
        }
    };
    drop((postgres, redis));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn ignore_interrupts() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: SIG_IGN installs no handler code; it only tells the kernel to drop the signal.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

fn fail(error: &caracal_testkit::Error) -> ExitCode {
    eprintln!("with-servers: {error}");
    ExitCode::from(1)
}
