//! Reading a metrics exposition — Prometheus text 0.0.4 or OpenMetrics 1.0 — line by line as
//! its body arrives, into families, so a body is never held whole beside its parsed form.
//!
//! Families are keyed by their OpenMetrics name: a text-format counter `# TYPE foo_total
//! counter` is family `foo` with sample `foo_total`, as the OpenMetrics counter `foo` is, so
//! both formats merge. Exemplars are dropped (consistently, from both formats); timestamps are
//! kept, in seconds.

use std::collections::HashMap;

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

/// One sample line, as offsets into its body (so the body is held once, never copied into
/// per-sample strings).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Where the line starts (its name).
    pub start: u32,
    /// Where the name ends.
    pub name_end: u32,
    /// Where the label block's `}` is (`name_end` when there is no label block).
    pub labels_end: u32,
    /// Whether the label block holds at least one label.
    pub has_labels: bool,
    /// The value's range.
    pub value: (u32, u32),
    /// Seconds since the epoch, when given.
    pub timestamp: Option<f64>,
    /// Bit `i` set: the sample has a label named as identity label `i` (see [`Parser::new`]).
    pub clash: u64,
}

/// A metric family of one body.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Its OpenMetrics name.
    pub name: String,
    /// Its type.
    pub kind: Kind,
    /// `# HELP`, unescaped.
    pub help: Option<String>,
    /// `# UNIT` (OpenMetrics).
    pub unit: Option<String>,
    /// Where its samples lie in [`Body::lines`]: one run, usually (a family's samples are
    /// written together); more only when another family's samples came between.
    first: std::ops::Range<u32>,
    more: Vec<std::ops::Range<u32>>,
}

impl Family {
    fn new(name: String, kind: Kind, help: Option<String>) -> Self {
        Self { name, kind, help, unit: None, first: 0..0, more: Vec::new() }
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.first.len() + self.more.iter().map(ExactSizeIterator::len).sum::<usize>()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Its sample lines in `body` (the body it was read from), in the order read.
    pub fn lines<'a>(&'a self, body: &'a Body) -> impl Iterator<Item = &'a Line> + 'a {
        std::iter::once(&self.first).chain(&self.more).flat_map(|run| &body.lines[run.start as usize..run.end as usize])
    }

    /// Records that line `at` of the body is one of its samples.
    fn add(&mut self, at: u32) {
        if self.first.is_empty() {
            self.first = at..at + 1;
        } else if let Some(last) = self.more.last_mut().filter(|r| r.end == at) {
            last.end += 1;
        } else if self.more.is_empty() && self.first.end == at {
            self.first.end += 1;
        } else {
            self.more.push(at..at + 1);
        }
    }
}

/// A parsed body: the bytes, once, and its families indexing into them.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The body as received.
    pub bytes: Vec<u8>,
    /// Its families in the order they first appear.
    pub families: Vec<Family>,
    /// Every sample line, in the order read (a family's are found by [`Family::lines`]): one
    /// vector for the body rather than one per family, which grows as often as it has families.
    pub lines: Vec<Line>,
    /// How many samples it holds.
    pub samples: usize,
}

impl Body {
    /// The text of `range` (validated UTF-8 when parsed).
    pub fn text(&self, from: u32, to: u32) -> &str {
        std::str::from_utf8(&self.bytes[from as usize..to as usize]).unwrap_or("")
    }

    /// The series name of `line`.
    pub fn name(&self, line: &Line) -> &str {
        self.text(line.start, line.name_end)
    }

    /// The series name of `line`, as bytes (ASCII: a name is checked when parsed).
    pub fn name_bytes(&self, line: &Line) -> &[u8] {
        &self.bytes[line.start as usize..line.name_end as usize]
    }
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
    /// The limit the body exceeded, when that is why (a valid body, too much of it).
    pub limit: Option<Limit>,
}

/// A limit a body can exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Samples in the body.
    Samples,
    /// Labels on one sample (its own, before identity labels are added).
    Labels,
    /// Bytes in a label name.
    LabelNameLength,
    /// Bytes in a label value (unescaped).
    LabelValueLength,
}

/// What one body may hold (0: no limit), as Prometheus' `sample_limit`, `label_limit`,
/// `label_name_length_limit` and `label_value_length_limit`. Parsing stops at the first line
/// over a limit, so a huge body costs no more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Samples per body.
    pub samples: usize,
    /// Labels per sample.
    pub labels: usize,
    /// Bytes per label name.
    pub label_name_length: usize,
    /// Bytes per label value.
    pub label_value_length: usize,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits { samples: 0, labels: 0, label_name_length: 0, label_value_length: 0 };
}

