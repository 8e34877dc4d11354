//! The live feed: one loop per api process reads the store (and the platform's ladders),
//! works out what changed, renders the changed pieces once per view, and hands them to every
//! open page over server-sent events.
//!
//! The store is polled rather than the `caracal.events` stream followed: what the page shows
//! is the store's current state, which a poll reads whole whatever Redis has lost, and a
//! poll costs one index lookup (`max(outbox.id)`: every change the page shows writes an
//! outbox row) every [`TICK`]. Event ids are `<process>-<sequence>`; a reconnect within the
//! same process resumes from its last id out of the recent changes kept here, and any other
//! reconnect starts over with the whole `<main>`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};
use tokio_util::sync::CancellationToken;

use super::fleet::{self, Fleet};
use super::ladders::{self, ServiceLadder};
use super::render::{self, Page, Variants, View};

/// How often the store is asked whether anything changed.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// The fleet is read whole at least this often (10 min), whatever the outbox says: the safety
/// net only. Every change the page shows writes an outbox row, so a quiet fleet costs one
/// `max(id)` a tick, whatever its size.
const FULL_EVERY: u32 = 1200;
/// The platform's ladders are read every this many ticks (2 s).
const LADDERS_EVERY: u32 = 4;
/// Changes kept for reconnects (a card is a few KiB per view: this bounds them to a few MiB).
const KEPT: usize = 256;
/// More changed targets than this in one read are published as one `reset` (every page starts
/// over from the current state) instead of a card each: a page could not be sent more than
/// [`KEPT`] changes anyway, and rendering a card per view for each of 50,000 targets that
/// changed at once (a fleet's first probes, a network blip) held hundreds of MB at a time.
const BULK: usize = KEPT / 2;
/// A live page hears something this often, so it can tell a silent feed from a lost one.
pub(crate) const PING: Duration = Duration::from_secs(5);
/// A connection is closed after this long; the browser reconnects at once (resuming), and its
/// credential is judged afresh, so an expired or revoked token does not keep seeing errors.
const MAX_CONNECTION: Duration = Duration::from_secs(600);
/// A signed-out page's stream is closed sooner (it reconnects, resuming): an anonymous client
/// cannot hold one for long.
const MAX_PUBLIC_CONNECTION: Duration = Duration::from_secs(120);
/// Signed-out streams open at once by default (`api.page.public_streams`); beyond, a page is
/// told to retry (`503`, `Retry-After`).
pub(crate) const MAX_PUBLIC_STREAMS: usize = 256;

/// Why no stream was opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The page has not read the store yet.
    Starting,
    /// [`MAX_PUBLIC_STREAMS`] signed-out streams are open.
    Busy,
}

/// What the page shows now, and the feed position it corresponds to.
#[derive(Debug)]
pub(crate) struct Current {
    pub fleet: Arc<Fleet>,
    pub ladders: Vec<ServiceLadder>,
    /// The active alerts' sentences (from `api.alertmanager_url`), shown with the platform.
    pub alerts: Vec<String>,
    pub seq: u64,
}

/// One change, rendered for every view.
#[derive(Debug)]
pub(crate) struct Change {
    seq: u64,
    /// `target`, `removed`, `platform`, `summary` or `reset` (start over).
    kind: &'static str,
    /// The event's JSON data, per view.
    data: Variants,
}

/// The feed one api process serves.
#[derive(Debug)]
pub(crate) struct Feed {
    /// Tells this process's event ids from another's (or a restarted one's).
    boot: String,
    current: ArcSwapOption<Current>,
    /// Held while publishing and subscribing, so a subscriber misses nothing in between.
    recent: Mutex<VecDeque<Arc<Change>>>,
    sender: broadcast::Sender<Arc<Change>>,
    /// Open event streams (`caracal_api_live_pages`).
    open: prometheus_client::metrics::gauge::Gauge,
    /// Signed-out streams that may still open.
    public: Arc<tokio::sync::Semaphore>,
}

/// Counts one open event stream for as long as it lives.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a new subscriber starts.
pub(crate) enum Start {
    /// The changes after its last id, in order.
    Resume(Vec<Arc<Change>>),
    /// The whole page as of now: its id was unknown, too old or another process's.
    Over(Arc<Current>),
}

impl Feed {
    /// An empty feed counting its open streams in `open`, with room for `public` signed-out
    /// ones.
    pub(crate) fn new(open: prometheus_client::metrics::gauge::Gauge, public: usize) -> Self {
        Self {
            boot: format!("{:08x}", fastrand::u32(..)),
            current: ArcSwapOption::empty(),
            recent: Mutex::new(VecDeque::new()),
            sender: broadcast::channel(KEPT).0,
            open,
            public: Arc::new(tokio::sync::Semaphore::new(public)),
        }
    }

