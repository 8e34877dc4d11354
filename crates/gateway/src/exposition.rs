//! Reading a metrics exposition — Prometheus text 0.0.4 or OpenMetrics 1.0 — line by line as
//! its body arrives, into families, so a body is never held whole beside its parsed form.
//!
//! Families are keyed by their OpenMetrics name: a text-format counter `# TYPE foo_total
//! counter` is family `foo` with sample `foo_total`, as the OpenMetrics counter `foo` is, so
//! both formats merge. Exemplars are dropped (consistently, from both formats); timestamps are
//! kept, in seconds.

use std::collections::BTreeMap;

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `gaugehistogram` (OpenMetrics).
    GaugeHistogram,
    /// `summary`.
    Summary,
    /// `info` (OpenMetrics).
    Info,
    /// `stateset` (OpenMetrics).
    StateSet,
    /// `unknown` (OpenMetrics) or `untyped` (text).
    Unknown,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "gaugehistogram" => Kind::GaugeHistogram,
            "summary" => Kind::Summary,
            "info" => Kind::Info,
            "stateset" => Kind::StateSet,
            "untyped" | "unknown" => Kind::Unknown,
            _ => return None,
        })
    }

    /// The suffixes a sample of a family of this kind may add to the family's name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created"],
            Kind::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Kind::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            Kind::Summary => &["_sum", "_count", "_created"],
            Kind::Info => &["_info"],
            Kind::Gauge | Kind::StateSet | Kind::Unknown => &[],
        }
    }

    /// The OpenMetrics name of the type.
    pub fn openmetrics(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::GaugeHistogram => "gaugehistogram",
            Kind::Summary => "summary",
            Kind::Info => "info",
            Kind::StateSet => "stateset",
            Kind::Unknown => "unknown",
        }
    }
}

/// One sample: its full name (`foo_bucket`), labels, value and optional timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name.
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value as written (`1`, `2.5e3`, `NaN`, `+Inf`), validated as a number.
    pub value: String,
    /// Seconds since the epoch, when given.
    pub timestamp: Option<f64>,
}

/// A metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Its type.
    pub kind: Kind,
    /// `# HELP`, unescaped.
    pub help: Option<String>,
    /// `# UNIT` (OpenMetrics).
    pub unit: Option<String>,
    /// Its samples, in the order read.
    pub samples: Vec<Sample>,
}

