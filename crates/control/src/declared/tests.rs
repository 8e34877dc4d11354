use super::*;

fn target(spec: serde_json::Value, managed_by: &str, declared_in: Option<&str>) -> Target {
    Target {
        spec: serde_json::from_value(spec).expect("a spec"),
        created_at: String::new(),
        updated_at: String::new(),
        paused_at: None,
        managed_by: managed_by.into(),
        declared_in: declared_in.map(String::from),
        discovery_status: None,
        certificates: Vec::new(),
        degraded_instances: Vec::new(),
    }
}

#[test]
fn a_file_holds_one_target_or_a_list_in_yaml_or_json() {
    let one = "name: shop\ninstances: [\"http://127.0.0.1:7001\"]\nlabels: {team: payments}\n";
    let specs = parse("a.yaml", one).expect("one target");
    assert_eq!((specs.len(), specs[0].labels["team"].as_str()), (1, "payments"));
    let list = "- name: a\n  instances: [\"http://h:1\"]\n- name: b\n  discovery: {dns: {name: b.test, port: 80}}\n";
    let specs = parse("b.yml", list).expect("a list");
    assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(specs[1].interval_ms, 5_000, "the API's defaults apply");
    let tls =
        "name: t\ninstances: [\"https://h:443\"]\ntls:\n  server_name: h.internal\n  insecure_skip_verify: true\n";
    let specs = parse("t.yaml", tls).expect("a TLS block in YAML");
    assert_eq!(
        specs[0].tls.as_ref().map(|t| (t.server_name.as_deref(), t.insecure_skip_verify)),
        Some((Some("h.internal"), true))
    );
    assert!(parse("u.yaml", "name: u\ninstances: [\"https://h:443\"]\ntls: [1]\n").is_err(), "tls is a mapping");
    let json = r#"[{"name": "c", "instances": ["http://h:1"]}]"#;
    assert_eq!(parse("c.json", json).expect("json").len(), 1);
}

#[test]
fn a_broken_file_names_its_line() {
    let syntax = "name: shop\ninstances: [\"http://h:1\"\nlabels: {}\n";
    let p = parse("s.yaml", syntax).expect_err("bad syntax");
    assert!(p.line >= 2, "{p}");
    let unknown = "name: shop\ninstances: [\"http://h:1\"]\nintervall_ms: 5\n";
    let p = parse("u.yaml", unknown).expect_err("unknown field");
    assert_eq!(p.line, 3, "{p}");
    assert!(p.message.contains("intervall_ms"), "{p}");
    let invalid = "- name: ok\n  instances: [\"http://h:1\"]\n- name: srv\n  discovery: {dns: {name: _x._tcp.t, type: SRV, port: 80}}\n";
    let p = parse("v.yaml", invalid).expect_err("invalid value");
    assert_eq!(p.line, 3, "{p}");
    assert!(p.message.contains("target `srv`: discovery.dns.port"), "{p}");
    let p = parse("j.json", "{\"name\": \"x\",\n \"instances\": 7}").expect_err("wrong type");
    assert_eq!(p.line, 2, "{p}");
}

#[test]
fn a_directory_reads_its_declaring_files_and_reports_duplicates() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("a.yaml"), "name: shop\ninstances: [\"http://h:1\"]\n").expect("write");
    std::fs::write(dir.path().join("b.json"), r#"{"name": "shop", "instances": ["http://h:2"]}"#).expect("write");
    std::fs::write(dir.path().join("README.md"), "not a target").expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "broken: [").expect("write");
    let files = read(dir.path());
    assert_eq!(files.targets.len(), 1);
    assert!(files.targets[0].file.ends_with("a.yaml"));
    assert_eq!(files.problems.len(), 1);
    assert!(files.problems[0].message.contains("declared in"), "{:?}", files.problems);
    let again = read(dir.path());
    assert_eq!(files.fingerprint, again.fingerprint, "unchanged files, unchanged fingerprint");
    std::fs::write(dir.path().join("a.yaml"), "name: shop\ninstances: [\"http://h:3\"]\n").expect("write");
    assert_ne!(read(dir.path()).fingerprint, files.fingerprint);
}

