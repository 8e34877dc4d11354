//! Merging instances' families into one exposition: identity labels on every sample
//! (`target`, `instance`, the target's labels; a label the sample has already is kept and
//! ours renamed `exported_<name>`), `# HELP`/`# TYPE`/`# UNIT` once per family, families in
//! name order, every sample of a family together, the federation series per instance, and the
//! output in text 0.0.4 or OpenMetrics 1.0.
//!
//! Samples are copied from the bodies as byte ranges with the identity labels spliced in, so
//! merging costs little more than copying.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::exposition::{Body, Family, Format, Kind, Line, label_names};
use crate::registry::TargetInfo;
use crate::scrape::Reason;

/// One instance's scrape: its parsed body, or why it gave nothing.
#[derive(Debug)]
pub struct Scraped {
    /// The body.
    pub outcome: Result<Body, Reason>,
    /// How long it took.
    pub duration: Duration,
}

/// One instance of one target, scraped.
#[derive(Debug)]
pub struct InstanceResult {
    /// The target.
    pub target: Arc<TargetInfo>,
    /// `host:port` of the instance's URL.
    pub instance: String,
    /// What came back.
    pub scraped: Scraped,
}

/// How to render.
#[derive(Debug)]
pub struct Options {
    /// Output format.
    pub format: Format,
    /// Leave out the `caracal_federation_*` series.
    pub only_target_metrics: bool,
    /// Keep only target families whose name matches one of these (all when empty).
    pub matchers: Vec<regex::Regex>,
}

/// The labels added to every sample of `target`'s `instance`: `target`, `instance`, then the
/// target's labels by name. The same order is given to the parser, whose clash bits index it.
pub fn identity(target: &TargetInfo, instance: &str) -> Vec<(String, String)> {
    let mut labels = vec![("target".to_string(), target.name.clone()), ("instance".to_string(), instance.to_string())];
    for (key, value) in &target.labels {
        // Registry label keys may start with a digit; Prometheus label names may not.
        let key = if key.starts_with(|c: char| c.is_ascii_digit()) { format!("_{key}") } else { key.clone() };
        if key != "target" && key != "instance" {
            labels.push((key, value.clone()));
        }
    }
    labels
}

/// One instance's identity, rendered once: `target="...",instance="...",...`.
struct Identity {
    labels: Vec<(String, String)>,
    rendered: Vec<u8>,
}

/// A family being merged: its metadata and, per instance, the instance and its family.
struct Merged<'a> {
    kind: Kind,
    help: Option<&'a str>,
    unit: Option<&'a str>,
    parts: Vec<(usize, &'a Family)>,
}

/// The rendered body, and how many target samples it holds.
pub fn render(results: &[InstanceResult], options: &Options) -> (Vec<u8>, usize) {
    let mut whole = Vec::new();
    let samples = render_to(results, options, usize::MAX, &mut |rendered: &mut Vec<u8>| {
        if whole.is_empty() {
            std::mem::swap(&mut whole, rendered);
        } else {
            whole.append(rendered);
        }
        true
    });
    (whole, samples)
}

/// Renders into chunks of about `chunk` bytes, each handed to `flush` (which empties it) as it
/// fills, so the answer is never held whole: identity labels make it larger than the bodies
/// (a target's 32 labels of 256 characters on every sample). Stops early when `flush` answers
/// `false` (the client went away). Returns how many target samples were written.
pub fn render_to(
    results: &[InstanceResult],
    options: &Options,
    chunk: usize,
    flush: &mut dyn FnMut(&mut Vec<u8>) -> bool,
) -> usize {
    let identities: Vec<Identity> = results
        .iter()
        .map(|r| {
            let labels = identity(&r.target, &r.instance);
            let mut rendered = Vec::new();
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    rendered.push(b',');
                }
                write_label(&mut rendered, name, value);
            }
            Identity { labels, rendered }
        })
        .collect();
    let mut families: BTreeMap<&str, Merged<'_>> = BTreeMap::new();
    for (index, result) in results.iter().enumerate() {
        let Ok(body) = &result.scraped.outcome else { continue };
        for family in &body.families {
            if family.is_empty() || (!options.matchers.is_empty() && !matches(&options.matchers, family)) {
                continue;
            }
            let merged = families.entry(family.name.as_str()).or_insert_with(|| Merged {
                kind: family.kind,
                help: None,
                unit: None,
                parts: Vec::new(),
            });
            if merged.kind != family.kind {
                // The first instance's type wins; a family typed otherwise elsewhere is left out
                // rather than making the whole answer invalid.
                tracing::debug!(family = %family.name, instance = %result.instance, "family typed differently; left out");
                continue;
            }
            merged.help = merged.help.or(family.help.as_deref());
            merged.unit = merged.unit.or(family.unit.as_deref());
            merged.parts.push((index, family));
        }
    }
    let own = if options.only_target_metrics { Vec::new() } else { federation_families(results) };
    let bodies: usize = results.iter().filter_map(|r| r.scraped.outcome.as_ref().ok()).map(|b| b.bytes.len() * 2).sum();
    let mut out: Vec<u8> = Vec::with_capacity(bodies.min(chunk.saturating_add(64 * 1024)));
    let mut out = Chunks { out: &mut out, chunk, flush, open: true };
    let mut merged_samples = 0;
    let mut target_families = families.into_iter().peekable();
    let mut own = own.into_iter().peekable();
    // Both lists are sorted by name: walk them together so the output is too.
    loop {
        let take_own = match (target_families.peek(), own.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((a, _)), Some(b)) => b.name < *a,
        };
        if take_own {
            let family = own.next().expect("peeked");
            write_header(out.out, options.format, family.name, Kind::Gauge, Some(family.help), family.unit, true);
            out.out.extend_from_slice(&family.lines);
        } else {
            let (name, family) = target_families.next().expect("peeked");
            merged_samples += write_family(&mut out, options.format, name, &family, results, &identities);
        }
        if !out.open {
            return merged_samples;
        }
    }
    if options.format == Format::OpenMetrics {
        out.out.extend_from_slice(b"# EOF\n");
    }
    out.hand_on();
    merged_samples
}

