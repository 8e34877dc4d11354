//! The status page's HTML: the whole page, and the pieces the live feed swaps in (a target's
//! card, the platform section, the summary line). Written with `maud`, so every value is
//! escaped by construction; no inline script or style (the page's CSP forbids both).

use std::time::{Duration, UNIX_EPOCH};

use caracal_store::status::Status;
use maud::{DOCTYPE, Markup, html};

use super::fleet::{self, Fleet, TargetView, WINDOW_SECS};
use super::ladders::{InstanceLadder, RUNGS, ServiceLadder};

/// What a caller may see and do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum View {
    /// Names and status only (the same rule as `/ready`'s details).
    Public,
    /// Errors too (the admin token or a `targets:read` token; anyone in dev).
    Details,
    /// Errors, and the controls to pause and resume probing (`targets:write`).
    Operator,
}

impl View {
    /// Every view, in the order [`Variants`] holds them.
    pub(crate) const ALL: [View; 3] = [View::Public, View::Details, View::Operator];

    fn details(self) -> bool {
        self != View::Public
    }
}

/// One piece of HTML rendered for each view.
pub(crate) type Variants = [String; 3];

/// Renders `piece` once per view.
pub(crate) fn variants(piece: impl Fn(View) -> String) -> Variants {
    View::ALL.map(piece)
}

/// The same text for every view.
pub(crate) fn same(text: String) -> Variants {
    [text.clone(), text.clone(), text]
}

/// Everything the page needs besides the caller.
pub(crate) struct Page<'a> {
    pub fleet: &'a Fleet,
    pub ladders: &'a [ServiceLadder],
    /// The active alerts' sentences.
    pub alerts: &'a [String],
    /// The live feed's position this page reflects (the script resumes from it).
    pub event_id: &'a str,
    pub version: &'a str,
    /// The caller signed in on this page (shows "sign out" instead of "sign in").
    pub signed_in: bool,
}

/// The whole page.
pub(crate) fn page(page: &Page<'_>, view: View, listing: &Listing) -> Markup {
    let extra = html! {
        script src=(super::asset_path("status.js")) defer {}
        // Without script, the page still refreshes itself.
        noscript { meta http-equiv="refresh" content="30"; }
    };
    let body = html! {
        a.skip href="#main" { "Skip to the status" }
        header.top {
            div.brand {
                h1 { "Caracal status" }
                (summary(page.fleet))
            }
            nav aria-label="Session" {
                @if page.signed_in {
                    form method="post" action="/status/signout" {
                        span.who { (if view == View::Public { "Signed in (no access to errors)" } else { "Signed in" }) }
                        " "
                        button type="submit" { "Sign out" }
                    }
                } @else if view == View::Public {
                    a href="/status/signin" { "Sign in to see errors" }
                }
            }
        }
        div #feed role="status" aria-live="polite" {
            p #feed-lost .banner hidden {
                strong { "Live updates lost." }
                " Reconnecting; what you see may be out of date."
            }
        }
        main #main data-event-id=(page.event_id) {
            (main_content(page, view, listing))
        }
        footer {
            p {
                "Caracal " (page.version) " · as of "
                time #as-of datetime=(rfc3339(page.fleet.as_of)) { (clock(page.fleet.as_of)) }
                " · " a href="/v1/status" { "JSON" }
                noscript { " · This page refreshes every 30 s." }
            }
        }
    };
    document("Caracal status", extra, body)
}

/// Targets on one page: a fleet of 50,000 answers its first page at once (the summary counts
/// them all), and a search by name or the page links reach the rest.
pub(crate) const PAGE_SIZE: usize = 100;
/// Longest search accepted (a target name's length).
const MAX_QUERY: usize = 63;

/// Which targets a page shows: those whose name contains `query` (and, with `degraded`,
/// only those with a degraded instance), page `page` (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listing {
    pub query: String,
    pub page: usize,
    pub degraded: bool,
}

impl Default for Listing {
    fn default() -> Self {
        Self { query: String::new(), page: 1, degraded: false }
    }
}