/// Declared targets and registered ones: one of each kind of step, and several that differ only
/// in ways a plan ignores.
fn scenario() -> (Vec<Declared>, Vec<Target>) {
    let declared =
        |spec: serde_json::Value| Declared { spec: serde_json::from_value(spec).expect("spec"), file: "t.yaml".into() };
    let want = vec![
        declared(serde_json::json!({"name": "new", "instances": ["http://h:1"]})),
        declared(serde_json::json!({"name": "same", "instances": ["http://h:2", "http://h:1"]})),
        declared(serde_json::json!({"name": "moved", "instances": ["http://h:1"], "interval_ms": 1000})),
        declared(serde_json::json!({"name": "dns", "discovery": {"dns": {"name": "d.test", "port": 1}}})),
        declared(
            serde_json::json!({"name": "tls", "instances": ["https://h:1"], "tls": {"insecure_skip_verify": true}}),
        ),
        declared(serde_json::json!({"name": "scraped", "instances": ["http://h:1"], "credential": "payments"})),
        declared(serde_json::json!({"name": "calm", "instances": ["http://h:1"], "degraded": {"enabled": false}})),
        declared(serde_json::json!({"name": "defaults", "instances": ["http://h:1"], "degraded": {}})),
    ];
    let have = vec![
        target(serde_json::json!({"name": "tls", "instances": ["https://h:1"]}), "control", Some("t.yaml")),
        target(
            serde_json::json!({"name": "same", "instances": ["http://h:1", "http://h:2"]}),
            "control",
            Some("t.yaml"),
        ),
        target(serde_json::json!({"name": "moved", "instances": ["http://h:1"]}), "control", Some("t.yaml")),
        target(
            serde_json::json!({"name": "dns", "discovery": {"dns": {"name": "d.test", "port": 1}}}),
            "control",
            Some("t.yaml"),
        ),
        target(serde_json::json!({"name": "gone", "instances": ["http://h:1"]}), "control", Some("t.yaml")),
        target(serde_json::json!({"name": "theirs", "instances": ["http://h:1"]}), "api", None),
        target(serde_json::json!({"name": "scraped", "instances": ["http://h:1"]}), "control", Some("t.yaml")),
        target(serde_json::json!({"name": "calm", "instances": ["http://h:1"]}), "control", Some("t.yaml")),
        target(serde_json::json!({"name": "defaults", "instances": ["http://h:1"]}), "control", Some("t.yaml")),
        target(serde_json::json!({"name": "elsewhere", "instances": ["http://h:1"]}), "control", Some("u.yaml")),
    ];
    let mut want = want;
    want.push(declared(serde_json::json!({"name": "elsewhere", "instances": ["http://h:1"]})));
    (want, have)
}

/// What [`scenario`] plans to.
const PLANNED: [&str; 7] = [
    "create new (t.yaml)",
    "update moved (t.yaml: interval_ms)",
    "update tls (t.yaml: tls)",
    "update scraped (t.yaml: credential)",
    "update calm (t.yaml: degraded)",
    "update elsewhere (t.yaml: declared_in)",
    "delete gone",
];

#[test]
fn a_plan_creates_updates_and_deletes_only_what_it_may() {
    let (want, have) = scenario();
    let steps = plan(&want, &have, |t| t.managed_by == "control");
    let lines: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(lines, PLANNED);
}

/// Planned against digests, the same steps come out, reading only the documents that differ
/// (and the undeclared ones that might be pruned).
#[test]
fn a_plan_by_digest_reads_only_what_differs_and_plans_the_same() {
    let (want, have) = scenario();
    let listed: Vec<TargetDigest> = have
        .iter()
        .map(|t| TargetDigest {
            name: t.spec.name.clone(),
            managed_by: t.managed_by.clone(),
            declared_in: t.declared_in.clone(),
            digest: t.spec.digest(),
        })
        .collect();
    let mut names = to_read(&want, &listed, |t| t.managed_by == "control");
    names.sort();
    assert_eq!(names, ["calm", "elsewhere", "gone", "moved", "scraped", "tls"]);
    let read: Vec<Target> = have.iter().filter(|t| names.contains(&t.spec.name)).cloned().collect();
    let steps = plan_by_digest(&want, &listed, &read, |t| t.managed_by == "control");
    let lines: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(lines, PLANNED);
}

/// Two documents have one digest exactly when a plan finds no difference between them: every
/// compared field moves it, and what a plan ignores does not.
#[test]
fn a_digest_changes_exactly_when_a_plan_sees_a_difference() {
    let spec = |value: serde_json::Value| -> TargetSpec { serde_json::from_value(value).expect("spec") };
    let base = serde_json::json!({"name": "a", "instances": ["http://h:1", "http://h:2"], "labels": {"team": "x"}});
    let with = |key: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v[key] = value;
        spec(v)
    };
    let a = spec(base.clone());
    let alike = [
        with("instances", serde_json::json!(["http://h:2", "http://h:1"])),
        with("degraded", serde_json::json!({})),
        with("name", serde_json::json!("b")),
        with("interval_ms", serde_json::json!(5000)),
    ];
    let different = [
        with("instances", serde_json::json!(["http://h:1"])),
        with("health_path", serde_json::json!("/h")),
        with("ready_path", serde_json::json!("/r")),
        with("metrics_path", serde_json::json!("/m")),
        with("interval_ms", serde_json::json!(1000)),
        with("timeout_ms", serde_json::json!(500)),
        with("labels", serde_json::json!({"team": "y"})),
        with("tls", serde_json::json!({"insecure_skip_verify": true})),
        with("grpc_service", serde_json::json!("s")),
        with("credential", serde_json::json!("c")),
        with("degraded", serde_json::json!({"enabled": false})),
    ];
    for b in &alike {
        assert!(differences(b, &a).is_empty(), "{b:?}");
        assert_eq!(a.digest(), b.digest(), "{b:?}");
    }
    for b in &different {
        assert!(!differences(b, &a).is_empty(), "{b:?}");
        assert_ne!(a.digest(), b.digest(), "{b:?}");
    }
    // A discovered target's instances are control's: they do not count.
    let dns = |instances: serde_json::Value| {
        spec(
            serde_json::json!({"name": "d", "discovery": {"dns": {"name": "d.test", "port": 1}}, "instances": instances}),
        )
    };
    let (x, y) = (dns(serde_json::json!([])), dns(serde_json::json!(["http://10.0.0.1:1"])));
    assert!(differences(&x, &y).is_empty());
    assert_eq!(x.digest(), y.digest());
    assert_ne!(
        x.digest(),
        spec(serde_json::json!({"name": "d", "discovery": {"dns": {"name": "e.test", "port": 1}}})).digest()
    );
    assert_eq!(a.digest().len(), 32);
}

