//! The targets registry as the gateway reads it: from PostgreSQL, cached for a few seconds so a
//! burst of federation requests costs one query, and a registry change shows within that time.
//! When PostgreSQL cannot be read, the last copy is served, however old; only with no copy at
//! all is the registry unavailable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// Every target, by name order.
pub type Targets = Arc<Vec<Arc<TargetInfo>>>;

/// The cached registry.
#[derive(Debug)]
pub struct Registry {
    pool: sqlx::PgPool,
    ttl: Duration,
    cache: tokio::sync::Mutex<Option<(Instant, Targets)>>,
}

/// A target row: name, labels, metrics path, timeout (ms), instance URLs.
type Row = (String, serde_json::Value, String, i32, Vec<String>);

impl Registry {
    /// A registry read from `pool`, cached for `ttl`.
    pub fn new(pool: sqlx::PgPool, ttl: Duration) -> Self {
        Self { pool, ttl, cache: tokio::sync::Mutex::new(None) }
    }

    /// Every target: the cached copy when fresh, else a new read (one at a time), else the last
    /// copy when PostgreSQL fails.
    ///
    /// # Errors
    /// When PostgreSQL fails and nothing was ever read.
    pub async fn targets(&self) -> Result<Targets, sqlx::Error> {
        let mut cache = self.cache.lock().await;
        if let Some((at, targets)) = cache.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(targets));
        }
        match self.read().await {
            Ok(targets) => {
                *cache = Some((Instant::now(), Arc::clone(&targets)));
                Ok(targets)
            }
            Err(e) => match cache.as_ref() {
                Some((at, targets)) => {
                    tracing::warn!(error = %e, age = ?at.elapsed(), "reading the registry failed; serving the last copy");
                    Ok(Arc::clone(targets))
                }
                None => Err(e),
            },
        }
    }

    async fn read(&self) -> Result<Targets, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.name, t.labels, t.metrics_path, t.timeout_ms, \
                    COALESCE(array_agg(i.url ORDER BY i.url) FILTER (WHERE i.id IS NOT NULL), '{}') \
             FROM targets t LEFT JOIN instances i ON i.target_id = t.id GROUP BY t.id ORDER BY t.name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Arc::new(
            rows.into_iter()
                .map(|(name, labels, metrics_path, timeout_ms, instances)| {
                    Arc::new(TargetInfo {
                        name,
                        labels: serde_json::from_value(labels).unwrap_or_default(),
                        metrics_path,
                        timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(1000)),
                        instances,
                    })
                })
                .collect(),
        ))
    }
}
