//! The fail-closed metrics auth matrix of docs/operating.md, and bearer-file rotation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use caracal_core::config::{CoreConfig, Mode, Secret};
use caracal_core::{App, Config, Error};
use figment::Figment;
use figment::providers::Serialized;

use crate::support;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bearer {
    None,
    Env,
    File,
    FileTwo,
    EmptyFile,
    MissingFile,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ask {
    NoHeader,
    WrongScheme,
    WrongToken,
    RightToken,
    TrailingWhitespace,
    SecondToken,
}

const TOKEN: &str = "tok-A.1_x~";
const SECOND: &str = "tok-B.2_y~";
const ASKS: [Ask; 6] =
    [Ask::NoHeader, Ask::WrongScheme, Ask::WrongToken, Ask::RightToken, Ask::TrailingWhitespace, Ask::SecondToken];

fn header(ask: Ask) -> Option<String> {
    match ask {
        Ask::NoHeader => None,
        Ask::WrongScheme => Some(format!("Basic {TOKEN}")),
        Ask::WrongToken => Some("Bearer tok-A.1_x".into()),
        Ask::RightToken => Some(format!("Bearer {TOKEN}")),
        Ask::TrailingWhitespace => Some(format!("Bearer {TOKEN}  \t")),
        Ask::SecondToken => Some(format!("Bearer {SECOND}")),
    }
}

/// What docs/operating.md says each cell must answer.
fn expected(mode: Mode, bearer: Bearer, ask: Ask) -> u16 {
    let right = matches!(ask, Ask::RightToken | Ask::TrailingWhitespace);
    let allowed = match bearer {
        Bearer::None => mode == Mode::Dev,
        Bearer::Env | Bearer::File => right,
        Bearer::FileTwo => right || ask == Ask::SecondToken,
        Bearer::EmptyFile | Bearer::MissingFile => unreachable!("these never start"),
    };
    if allowed { 200 } else { 401 }
}

/// The mode as written in configuration goes through the real deserializer.
fn core_with_mode(raw: &str) -> Result<CoreConfig, Box<figment::Error>> {
    Figment::from(Serialized::defaults(support::core_config(Mode::Stable)))
        .merge(Serialized::default("mode", raw))
        .extract()
        .map_err(Box::new)
}

fn configure(core: &mut CoreConfig, bearer: Bearer, dir: &Path) {
    let file = |name: &str, text: &str| -> PathBuf {
        let path = dir.join(name);
        caracal_testkit::write_secret(&path, text);
        path
    };
    match bearer {
        Bearer::None => {}
        Bearer::Env => core.metrics.bearer = Some(Secret::new(TOKEN)),
        Bearer::File => core.metrics.bearer_file = Some(file("one", &format!("{TOKEN}\n"))),
        Bearer::FileTwo => core.metrics.bearer_file = Some(file("two", &format!("{TOKEN}\n{SECOND}\n"))),
        Bearer::EmptyFile => core.metrics.bearer_file = Some(file("empty", "\n  \n")),
        Bearer::MissingFile => core.metrics.bearer_file = Some(dir.join("does-not-exist")),
    }
}

fn build(core: CoreConfig) -> Result<App, Error> {
    App::new("test", "0.0.0", Config::from_core(core, serde_json::json!({}))?)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_cell_of_the_auth_matrix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bearers = [Bearer::None, Bearer::Env, Bearer::File, Bearer::FileTwo, Bearer::EmptyFile, Bearer::MissingFile];
    let mut cells = 0;
    for raw in ["dev", "rc", "stable", "", "invalid"] {
        let core = core_with_mode(raw);
        if raw == "invalid" {
            let error = core.expect_err("an invalid mode must not load").to_string();
            assert!(error.contains("dev") && error.contains("stable"), "the error says what is expected: {error}");
            cells += bearers.len() * ASKS.len();
            continue;
        }
        let core = core.expect("a valid mode");
        let mode = core.mode;
        if raw.is_empty() {
            assert_eq!(mode, Mode::Stable, "blank means stable");
        }
        for bearer in bearers {
            let mut core = core.clone();
            configure(&mut core, bearer, dir.path());
            let app = build(core);
            if matches!(bearer, Bearer::EmptyFile | Bearer::MissingFile) {
                let error = app.expect_err("an unusable bearer file must stop start-up");
                assert_eq!(error.exit_code(), 2);
                let text = error.to_string();
                assert!(
                    text.contains("metrics.bearer_file") && text.contains(&dir.path().display().to_string()),
                    "{text}"
                );
                cells += ASKS.len();
                continue;
            }
            let served = support::serve(app.expect("app")).await;
            for ask in ASKS {
                let mut request = served.http.get(served.url("/metrics"));
                if let Some(value) = header(ask) {
                    request = request.header("authorization", value);
                }
                let response = request.send().await.expect("request");
                let want = expected(mode, bearer, ask);
                assert_eq!(response.status().as_u16(), want, "mode {raw:?} bearer {bearer:?} request {ask:?}");
                if want == 401 {
                    let challenge =
                        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
                    assert!(challenge.starts_with("Bearer"), "401 carries WWW-Authenticate: Bearer, got {challenge:?}");
                } else {
                    let text = response.text().await.expect("body");
                    assert!(text.contains("caracal_build_info"), "the scrape has the metrics");
                }
                cells += 1;
            }
            served.running.drain();
            served.running.wait().await.expect("stopped");
        }
    }
    assert_eq!(cells, 5 * 6 * 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn rewriting_the_bearer_file_rotates_without_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bearer");
    caracal_testkit::write_secret(&path, "old-token\n");
    let mut core = support::core_config(Mode::Stable);
    core.metrics.bearer_file = Some(path.clone());
    let served = support::serve(build(core).expect("app")).await;
    let status = |token: &'static str| {
        let request = served.http.get(served.url("/metrics.json")).bearer_auth(token);
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(status("old-token").await, 200);
    assert_eq!(status("new-token").await, 401);

    // A rotation in progress: both tokens.
    write_later(&path, "old-token\nnew-token\n").await;
    assert_eq!(status("old-token").await, 200);
    assert_eq!(status("new-token").await, 200);

    // Rotation done: the old token stops working at once.
    write_later(&path, "new-token\n").await;
    assert_eq!(status("old-token").await, 401);
    assert_eq!(status("new-token").await, 200);

    // The file vanishing fails closed, and its return is picked up.
    std::fs::remove_file(&path).expect("remove");
    assert_eq!(status("new-token").await, 401);
    write_later(&path, "third-token\n").await;
    assert_eq!(status("third-token").await, 200);
    assert_eq!(status("new-token").await, 401);
}

/// Writes `text` in a way that changes the file's stamp even on coarse-mtime filesystems: a new
/// file renamed over the old one (as Kubernetes does for Secret volumes).
async fn write_later(path: &Path, text: &str) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let tmp = path.with_extension("tmp");
    caracal_testkit::write_secret(&tmp, text);
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn a_bearer_file_others_can_read_stops_a_service_outside_dev_naming_the_file_and_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bearer");
    std::fs::write(&path, "a-token\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for mode in [Mode::Rc, Mode::Stable] {
        let mut core = support::core_config(mode);
        core.metrics.bearer_file = Some(path.clone());
        let Err(error) = build(core) else { panic!("{mode:?}: refused at start") };
        let error = error.to_string();
        assert!(error.contains("metrics.bearer_file") && error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("0644"), "the mode is named: {error}");
    }
    let mut core = support::core_config(Mode::Dev);
    core.metrics.bearer_file = Some(path.clone());
    assert!(build(core).is_ok(), "dev takes it");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut core = support::core_config(Mode::Stable);
    core.metrics.bearer_file = Some(path);
    assert!(build(core).is_ok(), "0600 is private");
}
