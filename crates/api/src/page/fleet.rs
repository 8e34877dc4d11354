//! The fleet as the status page shows it: every target with its instances, their current
//! status and the last 24 hours of transitions, read from the store in two queries.

use caracal_store::status::{FleetClock, FleetItem, Status};

/// The timeline's window, in seconds: what the store reads.
pub(crate) const WINDOW_SECS: f64 = caracal_store::status::FLEET_WINDOW_SECS;
/// Transitions kept per target for its timeline (a flapping target keeps its latest).
const MAX_POINTS: usize = 500;

/// Every target, by name, as of one read of the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fleet {
    /// Targets in name order.
    pub targets: Vec<TargetView>,
    /// The store's clock at the read (Unix seconds): the timelines' right edge.
    pub as_of: f64,
    /// When the oldest transition the store still keeps occurred (Unix seconds): before it,
    /// history was purged (`store.retention.history`) or never recorded.
    pub oldest: Option<f64>,
}

/// One target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TargetView {
    pub name: String,
    /// One of the platform's own services (label `caracal=platform`).
    pub platform: bool,
    /// Since when probing is paused (Unix seconds).
    pub paused_since: Option<f64>,
    /// When it was registered (Unix seconds): its timeline starts no earlier.
    pub created: f64,
    pub instances: Vec<InstanceView>,
    /// Whether its TLS certificates go unverified (`tls.insecure_skip_verify`).
    pub insecure: bool,
    /// Its transitions of the last 24 hours, oldest first.
    pub transitions: Vec<Point>,
}

/// One instance's current status, as the store reads it for the fleet (its `last_error` is
/// shown only to a caller who may see errors; its verdict's sentence is ours, from numbers
/// only: nothing the instance answered).
pub(crate) type InstanceView = caracal_store::status::FleetInstance;

/// One recorded transition. Small on purpose: a fleet holds tens of thousands, read again on
/// every change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    /// The instance's index in its target's `instances`.
    pub instance: usize,
    pub from: Status,
    pub to: Status,
    /// Unix seconds.
    pub at: f64,
}

impl TargetView {
    /// The target's overall status: the worst of its instances (`paused` while paused).
    pub(crate) fn overall(&self) -> &'static str {
        if self.paused_since.is_some() {
            return "paused";
        }
        let has = |s: Status| self.instances.iter().any(|i| i.status == s);
        if self.instances.is_empty() {
            "unknown"
        } else if self.instances.iter().all(|i| i.status == Status::Down) {
            "down"
        } else if has(Status::Down) || has(Status::Unready) || has(Status::Degraded) {
            "degraded"
        } else if has(Status::Unknown) {
            "unknown"
        } else {
            "up"
        }
    }
}

/// Reads the whole fleet from one snapshot of the store: targets, instances and statuses, and
/// the last 24 hours of transitions, built as the rows arrive. `hint` is how many targets to
/// expect (the last read's count), so the list is allocated once rather than grown.
pub(crate) async fn load(pool: &sqlx::PgPool, hint: usize) -> Result<Fleet, caracal_store::Error> {
    let mut builder = Builder { targets: Vec::with_capacity(hint) };
    let FleetClock { as_of, oldest } = caracal_store::status::fleet(pool, |item| builder.add(item)).await?;
    let mut targets = builder.targets;
    for target in &mut targets {
        let excess = target.transitions.len().saturating_sub(MAX_POINTS);
        target.transitions.drain(..excess);
        // A vector's first push makes room for four: most targets have one instance and a
        // transition or two, and the fleet is held until the next read.
        target.instances.shrink_to_fit();
        target.transitions.shrink_to_fit();
    }
    Ok(Fleet { targets, as_of, oldest })
}

/// The fleet as its rows arrive: targets in name order (bytes, as the store sorts them), each
/// transition hung on its instance.
struct Builder {
    targets: Vec<TargetView>,
}

impl Builder {
    fn add(&mut self, item: FleetItem) {
        match item {
            FleetItem::Row(row) => {
                if self.targets.last().is_none_or(|t| t.name != row.target) {
                    self.targets.push(TargetView {
                        name: row.target,
                        platform: row.platform,
                        paused_since: row.paused_since,
                        created: row.created,
                        instances: Vec::new(),
                        insecure: row.insecure,
                        transitions: Vec::new(),
                    });
                }
                if let (Some(instance), Some(target)) = (row.instance, self.targets.last_mut()) {
                    target.instances.push(instance);
                }
            }
            FleetItem::Point(point) => {
                // A deleted target's (or instance's) history stays in the store but not on
                // the page.
                let Ok(i) = self.targets.binary_search_by(|t| t.name.as_str().cmp(&point.target)) else { return };
                let target = &mut self.targets[i];
                let Some(instance) = target.instances.iter().position(|x| x.url == point.instance) else { return };
                // A flapping target keeps its latest: trimmed as it goes, so it never holds
                // thousands.
                if target.transitions.len() >= 2 * MAX_POINTS {
                    target.transitions.drain(..MAX_POINTS);
                }
                target.transitions.push(Point { instance, from: point.from, to: point.to, at: point.at });
            }
        }
    }
}

