//! The prober: every owned instance is probed (`/health` and `/ready`, or its protocol's
//! check) on its target's interval, the result judged with hysteresis and each change recorded
//! (status, transition and outbox event) in one transaction.
//!
//! Three parts: the reconcile loop ([`Prober::run`]) follows the registry and ownership; the
//! scheduler keeps each watched instance's state between probes ([`Watch`]) and one timer
//! queue for all of them; a task exists for an instance only while its probe runs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::telemetry;
use caracal_store::invalidations::Notice;
use caracal_store::registry::Filter;
use caracal_store::status::{self as store_status, Recorded};
use caracal_store::target::{DegradedSpec, Detector, Scheme, TlsSpec};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::Instrument;

use crate::config::CoordinatorConfig;
use crate::gray::{Change, Gray, MIN_PEERS, Peers, Sample, Verdict};
use crate::http;
use crate::membership::Membership;
use crate::metrics::{CertificateLabels, InstanceLabels, InstanceSeries, Metrics, ResultLabels};
use crate::protocols::{self, Address, Seen};
use crate::recorder::{self, Recorder};
use crate::tls::{Presented, TlsClient};

/// What an instance is, as far as probes can tell: the store's one status type.
pub use caracal_store::status::Status;

/// Hysteresis: a status changes only after `failure_threshold` consecutive observations of a
/// worse one, or `success_threshold` of a better one. The first observation decides at once.
#[derive(Debug, Clone)]
pub struct Judge {
    status: Status,
    candidate: Option<Status>,
    streak: u32,
    failure_threshold: u32,
    success_threshold: u32,
}

impl Judge {
    /// A judge starting from `status` (as persisted, so a new owner does not re-announce it).
    pub fn new(status: Status, failure_threshold: u32, success_threshold: u32) -> Self {
        Self {
            status,
            candidate: None,
            streak: 0,
            failure_threshold: failure_threshold.max(1),
            success_threshold: success_threshold.max(1),
        }
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Takes one observation; returns the previous status when this one changes it.
    pub fn observe(&mut self, observed: Status) -> Option<Status> {
        if observed == self.status {
            self.candidate = None;
            self.streak = 0;
            return None;
        }
        if self.candidate == Some(observed) {
            self.streak += 1;
        } else {
            self.candidate = Some(observed);
            self.streak = 1;
        }
        if self.streak >= self.needed(observed) {
            let from = self.status;
            self.status = observed;
            self.candidate = None;
            self.streak = 0;
            Some(from)
        } else {
            None
        }
    }

    /// Adopts a status recorded by someone else (another replica, during a hand-over).
    pub fn adopt(&mut self, status: Status) {
        *self = Self::new(status, self.failure_threshold, self.success_threshold);
    }

    fn needed(&self, observed: Status) -> u32 {
        match self.status {
            Status::Unknown => 1,
            current if observed > current => self.success_threshold,
            _ => self.failure_threshold,
        }
    }
}

/// An instance's `instance_up` labels.
fn instance_labels(instance: &Instance) -> InstanceLabels {
    InstanceLabels { target: Arc::clone(&instance.target), url: Arc::clone(&instance.url) }
}

/// An instance's certificate expiry labels (built when a certificate is seen: most instances
/// never present one).
fn certificate_labels(instance: &Instance) -> CertificateLabels {
    CertificateLabels { target: Arc::clone(&instance.target), instance: Arc::clone(&instance.url) }
}

/// When the reconcile loop last ran, for the `prober:heartbeat` check.
#[derive(Debug)]
pub struct Heartbeat {
    last: Mutex<Instant>,
}

impl Heartbeat {
    fn beat(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    /// Time since the last reconcile.
    pub fn age(&self) -> Duration {
        self.last.lock().map(|l| l.elapsed()).unwrap_or(Duration::MAX)
    }
}

/// One instance and its target's probe settings, as read from the registry.
#[derive(Debug, Clone, PartialEq)]
struct Instance {
    id: i64,
    /// Shared with its series' labels (and, for the name, its target's other instances).
    target: Arc<str>,
    url: Arc<str>,
    health_path: String,
    ready_path: String,
    interval: Duration,
    timeout: Duration,
    scheme: Scheme,
    tls: Option<TlsSpec>,
    grpc_service: String,
    /// How it is judged `degraded` (the target's block, or every default).
    degraded: DegradedSpec,
    /// Whether its target has instances enough ([`MIN_PEERS`]) for the outlier detector to
    /// compare: a lone instance keeps no place among peers it cannot have. (Crossing the
    /// threshold makes the target's instances watched anew, so each joins or leaves its group.)
    peers: bool,
}

/// The registry as the prober holds it: every instance it may probe, by id, and each target's
/// instance ids (so a change to a target finds its instances without a walk of the fleet).
#[derive(Default)]
struct Registry {
    instances: HashMap<i64, Arc<Instance>>,
    by_target: HashMap<Arc<str>, Ids>,
}

/// A target's instance ids: most targets have one, kept without an allocation of its own
/// (the index costs about 50 bytes a target).
enum Ids {
    One(i64),
    Many(Box<[i64]>),
}

impl Ids {
    fn of(ids: &[i64]) -> Self {
        match ids {
            [one] => Ids::One(*one),
            many => Ids::Many(many.into()),
        }
    }