    /// What the page shows now; `None` before the first read of the store.
    pub(crate) fn current(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// The event id of position `seq`.
    pub(crate) fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.boot)
    }

    /// Publishes `changes` together with the state they lead to.
    fn publish(
        &self,
        fleet: Arc<Fleet>,
        ladders: Vec<ServiceLadder>,
        alerts: Vec<String>,
        changes: Vec<(&'static str, Variants)>,
    ) {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seq = self.current.load().as_ref().map_or(0, |c| c.seq);
        let mut published = Vec::with_capacity(changes.len());
        for (kind, data) in changes {
            seq += 1;
            let change = Arc::new(Change { seq, kind, data });
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&change));
            published.push(change);
        }
        self.current.store(Some(Arc::new(Current { fleet, ladders, alerts, seq })));
        for change in published {
            // No receiver is fine: nobody has the page open.
            let _ = self.sender.send(change);
        }
    }

    /// Subscribes a page whose last event id was `last`; `None` before the first read.
    pub(crate) fn subscribe(&self, last: Option<&str>) -> Option<(Start, broadcast::Receiver<Arc<Change>>)> {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.current()?;
        let receiver = self.sender.subscribe();
        let seq = last.and_then(|id| id.strip_prefix(&self.boot)?.strip_prefix('-')?.parse::<u64>().ok());
        let oldest = recent.front().map_or(current.seq + 1, |c| c.seq);
        let start = match seq {
            // Everything after `seq` is still kept (or nothing happened since).
            Some(seq) if seq <= current.seq && seq + 1 >= oldest => {
                Start::Resume(recent.iter().filter(|c| c.seq > seq).cloned().collect())
            }
            _ => Start::Over(current),
        };
        Some((start, receiver))
    }
}

