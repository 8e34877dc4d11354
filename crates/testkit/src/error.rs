//! The one error type of the toolkit.

use std::path::PathBuf;

/// What can go wrong while starting or driving a server or process under test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server binary is not installed; the message says which package provides it.
    #[error("`{binary}` not found (looked in {looked_in}); is it installed? try: {install}")]
    MissingBinary {
        /// The binary that was looked for.
        binary: &'static str,
        /// Where it was looked for.
        looked_in: String,
        /// The command that installs it.
        install: &'static str,
    },
    /// A server did not become ready in time; its log is kept at `log`.
    #[error("{what} did not become ready within {seconds} s; see its log at {}", log.display())]
    NotReady {
        /// Which server.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// A helper command (`initdb`, `createdb`, ...) failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr and stdout.
        output: String,
    },
    /// An operating-system call failed.
    #[error("could not {action}")]
    Io {
        /// What we were doing.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A closure turning an `io::Error` into [`Error::Io`] for `action`, for `map_err`.
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.into();
        move |source| Error::Io { action, source }
    }
}