    fn to_vec(&self) -> Vec<i64> {
        match self {
            Ids::One(id) => vec![*id],
            Ids::Many(ids) => ids.to_vec(),
        }
    }
}

/// What a registry read changed: the instances new or changed (probed at once), and those
/// taken away.
struct Loaded {
    fresh: HashSet<i64>,
    gone: Vec<i64>,
}

/// An instance the reconcile loop hands to the scheduler: what it probes, and whether its
/// first probe comes at once (it was announced as changed) or spread over an interval.
struct Starting {
    instance: Arc<Instance>,
    at_once: bool,
}

/// What the reconcile loop tells the scheduler.
enum Command {
    /// Watch an instance, with what is recorded for it (`None` when that read failed: the
    /// scheduler reads it before the first probe).
    Start(Starting, Option<Recorded>),
    /// Stop watching an instance (its ownership moved, it changed, or it is gone).
    Stop(i64),
    /// Probe an instance now (announced as changed while it was watched).
    Nudge(i64),
}

/// Probe tasks running at once, at most this many times `max_concurrency` (which bounds the
/// probes themselves; a task also waits to record): when thousands of instances are due
/// together (a start, everything announced as changed), the rest wait in a backlog as the
/// state they already hold, not as thousands of tasks.
const MAX_TASKS_PER_PROBE: usize = 2;

/// Instances started at once from which their start counts as a burst (see
/// [`caracal_core::memory`]).
const BURST: usize = 1_000;

/// Transactions writing status changes at once (each a group of them: see
/// [`crate::recorder`]).
const RECORDING_WRITERS: usize = 2;

/// How many starting instances' recorded statuses are read in one query.
const START_BATCH: usize = 5_000;

/// How one instance is probed: its TLS client when it speaks TLS (built once per instance;
/// `Err` holds why it could not be, reported by every probe; boxed, as most instances speak
/// plain HTTP and an idle one should not hold room for it). Its address is parsed from the
/// URL at each probe instead of kept: a few string operations, against two allocations per
/// instance held for good.
struct Probing {
    tls: Option<Box<Result<TlsClient, String>>>,
    /// The certificate last presented (as recorded), to tell a renewal from the same one.
    presented: Option<Presented>,
}

/// An instance's state between probes: its judge, its gray-failure detector, what is recorded
/// and its series. This is all an idle instance holds (no task of its own: see
/// [`Prober::schedule`]); it moves into a task only while a probe runs.
///
/// Dropping it removes the instance's series (`instance_up`, `instance_degraded`, its
/// latencies, its certificate) and its place among its target's peers: its ownership moved, it
/// changed, or it is gone. The labels are built again then rather than kept, as every byte an
/// idle instance keeps is multiplied by the fleet.
struct Watch {
    prober: Arc<Prober>,
    instance: Arc<Instance>,
    /// What is recorded (and shown); the judge sees only up, unready and down.
    published: Status,
    judge: Judge,
    gray: Gray,
    series: InstanceSeries,
    probing: Probing,
    /// Whether dropping it removes its series: not when a newer watch of the same instance
    /// (same labels) took them over while this one was still probing.
    exported: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.exported {
            return;
        }
        let (metrics, instance) = (&self.prober.metrics, &*self.instance);
        metrics.forget_instance(&instance_labels(instance));
        metrics.certificate_expiry.remove(&certificate_labels(instance));
        self.prober.peers.forget(&instance.target, instance.id);
    }
}

/// One watched instance in the scheduler: which watch it is (a restart makes a new one), what
/// it probes, and where it is.
struct Slot {
    generation: u64,
    instance: Arc<Instance>,
    phase: Phase,
}

/// Where a watched instance is.
enum Phase {
    /// Between probes: its state, and its entry in the timer queue.
    Waiting(Box<Watch>, delay_queue::Key),
    /// Its turn came while [`MAX_TASKS`] probes were running: it waits in the backlog.
    Queued(Box<Watch>),
    /// A probe (or the read of its recorded status) runs in a task that holds its state;
    /// `again` when it was nudged meanwhile, so the next probe comes at once.
    Busy { again: bool },
    /// What is recorded for it could not be read yet: read again when the entry expires.
    Unread { at_once: bool, key: delay_queue::Key },
}

/// What a scheduler task hands back.
enum Done {
    /// A probe ran: the state, to wait for the next one.
    Probed(Box<Watch>),
    /// What is recorded was read (the state, ready for its first probe), or could not be.
    Read(Option<Box<Watch>>),
}

/// Probes the instances this replica owns.
#[derive(Debug, Clone)]
pub struct Prober {
    pool: sqlx::PgPool,
    members: Membership,
    metrics: Metrics,
    config: CoordinatorConfig,
    /// Kept-alive connections for plain HTTP probes, by address.
    connections: Arc<http::Connections>,
    /// The outbound address policy every probe connects through.
    outbound: caracal_core::outbound::Policy,
    permits: Arc<Semaphore>,
    /// New certificates being written at once, at most the pool's connections: thousands of
    /// instances presenting one together (a start) queue here holding nothing, not each a
    /// transaction's future waiting for a connection.
    recording: Arc<Semaphore>,
    /// Status changes, written in groups (see [`crate::recorder`]).
    recorder: Recorder,
    heartbeat: Arc<Heartbeat>,
    user_agent: String,
    /// Each target's instances on this replica, for the outlier detector.
    peers: Arc<Peers>,
}

impl Prober {
    /// A prober for `members`' share of the registry in `pool` (within a Tokio runtime: its
    /// recorder's writers start here). Every connection goes
    /// through `outbound` (names resolved under it, to the address it checked); redirects are
    /// never followed (they would pick the next address).
    pub fn new(
        pool: sqlx::PgPool,
        members: Membership,
        metrics: Metrics,
        config: CoordinatorConfig,
        outbound: caracal_core::outbound::Policy,
    ) -> Self {
        let recording = usize::try_from(pool.options().get_max_connections()).unwrap_or(10).max(1);
        let user_agent = format!("caracal-coordinator/{} ({})", env!("CARGO_PKG_VERSION"), members.id());
        let recorder = Recorder::start(pool.clone(), RECORDING_WRITERS);
        Self {
            pool,
            members,
            metrics,
            permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            recording: Arc::new(Semaphore::new(recording)),
            recorder,
            config,
            connections: Arc::new(http::Connections::default()),
            outbound,
            heartbeat: Arc::new(Heartbeat { last: Mutex::new(Instant::now()) }),
            user_agent,
            peers: Arc::new(Peers::default()),
        }
    }

