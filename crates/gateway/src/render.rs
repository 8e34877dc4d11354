//! Merging instances' families into one exposition: identity labels on every sample
//! (`target`, `instance`, the target's labels; a label the sample has already is kept and
//! ours renamed `exported_<name>`), `# HELP`/`# TYPE`/`# UNIT` once per family, families in
//! name order, every sample of a family together, the federation series per instance, and the
//! output in text 0.0.4 or OpenMetrics 1.0.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::exposition::{Family, Format, Kind, Sample};
use crate::registry::TargetInfo;
use crate::scrape::Reason;

/// One instance's scrape: its families and sample count, or why it gave nothing.
#[derive(Debug)]
pub struct Scraped {
    /// The families (by OpenMetrics name) and how many samples they hold.
    pub outcome: Result<(BTreeMap<String, Family>, usize), Reason>,
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

/// One instance's share of a family: its identity labels and its samples.
type Part<'a> = (&'a [(String, String)], &'a [Sample]);

/// A family being merged: its metadata and, per instance, the identity labels and samples.
struct Merged<'a> {
    kind: Kind,
    help: Option<&'a str>,
    unit: Option<&'a str>,
    parts: Vec<Part<'a>>,
}

/// Samples merged, and the rendered body.
pub fn render(results: &[InstanceResult], options: &Options) -> (String, usize) {
    let identities: Vec<Vec<(String, String)>> = results.iter().map(identity).collect();
    let mut families: BTreeMap<&str, Merged<'_>> = BTreeMap::new();
    for (result, labels) in results.iter().zip(&identities) {
        let Ok((scraped, _)) = &result.scraped.outcome else { continue };
        for (name, family) in scraped {
            if !options.matchers.is_empty() && !matches(&options.matchers, name, family.kind) {
                continue;
            }
            let merged = families.entry(name.as_str()).or_insert_with(|| Merged {
                kind: family.kind,
                help: None,
                unit: None,
                parts: Vec::new(),
            });
            if merged.kind != family.kind {
                // The first instance's type wins; a family typed otherwise elsewhere is left out
                // rather than making the whole answer invalid.
                tracing::debug!(family = %name, instance = %result.instance, "family typed differently; left out");
                continue;
            }
            merged.help = merged.help.or(family.help.as_deref());
            merged.unit = merged.unit.or(family.unit.as_deref());
            merged.parts.push((labels.as_slice(), family.samples.as_slice()));
        }
    }
    let federation = (!options.only_target_metrics).then(|| federation_families(results));
    let mut out = String::with_capacity(64 * 1024);
    let mut merged_samples = 0;
    let mut target_families = families.into_iter().peekable();
    let mut own = federation.iter().flatten().peekable();
    // Both lists are sorted by name: walk them together so the output is too.
    loop {
        let take_own = match (target_families.peek(), own.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((a, _)), Some((b, _))) => *b < *a,
        };
        if take_own {
            let (name, family) = own.next().expect("peeked");
            write_family(
                &mut out,
                options.format,
                name,
                family.kind,
                Some(&family.help),
                family.unit,
                &family.parts_ref(),
            );
        } else {
            let (name, family) = target_families.next().expect("peeked");
            merged_samples += family.parts.iter().map(|(_, s)| s.len()).sum::<usize>();
            write_family(&mut out, options.format, name, family.kind, family.help, family.unit, &family.parts);
        }
    }
    if options.format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    (out, merged_samples)
}

fn matches(matchers: &[regex::Regex], name: &str, kind: Kind) -> bool {
    matchers.iter().any(|m| m.is_match(name) || (kind == Kind::Counter && m.is_match(&format!("{name}_total"))))
}

/// `target`, `instance` and the target's labels, sorted by name after the first two.
fn identity(result: &InstanceResult) -> Vec<(String, String)> {
    let mut labels =
        vec![("target".to_string(), result.target.name.clone()), ("instance".to_string(), result.instance.clone())];
    for (key, value) in &result.target.labels {
        // Registry label keys may start with a digit; Prometheus label names may not.
        let key = if key.starts_with(|c: char| c.is_ascii_digit()) { format!("_{key}") } else { key.clone() };
        if key != "target" && key != "instance" {
            labels.push((key, value.clone()));
        }
    }
    labels
}

/// One of the gateway's own families: name, kind, help, unit, samples.
struct OwnFamily {
    kind: Kind,
    help: String,
    unit: Option<&'static str>,
    samples: Vec<Sample>,
}

impl OwnFamily {
    fn parts_ref(&self) -> Vec<Part<'_>> {
        vec![(&[][..], self.samples.as_slice())]
    }
}

