//! The one error type of the CLI and its exit codes.

/// What stops a command. Each message is one line saying what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A server binary or a Caracal binary is missing.
    #[error("{what} not found ({looked}); {remedy}")]
    Missing {
        /// What is missing.
        what: String,
        /// Where it was looked for.
        looked: String,
        /// How to get it.
        remedy: String,
    },
    /// A port `up` needs is taken by something it did not start.
    #[error("port {port} ({what}) is already in use by another program; stop it, or choose another port with {flag}")]
    PortTaken {
        /// The port.
        port: u16,
        /// Who needed it.
        what: &'static str,
        /// The flag that moves it.
        flag: &'static str,
    },
    /// A step failed; the message says which and where its log is.
    #[error("{0}")]
    Step(String),
    /// The services did not become ready in time.
    #[error("not ready after {seconds} s: {detail}; see the logs in {logs}")]
    NotReady {
        /// How long we waited.
        seconds: u64,
        /// What is still failing.
        detail: String,
        /// The logs directory.
        logs: String,
    },
    /// Local state could not be read or written.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// A closure turning an `io::Error` into [`CliError::Io`] for `action`.
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let action = action.into();
        move |source| CliError::Io { action, source }
    }
}