/// Whether `n` is over `limit` (0: no limit).
fn over(n: usize, limit: usize) -> bool {
    limit != 0 && n > limit
}

/// An incremental parser: feed it chunks as they arrive (each line is parsed once complete),
/// then finish.
#[derive(Debug)]
pub struct Parser {
    format: Format,
    bytes: Vec<u8>,
    /// Where the first line not parsed yet starts.
    scanned: usize,
    line: usize,
    families: Vec<Family>,
    lines: Vec<Line>,
    by_name: HashMap<String, usize>,
    /// The family the last `# TYPE` opened.
    current: Option<usize>,
    /// `# HELP` and `# UNIT` by the name written, until a `# TYPE` or sample claims them.
    help: HashMap<String, String>,
    unit: HashMap<String, String>,
    eof: bool,
    samples: usize,
    /// Label names whose presence on a sample is recorded in [`Line::clash`].
    identity: Vec<String>,
    limits: Limits,
    /// Where the bytes checked as UTF-8 end: a line reaching past it is not UTF-8.
    valid_to: usize,
}

impl Parser {
    /// A parser for a body in `format`; `identity` names the labels the caller will add, so
    /// samples already carrying one are marked (at most 64 are tracked).
    pub fn new(format: Format, identity: &[String]) -> Self {
        Self {
            format,
            bytes: Vec::new(),
            scanned: 0,
            line: 0,
            families: Vec::new(),
            lines: Vec::new(),
            by_name: HashMap::new(),
            current: None,
            help: HashMap::new(),
            unit: HashMap::new(),
            eof: false,
            samples: 0,
            identity: identity.iter().take(64).cloned().collect(),
            limits: Limits::NONE,
            valid_to: 0,
        }
    }

