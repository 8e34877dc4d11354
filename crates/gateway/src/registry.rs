//! The targets registry as the gateway holds it: in memory, read whole when the
//! `caracal.invalidations` follower says so (start-up, its periodic safety net, after a Redis
//! error) and one target at a time as changes are announced, so nothing grows with the fleet
//! on a timer and a registration federates within a second. A name not held is looked up once
//! in PostgreSQL before the answer is 404 (a registration whose announcement is still on its
//! way). When PostgreSQL cannot be read, the copy held is served, however old; only with no
//! copy at all is the registry unavailable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use caracal_store::invalidations::Notice;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One target, as federation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    /// Its name.
    pub name: String,
    /// Its labels, added to every sample.
    pub labels: BTreeMap<String, String>,
    /// Where its instances serve metrics.
    pub metrics_path: String,
    /// Per-instance scrape timeout.
    pub timeout: Duration,
    /// Its instances' base URLs, sorted.
    pub instances: Vec<String>,
    /// The credential file it names (`gateway.credentials_dir`), if any.
    pub credential: Option<String>,
}

/// Every target, by name order.
pub type Targets = Arc<Vec<Arc<TargetInfo>>>;

/// The registry held in memory.
#[derive(Debug)]
pub struct Registry {
    pool: sqlx::PgPool,
    held: ArcSwapOption<Vec<Arc<TargetInfo>>>,
    /// `caracal_gateway_registry_targets`.
    gauge: prometheus_client::metrics::gauge::Gauge,
    /// Serialises writers of `held` (the follower, and a request reading a missing name).
    writing: tokio::sync::Mutex<()>,
}

impl Registry {
    /// An empty registry read from `pool`, counting what it holds in `gauge`.
    pub fn new(pool: sqlx::PgPool, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Self { pool, held: ArcSwapOption::empty(), gauge, writing: tokio::sync::Mutex::new(()) }
    }

    fn hold(&self, targets: Arc<Vec<Arc<TargetInfo>>>) {
        self.gauge.set(targets.len() as i64);
        self.held.store(Some(targets));
    }

    /// Every target: the copy held, else a whole read.
    ///
    /// # Errors
    /// When nothing is held and PostgreSQL fails.
    pub async fn targets(&self) -> Result<Targets, caracal_store::Error> {
        if let Some(held) = self.held.load_full() {
            return Ok(held);
        }
        let _writing = self.writing.lock().await;
        if let Some(held) = self.held.load_full() {
            return Ok(held);
        }
        let all = Arc::new(read(&self.pool, None).await?);
        self.hold(Arc::clone(&all));
        Ok(all)
    }

    /// One target: from the copy held, else looked up in PostgreSQL (and then held).
    ///
    /// # Errors
    /// When the target is not held and PostgreSQL fails.
    pub async fn target(&self, name: &str) -> Result<Option<Arc<TargetInfo>>, caracal_store::Error> {
        let targets = self.targets().await?;
        if let Ok(i) = targets.binary_search_by(|t| t.name.as_str().cmp(name)) {
            return Ok(Some(Arc::clone(&targets[i])));
        }
        let _writing = self.writing.lock().await;
        let found = read(&self.pool, Some(&[name.to_string()])).await?;
        let target = found.first().cloned();
        if target.is_some() {
            self.merge(&[name.to_string()], found);
        }
        Ok(target)
    }

    /// Applies a notice from the follower.
    ///
    /// # Errors
    /// When PostgreSQL fails (the copy held stays as it was).
    pub async fn apply(&self, notice: &Notice) -> Result<(), caracal_store::Error> {
        let _writing = self.writing.lock().await;
        match notice {
            Notice::Resync => {
                let all = read(&self.pool, None).await?;
                self.hold(Arc::new(all));
            }
            Notice::Changed(names) => {
                let found = read(&self.pool, Some(names)).await?;
                self.merge(names, found);
            }
        }
        Ok(())
    }

