//! The process's lifecycle flags (draining, forced unhealthy) and the signals that set them.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Shared lifecycle state: read by `/health` and `/ready`, set by signals or by tests.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    unhealthy: AtomicBool,
    /// Cancelled when draining starts; the server waits on it.
    drain_started: CancellationToken,
}

impl Lifecycle {
    /// Starts draining: `/ready` fails from now on and the server begins its shutdown.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain_started.cancel();
    }

    /// Makes `/health` fail (liveness) and starts draining.
    pub fn force_unhealthy(&self) {
        self.unhealthy.store(true, Ordering::SeqCst);
        self.drain();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether liveness has been forced to fail.
    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::SeqCst)
    }

    /// Resolves once draining has started.
    pub async fn drain_started(&self) {
        self.drain_started.cancelled().await;
    }
}

/// The signal handlers, installed as soon as they are created so that a signal arriving during
/// slow start-up work is not lost (or fatal by default).
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGUSR1.
    ///
    /// # Errors
    /// When the OS refuses a handler (must be called inside a tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Handles signals for the life of the process: the first SIGTERM/SIGINT drains, SIGUSR1
    /// fails liveness and drains, and any second signal exits at once with status 1.
    pub fn spawn_handler(mut self, lifecycle: std::sync::Arc<Lifecycle>) {
        tokio::spawn(async move {
            let mut seen = false;
            loop {
                let name = tokio::select! {
                    _ = self.term.recv() => "SIGTERM",
                    _ = self.int.recv() => "SIGINT",
                    _ = self.usr1.recv() => "SIGUSR1",
                };
                if seen {
                    tracing::warn!(signal = name, "second signal: exiting at once");
                    std::process::exit(1);
                }
                seen = true;
                if name == "SIGUSR1" {
                    tracing::warn!(signal = name, "liveness forced to fail; draining");
                    lifecycle.force_unhealthy();
                } else {
                    tracing::info!(signal = name, "draining");
                    lifecycle.drain();
                }
            }
        });
    }
}