    /// The reconcile loop's heartbeat.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.heartbeat)
    }

    /// Probes every owned instance of a target that is not paused, until `stop`.
    ///
    /// The registry is held in memory: read whole when `notices` says so (start-up, the
    /// follower's periodic safety net, after a Redis error) and one target at a time as
    /// `caracal.invalidations` announces changes. Every `refresh` the membership is looked at
    /// (in memory) and ownership reconciled; nothing is read from PostgreSQL on that timer.
    pub async fn run(self, notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        // One prober shared by the scheduler and every instance's state (an `Arc`, not a copy each).
        Arc::new(self).follow(notices, stop).await;
    }

    /// [`Prober::run`]'s loop: follows the registry and ownership, and tells the scheduler
    /// (a task of its own, so a long registry read never delays a probe) what to watch.
    async fn follow(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        let (commands, received) = mpsc::unbounded_channel();
        let scheduler = tokio::spawn(Arc::clone(&self).schedule(received, stop.clone()));
        let mut registry = Registry::default();
        let mut running: HashMap<i64, Arc<Instance>> = HashMap::new();
        let mut members = Vec::new();
        // A registry read that failed is retried at the next tick.
        let mut retry: Option<Notice> = None;
        // Instances announced as changed and not yet reconciled (the members may not be known
        // yet when the announcement arrives): they are still probed at once when they start.
        let mut fresh = HashSet::new();
        // What the next reconcile looks at: everything (after a whole read), or the instances
        // of the targets announced as changed, before and after (a change costs what it
        // touches, not the fleet).
        let mut whole = true;
        let mut touched: HashSet<i64> = HashSet::new();
        loop {
            let notice = tokio::select! {
                notice = notices.recv() => match notice {
                    Some(notice) => Some(notice),
                    None => break,
                },
                () = tokio::time::sleep(self.config.refresh) => retry.take(),
                () = stop.cancelled() => break,
            };
            // Instances announced as changed are probed at once; the rest spread their first
            // probe over an interval, so a start or a takeover does not probe in a burst.
            // Whether this round read or started a fleet's worth (see `BURST`).
            let mut burst = false;
            if let Some(notice) = notice {
                let read_whole = matches!(notice, Notice::Resync);
                match self.load(notice.clone(), &mut registry).await {
                    Ok(Loaded { fresh: ids, gone }) => {
                        burst = if read_whole { registry.instances.len() } else { ids.len() } >= BURST;
                        whole |= read_whole;
                        if !whole {
                            touched.extend(ids.iter().copied().chain(gone));
                        }
                        fresh.extend(ids);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the registry failed; keeping the current probes");
                        retry = Some(notice);
                    }
                }
            }
            // Ownership is worked out again only when the registry or the members changed: an
            // idle tick costs nothing however large the fleet.
            let now = self.members.members();
            if !now.is_empty() && (whole || now != members || !touched.is_empty()) {
                let starting = if whole || now != members {
                    self.reconcile(&registry.instances, &fresh, &mut running, &commands)
                } else {
                    self.reconcile_some(&registry.instances, &touched, &fresh, &mut running, &commands)
                };
                (whole, fresh, touched) = (false, HashSet::new(), HashSet::new());
                burst |= starting.len() >= BURST;
                self.start(starting, &commands).await;
                self.metrics.members.set(now.len() as i64);
                members = now;
            }
            if burst {
                // What the read (and the statuses read for new instances) allocated was
                // transient; what the instances keep stays.
                caracal_core::memory::release_freed();
            }
            // Kept connections past their time are closed (a walk of those kept, at most
            // `http::IDLE_AT_MOST`; none while nothing is kept).
            if !self.connections.is_empty() {
                self.connections.sweep();
            }
            self.heartbeat.beat();
        }
        // The scheduler ends with the channel (or `stop`), once its running probes finish.
        drop(commands);
        let _ = scheduler.await;
    }

