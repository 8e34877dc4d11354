//! The prober: one task per owned instance probes `/health` and `/ready` on the target's
//! interval, judges the result with hysteresis, and records each change (status, transition
//! and outbox event) in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::telemetry;
use caracal_store::invalidations::Notice;
use caracal_store::registry::Filter;
use caracal_store::status::{self as store_status, Change as StoreChange, Recorded};
use caracal_store::target::{DegradedSpec, Detector, Scheme, TlsSpec};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::CoordinatorConfig;
use crate::gray::{Change, Gray, Peers, Sample, Verdict};
use crate::membership::Membership;
use crate::metrics::{CertificateLabels, InstanceLabels, Metrics, ResultLabels};
use crate::protocols::{self, Address, Seen};
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

/// Removes an instance's series (`instance_up`, `instance_degraded`, its latencies, its
/// certificate) and its place among its target's peers when its probe task ends (ownership
/// moved).
/// The labels are built again when it is dropped rather than kept: the task holds the
/// instance already, and every byte an idle task keeps is multiplied by the fleet.
struct Exported<'a> {
    metrics: &'a Metrics,
    peers: &'a Peers,
    instance: &'a Instance,
}

impl Drop for Exported<'_> {
    fn drop(&mut self) {
        self.metrics.forget_instance(&instance_labels(self.instance));
        self.metrics.certificate_expiry.remove(&certificate_labels(self.instance));
        self.peers.forget(&self.instance.target, self.instance.id);
    }
}

/// An instance's `instance_up` labels.
fn instance_labels(instance: &Instance) -> InstanceLabels {
    InstanceLabels { target: instance.target.clone(), url: instance.url.clone() }
}

/// An instance's certificate expiry labels (built when a certificate is seen: most instances
/// never present one).
fn certificate_labels(instance: &Instance) -> CertificateLabels {
    CertificateLabels { target: instance.target.clone(), instance: instance.url.clone() }
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
    target: String,
    url: String,
    health_path: String,
    ready_path: String,
    interval: Duration,
    timeout: Duration,
    scheme: Scheme,
    tls: Option<TlsSpec>,
    grpc_service: String,
    /// How it is judged `degraded` (the target's block, or every default).
    degraded: DegradedSpec,
}

/// One running instance task: what it probes, how to stop it, and how to make it probe now.
struct Running {
    instance: Arc<Instance>,
    stop: CancellationToken,
    nudge: Arc<Notify>,
}

/// An instance task about to start: what it probes, whether at once, how to stop it and how
/// to make it probe now.
#[derive(Clone)]
struct Starting {
    instance: Arc<Instance>,
    at_once: bool,
    stop: CancellationToken,
    nudge: Arc<Notify>,
}

/// How many starting instances' recorded statuses are read in one query.
const START_BATCH: usize = 5_000;

/// How one instance task probes: its address, and its TLS client when it speaks TLS (built
/// once per task; `Err` holds why it could not be, reported by every probe).
struct Probing {
    address: Option<Address>,
    tls: Option<Result<TlsClient, String>>,
    /// The certificate last presented (as recorded), to tell a renewal from the same one.
    presented: Option<Presented>,
}

/// Probes the instances this replica owns.
#[derive(Debug, Clone)]
pub struct Prober {
    pool: sqlx::PgPool,
    members: Membership,
    metrics: Metrics,
    config: CoordinatorConfig,
    client: reqwest::Client,
    /// The outbound address policy every probe connects through.
    outbound: caracal_core::outbound::Policy,
    permits: Arc<Semaphore>,
    /// Status changes being written at once, at most the pool's connections: thousands of
    /// instances changing together (a start, a network blip) queue here holding nothing, not
    /// each a transaction's future waiting for a connection.
    recording: Arc<Semaphore>,
    heartbeat: Arc<Heartbeat>,
    user_agent: String,
    /// Each target's instances on this replica, for the outlier detector.
    peers: Arc<Peers>,
}