impl Listing {
    /// From a query string (`q=shop&page=2`); anything unreadable means the first page of all.
    pub(crate) fn from_query(raw: Option<&str>) -> Self {
        let mut listing = Self::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "q" => listing.query = value.trim().to_lowercase().chars().take(MAX_QUERY).collect(),
                "page" => listing.page = value.parse::<usize>().unwrap_or(1).max(1),
                "only" => listing.degraded = value == "degraded",
                _ => {}
            }
        }
        listing
    }

    fn href(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.query.is_empty() {
            query.append_pair("q", &self.query);
        }
        if self.degraded {
            query.append_pair("only", "degraded");
        }
        query.append_pair("page", &page.to_string());
        format!("/status?{}", query.finish())
    }
}

/// `<main>`'s content: the platform, then one page of targets. Sent whole when a live client
/// with every target on its page must start over.
pub(crate) fn main_content(page: &Page<'_>, view: View, listing: &Listing) -> Markup {
    let all = &page.fleet.targets;
    let has_degraded = |t: &TargetView| t.instances.iter().any(|i| i.status == Status::Degraded);
    let matching: Vec<&TargetView> = all
        .iter()
        .filter(|t| listing.query.is_empty() || t.name.contains(&listing.query))
        .filter(|t| !listing.degraded || has_degraded(t))
        .collect();
    let pages = matching.len().div_ceil(PAGE_SIZE).max(1);
    let current = listing.page.min(pages);
    let first = (current - 1) * PAGE_SIZE;
    let shown = &matching[first.min(matching.len())..(first + PAGE_SIZE).min(matching.len())];
    // A page that shows every target takes new ones live; a partial page only updates its own.
    let complete = listing.query.is_empty() && !listing.degraded && all.len() <= PAGE_SIZE;
    html! {
        (platform(page.ladders, page.alerts, view))
        section aria-labelledby="targets-h" {
            h2 #targets-h { "Targets" }
            @if listing.degraded {
                p #degraded-filter {
                    "Showing the " (matching.len()) " targets with a degraded instance. "
                    a href="/status" { "Show every target" }
                }
            }
            @if !complete {
                form.search method="get" action="/status" role="search" {
                    label for="q" { "Find a target by name" }
                    " "
                    input #q type="search" name="q" value=(listing.query) maxlength=(MAX_QUERY);
                    " "
                    button type="submit" { "Search" }
                }
                p #listing {
                    @if shown.is_empty() {
                        "No target's name contains “" (listing.query) "”."
                    } @else {
                        "Targets " (first + 1) "–" (first + shown.len()) " of " (matching.len())
                        @if !listing.query.is_empty() { " whose name contains “" (listing.query) "”" }
                        " (by name)."
                    }
                }
            }
            @if all.is_empty() {
                p #no-targets { "No targets are registered yet." }
            }
            div #targets data-complete=(complete) {
                @for target in shown {
                    (card(target, page.fleet.as_of, view))
                }
            }
            @if pages > 1 {
                nav.pages aria-label="Pages of targets" {
                    @if current > 1 { a href=(listing.href(current - 1)) rel="prev" { "← Previous" } " " }
                    span { "Page " (current) " of " (pages) }
                    @if current < pages { " " a href=(listing.href(current + 1)) rel="next" { "Next →" } }
                }
            }
        }
    }
}

/// The one-line count at the top of the page.
pub(crate) fn summary(fleet: &Fleet) -> Markup {
    let count = |status: &str| fleet.targets.iter().filter(|t| t.overall() == status).count();
    let parts: Vec<String> = ["up", "degraded", "down", "unknown", "paused"]
        .into_iter()
        .map(|s| (s, count(s)))
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let n = fleet.targets.len();
    // Instances live and ready but slow, flaky or flapping, with a filter to their targets.
    let degraded = fleet.targets.iter().flat_map(|t| &t.instances).filter(|i| i.status == Status::Degraded).count();
    html! {
        p #summary {
            (n) (if n == 1 { " target" } else { " targets" })
            @if !parts.is_empty() { ": " (parts.join(", ")) }
            @if degraded > 0 {
                " · "
                a #degraded-filter-link href="/status?only=degraded" {
                    (degraded) (if degraded == 1 { " instance degraded" } else { " instances degraded" })
                }
            }
            // Where the timelines' history starts when it is younger than their 24 hours:
            // older transitions were purged (`store.retention.history`) or never recorded.
            @if let Some(oldest) = fleet.oldest.filter(|o| *o > fleet.as_of - WINDOW_SECS) {
                " · "
                span #horizon title="Transitions before this were purged (store.retention.history) or never recorded" {
                    "history since " (time_el(oldest))
                }
            }
        }
    }
}