    /// Applies `notice` to `registry` (every instance of a target that is not paused); returns
    /// the ids of instances that are new or changed by a `Changed` notice, and those it took
    /// away (the named targets' instances that are no more).
    async fn load(&self, notice: Notice, registry: &mut Registry) -> Result<Loaded, caracal_store::Error> {
        let names = match &notice {
            Notice::Resync => None,
            Notice::Changed(names) => Some(names.clone()),
        };
        let targets = caracal_store::registry::read(&self.pool, names.as_deref(), Filter::Probed).await?;
        let mut loaded: HashMap<i64, Arc<Instance>> = HashMap::new();
        let mut by_target: HashMap<Arc<str>, Ids> = HashMap::new();
        for target in targets {
            let spec = target.spec;
            let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(1000));
            let name: Arc<str> = Arc::from(spec.name.as_str());
            let peers = spec.instances.len() >= MIN_PEERS;
            by_target.insert(Arc::clone(&name), Ids::of(&target.instance_ids));
            for (id, url) in target.instance_ids.into_iter().zip(spec.instances) {
                let instance = Instance {
                    scheme: Scheme::of(&url).unwrap_or(Scheme::Http),
                    tls: spec.tls.clone(),
                    grpc_service: spec.grpc_service.clone().unwrap_or_default(),
                    degraded: spec.degraded.clone().unwrap_or_default(),
                    id,
                    target: Arc::clone(&name),
                    url: url.into(),
                    health_path: spec.health_path.clone(),
                    ready_path: spec.ready_path.clone(),
                    interval: ms(spec.interval_ms),
                    timeout: ms(spec.timeout_ms),
                    peers,
                };
                // An unchanged instance keeps the `Arc` its state already holds: a copy per
                // re-read (every `full_resync`) would double what the fleet holds.
                let instance = match registry.instances.get(&id) {
                    Some(known) if **known == instance => Arc::clone(known),
                    _ => Arc::new(instance),
                };
                loaded.insert(id, instance);
            }
        }
        let Some(names) = names else {
            *registry = Registry { instances: loaded, by_target };
            return Ok(Loaded { fresh: HashSet::new(), gone: Vec::new() });
        };
        // The named targets' instances as they were, through the index: a change costs what
        // it touches, not a walk of the fleet.
        let mut gone = Vec::new();
        for name in &names {
            for id in registry.by_target.remove(name.as_str()).iter().flat_map(Ids::to_vec) {
                registry.instances.remove(&id);
                if !loaded.contains_key(&id) {
                    gone.push(id);
                }
            }
        }
        let fresh = loaded.keys().copied().collect();
        registry.instances.extend(loaded);
        registry.by_target.extend(by_target);
        Ok(Loaded { fresh, gone })
    }

    /// Stops watching the instances this replica should no longer probe and lists those it
    /// should start (see [`Prober::start`]), so it watches exactly the instances it owns. An
    /// instance in `fresh` (announced as changed) is probed at once: a new one without the
    /// spread, and a watched one is nudged, since the announcement can arrive after a full
    /// re-read already started it with a spread first probe.
    fn reconcile(
        &self,
        registry: &HashMap<i64, Arc<Instance>>,
        fresh: &HashSet<i64>,
        running: &mut HashMap<i64, Arc<Instance>>,
        commands: &mpsc::UnboundedSender<Command>,
    ) -> Vec<Starting> {
        running.retain(|id, instance| {
            let keep = registry.get(id).is_some_and(|now| now == instance && self.members.owns(*id));
            // A send fails only once the scheduler has ended (shutting down): nothing to tell.
            if !keep {
                let _ = commands.send(Command::Stop(*id));
            } else if fresh.contains(id) {
                let _ = commands.send(Command::Nudge(*id));
            }
            keep
        });
        let mut starting = Vec::new();
        for (id, instance) in registry {
            if running.contains_key(id) || !self.members.owns(*id) {
                continue;
            }
            starting.push(Starting { instance: Arc::clone(instance), at_once: fresh.contains(id) });
            running.insert(*id, Arc::clone(instance));
        }
        self.metrics.instances_owned.set(running.len() as i64);
        starting
    }

    /// [`Prober::reconcile`] for `touched` alone (instances of targets announced as changed,
    /// before and after), with the members unchanged.
    fn reconcile_some(
        &self,
        registry: &HashMap<i64, Arc<Instance>>,
        touched: &HashSet<i64>,
        fresh: &HashSet<i64>,
        running: &mut HashMap<i64, Arc<Instance>>,
        commands: &mpsc::UnboundedSender<Command>,
    ) -> Vec<Starting> {
        let mut starting = Vec::new();
        for id in touched {
            let now = registry.get(id).filter(|_| self.members.owns(*id));
            match (running.get(id), now) {
                (Some(was), Some(now)) if was == now => {
                    if fresh.contains(id) {
                        let _ = commands.send(Command::Nudge(*id));
                    }
                    continue;
                }
                (Some(_), _) => {
                    let _ = commands.send(Command::Stop(*id));
                    running.remove(id);
                }
                (None, _) => {}
            }
            if let Some(now) = now {
                starting.push(Starting { instance: Arc::clone(now), at_once: fresh.contains(id) });
                running.insert(*id, Arc::clone(now));
            }
        }
        self.metrics.instances_owned.set(running.len() as i64);
        starting
    }

    /// Hands each of `starting` to the scheduler with what is recorded for it, read in bulk
    /// first (a start or a takeover of thousands of instances is a few queries, not one per
    /// instance; one whose read failed is read on its own before its first probe).
    async fn start(&self, starting: Vec<Starting>, commands: &mpsc::UnboundedSender<Command>) {
        for batch in starting.chunks(START_BATCH) {
            let ids: Vec<i64> = batch.iter().map(|s| s.instance.id).collect();
            let mut recorded = match store_status::recorded_many(&self.pool, &ids).await {
                Ok(recorded) => Some(recorded),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the recorded statuses failed; each instance will read its own");
                    None
                }
            };
            for s in batch {
                let known = recorded.as_mut().map(|r| r.remove(&s.instance.id).unwrap_or(Recorded::NONE));
                let starting = Starting { instance: Arc::clone(&s.instance), at_once: s.at_once };
                let _ = commands.send(Command::Start(starting, known));
            }
        }
    }

    /// The scheduler: every watched instance's state between probes, and one timer queue for
    /// all of them. When an instance's turn comes its state moves into a task for that one
    /// probe and comes back with the result, so an idle instance costs its state and a queue
    /// entry, not a task (see docs/benchmarks.md, "Coordinator memory per instance"). Ends
    /// when `commands` closes or `stop` is cancelled, once the probes running then finish.
    async fn schedule(self: Arc<Self>, mut commands: mpsc::UnboundedReceiver<Command>, stop: CancellationToken) {
        let mut slots: HashMap<i64, Slot> = HashMap::new();
        let mut queue: DelayQueue<i64> = DelayQueue::new();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        // Which instance (and which watch of it) each running task is for.
        let mut busy: HashMap<tokio::task::Id, (i64, u64)> = HashMap::new();
        let mut generation = 0_u64;
        // Instances whose turn came while `max_tasks` tasks ran, in the order it came.
        let mut backlog: VecDeque<i64> = VecDeque::new();
        let max_tasks = self.config.max_concurrency.max(1) * MAX_TASKS_PER_PROBE;
        // Whether instances waited in the backlog since the last time it ran dry.
        let mut burst = false;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Start(starting, known)) => {
                        generation += 1;
                        let id = starting.instance.id;
                        if let Some(old) = slots.remove(&id) {
                            drop_slot(old, &mut queue);
                        }
                        let spread = if starting.at_once { Duration::from_millis(50) } else { starting.instance.interval };
                        let first = spread.mul_f64(fastrand::f64());
                        let phase = match known {
                            Some(recorded) => {
                                let watch = self.watch(Arc::clone(&starting.instance), recorded);
                                Phase::Waiting(watch, queue.insert(id, first))
                            }
                            None => Phase::Unread { at_once: starting.at_once, key: queue.insert(id, Duration::ZERO) },
                        };
                        slots.insert(id, Slot { generation, instance: starting.instance, phase });
                    }
                    Some(Command::Stop(id)) => {
                        if let Some(old) = slots.remove(&id) {
                            drop_slot(old, &mut queue);
                        }
                    }
                    Some(Command::Nudge(id)) => match slots.get_mut(&id).map(|s| &mut s.phase) {
                        Some(Phase::Waiting(_, key) | Phase::Unread { key, .. }) => queue.reset(key, Duration::ZERO),
                        Some(Phase::Busy { again }) => *again = true,
                        // Its turn has come already.
                        Some(Phase::Queued(_)) | None => {}
                    },
                    None => break,
                },
                Some(due) = std::future::poll_fn(|cx| queue.poll_expired(cx)) => {
                    let id = due.into_inner();
                    let Some(slot) = slots.get_mut(&id) else { continue };
                    let task = match std::mem::replace(&mut slot.phase, Phase::Busy { again: false }) {
                        Phase::Waiting(watch, _) if busy.len() >= max_tasks => {
                            slot.phase = Phase::Queued(watch);
                            backlog.push_back(id);
                            burst = true;
                            continue;
                        }
                        Phase::Waiting(watch, _) | Phase::Queued(watch) => tasks.spawn(probe_task(watch)),
                        Phase::Unread { at_once, .. } => {
                            slot.phase = Phase::Busy { again: at_once };
                            let (this, instance) = (Arc::clone(&self), Arc::clone(&slot.instance));
                            tasks.spawn(async move { Done::Read(this.read_recorded(instance).await) })
                        }
                        Phase::Busy { .. } => continue,
                    };
                    busy.insert(task.id(), (id, slot.generation));
                }
                Some(done) = tasks.join_next_with_id() => {
                    let (task, done) = match done {
                        Ok((task, done)) => (task, Some(done)),
                        Err(e) => (e.id(), None),
                    };
                    let Some((id, of)) = busy.remove(&task) else { continue };
                    // A task ended: the backlog's first (still queued) instance takes its place.
                    // (An id whose slot was stopped or started anew meanwhile is skipped.)
                    while let Some(next) = backlog.pop_front() {
                        let Some(slot) = slots.get_mut(&next).filter(|s| matches!(s.phase, Phase::Queued(_))) else {
                            continue;
                        };
                        if let Phase::Queued(watch) = std::mem::replace(&mut slot.phase, Phase::Busy { again: false }) {
                            busy.insert(tasks.spawn(probe_task(watch)).id(), (next, slot.generation));
                        }
                        break;
                    }
                    let Some(slot) = slots.get_mut(&id).filter(|s| s.generation == of) else {
                        // A watch that ended while it probed: its series stay if a newer watch
                        // of the same instance (same labels) now keeps them.
                        if let (Some(Done::Probed(mut watch) | Done::Read(Some(mut watch))), Some(now)) = (done, slots.get(&id)) {
                            watch.exported = watch.instance.target != now.instance.target || watch.instance.url != now.instance.url;
                        }
                        continue;
                    };
                    let again = matches!(slot.phase, Phase::Busy { again: true });
                    slot.phase = match done {
                        Some(Done::Probed(watch)) => {
                            let wait = if again { Duration::ZERO } else { jittered(watch.instance.interval) };
                            Phase::Waiting(watch, queue.insert(id, wait))
                        }
                        Some(Done::Read(Some(watch))) => {
                            let spread = if again { Duration::from_millis(50) } else { watch.instance.interval };
                            Phase::Waiting(watch, queue.insert(id, spread.mul_f64(fastrand::f64())))
                        }
                        // The read failed, or the task panicked (a bug: its state is gone, so
                        // it starts over from what is recorded): again in a second.
                        Some(Done::Read(None)) | None => {
                            if done.is_none() {
                                tracing::error!(instance = %slot.instance.url, "a probe task failed; starting the instance over");
                            }
                            Phase::Unread { at_once: again, key: queue.insert(id, Duration::from_secs(1)) }
                        }
                    };
                    // A burst (more due at once than tasks may run) is over once its backlog
                    // drained: what its probes allocated and freed goes back to the system,
                    // the states stay. (Not "once nothing runs": a large fleet always has
                    // probes running.)
                    if burst && backlog.is_empty() {
                        burst = false;
                        caracal_core::memory::release_freed();
                    }
                }
                () = stop.cancelled() => break,
            }
        }
        // Every state is dropped (its series with it); running probes finish first.
        drop(slots);
        while tasks.join_next().await.is_some() {}
    }

    /// An instance's state from what is recorded for it (by whoever owned it before, so a new
    /// owner does not re-announce it): its judge, detectors, series and TLS client.
    fn watch(self: &Arc<Self>, instance: Arc<Instance>, recorded: Recorded) -> Box<Watch> {
        let Recorded { status: stored, certificate: presented, verdict } = recorded;
        let mut gray = Gray::new();
        gray.adopt(verdict);
        // While this replica owns the instance it exports its status; the series go with it.
        let series = self.metrics.instance_series(&instance_labels(&instance));
        if let Some(p) = &presented {
            self.metrics.certificate_expiry.get_or_create(&certificate_labels(&instance)).set(p.expires_at);
        }
        let probing = Probing {
            tls: instance.scheme.is_tls().then(|| {
                let alpn: &[u8] = if instance.scheme == Scheme::Grpcs { b"h2" } else { b"http/1.1" };
                let client = TlsClient::new(instance.tls.as_ref(), alpn, &self.config.tls);
                if let Ok(client) = &client {
                    client.remember(presented.clone());
                }
                Box::new(client)
            }),
            presented,
        };
        Box::new(Watch {
            prober: Arc::clone(self),
            instance,
            published: stored,
            // The detectors keep a recorded verdict until their windows are full.
            judge: Judge::new(judged(stored), self.config.failure_threshold, self.config.success_threshold),
            gray,
            series,
            probing,
            exported: true,
        })
    }

    /// Reads what is recorded for `instance` (its start's bulk read failed) and builds its
    /// state; `None` when the read fails too (the scheduler tries again in a second).
    async fn read_recorded(self: Arc<Self>, instance: Arc<Instance>) -> Option<Box<Watch>> {
        match store_status::recorded(&self.pool, instance.id).await {
            Ok(recorded) => Some(self.watch(instance, recorded)),
            Err(e) => {
                tracing::warn!(error = %e, instance = %instance.url, "reading the recorded status failed; will retry");
                None
            }
        }
    }

    /// Reports the instance to its target's group and returns the group's view, while the
    /// outlier detector judges it and it is up with a full recent window; otherwise takes it
    /// out of the group. Nothing for an instance whose target has too few to compare.
    fn peer_view(
        &self,
        instance: &Instance,
        gray: &Gray,
        up: bool,
        max_age: Duration,
    ) -> Option<crate::gray::PeerView> {
        let window = u32::try_from(instance.degraded.error_window).unwrap_or(20);
        if !instance.peers {
            return None;
        }
        match (instance.degraded.uses(Detector::Outlier) && up, gray.recent_us()) {
            (true, Some(median)) => {
                let failed = gray.failed_share(window).unwrap_or(0.0);
                self.peers.report(&instance.target, instance.id, median, failed, max_age)
            }
            _ => {
                self.peers.forget(&instance.target, instance.id);
                None
            }
        }
    }

    /// Probes the instance as its scheme says; the status, why when not up, and the certificate
    /// a TLS server presented.
    async fn probe(&self, instance: &Instance, probing: &Probing) -> (Status, Option<String>, Option<Presented>) {
        let Some(address) = &Address::parse(&instance.url, instance.scheme) else {
            return (Status::Down, Some("the instance URL is not usable".into()), None);
        };
        // An address literal is judged here (names are judged as they resolve): a denied one
        // is never contacted.
        if let Err(refused) = self.outbound.check_host(address.connect_host()) {
            return (Status::Down, Some(refused.word().into()), None);
        }
        let tls = match probing.tls.as_deref() {
            None => None,
            Some(Ok(client)) => {
                if client.insecure {
                    self.metrics.tls_unverified.inc();
                }
                Some(client)
            }
            Some(Err(why)) => return (Status::Down, Some(why.clone()), None),
        };
        let seen = match (instance.scheme, tls) {
            // One path for both (a service with a single health endpoint): one GET answers both.
            (Scheme::Http, _) if instance.health_path == instance.ready_path => {
                let health = self.get(instance, address, &instance.health_path).await;
                Seen { ready: health.clone(), health, presented: None }
            }
            (Scheme::Http, _) => {
                let (health, ready) = tokio::join!(
                    self.get(instance, address, &instance.health_path),
                    self.get(instance, address, &instance.ready_path)
                );
                Seen { health, ready, presented: None }
            }
            (Scheme::Https, Some(client)) => {
                let paths = [instance.health_path.as_str(), instance.ready_path.as_str()];
                let keep = (instance.interval <= http::KEEP_WHEN_EVERY).then_some(&*self.connections);
                protocols::https(&self.outbound, address, client, (paths, &self.user_agent), instance.timeout, keep)
                    .await
            }
            (Scheme::Tcp, _) => {
                let health = protocols::tcp(&self.outbound, address, instance.timeout).await;
                Seen { ready: health.clone(), health, presented: None }
            }
            (Scheme::Grpc | Scheme::Grpcs, tls) => {
                let (health, presented) =
                    protocols::grpc(&self.outbound, address, tls, &instance.grpc_service, instance.timeout).await;
                Seen { ready: health.clone(), health, presented }
            }
            (Scheme::Https, None) => return (Status::Down, Some("tls_config".into()), None),
        };
        let (status, why) = match (seen.health, seen.ready) {
            (Ok(()), Ok(())) => (Status::Up, None),
            (Ok(()), Err(why)) => (Status::Unready, Some(why)),
            (Err(why), _) => (Status::Down, Some(why)),
        };
        (status, why, seen.presented)
    }

    /// One GET of `path` on the instance at `address` (see [`crate::http`]).
    async fn get(&self, instance: &Instance, address: &Address, path: &str) -> Result<(), String> {
        let get = http::Get {
            address,
            url: instance.url.trim_end_matches('/'),
            path,
            user_agent: &self.user_agent,
            keep: instance.interval <= http::KEEP_WHEN_EVERY,
            timeout: instance.timeout,
        };
        self.connections.get(&self.outbound, &get).await
    }

    /// Records a certificate the instance presents for the first time, or a new one (a
    /// renewal); nothing is written while the certificate stays the same.
    async fn record_certificate(
        &self,
        instance: &Instance,
        previous: Option<&Presented>,
        presented: &Presented,
    ) -> Result<(), caracal_store::Error> {
        let at = (instance.id, &*instance.target, &*instance.url);
        let expires_at = store_status::record_certificate(&self.pool, at, previous, presented).await?;
        tracing::info!(target = %instance.target, instance = %instance.url, expires_at, "certificate recorded");
        Ok(())
    }

    /// Records a change: the status row (only if it still holds `from`, so two replicas never
    /// record the same change twice), the transition and its outbox event, in one transaction.
    /// `Ok(false)` when the stored status had moved on already.
    async fn record(
        &self,
        instance: &Instance,
        from: Status,
        to: Status,
        error: Option<&str>,
        verdict: Option<&Verdict>,
    ) -> Result<bool, String> {
        let wanted = recorder::Wanted {
            instance_id: instance.id,
            target: &instance.target,
            instance: &instance.url,
            from,
            to,
            error,
            verdict,
        };
        self.recorder.record(wanted).await
    }
}