impl Prober {
    /// A prober for `members`' share of the registry in `pool`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        pool: sqlx::PgPool,
        members: Membership,
        metrics: Metrics,
        config: CoordinatorConfig,
        outbound: caracal_core::outbound::Policy,
    ) -> Result<Self, reqwest::Error> {
        // Every name is resolved under the address policy and the connection goes to the
        // address it checked; redirects are never followed (they would pick the next address).
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(outbound.resolver())
            .build()?;
        let recording = usize::try_from(pool.options().get_max_connections()).unwrap_or(10).max(1);
        let user_agent = format!("caracal-coordinator/{} ({})", env!("CARGO_PKG_VERSION"), members.id());
        Ok(Self {
            pool,
            members,
            metrics,
            permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            recording: Arc::new(Semaphore::new(recording)),
            config,
            client,
            outbound,
            heartbeat: Arc::new(Heartbeat { last: Mutex::new(Instant::now()) }),
            user_agent,
            peers: Arc::new(Peers::default()),
        })
    }

    /// The reconcile loop's heartbeat.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.heartbeat)
    }

    /// Keeps one task per owned instance of a target that is not paused, until `stop`.
    ///
    /// The registry is held in memory: read whole when `notices` says so (start-up, the
    /// follower's periodic safety net, after a Redis error) and one target at a time as
    /// `caracal.invalidations` announces changes. Every `refresh` the membership is looked at
    /// (in memory) and ownership reconciled; nothing is read from PostgreSQL on that timer.
    pub async fn run(self, notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        // One prober shared by every instance task (an `Arc`, not a copy each).
        Arc::new(self).follow(notices, stop).await;
    }

    /// [`Prober::run`]'s loop.
    async fn follow(self: Arc<Self>, mut notices: mpsc::Receiver<Notice>, stop: CancellationToken) {
        let mut registry: HashMap<i64, Arc<Instance>> = HashMap::new();
        let mut running: HashMap<i64, Running> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut members = Vec::new();
        // A registry read that failed is retried at the next tick.
        let mut retry: Option<Notice> = None;
        // Instances announced as changed and not yet reconciled (the members may not be known
        // yet when the announcement arrives): they are still probed at once when they start.
        let mut fresh = HashSet::new();
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
            let mut changed = false;
            if let Some(notice) = notice {
                match self.load(notice.clone(), &mut registry).await {
                    Ok(ids) => {
                        fresh.extend(ids);
                        changed = true;
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
            if !now.is_empty() && (changed || now != members) {
                let starting = self.reconcile(&registry, &fresh, &mut running, &stop);
                fresh.clear();
                self.start(starting, &mut tasks).await;
                self.metrics.members.set(now.len() as i64);
                members = now;
            }
            self.heartbeat.beat();
            while tasks.try_join_next().is_some() {}
        }
        for (_, task) in running.drain() {
            task.stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Applies `notice` to `registry` (every instance of a target that is not paused); returns
    /// the ids of instances that are new or changed by a `Changed` notice.
    async fn load(
        &self,
        notice: Notice,
        registry: &mut HashMap<i64, Arc<Instance>>,
    ) -> Result<HashSet<i64>, caracal_store::Error> {
        let names = match &notice {
            Notice::Resync => None,
            Notice::Changed(names) => Some(names.clone()),
        };
        let targets = caracal_store::registry::read(&self.pool, names.as_deref(), Filter::Probed).await?;
        let mut loaded: HashMap<i64, Arc<Instance>> = HashMap::new();
        for target in targets {
            let spec = target.spec;
            let ms = |v: i32| Duration::from_millis(u64::try_from(v).unwrap_or(1000));
            for (id, url) in target.instance_ids.into_iter().zip(spec.instances) {
                let instance = Instance {
                    scheme: Scheme::of(&url).unwrap_or(Scheme::Http),
                    tls: spec.tls.clone(),
                    grpc_service: spec.grpc_service.clone().unwrap_or_default(),
                    degraded: spec.degraded.clone().unwrap_or_default(),
                    id,
                    target: spec.name.clone(),
                    url,
                    health_path: spec.health_path.clone(),
                    ready_path: spec.ready_path.clone(),
                    interval: ms(spec.interval_ms),
                    timeout: ms(spec.timeout_ms),
                };
                loaded.insert(id, Arc::new(instance));
            }
        }
        let Some(names) = names else {
            *registry = loaded;
            return Ok(HashSet::new());
        };
        registry.retain(|_, i| !names.contains(&i.target));
        let fresh = loaded.keys().copied().collect();
        registry.extend(loaded);
        Ok(fresh)
    }

    /// Stops the instance tasks this replica should no longer run and lists those it should
    /// start (see [`Prober::start`]), so it runs exactly the instances it owns. An instance in
    /// `fresh` (announced as changed) is probed at once: a new task starts without the spread,
    /// and a running one is nudged, since the announcement can arrive after a full re-read
    /// already started its task with a spread first probe.
    fn reconcile(
        &self,
        registry: &HashMap<i64, Arc<Instance>>,
        fresh: &HashSet<i64>,
        running: &mut HashMap<i64, Running>,
        stop: &CancellationToken,
    ) -> Vec<Starting> {
        running.retain(|id, task| {
            let keep = registry.get(id).is_some_and(|now| *now == task.instance && self.members.owns(*id));
            if !keep {
                task.stop.cancel();
            } else if fresh.contains(id) {
                task.nudge.notify_one();
            }
            keep
        });
        let mut starting = Vec::new();
        for (id, instance) in registry {
            if running.contains_key(id) || !self.members.owns(*id) {
                continue;
            }
            let task =
                Running { instance: Arc::clone(instance), stop: stop.child_token(), nudge: Arc::new(Notify::new()) };
            starting.push(Starting {
                instance: Arc::clone(instance),
                at_once: fresh.contains(id),
                stop: task.stop.clone(),
                nudge: Arc::clone(&task.nudge),
            });
            running.insert(*id, task);
        }
        self.metrics.instances_owned.set(running.len() as i64);
        starting
    }

    /// Starts a task for each of `starting`, with what is recorded for it read in bulk first
    /// (a start or a takeover of thousands of instances is a few queries, not one per task; a
    /// task whose read failed reads its own).
    async fn start(self: &Arc<Self>, starting: Vec<Starting>, tasks: &mut JoinSet<()>) {
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
                let (this, s) = (Arc::clone(self), s.clone());
                tasks.spawn(async move { this.probe_loop(s, known).await });
            }
        }
    }

    async fn probe_loop(self: Arc<Self>, starting: Starting, known: Option<Recorded>) {
        let Starting { instance, at_once, stop, nudge } = starting;
        let labels = instance_labels(&instance);
        // The status as recorded (by whoever owned it before), so a new owner does not
        // re-announce it: read for it when it started, or here when that read failed.
        let recorded = match known {
            Some(known) => known,
            None => match Box::pin(self.read_recorded(&instance, &stop)).await {
                Some(recorded) => recorded,
                None => return,
            },
        };
        let Recorded { status: stored, certificate: presented, verdict } = recorded;
        // What is recorded (and shown); the judge sees only up, unready and down, and the
        // detectors keep a recorded verdict until their windows are full.
        let mut published = stored;
        let mut judge = Judge::new(judged(stored), self.config.failure_threshold, self.config.success_threshold);
        let mut gray = Gray::new();
        gray.adopt(verdict);
        // While this replica owns the instance it exports its status; the series goes with it.
        let _exported = Exported { metrics: &self.metrics, peers: &self.peers, instance: &instance };
        let mut series = self.metrics.instance_series(&labels);
        if let Some(p) = &presented {
            self.metrics.certificate_expiry.get_or_create(&certificate_labels(&instance)).set(p.expires_at);
        }
        let mut probing = Probing {
            address: Address::parse(&instance.url, instance.scheme),
            tls: instance.scheme.is_tls().then(|| {
                let alpn: &[u8] = if instance.scheme == Scheme::Grpcs { b"h2" } else { b"http/1.1" };
                let client = TlsClient::new(instance.tls.as_ref(), alpn, &self.config.tls)?;
                client.remember(presented.clone());
                Ok(client)
            }),
            presented,
        };
        // The group's view is refreshed at most twice per interval.
        let peer_view_age = instance.interval / 2;
        // A new instance is probed at once; otherwise first probes spread over one interval.
        let spread = if at_once { Duration::from_millis(50) } else { instance.interval };
        let mut wait = spread.mul_f64(fastrand::f64());
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = nudge.notified() => {}
                () = stop.cancelled() => return,
            }
            wait = instance.interval.mul_f64(0.9 + fastrand::f64() * 0.2);
            let Ok(permit) = self.permits.acquire().await else { return };
            let started = Instant::now();
            let span = probe_span(&instance);
            // The futures a probe and a recording build are boxed: they exist only while they
            // run, so an idle task (nearly all of them, nearly always) holds only its state,
            // not room for the largest of them (about 18 KB unboxed; see docs/benchmarks.md).
            let (observed, error, presented) = Box::pin(self.probe(&instance, &probing)).instrument(span.clone()).await;
            let took = started.elapsed();
            drop(permit);
            span.record("caracal.probe.result", observed.as_str());
            if let Some(why) = &error {
                telemetry::record_client_error(&span, why);
            }
            if let Some(presented) = presented {
                self.metrics.certificate_expiry.get_or_create(&certificate_labels(&instance)).set(presented.expires_at);
                if probing.presented.as_ref().is_none_or(|p| p.sha256 != presented.sha256) {
                    let Ok(_recording) = self.recording.acquire().await else { return };
                    match Box::pin(self.record_certificate(&instance, probing.presented.as_ref(), &presented))
                        .instrument(span.clone())
                        .await
                    {
                        Ok(()) => probing.presented = Some(presented),
                        Err(e) => {
                            tracing::warn!(error = %e, instance = %instance.url, "recording a new certificate failed; will retry")
                        }
                    }
                }
            }
            self.metrics.probe_duration.observe(took.as_secs_f64());
            self.metrics.probes.get_or_create(&ResultLabels { result: observed.as_str() }).inc();
            let changed = judge.observe(observed).is_some();
            let up = judge.status() == Status::Up;
            let sample = Sample {
                latency: (observed == Status::Up).then_some(took),
                failed: observed != Status::Up,
                up,
                changed,
            };
            let peers = self.peer_view(&instance, &gray, up, peer_view_age);
            if let Some(Change::Entered(Verdict { reason, detail })) =
                gray.observe(&sample, &instance.degraded, peers.as_ref())
            {
                tracing::debug!(target = %instance.target, instance = %instance.url, reason = reason.as_str(), detail, "gray failure detected");
            }
            let now = match (judge.status(), gray.verdict()) {
                (Status::Up, Some(_)) => Status::Degraded,
                (status, _) => status,
            };
            self.metrics.export_instance(&labels, &mut series, now, [gray.recent_us(), gray.baseline_us()]);
            if now == published {
                continue;
            }
            let verdict = if now == Status::Degraded { gray.verdict() } else { None };
            let Ok(_recording) = self.recording.acquire().await else { return };
            match Box::pin(self.record(&instance, published, now, error.as_deref(), verdict))
                .instrument(span.clone())
                .await
            {
                Ok(true) => {
                    self.metrics.transitions.inc();
                    tracing::info!(target = %instance.target, instance = %instance.url, from = published.as_str(), to = now.as_str(),
                        reason = verdict.map(|v| v.detail.as_str()).or(error.as_deref()), "status changed");
                    published = now;
                }
                Ok(false) => {
                    // Another replica recorded a change first (an ownership hand-over): follow
                    // what it recorded.
                    if let Ok(recorded) = Box::pin(store_status::recorded(&self.pool, instance.id)).await {
                        published = recorded.status;
                        judge.adopt(judged(recorded.status));
                        gray.adopt(recorded.verdict);
                    }
                }
                Err(e) => {
                    // The next probe tries again while the change still holds.
                    tracing::warn!(error = %e, instance = %instance.url, "recording a transition failed; will retry");
                }
            }
        }
    }

    /// Reads what is recorded for `instance`, retrying every second until it can, or `None`
    /// once `stop` is cancelled.
    async fn read_recorded(&self, instance: &Instance, stop: &CancellationToken) -> Option<Recorded> {
        loop {
            match store_status::recorded(&self.pool, instance.id).await {
                Ok(recorded) => return Some(recorded),
                Err(e) => {
                    tracing::warn!(error = %e, instance = %instance.url, "reading the recorded status failed; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// Reports the instance to its target's group and returns the group's view, while the
    /// outlier detector judges it and it is up with a full recent window; otherwise takes it
    /// out of the group.
    fn peer_view(
        &self,
        instance: &Instance,
        gray: &Gray,
        up: bool,
        max_age: Duration,
    ) -> Option<crate::gray::PeerView> {
        let window = u32::try_from(instance.degraded.error_window).unwrap_or(20);
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
        let Some(address) = &probing.address else {
            return (Status::Down, Some("the instance URL is not usable".into()), None);
        };
        // An address literal is judged here (names are judged as they resolve): a denied one
        // is never contacted.
        if let Err(refused) = self.outbound.check_host(address.connect_host()) {
            return (Status::Down, Some(refused.word().into()), None);
        }
        let tls = match &probing.tls {
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
                let health = self.get(instance, &instance.health_path).await;
                Seen { ready: health.clone(), health, presented: None }
            }
            (Scheme::Http, _) => {
                let (health, ready) =
                    tokio::join!(self.get(instance, &instance.health_path), self.get(instance, &instance.ready_path));
                Seen { health, ready, presented: None }
            }
            (Scheme::Https, Some(client)) => {
                let paths = [instance.health_path.as_str(), instance.ready_path.as_str()];
                protocols::https(&self.outbound, address, client, paths, instance.timeout, &self.user_agent).await
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

    /// One GET of `path` on the instance: `Ok` for a 2xx, else a short reason (no body, no
    /// headers: it ends up in events and the public history).
    async fn get(&self, instance: &Instance, path: &str) -> Result<(), String> {
        let url = format!("{}{path}", instance.url.trim_end_matches('/'));
        let span = telemetry::http_client_span("GET", &url);
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_span_context(&span, &mut headers);
        let request = self
            .client
            .get(url)
            .timeout(instance.timeout)
            .header(reqwest::header::USER_AGENT, &self.user_agent)
            .headers(headers);
        match request.send().instrument(span.clone()).await {
            Ok(r) => {
                let status = r.status();
                telemetry::record_client_status(&span, status.as_u16());
                // Reading a small body lets the connection carry the next probe; a larger one
                // is cut at the cap and its connection closed (the status is the verdict).
                protocols::drain_capped(r).await;
                if status.is_success() { Ok(()) } else { Err(format!("{path} answered {}", status.as_u16())) }
            }
            Err(e) if e.is_timeout() => {
                telemetry::record_client_error(&span, "timeout");
                Err(format!("{path} timed out"))
            }
            Err(e) if caracal_core::outbound::refused_in(&e).is_some() => {
                let word = caracal_core::outbound::refused_in(&e).map_or("address_denied", |r| r.word());
                telemetry::record_client_error(&span, word);
                Err(word.to_string())
            }
            Err(e) if e.is_connect() => {
                telemetry::record_client_error(&span, "connection_refused");
                Err(format!("{path}: connection refused or unreachable"))
            }
            Err(_) => {
                telemetry::record_client_error(&span, "request_failed");
                Err(format!("{path}: request failed"))
            }
        }
    }

    /// Records a certificate the instance presents for the first time, or a new one (a
    /// renewal); nothing is written while the certificate stays the same.
    async fn record_certificate(
        &self,
        instance: &Instance,
        previous: Option<&Presented>,
        presented: &Presented,
    ) -> Result<(), caracal_store::Error> {
        let at = (instance.id, instance.target.as_str(), instance.url.as_str());
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
    ) -> Result<bool, caracal_store::Error> {
        let change = StoreChange {
            instance_id: instance.id,
            target: &instance.target,
            instance: &instance.url,
            from,
            to,
            error,
            verdict,
        };
        store_status::record(&self.pool, &change).await
    }
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