/// The platform's own services, each with its ladder, and the alerts Alertmanager has active.
pub(crate) fn platform(ladders: &[ServiceLadder], alerts: &[String], view: View) -> Markup {
    html! {
        section #platform aria-labelledby="platform-h" {
            h2 #platform-h { "Platform" }
            @if !alerts.is_empty() {
                div #alerts role="status" {
                    h3 { "Active alerts" }
                    ul {
                        @for sentence in alerts { li { (sentence) } }
                    }
                }
            }
            @if ladders.is_empty() {
                p { "No platform services are configured ([api.platform])." }
            }
            div.services {
                @for service in ladders {
                    article.service aria-labelledby=(format!("svc-{}", service.name)) {
                        h3 #(format!("svc-{}", service.name)) { (service.name) }
                        @for (i, instance) in service.instances.iter().enumerate() {
                            (ladder(instance, (service.instances.len() > 1).then_some(i), view))
                        }
                    }
                }
            }
        }
    }
}

/// One platform instance's ladder; `index` names it among several (by its URL when signed
/// in, by its number when not: the public page shows no address).
fn ladder(instance: &InstanceLadder, index: Option<usize>, view: View) -> Markup {
    let (label, class) = match instance.status.as_deref() {
        Some("pass") => ("ready", "up"),
        Some("warn") => ("ready, degraded", "unready"),
        Some(_) => ("not ready", "down"),
        None => ("unreachable", "down"),
    };
    let (failing, held) = instance.held_back_by();
    html! {
        div.ladder-box {
            @if let Some(i) = index {
                @if view.details() { p.instance-url { (instance.url) } } @else { p.instance-url { "Instance " (i + 1) } }
            }
            p { (badge(class, label)) }
            @if instance.status.is_some() {
                ol.ladder aria-label="Readiness ladder, bottom rung first" {
                    @for rung in RUNGS {
                        @let status = instance.rung_status(rung);
                        li class=(format!("rung r-{status}")) {
                            span.rung-name { (rung) }
                            " "
                            span.rung-status { (glyph(status)) " " (status) }
                        }
                    }
                }
                @if !held.is_empty() {
                    p.held {
                        (if failing { "Held back by " } else { "Degraded by " })
                        @for (i, name) in held.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (name) }
                        }
                    }
                }
                details {
                    summary { (instance.checks.len()) " checks" }
                    ul.checks {
                        @for check in &instance.checks {
                            li {
                                code { (check.name) } " · " (check.rung) " · " (glyph(&check.status)) " " (check.status)
                                @if !check.required { " (optional)" }
                            }
                        }
                    }
                }
            } @else {
                p.held { "Its /ready could not be read." }
            }
        }
    }
}

/// One target's card: its instances, their status, and its last 24 hours.
pub(crate) fn card(target: &TargetView, as_of: f64, view: View) -> Markup {
    let overall = target.overall();
    let id = format!("t-{}", target.name);
    let heading = format!("h-{}", target.name);
    html! {
        article.target #(id) data-name=(target.name) data-status=(overall) aria-labelledby=(heading) {
            div.target-head {
                h3 #(heading) { (target.name) }
                (badge(overall, overall))
                @if target.platform { span.tag { "platform" } }
                @if target.insecure { span.tag.insecure title="tls.insecure_skip_verify: certificates are not verified" { "TLS not verified" } }
            }
            @if let Some(since) = target.paused_since {
                p.paused { "Probing paused since " (time_el(since)) "; statuses below are the last known." }
            }
            @if target.instances.is_empty() {
                p { "No instances." }
            }
            ul.instances {
                @for (i, instance) in target.instances.iter().enumerate() {
                    li.instance data-status=(instance.status) {
                        // Signed out, no address: instances by number.
                        @if view.details() { span.url { (instance.url) } } @else { span.url { "Instance " (i + 1) } }
                        " "
                        (badge(instance.status.as_str(), instance.status.as_str()))
                        @if let Some(since) = instance.since {
                            span.since { " since " (time_el(since)) " (" (duration(as_of - since)) ")" }
                        }
                        @if let Some(expires) = instance.certificate_expires {
                            (certificate(expires, as_of))
                        }
                        @if let Some((reason, detail)) = instance.degraded.as_deref() {
                            p.degraded { span.label { "Degraded (" (reason) "): " } (detail) }
                        }
                        @if view.details() && !instance.status.serves() {
                            @if let Some(error) = &instance.last_error {
                                p.error { span.label { "Last error: " } code { (error) } }
                            }
                        }
                    }
                }
            }
            (timeline(target, as_of))
            @if view == View::Operator {
                @let (action, label) = if target.paused_since.is_some() { ("resume", "Resume probing") } else { ("pause", "Pause probing") };
                form.control method="post" action=(format!("/status/targets/{}/{action}", target.name)) {
                    button type="submit" { (label) span.visually-hidden { " " (target.name) } }
                }
            }
        }
    }
}