impl Watch {
    /// One probe: observes the instance, judges the result, exports it, and records a change
    /// of what is shown (status, transition and outbox event in one transaction).
    async fn probe_once(&mut self) {
        let prober = Arc::clone(&self.prober);
        let instance = Arc::clone(&self.instance);
        let Ok(permit) = prober.permits.acquire().await else { return };
        let started = Instant::now();
        let span = probe_span(&instance);
        // The futures a probe and a recording build are boxed: the task that runs this holds
        // them only while they run.
        let (observed, error, presented) =
            Box::pin(prober.probe(&instance, &self.probing)).instrument(span.clone()).await;
        let took = started.elapsed();
        drop(permit);
        span.record("caracal.probe.result", observed.as_str());
        if let Some(why) = &error {
            telemetry::record_client_error(&span, why);
        }
        if let Some(presented) = presented {
            prober.metrics.certificate_expiry.get_or_create(&certificate_labels(&instance)).set(presented.expires_at);
            if self.probing.presented.as_ref().is_none_or(|p| p.sha256 != presented.sha256) {
                let Ok(_recording) = prober.recording.acquire().await else { return };
                match Box::pin(prober.record_certificate(&instance, self.probing.presented.as_ref(), &presented))
                    .instrument(span.clone())
                    .await
                {
                    Ok(()) => self.probing.presented = Some(presented),
                    Err(e) => {
                        tracing::warn!(error = %e, instance = %instance.url, "recording a new certificate failed; will retry")
                    }
                }
            }
        }
        prober.metrics.probe_duration.observe(took.as_secs_f64());
        prober.metrics.probes.get_or_create(&ResultLabels { result: observed.as_str() }).inc();
        let changed = self.judge.observe(observed).is_some();
        let up = self.judge.status() == Status::Up;
        let sample =
            Sample { latency: (observed == Status::Up).then_some(took), failed: observed != Status::Up, up, changed };
        let peers = prober.peer_view(&instance, &self.gray, up, instance.interval / 2);
        if let Some(Change::Entered(Verdict { reason, detail })) =
            self.gray.observe(&sample, &instance.degraded, peers.as_ref())
        {
            tracing::debug!(target = %instance.target, instance = %instance.url, reason = reason.as_str(), detail, "gray failure detected");
        }
        let now = match (self.judge.status(), self.gray.verdict()) {
            (Status::Up, Some(_)) => Status::Degraded,
            (status, _) => status,
        };
        let medians = [self.gray.recent_us(), self.gray.baseline_us()];
        prober.metrics.export_instance(&instance.target, &instance.url, &mut self.series, now, medians);
        if now == self.published {
            return;
        }
        let verdict = if now == Status::Degraded { self.gray.verdict() } else { None };
        match Box::pin(prober.record(&instance, self.published, now, error.as_deref(), verdict))
            .instrument(span.clone())
            .await
        {
            Ok(true) => {
                prober.metrics.transitions.inc();
                tracing::info!(target = %instance.target, instance = %instance.url, from = self.published.as_str(), to = now.as_str(),
                    reason = verdict.map(|v| v.detail.as_str()).or(error.as_deref()), "status changed");
                self.published = now;
            }
            Ok(false) => {
                // Another replica recorded a change first (an ownership hand-over): follow
                // what it recorded.
                if let Ok(recorded) = Box::pin(store_status::recorded(&prober.pool, instance.id)).await {
                    self.published = recorded.status;
                    self.judge.adopt(judged(recorded.status));
                    self.gray.adopt(recorded.verdict);
                }
            }
            Err(e) => {
                // The next probe tries again while the change still holds.
                tracing::warn!(error = %e, instance = %instance.url, "recording a transition failed; will retry");
            }
        }
    }
}

