//! The container image, tested where no container runtime can start: the image built by
//! `infra/docker/build-image.sh` is mounted (`buildah from` + `buildah mount`) and each binary
//! runs from the image's own root under `chroot`, as uid 65532, against the testkit's
//! PostgreSQL and Redis. `--version` works, every service answers `/health` and `/ready`, and
//! nothing outside the image is needed (the chroot has nothing else).
//!
//! Not part of `cargo test --workspace` (it needs the release image and root): `.ci/run` builds
//! the image, then runs `CARACAL_IMAGE=... cargo test -p caracal-bin --test image`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caracal_testkit::{Postgres, Redis, Signal};

const BINARIES: [&str; 7] = [
    "caracal",
    "caracal-api",
    "caracal-coordinator",
    "caracal-audit",
    "caracal-sts",
    "caracal-gateway",
    "caracal-control",
];
/// The largest image this test accepts, in bytes (the goal is under 40 MB).
const MAX_IMAGE_BYTES: u64 = 40 * 1000 * 1000;

fn buildah(args: &[&str]) -> String {
    let storage = std::env::var("BUILDAH_STORAGE").unwrap_or_else(|_| "vfs".into());
    let out = Command::new("buildah")
        .args(["--storage-driver", &storage])
        .args(args)
        .output()
        .expect("buildah (apt-get install -y buildah)");
    assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image mounted read-write; unmounted and removed on drop.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    fn new(image: &str) -> Mounted {
        let container = buildah(&["from", "--pull-never", image]);
        let root = PathBuf::from(buildah(&["mount", &container]));
        Mounted { container, root }
    }

    /// `binary` from the image's root, as uid/gid 65532, with only `env`.
    fn command(&self, binary: &str, args: &[&str]) -> Command {
        // Absolute: the cleared environment has no PATH to look it up with.
        let mut c = Command::new("/usr/sbin/chroot");
        c.arg("--userspec=65532:65532").arg(&self.root).arg(format!("/usr/local/bin/{binary}")).args(args);
        c.env_clear();
        c
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("buildah").args(["--storage-driver", "vfs", "umount", &self.container]).status();
        let _ = Command::new("buildah").args(["--storage-driver", "vfs", "rm", &self.container]).status();
    }
}

fn files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let meta = entry.path().symlink_metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path().strip_prefix(root).expect("inside").to_path_buf(), meta.len()));
            }
        }
    }
    out
}

#[test]
fn the_image_runs_every_binary_as_nonroot_from_its_own_root() {
    let image = std::env::var("CARACAL_IMAGE")
        .expect("CARACAL_IMAGE names the image to test (built by infra/docker/build-image.sh)");
    assert!(nix::unistd::geteuid().is_root(), "mounting an image and chroot need root");
    let mounted = Mounted::new(&image);

    // What the image holds: the binaries, their libraries, CA certificates, passwd/group.
    let held = files(&mounted.root);
    let total: u64 = held.iter().map(|(_, size)| size).sum();
    assert!(total < MAX_IMAGE_BYTES, "the image holds {total} bytes: {held:?}");
    for (path, _) in &held {
        let p = path.to_string_lossy();
        assert!(
            p.starts_with("usr/local/bin/")
                || p.starts_with("lib")
                || p.starts_with("usr/lib")
                || p.starts_with("etc/"),
            "unexpected file in the image: {p}"
        );
    }
    let passwd = std::fs::read_to_string(mounted.root.join("etc/passwd")).expect("passwd");
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let inspected: serde_json::Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).expect("inspect is JSON");
    let config = &inspected["OCIv1"]["config"];
    let label = |key: &str| config["Labels"][key].as_str().unwrap_or_default().to_string();
    assert_eq!(label("org.opencontainers.image.version"), caracal_bin::VERSION);
    assert!(!label("org.opencontainers.image.revision").is_empty(), "{config}");
    assert!(!label("org.opencontainers.image.source").is_empty(), "{config}");
    assert_eq!(config["User"], "65532:65532", "runs as the non-root user");

    for binary in BINARIES {
        let out = mounted.command(binary, &["--version"]).output().expect("chroot");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{binary} --version: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.trim(), format!("{binary} {}", caracal_bin::VERSION));
    }

    // Every service, from the image, against real PostgreSQL and Redis over loopback.
    let postgres = Postgres::start_default().expect("postgres");
    let redis = Redis::start_default().expect("redis");
    let database_url = postgres.fresh_database("image").expect("database");
    let env = |port: u16| {
        vec![
            ("DATABASE_URL".to_string(), database_url.clone()),
            ("REDIS_URL".to_string(), redis.url()),
            ("CARACAL_MODE".to_string(), "dev".to_string()),
            ("PORT".to_string(), port.to_string()),
            // A chroot has no /etc/resolv.conf (a container runtime mounts one): control is
            // told its nameserver, as an operator outside Kubernetes would.
            ("CARACAL_CONTROL__NAMESERVERS".to_string(), "[\"127.0.0.1:53\"]".to_string()),
        ]
    };
    let migrate = mounted.command("caracal-api", &["--migrate"]).envs(env(0)).output().expect("migrate");
    assert!(migrate.status.success(), "migrate: {}", String::from_utf8_lossy(&migrate.stderr));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let logs = std::env::temp_dir().join(caracal_testkit::unique_name("image-logs"));
    std::fs::create_dir_all(&logs).expect("logs");
    let mut running = Vec::new();
    for binary in &BINARIES[1..] {
        let port = caracal_testkit::free_port().expect("port");
        let log = std::fs::File::create(logs.join(binary)).expect("log");
        let mut command = mounted.command(binary, &[]);
        command.envs(env(port)).stdout(log.try_clone().expect("log")).stderr(log);
        let child = command.spawn().expect("start");
        running.push((binary, port, child));
    }
    let http = reqwest::Client::new();
    for (binary, port, child) in &mut running {
        for path in ["/health", "/ready"] {
            let url = format!("http://127.0.0.1:{port}{path}");
            let answered = runtime.block_on(caracal_testkit::wait_for(
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async { http.get(&url).send().await.ok().filter(|r| r.status() == 200) },
            ));
            if answered.is_err() {
                let _ = child.kill();
                let log = std::fs::read_to_string(logs.join(**binary)).unwrap_or_default();
                panic!("{binary} from the image: {path} never answered 200; its log:\n{log}");
            }
        }
    }
    for (_, _, child) in &mut running {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    }
    for (binary, _, child) in &mut running {
        let status = child.wait().expect("wait");
        assert!(status.success(), "{binary} exits 0 after SIGTERM: {status}");
    }
    let _ = std::fs::remove_dir_all(&logs);
}