/// Which format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format a `Content-Type` names (text when it names nothing known).
    pub fn from_content_type(value: &str) -> Format {
        if value.trim_start().to_ascii_lowercase().starts_with("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Why a body could not be read; the line number is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// An incremental parser: feed it chunks, then finish.
#[derive(Debug)]
pub struct Parser {
    format: Format,
    partial: Vec<u8>,
    line: usize,
    families: BTreeMap<String, Family>,
    /// The family the last `# TYPE` opened (OpenMetrics name).
    current: Option<String>,
    /// `# HELP` and `# UNIT` by the name written, until a `# TYPE` or sample claims them.
    help: BTreeMap<String, String>,
    unit: BTreeMap<String, String>,
    eof: bool,
    samples: usize,
}

impl Parser {
    /// A parser for a body in `format`.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            partial: Vec::new(),
            line: 0,
            families: BTreeMap::new(),
            current: None,
            help: BTreeMap::new(),
            unit: BTreeMap::new(),
            eof: false,
            samples: 0,
        }
    }

    /// Parses every complete line of `chunk`, keeping an incomplete last line for later.
    ///
    /// # Errors
    /// The first line that is not valid exposition.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.parse_line(line)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.parse_line(&whole)?;
            }
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Parses what is left and returns the families, by OpenMetrics name.
    ///
    /// # Errors
    /// A last line that is not valid exposition.
    pub fn finish(mut self) -> Result<(BTreeMap<String, Family>, usize), ParseError> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.parse_line(&last)?;
        }
        Ok((self.families, self.samples))
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { line: self.line, message: message.into() }
    }

    fn parse_line(&mut self, raw: &[u8]) -> Result<(), ParseError> {
        self.line += 1;
        let line = std::str::from_utf8(raw).map_err(|_| self.error("not UTF-8"))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if self.eof {
            return if line.trim().is_empty() { Ok(()) } else { Err(self.error("content after # EOF")) };
        }
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.parse_comment(comment.trim_start());
        }
        self.parse_sample(line)
    }

    fn parse_comment(&mut self, comment: &str) -> Result<(), ParseError> {
        if comment == "EOF" {
            self.eof = true;
            return Ok(());
        }
        let (keyword, rest) = comment.split_once([' ', '\t']).unwrap_or((comment, ""));
        let rest = rest.trim_start();
        match keyword {
            "HELP" | "TYPE" | "UNIT" => {}
            // Any other comment is free text.
            _ => return Ok(()),
        }
        let (name, value) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !valid_metric_name(name) {
            return Err(self.error(format!("bad metric name in # {keyword}")));
        }
        match keyword {
            "HELP" => {
                let text = unescape(value, self.format == Format::OpenMetrics).map_err(|m| self.error(m))?;
                self.help.insert(name.to_string(), text);
                if let Some(family) = self.families.get_mut(name) {
                    family.help = self.help.get(name).cloned();
                }
            }
            "UNIT" => {
                self.unit.insert(name.to_string(), value.trim().to_string());
                if let Some(family) = self.families.get_mut(name) {
                    family.unit = Some(value.trim().to_string());
                }
            }
            _ => {
                let kind =
                    Kind::parse(value.trim()).ok_or_else(|| self.error(format!("unknown type `{}`", value.trim())))?;
                // A text-format counter names its family with `_total`; OpenMetrics does not.
                let family_name = match (kind, name.strip_suffix("_total")) {
                    (Kind::Counter, Some(base)) if self.format == Format::Text => base,
                    _ => name,
                };
                let help = self.help.get(name).or_else(|| self.help.get(family_name)).cloned();
                let unit = self.unit.get(name).cloned();
                let family = self.families.entry(family_name.to_string()).or_insert_with(|| Family {
                    kind,
                    help: None,
                    unit: None,
                    samples: Vec::new(),
                });
                if family.kind != kind && !family.samples.is_empty() {
                    return Err(self.error(format!("`{family_name}` is typed twice")));
                }
                family.kind = kind;
                family.help = family.help.take().or(help);
                family.unit = family.unit.take().or(unit);
                self.current = Some(family_name.to_string());
            }
        }
        Ok(())
    }

    fn parse_sample(&mut self, line: &str) -> Result<(), ParseError> {
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(self.error("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inside) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(inside).map_err(|m| self.error(m))?;
            labels = parsed;
            rest = after;
        }
        // Exemplars (` # {...} v [ts]`) are dropped.
        let rest = rest.split(" # ").next().unwrap_or("");
        let mut words = rest.split_ascii_whitespace();
        let value = words.next().ok_or_else(|| self.error("no value"))?;
        if parse_number(value).is_none() {
            return Err(self.error(format!("`{value}` is not a number")));
        }
        let timestamp = match words.next() {
            None => None,
            Some(t) => {
                let n = parse_number(t).filter(|n| n.is_finite()).ok_or_else(|| self.error("bad timestamp"))?;
                // Text timestamps are milliseconds, OpenMetrics ones seconds.
                Some(if self.format == Format::Text { n / 1000.0 } else { n })
            }
        };
        if words.next().is_some() {
            return Err(self.error("unexpected text after the timestamp"));
        }
        let family_name = self.family_of(name);
        let help = self.help.get(&family_name).or_else(|| self.help.get(name)).cloned();
        let family = self.families.entry(family_name).or_insert_with(|| Family {
            kind: Kind::Unknown,
            help,
            unit: None,
            samples: Vec::new(),
        });
        family.samples.push(Sample { name: name.to_string(), labels, value: value.to_string(), timestamp });
        self.samples += 1;
        Ok(())
    }

    /// The family a sample named `name` belongs to: the open family when the name is its own
    /// or one of its kind's suffixed names, else a family of that name.
    fn family_of(&self, name: &str) -> String {
        if let Some(current) = &self.current
            && let Some(family) = self.families.get(current)
        {
            if name == current {
                return current.clone();
            }
            if let Some(suffix) = name.strip_prefix(current.as_str())
                && family.kind.suffixes().contains(&suffix)
            {
                return current.clone();
            }
        }
        name.to_string()
    }
}

/// Labels as read, in order.
type Labels = Vec<(String, String)>;

fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name `{}`", name.chars().take(64).collect::<String>()));
        }
        s = s[eq + 1..].trim_start().strip_prefix('"').ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("a bad escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

fn unescape(text: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            // Text 0.0.4 leaves other backslashes as they are.
            Some(other) if !quotes => {
                out.push('\\');
                out.push(other);
            }
            None if !quotes => out.push('\\'),
            _ => return Err("a bad escape in # HELP".into()),
        }
    }
    Ok(out)
}

/// A number as exposition writes it: a float, `NaN`, `+Inf`, `-Inf`.
pub fn parse_number(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => {
            s.parse::<f64>().ok().filter(|_| !s.eq_ignore_ascii_case("nan") && !s.to_ascii_lowercase().contains("inf"))
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