/// The output buffer, handed on whenever it holds a chunk's worth.
struct Chunks<'a> {
    out: &'a mut Vec<u8>,
    chunk: usize,
    flush: &'a mut dyn FnMut(&mut Vec<u8>) -> bool,
    /// Whether the receiver still wants more.
    open: bool,
}

impl Chunks<'_> {
    /// Hands the buffer on when it is full; whether to go on.
    fn check(&mut self) -> bool {
        if self.out.len() >= self.chunk {
            self.hand_on();
        }
        self.open
    }

    fn hand_on(&mut self) {
        if self.open && !self.out.is_empty() {
            self.open = (self.flush)(self.out);
            self.out.clear();
        }
    }
}

fn matches(matchers: &[regex::Regex], family: &Family) -> bool {
    matchers.iter().any(|m| {
        m.is_match(&family.name) || (family.kind == Kind::Counter && m.is_match(&format!("{}_total", family.name)))
    })
}

/// One of the gateway's own families, its sample lines already rendered.
struct OwnFamily {
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    lines: Vec<u8>,
}

fn federation_families(results: &[InstanceResult]) -> Vec<OwnFamily> {
    let family = |name, help, unit| OwnFamily { name, help, unit, lines: Vec::new() };
    let mut error =
        family("caracal_federation_error", "Why the instance could not be federated (1 for the reason)", None);
    let mut samples = family("caracal_federation_samples", "Samples the instance answered", None);
    let mut duration =
        family("caracal_federation_scrape_duration_seconds", "How long the instance's scrape took", Some("seconds"));
    let mut up =
        family("caracal_federation_up", "Whether the gateway could federate the instance (1) or not (0)", None);
    for result in results {
        let mut labels = Vec::new();
        write_label(&mut labels, "target", &result.target.name);
        labels.push(b',');
        write_label(&mut labels, "instance", &result.instance);
        let line = |family: &mut OwnFamily, extra: Option<&str>, value: String| {
            family.lines.extend_from_slice(family.name.as_bytes());
            family.lines.push(b'{');
            family.lines.extend_from_slice(&labels);
            if let Some(reason) = extra {
                family.lines.push(b',');
                write_label(&mut family.lines, "reason", reason);
            }
            let _ = writeln!(family.lines, "}} {value}");
        };
        let outcome = &result.scraped.outcome;
        line(&mut up, None, if outcome.is_ok() { "1" } else { "0" }.into());
        line(&mut duration, None, format!("{:.6}", result.scraped.duration.as_secs_f64()));
        line(&mut samples, None, outcome.as_ref().map_or(0, |b| b.samples).to_string());
        if let Err(reason) = outcome {
            line(&mut error, Some(reason.label()), "1".into());
        }
    }
    [error, samples, duration, up].into_iter().filter(|f| !f.lines.is_empty()).collect()
}

/// The name and type a family is written with in `format`.
fn header_name(format: Format, name: &str, kind: Kind, all_total: bool) -> (String, &'static str) {
    match format {
        Format::OpenMetrics => (name.to_string(), kind.openmetrics()),
        Format::Text => match kind {
            Kind::Counter if all_total => (format!("{name}_total"), "counter"),
            Kind::Counter => (name.to_string(), "counter"),
            Kind::Gauge => (name.to_string(), "gauge"),
            Kind::Histogram => (name.to_string(), "histogram"),
            Kind::Summary => (name.to_string(), "summary"),
            Kind::Info => (format!("{name}_info"), "gauge"),
            Kind::StateSet => (name.to_string(), "gauge"),
            Kind::GaugeHistogram | Kind::Unknown => (name.to_string(), "untyped"),
        },
    }
}

