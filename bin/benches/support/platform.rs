//! A platform for the benches that measure the real thing: `caracal up --mode rc` (the release
//! build's binaries) in a scratch directory, on ports of its own.
// Each bench uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARACAL: &str = env!("CARGO_BIN_EXE_caracal");

/// A platform started by `caracal up --mode rc` in a scratch directory.
pub struct Platform {
    pub dir: PathBuf,
    pub ports: HashMap<&'static str, u16>,
    pub pool: sqlx::PgPool,
    pub admin: String,
    pub bearer: String,
}

impl Platform {
    /// Starts it (and fails the bench when it does not start).
    pub async fn up() -> Platform {
        let dir = std::env::temp_dir().join(caracal_testkit::unique_name("fleet-bench"));
        std::fs::create_dir_all(&dir).expect("dir");
        // PostgreSQL runs as the postgres user when the harness runs as root: it must enter.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let mut ports = HashMap::new();
        let mut args = vec!["up".to_string(), "--mode".into(), "rc".into(), "--timeout".into(), "180s".into()];
        for name in ["api", "coordinator", "audit", "sts", "gateway", "control", "pg", "redis"] {
            let port = caracal_testkit::free_port().expect("port");
            ports.insert(name, port);
            args.extend([format!("--{name}-port"), port.to_string()]);
        }
        let up = caracal(&dir, &args);
        assert!(up.status.success(), "caracal up: {}", String::from_utf8_lossy(&up.stderr));
        let url = format!("postgres://postgres@127.0.0.1:{}/{}", ports["pg"], caracal_cli::local::DATABASE);
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.expect("connect");
        let secret = |name: &str| std::fs::read_to_string(dir.join(".caracal/secrets").join(name)).expect("secret");
        let (admin, bearer) = (secret("admin_token").trim().to_string(), secret("metrics_bearer").trim().to_string());
        Platform { dir, ports, pool, admin, bearer }
    }

    /// A service's base URL.
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// A service's process id.
    pub fn pid(&self, service: &str) -> u32 {
        let file = self.dir.join(".caracal/run").join(format!("{service}.pid"));
        std::fs::read_to_string(file).expect("pid file").trim().parse().expect("pid")
    }

    /// Stops it and deletes its data.
    pub fn down(self) {
        let down = caracal(&self.dir, &["down".into(), "-v".into()]);
        assert!(down.status.success(), "caracal down: {}", String::from_utf8_lossy(&down.stderr));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the CLI on the platform's directory.
pub fn caracal(dir: &Path, args: &[String]) -> std::process::Output {
    let bin = Path::new(CARACAL).parent().expect("bin dir");
    Command::new(CARACAL).arg("--dir").arg(dir).args(args).env("CARACAL_BIN_DIR", bin).output().expect("caracal")
}