    /// Replaces the held entries of `names` with `found` (a name not found was deleted).
    fn merge(&self, names: &[String], found: Vec<Arc<TargetInfo>>) {
        let Some(held) = self.held.load_full() else { return };
        self.hold(Arc::new(merged(&held, names, found)));
    }

    /// Applies the follower's notices until `stop`; a read that fails is retried a second later.
    pub async fn run(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        let mut failed: Option<Notice> = None;
        loop {
            let notice = if let Some(notice) = failed.take() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => notice,
                    () = stop.cancelled() => return,
                }
            } else {
                let mut notice = tokio::select! {
                    notice = notices.recv() => match notice {
                        Some(notice) => notice,
                        None => return,
                    },
                    () = stop.cancelled() => return,
                };
                // What waited while the last was applied goes as one: each merge copies the
                // held list, so one a notice cost the fleet's size per registration.
                while let Ok(more) = notices.try_recv() {
                    notice.absorb(more);
                }
                notice
            };
            if let Err(e) = self.apply(&notice).await {
                tracing::warn!(error = %e, "reading the registry failed; serving the copy held and retrying");
                // A failed partial read is retried as a whole one: simpler, and rare.
                failed = Some(Notice::Resync);
            }
        }
    }
}

/// `held` (in name order) with the entries of `names` replaced by `found`, in name order: one
/// pass over `held` (it was sorted again for every change, 2 ms a change at 17,000 targets).
fn merged(held: &[Arc<TargetInfo>], names: &[String], mut found: Vec<Arc<TargetInfo>>) -> Vec<Arc<TargetInfo>> {
    let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let mut next: Vec<Arc<TargetInfo>> = Vec::with_capacity(held.len() + found.len());
    let mut found = found.into_iter().peekable();
    for target in held.iter().filter(|t| !names.contains(t.name.as_str())) {
        while let Some(new) = found.next_if(|new| new.name < target.name) {
            next.push(new);
        }
        next.push(Arc::clone(target));
    }
    next.extend(found);
    next
}

/// Reads every target, or those of `names`, by name.
async fn read(pool: &sqlx::PgPool, names: Option<&[String]>) -> Result<Vec<Arc<TargetInfo>>, caracal_store::Error> {
    let targets = caracal_store::registry::read(pool, names, caracal_store::registry::Filter::All).await?;
    Ok(targets
        .into_iter()
        .map(|target| {
            let spec = target.spec;
            Arc::new(TargetInfo {
                name: spec.name,
                labels: spec.labels,
                metrics_path: spec.metrics_path,
                timeout: Duration::from_millis(u64::try_from(spec.timeout_ms).unwrap_or(1000)),
                instances: spec.instances,
                credential: spec.credential,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, path: &str) -> Arc<TargetInfo> {
        Arc::new(TargetInfo {
            name: name.into(),
            labels: Default::default(),
            metrics_path: path.into(),
            timeout: Duration::from_secs(1),
            instances: Vec::new(),
            credential: None,
        })
    }

    #[test]
    fn a_merge_replaces_adds_and_deletes_in_name_order() {
        let held: Vec<_> = ["b", "d", "f"].into_iter().map(|n| info(n, "/old")).collect();
        let names: Vec<String> = ["a", "d", "f", "g", "x"].into_iter().map(String::from).collect();
        // `x` was named and not found: deleted (it was never held); `f` likewise.
        let found = vec![info("g", "/new"), info("d", "/new"), info("a", "/new")];
        let next = merged(&held, &names, found);
        let shown: Vec<(&str, &str)> = next.iter().map(|t| (t.name.as_str(), t.metrics_path.as_str())).collect();
        assert_eq!(shown, [("a", "/new"), ("b", "/old"), ("d", "/new"), ("g", "/new")]);
        assert!(merged(&[], &names, Vec::new()).is_empty());
    }
}