/// The task of one probe of `watch`, handing the state back.
async fn probe_task(mut watch: Box<Watch>) -> Done {
    Box::pin(watch.probe_once()).await;
    Done::Probed(watch)
}

/// Drops a slot's state and takes its entry out of the timer queue (a probe running for it
/// finishes, and its state is dropped when it comes back).
fn drop_slot(slot: Slot, queue: &mut DelayQueue<i64>) {
    if let Phase::Waiting(_, key) | Phase::Unread { key, .. } = &slot.phase {
        queue.remove(key);
    }
}

/// The wait before an instance's next probe: its interval, give or take a tenth, so instances
/// that started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// The status the consecutive-failure judge starts from: a recorded `degraded` is up to it.
fn judged(recorded: Status) -> Status {
    if recorded == Status::Degraded { Status::Up } else { recorded }
}

/// The span of one probe of `instance` (a trace of its own: probes run on a timer), whose
/// requests carry its context to the instance; a disabled span while nothing is exported, as
/// a thousand probes a second would otherwise each build one for nobody. Its name is `probe`
/// for every target: the target and instance are attributes, so the set of span names stays
/// the same size however large the fleet (OpenTelemetry asks for low-cardinality names).
fn probe_span(instance: &Instance) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "probe",
        otel.name = "probe",
        otel.kind = "internal",
        caracal.target = %instance.target,
        caracal.instance = %instance.url,
        caracal.probe.result = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::{Judge, Status};

    #[test]
    fn the_first_observation_decides_then_thresholds_hold() {
        let mut j = Judge::new(Status::Unknown, 3, 2);
        assert_eq!(j.observe(Status::Up), Some(Status::Unknown));
        assert_eq!(j.observe(Status::Down), None);
        assert_eq!(j.observe(Status::Down), None);
        assert_eq!(j.observe(Status::Down), Some(Status::Up), "three failures change it");
        assert_eq!(j.observe(Status::Up), None);
        assert_eq!(j.observe(Status::Up), Some(Status::Down), "two successes change it back");
    }

    #[test]
    fn a_mixed_streak_starts_over() {
        let mut j = Judge::new(Status::Up, 2, 2);
        assert_eq!(j.observe(Status::Down), None);
        assert_eq!(j.observe(Status::Up), None, "a good probe resets the streak");
        assert_eq!(j.observe(Status::Down), None);
        assert_eq!(j.observe(Status::Unready), None, "a different bad status starts its own streak");
        assert_eq!(j.observe(Status::Unready), Some(Status::Up));
        assert_eq!(j.status(), Status::Unready);
    }
}
