//! The `caracal` binary: exit codes for pass, fail, could-not-check and usage; `--wait`; and
//! `up` → `status --ready` → `doctor` → `down -v` on the real binaries, leaving no process and
//! no port behind.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

const CARACAL: &str = env!("CARGO_BIN_EXE_caracal");

fn caracal(dir: &Path, args: &[&str]) -> Output {
    caracal_with(dir, args, &[])
}

/// As [`caracal`], with `env` exported to it.
fn caracal_with(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(CARACAL)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("METRICS_BEARER_FILE")
        .env_remove("CARACAL_CONTROL__TARGETS_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("run caracal")
}

/// A server whose /health answers `code` (after `delay` from its start).
async fn server(code: StatusCode, delay: Duration) -> String {
    let started = Instant::now();
    let app = Router::new().route(
        "/health",
        get(move || async move {
            if started.elapsed() >= delay {
                (code, r#"{"status":"x","mode":"dev"}"#)
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exit_codes_tell_pass_fail_could_not_check_and_usage_apart() {
    let dir = tempfile_dir();
    let good = server(StatusCode::OK, Duration::ZERO).await;
    let bad = server(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let nobody = format!("http://127.0.0.1:{}", caracal_testkit::free_port().expect("port"));
    let run = |urls: &[(&str, &str)], extra: &[&str]| {
        let mut args: Vec<String> = vec!["status".into()];
        for (name, url) in urls {
            args.push("--url".into());
            // An empty name: the bare URL, which is named by its host:port.
            args.push(if name.is_empty() { url.to_string() } else { format!("{name}={url}") });
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || caracal(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let all_pass = run(&[("api", &good)], &[]).await.expect("join");
    assert_eq!(code(&all_pass), Some(0), "{}", String::from_utf8_lossy(&all_pass.stdout));
    let some_fail = run(&[("api", &good), ("audit", &bad)], &[]).await.expect("join");
    assert_eq!(code(&some_fail), Some(1));
    let cannot = run(&[("api", &good), ("audit", &nobody)], &["--timeout", "500ms"]).await.expect("join");
    assert_eq!(code(&cannot), Some(3), "could not check is not fail");
    assert!(String::from_utf8_lossy(&cannot.stdout).contains("unreachable"));
    let json = run(&[("api", &good), ("audit", &bad)], &["--json"]).await.expect("join");
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    assert_eq!(doc["summary"]["fail"], 1);
    assert_eq!(doc["exit_code"], 1);
    let bare = run(&[("", &good)], &["--json"]).await.expect("join");
    assert_eq!(code(&bare), Some(0), "a bare URL is accepted: {}", String::from_utf8_lossy(&bare.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&bare.stdout).expect("json");
    let host_port = good.trim_start_matches("http://");
    assert!(doc.to_string().contains(&format!("\"{host_port}\"")), "named by host:port: {doc}");
    let usage = run(&[], &["--url", "no-equals-sign"]).await.expect("join");
    assert_eq!(code(&usage), Some(2));
    let unknown = tokio::task::spawn_blocking(move || caracal(Path::new("."), &["launch"])).await.expect("join");
    assert_eq!(code(&unknown), Some(2));

    // --wait retries until the service turns healthy.
    let late = server(StatusCode::OK, Duration::from_secs(1)).await;
    let waited = run(&[("api", &late)], &["--wait", "10s"]).await.expect("join");
    assert_eq!(code(&waited), Some(0), "{}", String::from_utf8_lossy(&waited.stderr));
    let gave_up = run(&[("api", &bad)], &["--wait", "1s"]).await.expect("join");
    assert_eq!(code(&gave_up), Some(1));
}

/// Every port `up` takes, so a test can move them all to free ones.
const PORT_FLAGS: [&str; 8] = [
    "--api-port",
    "--coordinator-port",
    "--audit-port",
    "--pg-port",
    "--redis-port",
    "--sts-port",
    "--gateway-port",
    "--control-port",
];

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(caracal_testkit::unique_name("caracal-cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    // PostgreSQL runs as the postgres user when the tests run as root: it must enter here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    dir
}

/// Runs `caracal down -v` in `dir` when dropped, so a failing test leaves no platform running
/// (its services would hold ports the next test run needs).
struct DownOnDrop(std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.0.join(".caracal").exists() {
            let _ = caracal(&self.0, &["down", "-v"]);
        }
    }
}

fn pids(caracal_dir: &Path) -> Vec<i32> {
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(caracal_dir.join("run")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.push(caracal_dir.join("redis/redis.pid"));
    files.push(caracal_dir.join("postgres/data/postmaster.pid"));
    files.iter().filter_map(|f| std::fs::read_to_string(f).ok()?.lines().next()?.trim().parse().ok()).collect()
}

/// The last lines of every service's log under `.caracal/logs/`, for a failure message: a
/// service that died between two commands says why there.
fn log_tails(dir: &Path) -> String {
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir.join(".caracal/logs")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!("--- {}\n{}", f.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread")]
async fn up_status_doctor_down_leave_nothing_behind() {
    let dir = tempfile_dir();
    let _cleanup = DownOnDrop(dir.clone());
    let ports: Vec<u16> = (0..PORT_FLAGS.len()).map(|_| caracal_testkit::free_port().expect("port")).collect();
    let port_args: Vec<String> =
        PORT_FLAGS.iter().zip(&ports).flat_map(|(flag, port)| [flag.to_string(), port.to_string()]).collect();
    let mut up_args = vec!["up".to_string(), "--mode".into(), "rc".into()];
    up_args.extend(port_args);
    let run = |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || caracal(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    // The caller keeps declared targets elsewhere: what they exported wins over `up`'s default.
    let declared_dir = dir.join("declared-elsewhere");
    let up = {
        let (dir, declared_dir) = (dir.clone(), declared_dir.clone());
        let args: Vec<String> = up_args.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            caracal_with(&dir, &args, &[("CARACAL_CONTROL__TARGETS_DIR", &declared_dir)])
        })
        .await
        .expect("join")
    };
    assert_eq!(code(&up), Some(0), "up failed:\n{}", String::from_utf8_lossy(&up.stderr));
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        stdout.contains("Caracal is up (mode rc)") && stdout.contains(&format!("http://127.0.0.1:{}", ports[0])),
        "{stdout}"
    );
    // When `up` returns, the platform's own view agrees: /healthchecks is 200, every entry
    // Operational (not 218 while the coordinator's first probes of the services catch up).
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthchecks", ports[0])).await.expect("healthchecks");
    assert_eq!(health.status(), 200);
    let entries: Vec<serde_json::Value> = health.json().await.expect("json");
    assert!(!entries.is_empty() && entries.iter().all(|e| e["status"] == "Operational"), "{entries:?}");
    assert!(
        stdout.lines().any(|l| l.contains("targets") && l.contains(&declared_dir.display().to_string())),
        "up says where control reads declared targets: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("CARACAL_CONTROL__TARGETS_DIR from your environment"),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // `up` names the status page, and it is there.
    let page = format!("http://127.0.0.1:{}/", ports[0]);
    assert!(stdout.lines().any(|l| l.contains("status page") && l.contains(&page)), "{stdout}");
    let html = reqwest::get(&page).await.expect("page").text().await.expect("html");
    assert!(html.contains("<h1>Caracal status</h1>") && html.contains("id=\"svc-api\""), "{html}");
    let secret = dir.join(".caracal/secrets/metrics_bearer");
    let mode = std::fs::metadata(&secret).expect("secret").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "secrets are private");

    let again = run(vec!["up".into()]).await.expect("join");
    assert_eq!(
        code(&again),
        Some(0),
        "running up twice is harmless: {}\n{}",
        String::from_utf8_lossy(&again.stderr),
        log_tails(&dir)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let status = run(vec!["status".into(), "--ready".into(), "--json".into()]).await.expect("join");
    assert_eq!(code(&status), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(doc["summary"]["pass"], 6, "six services, control among them");
    assert!(doc["services"].as_array().expect("services").iter().all(|s| s["mode"] == "rc"));

    let doctor = run(vec!["doctor".into(), "--json".into()]).await.expect("join");
    assert_eq!(code(&doctor), Some(0), "{}", String::from_utf8_lossy(&doctor.stdout));
    let findings: serde_json::Value = serde_json::from_slice(&doctor.stdout).expect("json");
    let findings = findings["findings"].as_array().expect("findings").clone();
    let has = |subject: &str, message: &str| {
        findings.iter().any(|f| f["subject"] == subject && f["message"].as_str().is_some_and(|m| m.contains(message)))
    };
    assert!(has("api /metrics", "refuses scrapes without the bearer"), "{findings:?}");
    assert!(has("api /metrics", "accepts the managed bearer"));
    assert!(has("migrations", "schema at version"));
    assert!(has("audit ledger", "complete"), "{findings:?}");
    assert!(has("stream caracal.events", "group audit"));
    assert!(findings.iter().any(|f| f["subject"] == "clock skew: postgres"));

    // `apply` from a file: the plan, then the change, then nothing left to do.
    let file = dir.join("targets.yaml");
    let api = format!("http://127.0.0.1:{}", ports[0]);
    std::fs::write(&file, format!("- name: applied\n  instances: [\"{api}\"]\n  labels: {{team: sre}}\n"))
        .expect("write");
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply".to_string(), "-f".into(), file.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        run(args)
    };
    let planned = apply(&["--dry-run"]).await.expect("join");
    assert_eq!(code(&planned), Some(0), "{}", String::from_utf8_lossy(&planned.stderr));
    assert!(
        String::from_utf8_lossy(&planned.stdout).starts_with("create applied ("),
        "{}",
        String::from_utf8_lossy(&planned.stdout)
    );
    let admin = std::fs::read_to_string(dir.join(".caracal/secrets/admin_token")).expect("admin token");
    let http = reqwest::Client::new();
    let get = |name: &str| http.get(format!("{api}/v1/targets/{name}")).bearer_auth(admin.trim()).send();
    assert_eq!(get("applied").await.expect("get").status(), 404, "a dry run changes nothing");
    let applied = apply(&[]).await.expect("join");
    assert_eq!(code(&applied), Some(0), "{}", String::from_utf8_lossy(&applied.stdout));
    assert_eq!(get("applied").await.expect("get").status(), 200);
    let again = apply(&[]).await.expect("join");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "no changes");
    // The platform's own targets are not deleted: it would register them again.
    let refused =
        http.delete(format!("{api}/v1/targets/coordinator")).bearer_auth(admin.trim()).send().await.expect("delete");
    assert_eq!(refused.status(), 409);
    let error: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "platform_target", "{error}");
    // A file where the caller pointed control is control's: it registers it as a target it
    // manages (and one in the default .caracal/targets is not read).
    std::fs::create_dir_all(dir.join(".caracal/targets")).expect("mkdir");
    std::fs::write(dir.join(".caracal/targets/ignored.yaml"), format!("name: ignored\ninstances: [\"{api}\"]\n"))
        .expect("write");
    let declared = declared_dir.join("declared.yaml");
    std::fs::write(&declared, format!("name: declared\ninstances: [\"{api}\"]\n")).expect("write");
    let managed = caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(200), || async {
        let body: serde_json::Value = get("declared").await.ok()?.json().await.ok()?;
        (body["managed_by"] == "control").then_some(body)
    })
    .await
    .expect("control registers the declared target");
    assert_eq!(managed["declared_in"], declared.display().to_string());
    assert_eq!(get("ignored").await.expect("get").status(), 404, "control reads only the caller's directory");
    // `apply` sends its plan as one batch; a change the API refuses is reported on its line,
    // the others are made, and the exit code says something was refused.
    std::fs::write(
        &file,
        format!(
            "- name: applied\n  instances: [\"{api}\"]\n  labels: {{team: ops}}\n\
             - name: declared\n  instances: [\"{api}\"]\n  interval_ms: 1000\n"
        ),
    )
    .expect("write");
    let partly = apply(&[]).await.expect("join");
    let said = String::from_utf8_lossy(&partly.stdout);
    assert_eq!(code(&partly), Some(1), "{said}");
    assert!(said.contains("update declared") && said.contains("refused, managed_by_control"), "{said}");
    assert!(said.lines().any(|l| l.starts_with("update applied") && !l.contains("refused")), "{said}");
    let applied: serde_json::Value = get("applied").await.expect("get").json().await.expect("json");
    assert_eq!(applied["labels"]["team"], "ops");

    let before = pids(&dir.join(".caracal"));
    assert_eq!(before.len(), 8, "six services, Redis and PostgreSQL: {before:?}");
    let down = run(vec!["down".into(), "-v".into()]).await.expect("join");
    assert_eq!(code(&down), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!dir.join(".caracal").exists(), "down -v deletes the data");
    for pid in before {
        assert!(!alive(pid), "process {pid} survived down");
    }
    for port in ports {
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} is still taken");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_port_is_a_one_line_error_saying_what_to_do() {
    let dir = tempfile_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let free = || caracal_testkit::free_port().expect("port").to_string();
    let args = [
        "up",
        "--api-port",
        &free(),
        "--coordinator-port",
        &free(),
        "--audit-port",
        &free(),
        "--pg-port",
        &port,
        "--redis-port",
        &free(),
        "--sts-port",
        &free(),
        "--gateway-port",
        &free(),
        "--control-port",
        &free(),
    ]
    .map(String::from);
    let d = dir.clone();
    let up = tokio::task::spawn_blocking(move || caracal(&d, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("join");
    assert_eq!(code(&up), Some(1));
    let stderr = String::from_utf8_lossy(&up.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.contains(&format!("port {port} (PostgreSQL) is already in use")) && last.contains("--pg-port"),
        "{stderr}"
    );
    let d = dir.clone();
    let down = tokio::task::spawn_blocking(move || caracal(&d, &["down", "-v"])).await.expect("join");
    assert_eq!(code(&down), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `up` → `status --ready` → `down -v` from a directory only its owner may enter (mode 0700,
/// like root's home or any `mktemp -d`), run as `user` (via `runuser`) or as ourselves.
async fn up_and_down_in_a_private_directory(user: Option<&str>) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join(caracal_testkit::unique_name("caracal-private"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let owner = user.map(|name| nix::unistd::User::from_name(name).expect("passwd").expect("user"));
    if let Some(owner) = &owner {
        nix::unistd::chown(&dir, Some(owner.uid), Some(owner.gid)).expect("chown");
    }
    let free = || caracal_testkit::free_port().expect("port").to_string();
    let mut up: Vec<String> = vec!["up".into()];
    up.extend(PORT_FLAGS.iter().flat_map(|flag| [flag.to_string(), free()]));
    let as_user = |args: Vec<String>| {
        let (dir, user) = (dir.clone(), user.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            let mut command = match &user {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--", CARACAL]);
                    c
                }
                None => Command::new(CARACAL),
            };
            command.arg("--dir").arg(&dir).args(&args).env_remove("METRICS_BEARER_FILE").output().expect("run caracal")
        })
    };
    let _cleanup = DownOnDrop(dir.clone());
    let started = as_user(up).await.expect("join");
    assert_eq!(
        code(&started),
        Some(0),
        "up as {user:?} in a 0700 directory:\n{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let pointer = dir.join(".caracal/postgres.path");
    let elsewhere = std::fs::read_to_string(&pointer).ok().map(|p| std::path::PathBuf::from(p.trim()));
    let root = nix::unistd::geteuid().is_root() && user.is_none();
    assert_eq!(elsewhere.is_some(), root, "PostgreSQL's data moves out only when root's postgres user cannot enter");
    if let Some(pg) = &elsewhere {
        let meta = std::fs::metadata(pg).expect("postgres dir");
        let postgres = nix::unistd::User::from_name("postgres").expect("passwd").expect("postgres user");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (postgres.uid.as_raw(), 0o700), "{}", pg.display());
        assert!(pg.join("data/PG_VERSION").exists());
    }
    let status = as_user(vec!["status".into(), "--ready".into()]).await.expect("join");
    assert_eq!(code(&status), Some(0), "{}", String::from_utf8_lossy(&status.stdout));
    let down = as_user(vec!["down".into(), "-v".into()]).await.expect("join");
    assert_eq!(code(&down), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!dir.join(".caracal").exists(), "down -v deletes .caracal");
    if let Some(pg) = &elsewhere {
        assert!(!pg.exists(), "down -v deletes PostgreSQL's directory at {}", pg.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn up_works_from_a_private_directory_for_root_and_for_another_user() {
    up_and_down_in_a_private_directory(None).await;
    if nix::unistd::geteuid().is_root() {
        // A user other than root (and other than `postgres`): PostgreSQL runs as that user.
        up_and_down_in_a_private_directory(Some("nobody")).await;
    }
}