/// Keeps the feed current until `stop`: asks the store every [`TICK`] whether anything
/// changed and reads the fleet when it did. The ladders come from their own loop, so a
/// platform service that hangs never delays a target's news.
pub(crate) async fn run(
    feed: Arc<Feed>,
    pool: sqlx::PgPool,
    platform: std::collections::BTreeMap<String, Vec<String>>,
    monitoring: Arc<crate::monitoring::MonitoringView>,
    stop: CancellationToken,
) {
    let mut alerts: Vec<String> = Vec::new();
    let (ladders_tx, mut ladders_rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(read_ladders(platform, ladders_tx, stop.clone()));
    // Shared with what the page shows, not copied: a fleet of 1,000 targets is megabytes.
    let mut fleet: Option<Arc<Fleet>> = None;
    let mut ladders: Vec<ServiceLadder> = Vec::new();
    let mut last_mark: Option<i64> = None;
    // Outbox ids commit out of order: after a move, read once more on the next tick.
    let mut settle = false;
    let mut tick: u32 = 0;
    loop {
        let mut changes = Vec::new();
        let mut new_fleet = None;
        let mark = caracal_store::outbox::last_id(&pool).await;
        let moved = match &mark {
            Ok(mark) => last_mark != Some(*mark),
            Err(_) => false,
        };
        if fleet.is_none() || moved || settle || tick.is_multiple_of(FULL_EVERY) {
            // Room for the last read's count and a little growth, so the list is not regrown.
            let hint = fleet.as_ref().map_or(0, |f| f.targets.len() + f.targets.len() / 16 + 16);
            match fleet::load(&pool, hint).await {
                Ok(loaded) => {
                    if let Ok(mark) = mark {
                        last_mark = Some(mark);
                    }
                    changes.extend(fleet_changes(fleet.as_deref(), &loaded));
                    new_fleet = Some(Arc::new(loaded));
                }
                Err(e) => tracing::debug!(error = %e, "reading the fleet for the status page failed; keeping the last"),
            }
        }
        settle = moved;
        let ladders_changed = ladders_rx.has_changed().unwrap_or(false);
        if ladders_changed {
            ladders = ladders_rx.borrow_and_update().clone();
        }
        // The alerts come from the monitoring worker's snapshot: reading it costs nothing.
        let now_alerts = monitoring.sentences();
        let alerts_changed = now_alerts != alerts;
        alerts = now_alerts;
        if ladders_changed || alerts_changed {
            let data = render::variants(|view| {
                let html = render::platform(&ladders, &alerts, view).into_string();
                serde_json::json!({ "html": html }).to_string()
            });
            changes.push(("platform", data));
        }
        let reloaded = new_fleet.is_some();
        if let Some(loaded) = new_fleet {
            // Nothing the page shows changed: keep the fleet it shows, so one copy is held.
            let shown = feed.current().filter(|_| changes.is_empty()).map(|c| Arc::clone(&c.fleet));
            fleet = Some(shown.unwrap_or(loaded));
        }
        if let Some(fleet) = &fleet
            && (!changes.is_empty() || feed.current().is_none())
        {
            feed.publish(Arc::clone(fleet), ladders.clone(), alerts.clone(), changes);
        }
        if reloaded {
            // Reading the fleet allocated it anew and freed the last copy: without this, the
            // RSS of a 50,000-target page stays at the reads' peak (docs/benchmarks.md).
            caracal_core::memory::release_freed();
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Reads the platform's ladders every [`LADDERS_EVERY`] ticks, passing them on when they
/// changed, until `stop`.
async fn read_ladders(
    platform: std::collections::BTreeMap<String, Vec<String>>,
    sender: tokio::sync::watch::Sender<Vec<ServiceLadder>>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("caracal-api/", env!("CARGO_PKG_VERSION"), " (status page)"))
        .build()
        .unwrap_or_default();
    loop {
        let read = ladders::read(&client, &platform).await;
        sender.send_if_modified(|current| {
            let changed = *current != read;
            if changed {
                *current = read;
            }
            changed
        });
        tokio::select! {
            () = tokio::time::sleep(TICK * LADDERS_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The changes from `old` to `new`: each new or changed target's card, each removed name,
/// and the summary line when anything changed; one `reset` when more than [`BULK`] targets
/// changed.
fn fleet_changes(old: Option<&Fleet>, new: &Fleet) -> Vec<(&'static str, Variants)> {
    let Some(old) = old else { return Vec::new() };
    let before: HashMap<&str, &fleet::TargetView> = old.targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let changed: Vec<&fleet::TargetView> =
        new.targets.iter().filter(|t| before.get(t.name.as_str()) != Some(t)).collect();
    let after: std::collections::HashSet<&str> = new.targets.iter().map(|t| t.name.as_str()).collect();
    let removed: Vec<&str> = before.keys().copied().filter(|n| !after.contains(n)).collect();
    if changed.len() + removed.len() > BULK {
        // Rendered for each page when it is sent (`over`), from the state published with it.
        return vec![(RESET, render::same(String::new()))];
    }
    let mut changes = Vec::new();
    for target in changed {
        let data = render::variants(|view| {
            let card = render::card(target, new.as_of, view).into_string();
            serde_json::json!({ "name": target.name, "html": card }).to_string()
        });
        changes.push(("target", data));
    }
    for name in removed {
        changes.push(("removed", render::same(serde_json::json!({ "name": name }).to_string())));
    }
    if !changes.is_empty() {
        let data = serde_json::json!({
            "html": render::summary(new).into_string(),
            "as_of": render::rfc3339(new.as_of),
        });
        changes.push(("summary", render::same(data.to_string())));
    }
    changes
}

/// The kind of a change that makes every page start over (see [`BULK`]).
const RESET: &str = "reset";

/// The event a page with `view` is sent for `change`: a `reset` is the whole current state.
fn event(feed: &Feed, change: &Change, view: View, version: &str) -> Option<Event> {
    if change.kind == RESET {
        return feed.current().map(|current| over(feed, &current, view, version));
    }
    let index = View::ALL.iter().position(|v| *v == view).unwrap_or(0);
    Some(Event::default().id(feed.id(change.seq)).event(change.kind).data(&change.data[index]))
}

/// The whole `<main>` and summary, for a page that must start over.
fn over(feed: &Feed, current: &Current, view: View, version: &str) -> Event {
    let id = feed.id(current.seq);
    let page = Page {
        fleet: &current.fleet,
        ladders: &current.ladders,
        alerts: &current.alerts,
        event_id: &id,
        version,
        signed_in: false,
    };
    let data = serde_json::json!({
        "html": render::main_content(&page, view, &render::Listing::default()).into_string(),
        "summary": render::summary(&current.fleet).into_string(),
        "as_of": render::rfc3339(current.fleet.as_of),
    });
    Event::default().id(id).event("reset").data(data.to_string())
}

/// The SSE response for a page with `view` whose last event id was `last`. Ends when the
/// process starts draining, or after [`MAX_CONNECTION`] ([`MAX_PUBLIC_CONNECTION`] signed
/// out).
///
/// # Errors
/// [`Refused`]: before the first read of the store, or with every signed-out stream taken.
pub(crate) fn stream(
    feed: Arc<Feed>,
    view: View,
    last: Option<String>,
    draining: impl Future<Output = ()> + Send + 'static,
    version: &'static str,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, Refused> {
    let public = if view == View::Public {
        Some(Arc::clone(&feed.public).try_acquire_owned().map_err(|_| Refused::Busy)?)
    } else {
        None
    };
    let (start, receiver) = feed.subscribe(last.as_deref()).ok_or(Refused::Starting)?;
    let first: Vec<Event> = match start {
        Start::Resume(changes) => changes.iter().filter_map(|c| event(&feed, c, view, version)).collect(),
        Start::Over(current) => vec![over(&feed, &current, view, version)],
    };
    let live_feed = Arc::clone(&feed);
    let open = Open::new(&feed.open);
    let live = BroadcastStream::new(receiver).filter_map(move |item| {
        // Live as long as the stream: dropped when the page goes away.
        let (_open, _public) = (&open, &public);
        let event = match item {
            Ok(change) => event(&live_feed, &change, view, version),
            // Too slow to keep up: start over from the current state.
            Err(BroadcastStreamRecvError::Lagged(_)) => {
                live_feed.current().map(|c| over(&live_feed, &c, view, version))
            }
        };
        std::future::ready(event)
    });
    let mut every = tokio::time::interval(PING);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pings = IntervalStream::new(every).map(|_| Event::default().event("ping").data(""));
    let end = async move {
        tokio::select! {
            () = draining => {}
            () = tokio::time::sleep(if view == View::Public { MAX_PUBLIC_CONNECTION } else { MAX_CONNECTION }) => {}
        }
    };
    let stream = futures_util::stream::iter(first)
        .chain(futures_util::stream::select(live, pings))
        .take_until(Box::pin(end))
        .map(Ok);
    // Comments keep idle proxies from closing the connection between pings.
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet_of(names: &[&str]) -> Fleet {
        Fleet {
            targets: names
                .iter()
                .map(|n| fleet::TargetView {
                    name: (*n).into(),
                    platform: false,
                    paused_since: None,
                    created: 0.0,
                    instances: Vec::new(),
                    insecure: false,
                    transitions: Vec::new(),
                })
                .collect(),
            as_of: 0.0,
            oldest: None,
        }
    }

    #[test]
    fn a_reconnect_resumes_within_its_process_and_starts_over_otherwise() {
        let feed = Feed::new(Default::default(), MAX_PUBLIC_STREAMS);
        assert!(feed.subscribe(None).is_none(), "nothing to serve before the first read");
        feed.publish(Arc::new(fleet_of(&[])), Vec::new(), Vec::new(), Vec::new());
        let first = feed.id(0);
        let changes = fleet_changes(Some(&fleet_of(&[])), &fleet_of(&["a"]));
        assert_eq!(changes.iter().map(|c| c.0).collect::<Vec<_>>(), ["target", "summary"]);
        feed.publish(Arc::new(fleet_of(&["a"])), Vec::new(), Vec::new(), changes);

        let Some((Start::Resume(missed), _)) = feed.subscribe(Some(&first)) else { panic!("resume") };
        assert_eq!(missed.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        let Some((Start::Resume(missed), _)) = feed.subscribe(Some(&feed.id(2))) else { panic!("resume") };
        assert!(missed.is_empty());
        for stranger in ["00000000-1", "garbage", "", &feed.id(99)] {
            assert!(matches!(feed.subscribe(Some(stranger)), Some((Start::Over(_), _))), "{stranger}");
        }
        let removed = fleet_changes(Some(&fleet_of(&["a", "b"])), &fleet_of(&["b"]));
        assert_eq!(removed.iter().map(|c| c.0).collect::<Vec<_>>(), ["removed", "summary"]);
    }

    /// A fleet's first probes change every target at once: one `reset`, sent to each page as
    /// the whole current state, not a card per target held for every view.
    #[test]
    fn a_bulk_change_is_one_reset_that_pages_receive_as_the_whole_state() {
        let names: Vec<String> = (0..=BULK).map(|i| format!("t{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (few, many) = (fleet_of(&names[..BULK]), fleet_of(&names));
        let changes = fleet_changes(Some(&fleet_of(&[])), &few);
        assert_eq!(changes.len(), BULK + 1, "up to {BULK} changed targets are sent card by card");
        let changes = fleet_changes(Some(&fleet_of(&[])), &many);
        assert_eq!(changes.iter().map(|c| c.0).collect::<Vec<_>>(), [RESET]);
        let changes = fleet_changes(Some(&many), &fleet_of(&[]));
        assert_eq!(changes.iter().map(|c| c.0).collect::<Vec<_>>(), [RESET], "and so are bulk removals");

        let feed = Feed::new(Default::default(), MAX_PUBLIC_STREAMS);
        feed.publish(Arc::new(fleet_of(&[])), Vec::new(), Vec::new(), Vec::new());
        let first = feed.id(0);
        feed.publish(Arc::new(many), Vec::new(), Vec::new(), changes);
        let Some((Start::Resume(missed), _)) = feed.subscribe(Some(&first)) else { panic!("resume") };
        assert_eq!(missed.len(), 1);
        let sent = event(&feed, &missed[0], View::Public, "test").expect("an event");
        let text = format!("{sent:?}");
        let whole = text.contains("event: reset") && text.contains("129 targets");
        assert!(whole, "the whole state, not {}", &text[..text.len().min(300)]);
    }
}