/// The poll's stamp changes with any change of a declaring file — content of the same size, a
/// new file, a removed one — and not otherwise; other files do not count.
#[test]
fn the_stamp_follows_the_declaring_files_only() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, "- name: a\n").expect("write");
    let first = stamp(dir.path());
    assert_eq!(stamp(dir.path()), first, "nothing changed");
    std::fs::write(dir.path().join("notes.txt"), "not a declaration").expect("write");
    assert_eq!(stamp(dir.path()), first, "a file that declares nothing");
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(&file, "- name: b\n").expect("write");
    let edited = stamp(dir.path());
    assert_ne!(edited, first, "the same size, other content");
    std::fs::write(dir.path().join("b.json"), "[]").expect("write");
    let added = stamp(dir.path());
    assert_ne!(added, edited, "a new file");
    std::fs::remove_file(dir.path().join("b.json")).expect("remove");
    assert_ne!(stamp(dir.path()), added, "a removed file");
}

/// A list or a single document, read at once; a broken one still names its line.
#[test]
fn a_file_is_read_once_and_a_broken_one_names_its_line() {
    let list = parse("f.yaml", "# fleet\n---\n- name: a\n  instances: [\"http://127.0.0.1:1\"]\n").expect("a list");
    assert_eq!(list.len(), 1);
    let one = parse("f.yaml", "name: a\ninstances: [\"http://127.0.0.1:1\"]\n").expect("one document");
    assert_eq!(one[0].name, "a");
    let broken = parse("f.yaml", "- name: a\n  instances: [\"http://127.0.0.1:1\"\n").expect_err("broken");
    assert!(broken.line >= 2, "{broken}");
    let mistyped = parse("f.yaml", "- name: a\n  interval_ms: soon\n").expect_err("a field of the wrong type");
    assert_eq!(mistyped.line, 2, "{mistyped}");
}

/// Reading a list item by item (and from memory) means what reading the file means: the same
/// documents for lists with comments, blank lines and a leading `---`; the whole file read
/// when items lean on each other (an alias) or the text is not a plain list; an edit seen.
#[test]
fn reading_by_items_means_what_reading_the_file_means() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("fleet.yaml");
    let texts = [
        "---\n# the fleet\n- name: a\n  instances: [\"http://127.0.0.1:1\"]\n\n# b next\n- name: b\n  labels: {team: x}\n  instances:\n    - http://127.0.0.1:2\n",
        "- &base\n  name: a\n  instances: [\"http://127.0.0.1:1\"]\n- <<: *base\n  name: b\n",
        "[{name: a, instances: [\"http://127.0.0.1:1\"]}]\n",
        "- name: a\n  instances: [\"http://127.0.0.1:1\"]\n---\n- name: b\n",
        "- name: a\n  description: |\n    two\n    lines\n  instances: [\"http://127.0.0.1:1\"]\n",
    ];
    let mut reader = Reader::default();
    for text in texts {
        std::fs::write(&file, text).expect("write");
        let whole = read(dir.path());
        let itemwise = reader.read(dir.path());
        assert_eq!(itemwise.targets, whole.targets, "{text:?}");
        assert_eq!(itemwise.problems, whole.problems, "{text:?}");
    }
    // One item edited: the new document is read, the other comes from memory.
    std::fs::write(&file, texts[0]).expect("write");
    let before = reader.read(dir.path());
    std::fs::write(&file, texts[0].replace("team: x", "team: y")).expect("write");
    let after = reader.read(dir.path());
    assert_eq!(after.targets[0], before.targets[0]);
    assert_eq!(after.targets[1].spec.labels["team"], "y");
    assert_eq!(reader.items.len(), 2, "what the file no longer holds is forgotten");
}
