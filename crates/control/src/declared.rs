//! Declared targets: files of target documents (YAML or JSON; one target or a list per file),
//! read and judged exactly as the API judges a request, and the plan that brings the registry
//! to what they declare. Control applies the plan for `control.targets_dir`; `caracal apply`
//! prints and applies it through the API.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use caracal_store::target::{Target, TargetDigest, TargetSpec};

/// A file that does not parse or validate, or a declaration that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct Problem {
    /// The file.
    pub file: String,
    /// The line (1-based; 0 when the file as a whole is at fault).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// A target and the file that declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The document.
    pub spec: TargetSpec,
    /// The file's path.
    pub file: String,
}

/// What a set of files declares: the targets (first declaration of a name wins), the problems,
/// and a fingerprint of the files' names and contents (unchanged files need no reconciling).
#[derive(Debug, Default)]
pub struct Files {
    /// Every valid declaration.
    pub targets: Vec<Declared>,
    /// Every problem; the targets of a file with a problem are left as they are.
    pub problems: Vec<Problem>,
    /// A hash of every file's path and contents.
    pub fingerprint: u64,
}

impl Files {
    /// Files that have a problem: the registry's targets they declared are kept as they are.
    pub fn broken(&self) -> BTreeSet<&str> {
        self.problems.iter().map(|p| p.file.as_str()).collect()
    }
}