/// A stretch of time one instance spent in one status, within the window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    pub status: Status,
    pub start: f64,
    pub end: f64,
}

/// What a target's last 24 hours come to, for reading at a glance.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Summary {
    /// Times an instance went from up to down or unready.
    pub outages: usize,
    /// Seconds instances spent down or unready (summed over instances).
    pub downtime: f64,
    /// Transitions of any kind: a high count is flapping.
    pub changes: usize,
    /// The latest outage: its start, and its end unless it is still going on.
    pub last_outage: Option<(f64, Option<f64>)>,
}

/// Each instance's segments over `[as_of - 24 h, as_of]` (from its registration, if later),
/// in the target's instance order.
pub(crate) fn segments(target: &TargetView, as_of: f64) -> Vec<(String, Vec<Segment>)> {
    let start = (as_of - WINDOW_SECS).max(target.created.min(as_of));
    target
        .instances
        .iter()
        .enumerate()
        .map(|(n, instance)| {
            let points: Vec<&Point> = target.transitions.iter().filter(|p| p.instance == n).collect();
            // Before its first transition in the window, an instance was in that transition's
            // `from` status; with none, in its current one.
            let mut status = points.first().map_or(instance.status, |p| p.from);
            let mut at = start;
            let mut out = Vec::new();
            for p in points {
                let t = p.at.clamp(start, as_of);
                if t > at {
                    out.push(Segment { status, start: at, end: t });
                }
                status = p.to;
                at = t;
            }
            if as_of > at {
                out.push(Segment { status, start: at, end: as_of });
            }
            (instance.url.clone(), out)
        })
        .collect()
}

/// The target's 24 hours summed up.
pub(crate) fn summary(target: &TargetView, as_of: f64) -> Summary {
    let mut summary = Summary { changes: target.transitions.len(), ..Summary::default() };
    summary.outages = target.transitions.iter().filter(|p| p.from == Status::Up && p.to.is_outage()).count();
    for (_, segments) in segments(target, as_of) {
        for s in segments.iter().filter(|s| s.status.is_outage()) {
            summary.downtime += s.end - s.start;
            // An outage reaching the window's right edge is still going on: no end.
            let end = (s.end < as_of).then_some(s.end);
            if summary.last_outage.is_none_or(|(start, _)| s.start >= start) {
                summary.last_outage = Some((s.start, end));
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(status: &str, points: &[(&str, &str, f64)]) -> TargetView {
        let status = Status::from_word(status);
        TargetView {
            name: "shop".into(),
            platform: false,
            paused_since: None,
            created: 0.0,
            instances: vec![InstanceView {
                url: "http://a".into(),
                status,
                since: None,
                last_error: None,
                certificate_expires: None,
                degraded: None,
            }],
            insecure: false,
            transitions: points
                .iter()
                .map(|(from, to, at)| Point {
                    instance: 0,
                    from: Status::from_word(from),
                    to: Status::from_word(to),
                    at: *at,
                })
                .collect(),
        }
    }

    #[test]
    fn a_quiet_instance_is_one_segment_in_its_status() {
        let t = target("up", &[]);
        let segs = segments(&t, WINDOW_SECS);
        assert_eq!(segs[0].1, vec![Segment { status: Status::Up, start: 0.0, end: WINDOW_SECS }]);
        assert_eq!(summary(&t, WINDOW_SECS), Summary::default());
    }

    #[test]
    fn an_outage_is_counted_timed_and_located() {
        let now = WINDOW_SECS;
        let t = target(
            "up",
            &[("up", "down", 1000.0), ("down", "up", 1600.0), ("up", "down", 5000.0), ("down", "up", 5060.0)],
        );
        let s = summary(&t, now);
        assert_eq!(s.outages, 2);
        assert_eq!(s.changes, 4);
        assert!((s.downtime - 660.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.last_outage, Some((5000.0, Some(5060.0))));
        let segs = &segments(&t, now)[0].1;
        assert_eq!(segs.len(), 5);
        assert_eq!(segs[1], Segment { status: Status::Down, start: 1000.0, end: 1600.0 });
    }

    #[test]
    fn an_ongoing_outage_has_no_end_and_the_state_before_the_window_is_kept() {
        let now = WINDOW_SECS + 100.0;
        // Down since before the window, briefly up, down again now.
        let t = target("down", &[("down", "up", 200.0), ("up", "down", 300.0)]);
        let mut young = t.clone();
        young.created = 150.0;
        assert_eq!(segments(&young, now)[0].1[0].start, 150.0, "nothing is drawn before its registration");
        let segs = &segments(&t, now)[0].1;
        assert_eq!(segs[0], Segment { status: Status::Down, start: 100.0, end: 200.0 });
        let s = summary(&t, now);
        assert_eq!(s.last_outage, Some((300.0, None)));
        assert_eq!(s.outages, 1);
    }
}