fn write_header(
    out: &mut Vec<u8>,
    format: Format,
    name: &str,
    kind: Kind,
    help: Option<&str>,
    unit: Option<&str>,
    all_total: bool,
) {
    let (written, word) = header_name(format, name, kind, all_total);
    match format {
        Format::OpenMetrics => {
            let _ = writeln!(out, "# TYPE {written} {word}");
            if let Some(unit) = unit.filter(|u| !u.is_empty() && name.ends_with(&format!("_{u}"))) {
                let _ = writeln!(out, "# UNIT {written} {unit}");
            }
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {written} {}", escape_help(help, true));
            }
        }
        Format::Text => {
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {written} {}", escape_help(help, false));
            }
            let _ = writeln!(out, "# TYPE {written} {word}");
        }
    }
}

/// Writes one merged family; returns how many samples it wrote.
fn write_family(
    chunks: &mut Chunks<'_>,
    format: Format,
    name: &str,
    family: &Merged<'_>,
    results: &[InstanceResult],
    identities: &[Identity],
) -> usize {
    let lines = || {
        family
            .parts
            .iter()
            .filter_map(|(i, f)| Some((*i, f, results[*i].scraped.outcome.as_ref().ok()?)))
            .flat_map(|(i, f, body)| f.lines(body).map(move |l| (body, i, l)))
    };
    let mut kind = family.kind;
    // A counter's samples must be `_total`/`_created` in OpenMetrics; one from a text body that
    // is not is passed on as `unknown` rather than renamed.
    let all_fit = lines().all(|(b, _, l)| sample_fits(name.as_bytes(), family.kind, b.name_bytes(l)));
    if format == Format::OpenMetrics && !all_fit {
        kind = Kind::Unknown;
    }
    let all_total = family.kind == Kind::Counter && all_fit;
    write_header(chunks.out, format, name, kind, family.help, family.unit, all_total);
    let drop_created = format == Format::Text && matches!(family.kind, Kind::Counter | Kind::Histogram | Kind::Summary);
    let mut written = 0;
    for (body, instance, line) in lines() {
        // `_created` is OpenMetrics' own; text has no place for it.
        if drop_created && body.name_bytes(line).ends_with(b"_created") {
            continue;
        }
        write_line(chunks.out, format, body, line, &identities[instance]);
        written += 1;
        if !chunks.check() {
            break;
        }
    }
    written
}

fn sample_fits(family: &[u8], kind: Kind, sample: &[u8]) -> bool {
    let suffix = sample.strip_prefix(family);
    match kind {
        Kind::Counter => matches!(suffix, Some(b"_total" | b"_created")),
        Kind::Gauge | Kind::Unknown | Kind::StateSet => suffix == Some(b""),
        _ => suffix.is_some_and(|s| s.is_empty() || s.starts_with(b"_")),
    }
}

fn write_line(out: &mut Vec<u8>, format: Format, body: &Body, line: &Line, identity: &Identity) {
    let bytes = &body.bytes;
    if line.clash == 0 {
        // The common case: copy name and labels, splice ours in before the `}`.
        if line.labels_end > line.name_end {
            out.extend_from_slice(&bytes[line.start as usize..line.labels_end as usize]);
            if line.has_labels {
                out.push(b',');
            }
        } else {
            out.extend_from_slice(&bytes[line.start as usize..line.name_end as usize]);
            out.push(b'{');
        }
        out.extend_from_slice(&identity.rendered);
    } else {
        // A label of ours is there already: the sample's wins, ours becomes exported_<name>.
        out.extend_from_slice(&bytes[line.start as usize..line.labels_end as usize]);
        let own = label_names(body.text(line.name_end, line.labels_end + 1));
        for (i, (name, value)) in identity.labels.iter().enumerate() {
            if i > 0 || line.has_labels {
                out.push(b',');
            }
            let mut ours = name.clone();
            while own.contains(&ours) {
                ours = format!("exported_{ours}");
            }
            write_label(out, &ours, value);
        }
    }
    out.push(b'}');
    out.push(b' ');
    out.extend_from_slice(&bytes[line.value.0 as usize..line.value.1 as usize]);
    if let Some(ts) = line.timestamp {
        let _ = match format {
            Format::Text => write!(out, " {}", (ts * 1000.0).round() as i64),
            Format::OpenMetrics => write!(out, " {ts}"),
        };
    }
    out.push(b'\n');
}

fn write_label(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn escape_help(help: &str, quotes: bool) -> String {
    let escaped = help.replace('\\', "\\\\").replace('\n', "\\n");
    if quotes { escaped.replace('"', "\\\"") } else { escaped }
}

#[cfg(test)]
mod tests;