/// Whether `path` names a file of declarations (`.yaml`, `.yml`, `.json`; hidden files, such as
/// a Kubernetes ConfigMap mount's `..data`, are not).
fn declares(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// The declaring files of `path` (itself, or those directly in the directory), in name order.
fn paths(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && declares(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// A hash of what the file system says of `path`'s declaring files — names, sizes, change
/// times and inodes (a ConfigMap's swapped link shows as another inode) — without reading
/// them: what a poll costs while nothing changes, however many targets they declare.
pub fn stamp(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut hasher = std::hash::DefaultHasher::new();
    match paths(path) {
        Ok(paths) => {
            for path in paths {
                path.hash(&mut hasher);
                if let Ok(m) = std::fs::metadata(&path) {
                    (m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.ino(), m.dev()).hash(&mut hasher);
                }
            }
        }
        Err(e) => e.kind().hash(&mut hasher),
    }
    hasher.finish()
}

/// Reads `path`: a file, or every declaring file directly in a directory (in name order).
pub fn read(path: &Path) -> Files {
    // Read once: no memory of items to keep, but a block list's items are still read on two
    // threads (a file of 50,000 targets is most of `caracal apply`'s time).
    read_with(path, &mut |file, text| read_by_items(file, text).map_or_else(|| parse(file, text), Ok))
}

/// A reader that remembers the items of the lists it read, so reading a file again after one
/// of its 50,000 items changed parses that item, not the file (see [`Reader::read`]).
#[derive(Debug, Default)]
pub struct Reader {
    /// Valid documents by a hash of the text of the list item they were read from.
    items: HashMap<u64, TargetSpec>,
}

impl Reader {
    /// As [`read`], parsing only the list items whose text it has not read before.
    ///
    /// A YAML file that is a block list (its items start at column 0 with `- `) is cut at its
    /// items and each item not seen before is read on its own. When any item does not read on
    /// its own or does not validate (an alias to another item's anchor, a second document,
    /// anything unusual), the whole file is read as before, so what a file means and the
    /// problems it reports never depend on this.
    pub fn read(&mut self, path: &Path) -> Files {
        let mut kept = HashMap::with_capacity(self.items.len());
        let files = read_with(path, &mut |file, text| match self.items_of(file, text, &mut kept) {
            Some(specs) => Ok(specs),
            None => parse(file, text),
        });
        self.items = kept;
        files
    }

    /// The documents of a block list's items, from memory or read one by one; `None` when the
    /// file is not such a list or an item does not read alone.
    fn items_of(&mut self, file: &str, text: &str, kept: &mut HashMap<u64, TargetSpec>) -> Option<Vec<TargetSpec>> {
        if file.ends_with(".json") {
            return None;
        }
        let items: Vec<(u64, &str)> = list_items(text)?
            .into_iter()
            .map(|item| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                item.hash(&mut hasher);
                (hasher.finish(), item)
            })
            .collect();
        // The items not read before, read on two threads when there are many (a new file of
        // 50,000 is most of a second on one): the parser allocates for every event, so each
        // thread's own allocator arena halves the time.
        let new: Vec<(u64, &str)> =
            items.iter().filter(|(key, _)| !self.items.contains_key(key) && !kept.contains_key(key)).copied().collect();
        let keys: Vec<u64> = new.iter().map(|(key, _)| *key).collect();
        let texts: Vec<&str> = new.iter().map(|(_, item)| *item).collect();
        let mut fresh: HashMap<u64, TargetSpec> = keys.into_iter().zip(read_items(&texts)?).collect();
        let mut specs = Vec::with_capacity(items.len());
        for (key, _) in items {
            // Moved from the last read's memory into this one's: one copy per item, for the
            // caller.
            let spec = self.items.remove(&key).or_else(|| fresh.remove(&key)).or_else(|| kept.get(&key).cloned())?;
            specs.push(spec.clone());
            kept.insert(key, spec);
        }
        Some(specs)
    }
}

/// How many unread items make [`Reader`] read them on two threads.
const PARALLEL_FROM: usize = 2_000;

/// The documents of `items` (list items' texts), in order, read on two threads when there
/// are many; `None` when one does not read alone or is invalid.
fn read_items(items: &[&str]) -> Option<Vec<TargetSpec>> {
    let read_all = |items: &[&str]| -> Option<Vec<TargetSpec>> { items.iter().map(|item| read_item(item)).collect() };
    if items.len() < PARALLEL_FROM {
        return read_all(items);
    }
    let (first, second) = items.split_at(items.len() / 2);
    let (first, second) = std::thread::scope(|scope| {
        let other = scope.spawn(|| read_all(second));
        (read_all(first), other.join().ok().flatten())
    });
    let mut specs = first?;
    specs.extend(second?);
    Some(specs)
}

/// A file's documents read item by item, when it is a YAML block list whose every item reads
/// alone (see [`Reader::read`]); `None` otherwise.
fn read_by_items(file: &str, text: &str) -> Option<Vec<TargetSpec>> {
    if file.ends_with(".json") {
        return None;
    }
    read_items(&list_items(text)?)
}

/// One list item's document, when it reads alone and is valid.
fn read_item(item: &str) -> Option<TargetSpec> {
    let mut one = serde_yaml_ng::from_str::<Vec<TargetSpec>>(item).ok()?;
    let spec = one.pop().filter(|_| one.is_empty())?;
    spec.validate().ok()?;
    Some(spec)
}

/// The items of a YAML block list at column 0, each with its text (`- ` and what follows up to
/// the next item); `None` when the text is not such a list (its first content is not an item,
/// or a line at column 0 is neither an item, a comment nor blank, such as a second document).
fn list_items(text: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        let item = content == "-" || content.starts_with("- ");
        if item {
            if let Some(from) = start {
                items.push(&text[from..offset]);
            }
            start = Some(offset);
        } else if start.is_none() {
            // Before the first item: comments, blanks and one leading `---` only.
            let trimmed = content.trim();
            if !(trimmed.is_empty() || trimmed.starts_with('#') || (trimmed == "---" && offset == 0)) {
                return None;
            }
        } else if !(content.is_empty() || content.starts_with([' ', '#'])) {
            return None;
        }
        offset += line.len();
    }
    items.push(&text[start?..]);
    Some(items)
}

/// Reads a file's documents from its name and text.
type Documents<'a> = dyn FnMut(&str, &str) -> Result<Vec<TargetSpec>, Problem> + 'a;

/// Reads every declaring file of `path`, each file's documents from `documents`.
fn read_with(path: &Path, documents: &mut Documents<'_>) -> Files {
    let mut files = Files::default();
    let paths = match paths(path) {
        Ok(paths) => paths,
        Err(e) => {
            files.problems.push(Problem { file: path.display().to_string(), line: 0, message: e.to_string() });
            return files;
        }
    };
    let mut hasher = std::hash::DefaultHasher::new();
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for path in paths {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                files.problems.push(Problem { file, line: 0, message: e.to_string() });
                continue;
            }
        };
        std::hash::Hash::hash(&(&file, &text), &mut hasher);
        match documents(&file, &text) {
            Ok(specs) => {
                for spec in specs {
                    if let Some(other) = first.get(&spec.name) {
                        files.problems.push(Problem {
                            line: line_of(&text, &spec.name),
                            message: format!("target `{}` is declared in `{other}` already", spec.name),
                            file: file.clone(),
                        });
                        continue;
                    }
                    first.insert(spec.name.clone(), file.clone());
                    files.targets.push(Declared { spec, file: file.clone() });
                }
            }
            Err(problem) => files.problems.push(problem),
        }
    }
    files.fingerprint = std::hash::Hasher::finish(&hasher);
    files
}