fn federation_families(results: &[InstanceResult]) -> Vec<(&'static str, OwnFamily)> {
    let gauge = |help: &str, unit| OwnFamily { kind: Kind::Gauge, help: help.into(), unit, samples: Vec::new() };
    let mut up = gauge("Whether the gateway could federate the instance (1) or not (0)", None);
    let mut duration = gauge("How long the instance's scrape took", Some("seconds"));
    let mut samples = gauge("Samples the instance answered", None);
    let mut error = gauge("Why the instance could not be federated (1 for the reason)", None);
    for result in results {
        let labels =
            vec![("target".to_string(), result.target.name.clone()), ("instance".to_string(), result.instance.clone())];
        let sample = |name: &str, labels: Vec<(String, String)>, value: String| Sample {
            name: name.into(),
            labels,
            value,
            timestamp: None,
        };
        let ok = result.scraped.outcome.is_ok();
        up.samples.push(sample("caracal_federation_up", labels.clone(), if ok { "1" } else { "0" }.into()));
        duration.samples.push(sample(
            "caracal_federation_scrape_duration_seconds",
            labels.clone(),
            format!("{:.6}", result.scraped.duration.as_secs_f64()),
        ));
        let count = result.scraped.outcome.as_ref().map_or(0, |(_, n)| *n);
        samples.samples.push(sample("caracal_federation_samples", labels.clone(), count.to_string()));
        if let Err(reason) = &result.scraped.outcome {
            let mut labels = labels;
            labels.push(("reason".into(), reason.label().into()));
            error.samples.push(sample("caracal_federation_error", labels, "1".into()));
        }
    }
    let mut families = vec![
        ("caracal_federation_error", error),
        ("caracal_federation_samples", samples),
        ("caracal_federation_scrape_duration_seconds", duration),
        ("caracal_federation_up", up),
    ];
    families.retain(|(_, f)| !f.samples.is_empty());
    families
}

fn write_family(
    out: &mut String,
    format: Format,
    name: &str,
    kind: Kind,
    help: Option<&str>,
    unit: Option<&str>,
    parts: &[Part<'_>],
) {
    let samples = || parts.iter().flat_map(|(labels, samples)| samples.iter().map(move |s| (*labels, s)));
    match format {
        Format::OpenMetrics => {
            // A counter's samples must be `_total`/`_created` in OpenMetrics; one from a text
            // body that is not is passed on as `unknown` rather than renamed.
            let kind = if samples().all(|(_, s)| sample_fits(name, kind, &s.name)) { kind } else { Kind::Unknown };
            let _ = writeln!(out, "# TYPE {name} {}", kind.openmetrics());
            if let Some(unit) = unit.filter(|u| !u.is_empty() && name.ends_with(&format!("_{u}"))) {
                let _ = writeln!(out, "# UNIT {name} {unit}");
            }
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {name} {}", escape(help, true));
            }
            for (identity, sample) in samples() {
                write_sample(out, format, sample, identity);
            }
        }
        Format::Text => {
            let all_total = kind == Kind::Counter
                && samples().all(|(_, s)| s.name.ends_with("_total") || s.name.ends_with("_created"));
            let (text_name, text_kind) = match kind {
                Kind::Counter if all_total => (format!("{name}_total"), "counter"),
                Kind::Counter => (name.to_string(), "counter"),
                Kind::Gauge => (name.to_string(), "gauge"),
                Kind::Histogram => (name.to_string(), "histogram"),
                Kind::Summary => (name.to_string(), "summary"),
                Kind::Info => (format!("{name}_info"), "gauge"),
                Kind::StateSet => (name.to_string(), "gauge"),
                Kind::GaugeHistogram | Kind::Unknown => (name.to_string(), "untyped"),
            };
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {text_name} {}", escape(help, false));
            }
            let _ = writeln!(out, "# TYPE {text_name} {text_kind}");
            for (identity, sample) in samples() {
                // `_created` is OpenMetrics' own; text has no place for it.
                if sample.name.ends_with("_created") && matches!(kind, Kind::Counter | Kind::Histogram | Kind::Summary)
                {
                    continue;
                }
                write_sample(out, format, sample, identity);
            }
        }
    }
}

fn sample_fits(family: &str, kind: Kind, sample: &str) -> bool {
    match kind {
        Kind::Counter => sample == format!("{family}_total") || sample == format!("{family}_created"),
        Kind::Gauge | Kind::Unknown | Kind::StateSet => sample == family,
        _ => sample.strip_prefix(family).is_some_and(|s| s.is_empty() || s.starts_with('_')),
    }
}

fn write_sample(out: &mut String, format: Format, sample: &Sample, identity: &[(String, String)]) {
    out.push_str(&sample.name);
    let mut first = true;
    let mut label = |out: &mut String, name: &str, value: &str| {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        out.push_str(&escape_label(value));
        out.push('"');
    };
    for (name, value) in &sample.labels {
        label(out, name, value);
    }
    for (name, value) in identity {
        let mut ours = name.clone();
        // The sample's own label wins; ours steps aside as exported_<name>.
        while sample.labels.iter().any(|(n, _)| *n == ours) {
            ours = format!("exported_{ours}");
        }
        label(out, &ours, value);
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&sample.value);
    if let Some(ts) = sample.timestamp {
        match format {
            Format::Text => {
                let _ = write!(out, " {}", (ts * 1000.0).round() as i64);
            }
            Format::OpenMetrics => {
                let _ = write!(out, " {ts}");
            }
        }
    }
    out.push('\n');
}

fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
    } else {
        value.into()
    }
}

fn escape(help: &str, quotes: bool) -> String {
    let escaped = help.replace('\\', "\\\\").replace('\n', "\\n");
    if quotes { escaped.replace('"', "\\\"") } else { escaped }
}

#[cfg(test)]
mod tests;