/// Days below which a certificate's expiry is shown as a warning (the alert's threshold).
const CERTIFICATE_WARNING_DAYS: f64 = 14.0;

/// "certificate expires in N days" (a warning under 14 days), or how long ago it expired.
fn certificate(expires: f64, as_of: f64) -> Markup {
    let days = (expires - as_of) / 86_400.0;
    let text = if days < 0.0 {
        format!("certificate expired {} days ago", (-days).ceil())
    } else {
        let whole = days.floor();
        format!("certificate expires in {whole} day{}", if (whole - 1.0).abs() < f64::EPSILON { "" } else { "s" })
    };
    html! {
        @if days < CERTIFICATE_WARNING_DAYS {
            span.cert.cert-warning title=(format!("notAfter {}", clock(expires))) { " · " (text) }
        } @else {
            span.cert title=(format!("notAfter {}", clock(expires))) { " · " (text) }
        }
    }
}

/// The last 24 hours: one bar per instance (drawn), and the same told in words.
fn timeline(target: &TargetView, as_of: f64) -> Markup {
    let start = as_of - WINDOW_SECS;
    let rows = fleet::segments(target, as_of);
    let s = fleet::summary(target, as_of);
    let words = if s.changes == 0 {
        "Last 24 h: no change.".to_string()
    } else if s.outages == 0 && s.downtime == 0.0 {
        format!("Last 24 h: no outage; {} change{}.", s.changes, if s.changes == 1 { "" } else { "s" })
    } else {
        let mut words = format!(
            "Last 24 h: {} outage{}, {} down in total",
            s.outages,
            if s.outages == 1 { "" } else { "s" },
            duration(s.downtime)
        );
        match s.last_outage {
            Some((from, Some(to))) => {
                words.push_str(&format!("; last {}–{} ({})", clock(from), clock(to), duration(to - from)))
            }
            Some((from, None)) => words.push_str(&format!("; down since {}", clock(from))),
            None => {}
        }
        words.push_str(&format!("; {} change{}", s.changes, if s.changes == 1 { "" } else { "s" }));
        if s.changes >= 6 {
            words.push_str(" (flapping)");
        }
        words.push('.');
        words
    };
    let height = rows.len().max(1) * 12;
    html! {
        figure.timeline {
            // The words below say what the bars draw, so a screen reader reads them once.
            svg viewBox=(format!("0 0 1440 {height}")) preserveAspectRatio="none" aria-hidden="true" {
                @for (row, (_, segments)) in rows.iter().enumerate() {
                    @for segment in segments {
                        // At least a minute wide, so a blip shows; kept inside the box.
                        @let w = ((segment.end - segment.start) / 60.0).max(1.0);
                        @let x = ((segment.start - start) / 60.0).min(1440.0 - w);
                        rect class=(format!("s-{}", segment.status)) x=(format!("{x:.1}")) y=(row * 12) width=(format!("{w:.1}")) height="10" {
                            title { (segment.status) " " (hh_mm(segment.start)) "–" (hh_mm(segment.end)) " UTC (" (duration(segment.end - segment.start)) ")" }
                        }
                    }
                }
            }
            figcaption {
                span.axis aria-hidden="true" { span { "24 h ago" } span { "now" } }
                span.words { (words) }
            }
        }
    }
}

