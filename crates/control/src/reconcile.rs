//! The reconciler of `control.targets_dir`: when the files change (or on the periodic safety
//! net), it plans against the targets control owns and applies the plan. It never touches a
//! target created through the API (a name clash is reported, not overwritten), and a file that
//! does not parse or validate changes nothing: the targets it declared stay as they were.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_store::registry::batch::{self, Change};
use caracal_store::registry::{self, Refused, Writer};
use caracal_store::target::{Target, TargetSpec};
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
    ///
    /// A check reads only the files' metadata ([`declared::stamp`]); the files are read when it
    /// changes. The registry is read at start, every `full_every`, and after a round that found
    /// it other than expected; a change of the files is planned against what control last read
    /// and has written since, so one changed line of a file of 50,000 targets costs a read of
    /// the file and one small transaction, not a read of the fleet.
    pub async fn run(self, poll: Duration, full_every: Duration, stop: CancellationToken) {
        let mut watched: Option<u64> = None;
        let mut applied: Option<u64> = None;
        let mut known: Option<(Vec<Target>, Instant)> = None;
        let mut reader = declared::Reader::default();
        let mut failures: u32 = 0;
        loop {
            let stamp = declared::stamp(&self.dir);
            let full = known.as_ref().is_none_or(|(_, at)| at.elapsed() >= full_every);
            if full || watched != Some(stamp) {
                let files = reader.read(&self.dir);
                if full || applied != Some(files.fingerprint) {
                    match self.round(&files, full, &mut known).await {
                        Ok(()) => {
                            applied = Some(files.fingerprint);
                            watched = Some(stamp);
                            failures = 0;
                        }
                        Err(e) => {
                            known = None;
                            failures = failures.saturating_add(1);
                            tracing::warn!(error = %e, "reconciling declared targets failed; will retry");
                        }
                    }
                } else {
                    watched = Some(stamp);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry_pause(poll, failures)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// One round: reads the registry first when `full` (or nothing is known), then reconciles;
    /// forgets what it knew when the registry turned out otherwise.
    async fn round(
        &self,
        files: &declared::Files,
        full: bool,
        known: &mut Option<(Vec<Target>, Instant)>,
    ) -> Result<(), caracal_store::Error> {
        if full || known.is_none() {
            *known = Some((registry::list_declared(&self.pool).await?, Instant::now()));
        }
        let Some((targets, _)) = known.as_mut() else { return Ok(()) };
        if !self.reconcile_against(files, targets).await? {
            *known = None;
        }
        Ok(())
    }

    /// One reconciliation of `files` against the registry, read now.
    ///
    /// # Errors
    /// When the registry cannot be read or written (the next round retries).
    pub async fn reconcile(&self, files: &declared::Files) -> Result<(), caracal_store::Error> {
        let mut existing = registry::list_declared(&self.pool).await?;
        self.reconcile_against(files, &mut existing).await.map(drop)
    }

    /// Reconciles `files` against `existing` (control's targets as the registry holds them),
    /// and brings `existing` up to date with what it wrote. Whether the registry was as
    /// `existing` said: a change refused for any reason but a clash with the API's target
    /// means it was not.
    async fn reconcile_against(
        &self,
        files: &declared::Files,
        existing: &mut Vec<Target>,
    ) -> Result<bool, caracal_store::Error> {
        let mut problems = files.problems.clone();
        for problem in &problems {
            tracing::warn!(file = %problem.file, line = problem.line, problem = %problem.message, "a declared targets file changes nothing until it is fixed");
        }
        let broken = files.broken();
        // A target declared by a broken file stays as it was, rather than being deleted.
        let steps = declared::plan(&files.targets, existing, |t| {
            t.declared_in.as_deref().is_none_or(|file| !broken.contains(file))
        });
        let mut consistent = true;
        let mut written: Vec<&Step> = Vec::new();
        // A batch of changes per transaction, each with one invalidation: a file of 50,000
        // targets is 50 transactions, not 50,000.
        for steps in steps.chunks(batch::MAX) {
            let writers: Vec<Writer> = steps
                .iter()
                .map(|step| match step {
                    Step::Create(d) | Step::Update(d, _) => writer(&d.file),
                    Step::Delete(name) => writer(
                        existing
                            .iter()
                            .find(|t| &t.spec.name == name)
                            .and_then(|t| t.declared_in.as_deref())
                            .unwrap_or(""),
                    ),
                })
                .collect();
            let changes: Vec<Change<'_>> = steps
                .iter()
                .zip(&writers)
                .map(|(step, writer)| match step {
                    Step::Create(d) => Change::Create(&d.spec, writer),
                    Step::Update(d, _) => Change::Replace(&d.spec, writer),
                    Step::Delete(name) => Change::Delete(name, writer),
                })
                .collect();
            let outcome = batch::apply(&self.pool, &changes).await?;
            written.extend(outcome.done.iter().map(|i| &steps[*i]));
            for i in &outcome.done {
                let action = match steps[*i] {
                    Step::Create(_) => "create",
                    Step::Update(..) => "update",
                    Step::Delete(_) => "delete",
                };
                self.metrics.declared_actions.get_or_create(&ActionLabels { action }).inc();
                tracing::debug!(step = %steps[*i], "reconciled a declared target");
            }
            if !outcome.done.is_empty() {
                tracing::info!(changes = outcome.done.len(), "reconciled declared targets in one transaction");
            }
            for (i, refused) in outcome.refused {
                let step = &steps[i];
                match refused {
                    Refused::Conflict(name) => {
                        // Another control replica created it first: its own, not a clash.
                        let mut conn = self.pool.acquire().await?;
                        if registry::get(&mut conn, &name).await?.is_some_and(|t| t.managed_by == "control") {
                            consistent = false;
                            continue;
                        }
                        self.metrics.declared_actions.get_or_create(&ActionLabels { action: "clash" }).inc();
                        let (Step::Create(d) | Step::Update(d, _)) = step else { continue };
                        let message = format!(
                            "target `{name}` was created through the API; control leaves it alone (rename one of them)"
                        );
                        tracing::warn!(file = %d.file, target = %name, "{message}");
                        let line = declared::line_of(&std::fs::read_to_string(&d.file).unwrap_or_default(), &name);
                        problems.push(Problem { file: d.file.clone(), line, message });
                    }
                    // Deleted or changed meanwhile: the next round reads the registry again.
                    refused => {
                        consistent = false;
                        tracing::info!(step = %step, why = %refused, "skipped");
                    }
                }
            }
        }
        remember(existing, &written);
        self.metrics.declared_files_invalid.set(files.broken().len() as i64);
        self.problems.set(problems);
        Ok(consistent)
    }
}

/// How long to wait before the next look: `poll`, doubled after each failed round in a row
/// (a failed round reads the registry again: an error that persists must not turn into a read
/// of the fleet every poll), at most 30 s.
fn retry_pause(poll: Duration, failures: u32) -> Duration {
    poll.saturating_mul(1 << failures.min(16)).min(Duration::from_secs(30).max(poll))
}

/// Brings `existing` up to date with the steps written.
fn remember(existing: &mut Vec<Target>, written: &[&Step]) {
    let mut at: HashMap<String, usize> = existing.iter().enumerate().map(|(i, t)| (t.spec.name.clone(), i)).collect();
    let mut deleted = HashSet::new();
    for step in written {
        match step {
            Step::Create(d) | Step::Update(d, _) => {
                let target = Target {
                    spec: d.spec.clone(),
                    created_at: String::new(),
                    updated_at: String::new(),
                    paused_at: None,
                    managed_by: "control".into(),
                    declared_in: Some(d.file.clone()),
                    discovery_status: None,
                    certificates: Vec::new(),
                    degraded_instances: Vec::new(),
                };
                match at.get(&d.spec.name) {
                    // A discovered target's instances are control's, not the document's: they
                    // stay as the registry had them.
                    Some(i) if d.spec.discovery.is_some() => {
                        let instances = std::mem::take(&mut existing[*i].spec.instances);
                        existing[*i] = Target { spec: TargetSpec { instances, ..target.spec }, ..target };
                    }
                    Some(i) => existing[*i] = target,
                    None => {
                        at.insert(d.spec.name.clone(), existing.len());
                        existing.push(target);
                    }
                }
            }
            Step::Delete(name) => {
                deleted.insert(name.as_str());
            }
        }
    }
    if !deleted.is_empty() {
        existing.retain(|t| !deleted.contains(t.spec.name.as_str()));
    }
}

fn writer(file: &str) -> Writer {
    Writer::Control { file: file.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_rounds_back_off_to_thirty_seconds() {
        let poll = Duration::from_millis(250);
        let pauses: Vec<u128> =
            [0, 1, 2, 3, 7, 8, 40, u32::MAX].iter().map(|f| retry_pause(poll, *f).as_millis()).collect();
        assert_eq!(pauses, [250, 500, 1_000, 2_000, 30_000, 30_000, 30_000, 30_000]);
        assert_eq!(retry_pause(Duration::from_secs(60), 3), Duration::from_secs(60), "never below the poll itself");
    }
}