/// Parses and validates one file's text: a target or a list of targets, JSON for `.json`,
/// YAML otherwise.
///
/// # Errors
/// The first [`Problem`], with its line: a syntax error, a field of the wrong type or unknown,
/// or a value the API would refuse (naming the target and field).
pub fn parse(file: &str, text: &str) -> Result<Vec<TargetSpec>, Problem> {
    let problem = |line: usize, message: String| Problem { file: file.into(), line, message };
    let specs: Vec<TargetSpec> = if file.ends_with(".json") {
        let list = text.trim_start().starts_with('[');
        let parsed = if list {
            serde_json::from_str::<Vec<TargetSpec>>(text)
        } else {
            serde_json::from_str::<TargetSpec>(text).map(|s| vec![s])
        };
        parsed.map_err(|e| problem(e.line(), e.to_string()))?
    } else {
        // Read once, as the list or the single document its first line shows; only when that
        // fails is the text read again, generically, to tell which it is and where it breaks
        // (a file of 50,000 targets was read twice on every change before).
        let first = text
            .lines()
            .map(str::trim_start)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("---") && !l.starts_with('%'));
        let list = first.is_some_and(|l| l.starts_with('-') || l.starts_with('['));
        let quick = if list {
            serde_yaml_ng::from_str::<Vec<TargetSpec>>(text)
        } else {
            serde_yaml_ng::from_str::<TargetSpec>(text).map(|s| vec![s])
        };
        match quick {
            Ok(specs) => specs,
            Err(_) => {
                let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
                    .map_err(|e| problem(e.location().map_or(0, |l| l.line()), e.to_string()))?;
                let parsed = if value.is_sequence() {
                    serde_yaml_ng::from_str::<Vec<TargetSpec>>(text)
                } else {
                    serde_yaml_ng::from_str::<TargetSpec>(text).map(|s| vec![s])
                };
                parsed.map_err(|e| problem(e.location().map_or(0, |l| l.line()), e.to_string()))?
            }
        }
    };
    for spec in &specs {
        if let Err(invalid) = spec.validate() {
            let what = if spec.name.is_empty() { "a target".to_string() } else { format!("target `{}`", spec.name) };
            return Err(problem(line_of(text, &spec.name), format!("{what}: {invalid}")));
        }
    }
    Ok(specs)
}

/// The line a target's name is declared on (1 when it cannot be told).
pub(crate) fn line_of(text: &str, name: &str) -> usize {
    if name.is_empty() {
        return 1;
    }
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            (line.starts_with("name:") || line.starts_with("\"name\"")) && line.contains(name)
        })
        .map_or(1, |i| i + 1)
}

/// One change a plan makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Register a target the files declare and the registry lacks.
    Create(Declared),
    /// Replace a target whose document differs (the fields that differ are listed).
    Update(Declared, Vec<&'static str>),
    /// Delete a target no file declares any more.
    Delete(String),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Create(d) => write!(f, "create {} ({})", d.spec.name, d.file),
            Step::Update(d, fields) => write!(f, "update {} ({}: {})", d.spec.name, d.file, fields.join(", ")),
            Step::Delete(name) => write!(f, "delete {name}"),
        }
    }
}

/// The steps that bring `existing` to `declared`: create what is missing, update what
/// differs, and delete the existing targets no file declares for which `prunable` says yes.
pub fn plan(declared: &[Declared], existing: &[Target], prunable: impl Fn(&Target) -> bool) -> Vec<Step> {
    let by_name: BTreeMap<&str, &Target> = existing.iter().map(|t| (t.spec.name.as_str(), t)).collect();
    let mut steps = Vec::new();
    for d in declared {
        match by_name.get(d.spec.name.as_str()) {
            None => steps.push(Step::Create(d.clone())),
            Some(target) => steps.extend(update(d, target)),
        }
    }
    let wanted: BTreeSet<&str> = declared.iter().map(|d| d.spec.name.as_str()).collect();
    for target in existing {
        if !wanted.contains(target.spec.name.as_str()) && prunable(target) {
            steps.push(Step::Delete(target.spec.name.clone()));
        }
    }
    steps
}