    /// The same parser, refusing a body over `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Bytes held so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `chunk` and parses every line it completes.
    ///
    /// # Errors
    /// The first line that is not valid exposition.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        if self.bytes.len() + chunk.len() > u32::MAX as usize {
            return Err(self.error("the body is too large to index"));
        }
        self.bytes.extend_from_slice(chunk);
        // The complete lines this chunk adds are checked as UTF-8 at once (a newline is never
        // inside a character), not line by line.
        let Some(last) = memchr::memrchr(b'\n', &self.bytes[self.scanned..]) else { return Ok(()) };
        let complete = self.scanned + last + 1;
        self.valid_to = match std::str::from_utf8(&self.bytes[self.scanned..complete]) {
            Ok(_) => complete,
            Err(e) => self.scanned + e.valid_up_to(),
        };
        while let Some(newline) = memchr::memchr(b'\n', &self.bytes[self.scanned..complete]) {
            let (from, to) = (self.scanned, self.scanned + newline);
            self.scanned = to + 1;
            self.parse_line(from, to)?;
        }
        Ok(())
    }

    /// Makes room for `additional` more bytes at once (a body's announced length), so a large
    /// body is not copied as it grows.
    pub fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
        // Sample lines are rarely shorter than 32 bytes.
        self.lines.reserve(additional / 32);
    }

    /// Parses what is left and returns the body with its families.
    ///
    /// # Errors
    /// A last line that is not valid exposition.
    pub fn finish(mut self) -> Result<Body, ParseError> {
        if self.scanned < self.bytes.len() {
            let (from, to) = (self.scanned, self.bytes.len());
            self.valid_to = match std::str::from_utf8(&self.bytes[from..to]) {
                Ok(_) => to,
                Err(e) => from + e.valid_up_to(),
            };
            self.scanned = to;
            self.parse_line(from, to)?;
        }
        Ok(Body { bytes: self.bytes, families: self.families, lines: self.lines, samples: self.samples })
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { line: self.line, message: message.into(), limit: None }
    }

    fn limit_error(&self, limit: Limit) -> ParseError {
        let message = match limit {
            Limit::Samples => format!("more than {} samples", self.limits.samples),
            Limit::Labels => format!("a sample with more than {} labels", self.limits.labels),
            Limit::LabelNameLength => format!("a label name longer than {} bytes", self.limits.label_name_length),
            Limit::LabelValueLength => format!("a label value longer than {} bytes", self.limits.label_value_length),
        };
        ParseError { line: self.line, message, limit: Some(limit) }
    }

    fn parse_line(&mut self, from: usize, to: usize) -> Result<(), ParseError> {
        self.line += 1;
        let mut end = to;
        if end > from && self.bytes[end - 1] == b'\r' {
            end -= 1;
        }
        if to > self.valid_to {
            return Err(self.error("not UTF-8"));
        }
        if !self.eof
            && let Some(line) = self.fast_sample(from, end)
        {
            if over(self.samples + 1, self.limits.samples) {
                return Err(self.limit_error(Limit::Samples));
            }
            self.add_sample(line);
            return Ok(());
        }
        let Ok(line) = std::str::from_utf8(&self.bytes[from..end]) else { return Err(self.error("not UTF-8")) };
        if self.eof {
            return if line.trim().is_empty() { Ok(()) } else { Err(self.error("content after # EOF")) };
        }
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix('#') {
            // The comment borrows the body while its family is updated: the body is set aside
            // meanwhile (a move, not a copy).
            let range = from + 1 + (comment.len() - comment.trim_start().len())..end;
            let bytes = std::mem::take(&mut self.bytes);
            let result = self.parse_comment(std::str::from_utf8(&bytes[range]).unwrap_or(""));
            self.bytes = bytes;
            return result;
        }
        if over(self.samples + 1, self.limits.samples) {
            return Err(self.limit_error(Limit::Samples));
        }
        let parsed = self.parse_sample(line, from)?;
        self.add_sample(parsed);
        Ok(())
    }

    /// The family named `name`, created with `kind` and `help` when there is none yet.
    fn family_index(&mut self, name: &str, kind: Kind, help: impl FnOnce(&Self) -> Option<String>) -> usize {
        if let Some(i) = self.by_name.get(name) {
            return *i;
        }
        let help = help(self);
        self.families.push(Family::new(name.to_string(), kind, help));
        self.by_name.insert(name.to_string(), self.families.len() - 1);
        self.families.len() - 1
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
                if let Some(i) = self.by_name.get(name) {
                    self.families[*i].help = Some(text.clone());
                }
                self.help.insert(name.to_string(), text);
            }
            "UNIT" => {
                if let Some(i) = self.by_name.get(name) {
                    self.families[*i].unit = Some(value.trim().to_string());
                }
                self.unit.insert(name.to_string(), value.trim().to_string());
            }
            _ => {
                let kind =
                    Kind::parse(value.trim()).ok_or_else(|| self.error(format!("unknown type `{}`", value.trim())))?;
                // A text-format counter names its family with `_total`; OpenMetrics does not.
                let family_name = match (kind, name.strip_suffix("_total")) {
                    (Kind::Counter, Some(base)) if self.format == Format::Text => base,
                    _ => name,
                };
                // The family takes them: no later line asks for them by this name again.
                let help = self.help.remove(name).or_else(|| self.help.remove(family_name));
                let unit = self.unit.remove(name);
                // The help was taken above; a new family needs no second look.
                let index = self.family_index(family_name, kind, |_| None);
                let family = &mut self.families[index];
                if family.kind != kind && !family.is_empty() {
                    return Err(self.error(format!("`{family_name}` is typed twice")));
                }
                family.kind = kind;
                family.help = family.help.take().or(help);
                family.unit = family.unit.take().or(unit);
                self.current = Some(index);
            }
        }
        Ok(())
    }

    /// Reads a sample line starting at byte `at` of the body.
    fn parse_sample(&self, line: &str, at: usize) -> Result<Line, ParseError> {
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        if !valid_metric_name(&line[..name_end]) {
            return Err(self.error("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let (mut labels_end, mut has_labels, mut clash) = (name_end, false, 0u64);
        if let Some(inside) = rest.strip_prefix('{') {
            let (mut count, mut exceeded) = (0usize, None);
            let limits = self.limits;
            let mut names = |label: &str, value_length: usize| {
                has_labels = true;
                count += 1;
                if exceeded.is_none() {
                    exceeded = if over(count, limits.labels) {
                        Some(Limit::Labels)
                    } else if over(label.len(), limits.label_name_length) {
                        Some(Limit::LabelNameLength)
                    } else if over(value_length, limits.label_value_length) {
                        Some(Limit::LabelValueLength)
                    } else {
                        None
                    };
                }
                if let Some(i) = self.identity.iter().position(|n| n == label) {
                    clash |= 1 << i;
                }
            };
            let after = scan_labels(inside, &mut names).map_err(|m| self.error(m))?;
            if let Some(limit) = exceeded {
                return Err(self.limit_error(limit));
            }
            labels_end = line.len() - after.len() - 1;
            rest = after;
        }
        // Exemplars (` # {...} v [ts]`) are dropped.
        let rest = if rest.contains('#') { rest.split(" # ").next().unwrap_or("") } else { rest };
        let mut words = rest.split_ascii_whitespace();
        let value = words.next().ok_or_else(|| self.error("no value"))?;
        if !is_number(value) {
            return Err(self.error(format!("`{}` is not a number", value.chars().take(32).collect::<String>())));
        }
        let value_start = value.as_ptr() as usize - line.as_ptr() as usize;
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
        let at32 = |offset: usize| (at + offset) as u32;
        Ok(Line {
            start: at as u32,
            name_end: at32(name_end),
            labels_end: at32(labels_end),
            has_labels,
            value: (at32(value_start), at32(value_start + value.len())),
            timestamp,
            clash,
        })
    }

    fn add_sample(&mut self, line: Line) {
        let range = line.start as usize..line.name_end as usize;
        let known = self.family_of(&self.bytes[range.clone()]);
        let index = match known {
            Some(index) => index,
            None => {
                // Only a family not seen yet costs an allocation.
                let name = String::from_utf8_lossy(&self.bytes[range]).into_owned();
                self.family_index(&name, Kind::Unknown, |parser| parser.help.get(&name).cloned())
            }
        };
        self.families[index].add(self.lines.len() as u32);
        self.lines.push(line);
        self.samples += 1;
    }

    /// The family a sample named `name` belongs to: the open family when the name is its own
    /// or one of its kind's suffixed names, else the family of that name if one exists.
    fn family_of(&self, name: &[u8]) -> Option<usize> {
        if let Some(current) = self.current {
            let family = &self.families[current];
            if let Some(suffix) = name.strip_prefix(family.name.as_bytes())
                && (suffix.is_empty() || family.kind.suffixes().iter().any(|s| s.as_bytes() == suffix))
            {
                return Some(current);
            }
        }
        self.by_name.get(std::str::from_utf8(name).ok()?).copied()
    }

    /// Reads a sample line of `bytes[from..end]` in one pass over its bytes, for the lines
    /// nearly every body is made of: a name, a label block without surprises, a plain value and
    /// perhaps a timestamp. `None` for anything else — an exemplar, odd spacing, a bad escape,
    /// a limit reached, any error — which [`Parser::parse_sample`] then reads (or refuses, with
    /// its message) as before; the two agree on every line this one accepts (see the tests).
    fn fast_sample(&self, from: usize, end: usize) -> Option<Line> {
        let b = &self.bytes[from..end];
        if !NAME_START[usize::from(*b.first()?)] {
            return None;
        }
        let mut i = 1;
        while i < b.len() && NAME[usize::from(b[i])] {
            i += 1;
        }
        let name_end = i;
        let (mut labels_end, mut has_labels, mut clash) = (name_end, false, 0u64);
        if b.get(i) == Some(&b'{') {
            i += 1;
            let mut count = 0usize;
            loop {
                match *b.get(i)? {
                    b'}' => break,
                    c if LABEL_START[usize::from(c)] => {}
                    _ => return None,
                }
                let label_start = i;
                i += 1;
                while i < b.len() && LABEL[usize::from(b[i])] {
                    i += 1;
                }
                let label = &b[label_start..i];
                if b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
                    return None;
                }
                i += 2;
                let value_start = i;
                let mut escapes = 0;
                loop {
                    let at = i + memchr::memchr2(b'"', b'\\', &b[i..])?;
                    if b[at] == b'"' {
                        i = at;
                        break;
                    }
                    if !matches!(b.get(at + 1), Some(b'n' | b'\\' | b'"')) {
                        return None;
                    }
                    escapes += 1;
                    i = at + 2;
                }
                count += 1;
                let value_length = i - value_start - escapes;
                if over(count, self.limits.labels)
                    || over(label.len(), self.limits.label_name_length)
                    || over(value_length, self.limits.label_value_length)
                {
                    return None;
                }
                has_labels = true;
                if let Some(k) = self.identity.iter().position(|n| n.as_bytes() == label) {
                    clash |= 1 << k;
                }
                i += 1;
                match *b.get(i)? {
                    b',' => i += 1,
                    b'}' => {}
                    _ => return None,
                }
            }
            labels_end = i;
            i += 1;
        }
        // One space, the value, and perhaps one space and a timestamp: anything else (tabs,
        // runs of spaces, an exemplar) is the careful reader's.
        if b.get(i) != Some(&b' ') {
            return None;
        }
        let value_start = i + 1;
        let value_end = value_start + memchr::memchr(b' ', &b[value_start..]).unwrap_or(b.len() - value_start);
        let value = &b[value_start..value_end];
        if !(plain_decimal(value) || is_special(value) || is_number(std::str::from_utf8(value).ok()?)) {
            return None;
        }
        let timestamp = if value_end == b.len() {
            None
        } else {
            let t = &b[value_end + 1..];
            if t.is_empty() || t.iter().any(|c| c.is_ascii_whitespace() || *c == b'#') {
                return None;
            }
            let n = parse_number(std::str::from_utf8(t).ok()?).filter(|n| n.is_finite())?;
            Some(if self.format == Format::Text { n / 1000.0 } else { n })
        };
        let at = |offset: usize| (from + offset) as u32;
        Some(Line {
            start: at(0),
            name_end: at(name_end),
            labels_end: at(labels_end),
            has_labels,
            value: (at(value_start), at(value_end)),
            timestamp,
            clash,
        })
    }
}

/// Walks a label block after its `{`, calling `each` with every label name and the length of
/// its value once unescaped; returns what follows the closing `}`.
fn scan_labels<'a>(mut s: &'a str, each: &mut impl FnMut(&str, usize)) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name `{}`", name.chars().take(64).collect::<String>()));
        }
        s = s[eq + 1..].trim_start().strip_prefix('"').ok_or("a label value without quotes")?;
        let bytes = s.as_bytes();
        let (mut i, mut escapes) = (0, 0);
        let end = loop {
            match bytes.get(i) {
                None => return Err("an unterminated label value".into()),
                Some(b'"') => break i,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'n' | b'\\' | b'"') => {
                        i += 2;
                        escapes += 1;
                    }
                    _ => return Err("a bad escape in a label value".into()),
                },
                Some(_) => i += 1,
            }
        };
        each(name, end - escapes);
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