/// A status as text with a glyph, so it never depends on colour.
fn badge(class: &str, label: &str) -> Markup {
    html! { span class=(format!("badge b-{class}")) { span aria-hidden="true" { (glyph(class)) } " " (label) } }
}

fn glyph(status: &str) -> &'static str {
    match status {
        "up" | "pass" => "✔",
        "down" | "fail" => "✖",
        "unready" | "warn" | "degraded" => "▲",
        "paused" => "⏸",
        "skipped" | "none" => "–",
        _ => "?",
    }
}

fn time_el(secs: f64) -> Markup {
    html! { time datetime=(rfc3339(secs)) { (clock(secs)) } }
}

fn system_time(secs: f64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

/// RFC 3339 to the second, UTC.
pub(crate) fn rfc3339(secs: f64) -> String {
    humantime::format_rfc3339_seconds(system_time(secs)).to_string()
}

/// `2026-11-25 10:32:05 UTC`.
fn clock(secs: f64) -> String {
    let text = rfc3339(secs);
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `10:32`, UTC: enough inside a 24-hour timeline.
fn hh_mm(secs: f64) -> String {
    rfc3339(secs).get(11..16).unwrap_or_default().to_string()
}

/// A short human duration: `45 s`, `14 min`, `2 h 5 min`, `3 d 4 h`.
pub(crate) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A whole document: the page's head (stylesheet, icon, `extra`) around `body`.
fn document(title: &str, extra: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) }
                link rel="stylesheet" href=(super::asset_path("status.css"));
                link rel="icon" type="image/svg+xml" href=(super::asset_path("icon.svg"));
                (extra)
            }
            body { (body) }
        }
    }
}

/// The sign-in page: a form taking the admin token or an STS access token.
pub(crate) fn signin(problem: Option<&str>) -> Markup {
    let body = html! {
        header.top { div.brand { h1 { "Caracal status" } } }
        main #main {
            h2 { "Sign in" }
            p { "The admin token, or an STS access token with " code { "targets:read" } " (to see errors) or "
                code { "targets:write" } " (to pause and resume probing)." }
            @if let Some(problem) = problem {
                p.banner role="alert" { (problem) }
            }
            form.signin method="post" action="/status/signin" {
                label for="token" { "Token" }
                input #token name="token" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p { a href="/status" { "Back to the status page" } }
        }
    };
    document("Sign in · Caracal status", html! {}, body)
}

/// The page answered before the first read of the store.
pub(crate) fn starting() -> Markup {
    let body = html! { main #main { h1 { "Caracal status" } p { "Starting; try again in a moment." } } };
    document("Caracal status", html! {}, body)
}

/// A refusal from one of the page's forms, naming its stable code.
pub(crate) fn problem(status: u16, code: &str, message: &str) -> Markup {
    let body = html! {
        main #main {
            h1 { "Caracal status" }
            p.banner role="alert" { (message) }
            p { "Error " (status) " · " code { (code) } }
            p { a href="/status" { "Back to the status page" } }
        }
    };
    document("Caracal status", html! {}, body)
}

#[cfg(test)]
mod tests {
    use super::certificate;

    #[test]
    fn certificate_expiry_in_days_with_a_warning_under_fourteen() {
        let now = 1_800_000_000.0;
        let day = 86_400.0;
        let far = certificate(now + 40.0 * day + 5.0, now).into_string();
        assert!(far.contains("certificate expires in 40 days") && !far.contains("cert-warning"), "{far}");
        let soon = certificate(now + 13.5 * day, now).into_string();
        assert!(soon.contains("certificate expires in 13 days") && soon.contains("cert-warning"), "{soon}");
        let one = certificate(now + 1.2 * day, now).into_string();
        assert!(one.contains("expires in 1 day<") || one.contains("expires in 1 day "), "{one}");
        let gone = certificate(now - 2.5 * day, now).into_string();
        assert!(gone.contains("certificate expired 3 days ago") && gone.contains("cert-warning"), "{gone}");
    }
}
