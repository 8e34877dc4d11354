//! The reconciler of `control.targets_dir`: when the files change (or on the periodic safety
//! net), it plans against the targets control owns and applies the plan. It never touches a
//! target created through the API (a name clash is reported, not overwritten), and a file that
//! does not parse or validate changes nothing: the targets it declared stay as they were.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_store::registry::{self, Refused, Writer};
use tokio_util::sync::CancellationToken;

use crate::declared::{self, Problem, Step};
use crate::metrics::{ActionLabels, Metrics};

/// The problems of the last reconciliation, for `targets_dir:valid`.
#[derive(Debug, Default)]
pub struct Problems {
    inner: Mutex<Vec<Problem>>,
}

impl Problems {
    /// The current problems.
    pub fn current(&self) -> Vec<Problem> {
        self.inner.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn set(&self, problems: Vec<Problem>) {
        if let Ok(mut current) = self.inner.lock() {
            *current = problems;
        }
    }
}

/// Reconciles a directory of declared targets into the registry.
pub struct Reconciler {
    pool: sqlx::PgPool,
    dir: PathBuf,
    metrics: Metrics,
    problems: Arc<Problems>,
}

impl Reconciler {
    /// A reconciler of `dir`.
    pub fn new(pool: sqlx::PgPool, dir: PathBuf, metrics: Metrics) -> Self {
        Self { pool, dir, metrics, problems: Arc::default() }
    }

    /// What the check reads.
    pub fn problems(&self) -> Arc<Problems> {
        Arc::clone(&self.problems)
    }

    /// Checks the files every `poll` and reconciles when they changed, or every `full_every`,
    /// until `stop`.
    pub async fn run(self, poll: Duration, full_every: Duration, stop: CancellationToken) {
        let mut applied: Option<(u64, Instant)> = None;
        loop {
            let files = declared::read(&self.dir);
            let due =
                applied.is_none_or(|(fingerprint, at)| fingerprint != files.fingerprint || at.elapsed() >= full_every);
            if due {
                match self.reconcile(&files).await {
                    Ok(()) => applied = Some((files.fingerprint, Instant::now())),
                    Err(e) => tracing::warn!(error = %e, "reconciling declared targets failed; will retry"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One reconciliation of `files` against the registry.
    ///
    /// # Errors
    /// When the registry cannot be read or written (the next round retries).
    pub async fn reconcile(&self, files: &declared::Files) -> Result<(), caracal_store::Error> {
        let mut problems = files.problems.clone();
        for problem in &problems {
            tracing::warn!(file = %problem.file, line = problem.line, problem = %problem.message, "a declared targets file changes nothing until it is fixed");
        }
        let broken = files.broken();
        let existing = registry::list_declared(&self.pool).await?;
        // A target declared by a broken file stays as it was, rather than being deleted.
        let steps = declared::plan(&files.targets, &existing, |t| {
            t.declared_in.as_deref().is_none_or(|file| !broken.contains(file))
        });
        for step in steps {
            let (action, result) = match &step {
                Step::Create(d) => ("create", registry::create(&self.pool, &d.spec, &writer(&d.file)).await.map(drop)),
                Step::Update(d, _) => {
                    ("update", registry::replace(&self.pool, &d.spec, &writer(&d.file)).await.map(drop))
                }
                Step::Delete(name) => {
                    let file = existing.iter().find(|t| &t.spec.name == name).and_then(|t| t.declared_in.clone());
                    ("delete", registry::delete(&self.pool, name, &writer(&file.unwrap_or_default())).await)
                }
            };
            match result {
                Ok(()) => {
                    self.metrics.declared_actions.get_or_create(&ActionLabels { action }).inc();
                    tracing::info!(step = %step, "reconciled a declared target");
                }
                Err(caracal_store::Error::Refused(Refused::Conflict(name))) => {
                    // Another control replica created it first: its own, not a clash.
                    let mut conn = self.pool.acquire().await?;
                    if registry::get(&mut conn, &name).await?.is_some_and(|t| t.managed_by == "control") {
                        continue;
                    }
                    self.metrics.declared_actions.get_or_create(&ActionLabels { action: "clash" }).inc();
                    let (Step::Create(d) | Step::Update(d, _)) = &step else { continue };
                    let message = format!(
                        "target `{name}` was created through the API; control leaves it alone (rename one of them)"
                    );
                    tracing::warn!(file = %d.file, target = %name, "{message}");
                    let line = declared::line_of(&std::fs::read_to_string(&d.file).unwrap_or_default(), &name);
                    problems.push(Problem { file: d.file.clone(), line, message });
                }
                // Deleted or changed meanwhile: the next round sees it.
                Err(caracal_store::Error::Refused(refused)) => tracing::info!(step = %step, why = %refused, "skipped"),
                Err(e) => return Err(e),
            }
        }
        self.metrics.declared_files_invalid.set(files.broken().len() as i64);
        self.problems.set(problems);
        Ok(())
    }
}

fn writer(file: &str) -> Writer {
    Writer::Control { file: file.to_string() }
}
