//! caracal-cli's tests: the table and JSON outputs against golden files. (The exit codes and
//! `up`/`down` run on the built binaries, in `tests/e2e/cli.rs`.)

mod golden;
