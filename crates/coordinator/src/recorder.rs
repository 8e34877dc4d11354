//! Status changes written in groups. Every change is its own transaction's worth of writes
//! (the status row if it still holds what the prober believes, the transition, the outbox
//! event), but the changes that wait while a group is being written go together in the next
//! transaction: one commit, one flush of PostgreSQL's log, for all of them. A lone change goes
//! alone at once; a fleet's first probes (thousands of `unknown → up` at once, or a target
//! registered every millisecond) cost a commit a group instead of a commit a change.
//!
//! A failed group fails every change in it: each is tried again at its instance's next probe,
//! as a failed single write was.

use std::sync::Arc;

use caracal_store::status::{self as store_status, Change, Status, Verdict};
use tokio::sync::{Mutex, mpsc, oneshot};

/// The most changes one transaction carries.
pub const GROUP: usize = 256;

/// One change waiting to be written, with where its answer goes.
struct Pending {
    instance_id: i64,
    target: Arc<str>,
    instance: Arc<str>,
    from: Status,
    to: Status,
    error: Option<String>,
    verdict: Option<Verdict>,
    answer: oneshot::Sender<Result<bool, String>>,
}

/// Writes status changes in groups (see the module's description).
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: mpsc::UnboundedSender<Pending>,
}

/// One change to record, as the prober has it.
#[derive(Debug)]
pub struct Wanted<'a> {
    /// `instances.id`.
    pub instance_id: i64,
    /// The target's name.
    pub target: &'a Arc<str>,
    /// The instance's URL.
    pub instance: &'a Arc<str>,
    /// What the prober believes is stored.
    pub from: Status,
    /// The new status.
    pub to: Status,
    /// Why, when the new status is a failure.
    pub error: Option<&'a str>,
    /// The verdict, for a change to `degraded`.
    pub verdict: Option<&'a Verdict>,
}

impl Recorder {
    /// A recorder writing to `pool` with `writers` transactions at most at once. Its writers
    /// end once every clone of it is dropped and what was queued is written.
    pub fn start(pool: sqlx::PgPool, writers: usize) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(received));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(pool.clone(), Arc::clone(&received)));
        }
        Self { queue }
    }

    /// Records `wanted`: `Ok(true)` once written, `Ok(false)` when the stored status had moved
    /// on (another replica recorded a change first), `Err` with why when its group failed.
    pub async fn record(&self, wanted: Wanted<'_>) -> Result<bool, String> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            instance_id: wanted.instance_id,
            target: Arc::clone(wanted.target),
            instance: Arc::clone(wanted.instance),
            from: wanted.from,
            to: wanted.to,
            error: wanted.error.map(str::to_string),
            verdict: wanted.verdict.cloned(),
            answer,
        };
        self.queue.send(pending).map_err(|_| "the recorder has stopped".to_string())?;
        answered.await.unwrap_or_else(|_| Err("the recorder has stopped".into()))
    }
}

/// One writer: takes the first change waiting and every other one waiting then (up to
/// [`GROUP`]), writes them in one transaction, answers each.
async fn write(pool: sqlx::PgPool, received: Arc<Mutex<mpsc::UnboundedReceiver<Pending>>>) {
    let mut group = Vec::with_capacity(GROUP);
    loop {
        {
            let mut received = received.lock().await;
            let Some(first) = received.recv().await else { return };
            group.push(first);
            while group.len() < GROUP {
                match received.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
        }
        let changes: Vec<Change<'_>> = group
            .iter()
            .map(|p| Change {
                instance_id: p.instance_id,
                target: &p.target,
                instance: &p.instance,
                from: p.from,
                to: p.to,
                error: p.error.as_deref(),
                verdict: p.verdict.as_ref(),
            })
            .collect();
        let written = store_status::record_many(&pool, &changes).await;
        drop(changes);
        match written {
            Ok(recorded) => {
                for (pending, recorded) in group.drain(..).zip(recorded) {
                    let _ = pending.answer.send(Ok(recorded));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for pending in group.drain(..) {
                    let _ = pending.answer.send(Err(why.clone()));
                }
            }
        }
        if group.capacity() > GROUP {
            group.shrink_to(GROUP);
        }
    }
}