/// The labels of a label block (`{...}` included), values unescaped; empty when malformed.
pub fn label_pairs(block: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let Some(mut s) = block.strip_prefix('{') else { return pairs };
    loop {
        s = s.trim_start();
        if s.starts_with('}') || s.is_empty() {
            return pairs;
        }
        let Some((name, rest)) = s.split_once('=') else { return pairs };
        let Some(rest) = rest.trim_start().strip_prefix('"') else { return pairs };
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return pairs,
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return pairs,
                },
                Some((_, c)) => value.push(c),
            }
        };
        pairs.push((name.trim().to_string(), value));
        s = rest[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// A sample spelled out: name, labels, value.
pub type SampleText = (String, Vec<(String, String)>, String);

impl Body {
    /// Every sample as (name, labels, value), for tests and tools.
    pub fn samples(&self) -> Vec<SampleText> {
        self.families
            .iter()
            .flat_map(|f| f.lines(self))
            .map(|l| {
                let labels = if l.labels_end > l.name_end {
                    label_pairs(self.text(l.name_end, l.labels_end + 1))
                } else {
                    Vec::new()
                };
                (self.name(l).to_string(), labels, self.text(l.value.0, l.value.1).to_string())
            })
            .collect()
    }
}

/// The label names of a label block (`{...}` included), for the rare sample whose labels clash
/// with the ones being added.
pub fn label_names(block: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(inside) = block.strip_prefix('{') {
        let _ = scan_labels(inside, &mut |n: &str, _| names.push(n.to_string()));
    }
    names
}

fn unescape(text: &str, quotes: bool) -> Result<String, String> {
    if !text.contains('\\') {
        return Ok(text.to_string());
    }
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

/// Whether `s` is a number as exposition writes it. Plain decimals (most values) are
/// recognized without a float parse.
pub fn is_number(s: &str) -> bool {
    plain_decimal(s.as_bytes()) || parse_number(s).is_some()
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

/// `NaN`, `+Inf`, `-Inf`, `Inf`: valid without parsing.
fn is_special(b: &[u8]) -> bool {
    matches!(b, b"NaN" | b"+Inf" | b"-Inf" | b"Inf")
}

/// A byte class, as a table indexed by the byte.
type Class = [bool; 256];

/// Builds the class of letters and `_`, with digits and `:` when asked.
const fn class(digits: bool, colon: bool) -> Class {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphabetic() || c == b'_' || (digits && c.is_ascii_digit()) || (colon && c == b':');
        b += 1;
    }
    table
}

/// The first byte of a metric name: `[a-zA-Z_:]`.
static NAME_START: Class = class(false, true);
/// The rest of a metric name: `[a-zA-Z0-9_:]`.
static NAME: Class = class(true, true);
/// The first byte of a label name: `[a-zA-Z_]`.
static LABEL_START: Class = class(false, false);
/// The rest of a label name: `[a-zA-Z0-9_]`.
static LABEL: Class = class(true, false);

/// `-?digits[.digits]`: valid without parsing.
fn plain_decimal(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let (int, frac) = match digits.iter().position(|c| *c == b'.') {
        Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
        None => (digits, None),
    };
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
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
