//! One coordinator prober alone (the only member of its membership), watching the registry in
//! `pool`, for the benches that measure probing: started with one full read of the registry,
//! as the invalidations follower asks at start-up.

// Each bench includes this file and uses part of it (the gray bench never re-reads).
#![allow(dead_code)]

use caracal_coordinator::config::CoordinatorConfig;
use caracal_coordinator::membership::Membership;
use caracal_coordinator::metrics::Metrics;
use caracal_coordinator::prober::Prober;
use caracal_store::invalidations::Notice;
use tokio_util::sync::CancellationToken;

/// A running prober: its metrics, the channel that announces registry changes, and how to
/// stop it.
pub struct LoneProber {
    /// Its `caracal_coordinator_*` metrics.
    pub registry: prometheus_client::registry::Registry,
    /// Send `Notice::Resync` to make it re-read the registry.
    pub notices: tokio::sync::mpsc::Sender<Notice>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LoneProber {
    /// Starts it on `pool` with the default settings.
    pub async fn start(pool: sqlx::PgPool) -> LoneProber {
        let membership = Membership::new("bench".into());
        membership.set(vec!["bench".into()]);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(registry.sub_registry_with_prefix("caracal_coordinator"));
        let prober = Prober::new(
            pool,
            membership,
            metrics,
            CoordinatorConfig::default(),
            caracal_core::outbound::Policy::default(),
        );
        let stop = CancellationToken::new();
        let (notices, received) = tokio::sync::mpsc::channel(1);
        notices.send(Notice::Resync).await.expect("send");
        let task = tokio::spawn(prober.run(received, stop.clone()));
        LoneProber { registry, notices, stop, task }
    }

    /// Stops it and waits for its tasks.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