/// The update that brings `target` to `d`, if it differs.
fn update(d: &Declared, target: &Target) -> Option<Step> {
    let mut fields = differences(&d.spec, &target.spec);
    if target.managed_by == "control" && target.declared_in.as_deref() != Some(d.file.as_str()) {
        fields.push("declared_in");
    }
    (!fields.is_empty()).then(|| Step::Update(d.clone(), fields))
}

/// Which documents a plan against a listing of digests must read: the declared targets whose
/// digest (or declaring file) differs from the registry's, and the listed ones no file declares
/// that `maybe_prunable` cannot rule out without their document.
pub fn to_read(
    declared: &[Declared],
    listed: &[TargetDigest],
    maybe_prunable: impl Fn(&TargetDigest) -> bool,
) -> Vec<String> {
    let by_name: HashMap<&str, &TargetDigest> = listed.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut names = Vec::new();
    for d in declared {
        if let Some(listed) = by_name.get(d.spec.name.as_str()) {
            let moved = listed.managed_by == "control" && listed.declared_in.as_deref() != Some(d.file.as_str());
            if moved || listed.digest != d.spec.digest() {
                names.push(listed.name.clone());
            }
        }
    }
    let wanted: HashSet<&str> = declared.iter().map(|d| d.spec.name.as_str()).collect();
    names.extend(
        listed.iter().filter(|t| !wanted.contains(t.name.as_str()) && maybe_prunable(t)).map(|t| t.name.clone()),
    );
    names
}

/// As [`plan`], against a listing of digests and the documents [`to_read`] named (`read`): a
/// listed target whose document was not read is one whose digest matched, so it stays.
pub fn plan_by_digest(
    declared: &[Declared],
    listed: &[TargetDigest],
    read: &[Target],
    prunable: impl Fn(&Target) -> bool,
) -> Vec<Step> {
    let listed: HashSet<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    let read_by_name: HashMap<&str, &Target> = read.iter().map(|t| (t.spec.name.as_str(), t)).collect();
    let mut steps = Vec::new();
    for d in declared {
        let name = d.spec.name.as_str();
        match read_by_name.get(name) {
            Some(target) => steps.extend(update(d, target)),
            None if !listed.contains(name) => steps.push(Step::Create(d.clone())),
            None => {}
        }
    }
    let wanted: HashSet<&str> = declared.iter().map(|d| d.spec.name.as_str()).collect();
    let mut undeclared: Vec<&Target> =
        read.iter().filter(|t| !wanted.contains(t.spec.name.as_str()) && prunable(t)).collect();
    undeclared.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    steps.extend(undeclared.into_iter().map(|t| Step::Delete(t.spec.name.clone())));
    steps
}

/// The fields in which `want` differs from `have` (instances as sets; a discovered target's
/// instances are control's, not the document's).
fn differences(want: &TargetSpec, have: &TargetSpec) -> Vec<&'static str> {
    let mut fields = Vec::new();
    fn sorted(v: &[String]) -> BTreeSet<&String> {
        v.iter().collect()
    }
    if want.discovery.is_none() && sorted(&want.instances) != sorted(&have.instances) {
        fields.push("instances");
    }
    // No block and a block of defaults judge alike.
    let degraded = |spec: &TargetSpec| spec.degraded.clone().unwrap_or_default();
    let pairs: [(&'static str, bool); 11] = [
        ("discovery", want.discovery != have.discovery),
        ("health_path", want.health_path != have.health_path),
        ("ready_path", want.ready_path != have.ready_path),
        ("metrics_path", want.metrics_path != have.metrics_path),
        ("interval_ms", want.interval_ms != have.interval_ms),
        ("timeout_ms", want.timeout_ms != have.timeout_ms),
        ("labels", want.labels != have.labels),
        ("tls", want.tls != have.tls),
        ("grpc_service", want.grpc_service != have.grpc_service),
        ("credential", want.credential != have.credential),
        ("degraded", degraded(want) != degraded(have)),
    ];
    fields.extend(pairs.into_iter().filter(|(_, differs)| *differs).map(|(name, _)| name));
    fields
}

#[cfg(test)]
mod tests;
