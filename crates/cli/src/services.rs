//! The platform's services: which binaries, which ports, and starting and stopping them as
//! background processes under `.caracal/`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::CliError;
use crate::local::{self, pid_alive};
use crate::state::{Home, Ports, State};

/// One service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Its name (`api`).
    pub name: &'static str,
    /// Its binary (`caracal-api`).
    pub binary: &'static str,
}

/// Every service `up` runs, in start order: the STS first, so the services that verify its
/// tokens find its keys at once.
pub const SERVICES: [Service; 6] = [
    Service { name: "sts", binary: "caracal-sts" },
    Service { name: "api", binary: "caracal-api" },
    Service { name: "coordinator", binary: "caracal-coordinator" },
    Service { name: "audit", binary: "caracal-audit" },
    Service { name: "gateway", binary: "caracal-gateway" },
    Service { name: "control", binary: "caracal-control" },
];

impl Service {
    /// Its port in `ports`.
    pub fn port(&self, ports: &Ports) -> u16 {
        match self.name {
            "api" => ports.api,
            "sts" => ports.sts,
            "gateway" => ports.gateway,
            "control" => ports.control,
            "coordinator" => ports.coordinator,
            _ => ports.audit,
        }
    }

    fn flag(&self) -> &'static str {
        match self.name {
            "api" => "--api-port",
            "sts" => "--sts-port",
            "gateway" => "--gateway-port",
            "control" => "--control-port",
            "coordinator" => "--coordinator-port",
            _ => "--audit-port",
        }
    }

    fn pid_file(&self, home: &Home) -> PathBuf {
        home.run().join(format!("{}.pid", self.name))
    }

    /// Whether the process `up` started for it is alive.
    pub fn running(&self, home: &Home) -> bool {
        pid_alive(&self.pid_file(home)).is_some()
    }
}

/// Where the Caracal binaries are: `CARACAL_BIN_DIR`, else next to this `caracal`.
///
/// # Errors
/// [`CliError::Missing`] naming the first binary not found.
pub fn bin_dir() -> Result<PathBuf, CliError> {
    let dir = match std::env::var_os("CARACAL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)).unwrap_or_default(),
    };
    for binary in SERVICES.iter().map(|s| s.binary) {
        if !dir.join(binary).is_file() {
            return Err(CliError::Missing {
                what: binary.into(),
                looked: dir.display().to_string(),
                remedy: "build the binaries with `cargo build --bins` (or point CARACAL_BIN_DIR at them)".into(),
            });
        }
    }
    Ok(dir)
}

/// The environment every service gets: URLs, mode, secrets as files, where the STS is (for
/// the services that verify its tokens), and the platform's own services for the API to
/// register as targets.
pub fn environment(home: &Home, state: &State, database_url: &str, redis_url: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".to_string(), database_url.to_string()),
        ("REDIS_URL".to_string(), redis_url.to_string()),
        ("CARACAL_MODE".to_string(), state.mode.clone()),
        ("METRICS_BEARER_FILE".to_string(), home.metrics_bearer().display().to_string()),
        ("CARACAL_ADMIN_TOKEN_FILE".to_string(), home.admin_token().display().to_string()),
        ("CARACAL_BIND".to_string(), "127.0.0.1".to_string()),
        ("CARACAL_TOKENS__STS_URL".to_string(), format!("http://127.0.0.1:{}", state.ports.sts)),
        // Control reconciles the declared targets kept here (a ConfigMap in Kubernetes).
        ("CARACAL_CONTROL__TARGETS_DIR".to_string(), home.targets_dir().display().to_string()),
        // The credentials the gateway may present to targets that name one (none but the
        // metrics bearer to the platform's own services otherwise).
        ("CARACAL_GATEWAY__CREDENTIALS_DIR".to_string(), home.credentials().display().to_string()),
    ];
    for service in SERVICES {
        let key = format!("CARACAL_API__PLATFORM__{}", service.name.to_ascii_uppercase());
        env.push((key, format!("[\"http://127.0.0.1:{}\"]", service.port(&state.ports))));
    }
    env
}

/// Starts `service` in the background (its own session, logs to `.caracal/logs/`), unless
/// already running.
///
/// # Errors
/// A taken port, or a binary that cannot be started.
pub fn start(
    home: &Home,
    bin: &std::path::Path,
    service: Service,
    state: &State,
    env: &[(String, String)],
) -> Result<bool, CliError> {
    use std::os::unix::process::CommandExt;
    if service.running(home) {
        return Ok(false);
    }
    let port = service.port(&state.ports);
    if local::port_in_use(port) {
        return Err(CliError::PortTaken { port, what: service.name, flag: service.flag() });
    }
    for dir in [home.logs(), home.run()] {
        std::fs::create_dir_all(&dir).map_err(CliError::io(format!("create {}", dir.display())))?;
    }
    let log_path = home.logs().join(format!("{}.log", service.name));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(CliError::io(format!("open {}", log_path.display())))?;
    let err = log.try_clone().map_err(CliError::io("open the log"))?;
    let mut command = Command::new(bin.join(service.binary));
    if service.name == "sts" {
        // Only the STS gets the key that opens its signing keys.
        command.env("CARACAL_STS_KEY_ENCRYPTION_FILE", home.sts_key_encryption());
    }
    let child = command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", port.to_string())
        .current_dir(&home.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C at this terminal later must not reach it.
        .process_group(0)
        .spawn()
        .map_err(CliError::io(format!("start {}", service.binary)))?;
    std::fs::write(service.pid_file(home), child.id().to_string()).map_err(CliError::io("write a pid file"))?;
    Ok(true)
}

/// Stops `service` if running: SIGTERM (it drains), SIGKILL after `grace`.
///
/// # Errors
/// When it does not stop.
pub fn stop(home: &Home, service: Service, grace: Duration) -> Result<bool, CliError> {
    let pid_file = service.pid_file(home);
    let stopped = match pid_alive(&pid_file) {
        Some(pid) => {
            local::terminate(pid, grace, service.binary)?;
            true
        }
        None => false,
    };
    let _ = std::fs::remove_file(pid_file);
    Ok(stopped)
}

/// Runs `caracal-api --migrate --post-deploy` against the local database: locally every
/// service runs the same release, so the post-deployment steps follow at once.
///
/// # Errors
/// When the migration fails, with its last line.
pub fn migrate(bin: &std::path::Path, env: &[(String, String)]) -> Result<(), CliError> {
    let output = Command::new(bin.join("caracal-api"))
        .args(["--migrate", "--post-deploy"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .map_err(CliError::io("run caracal-api --migrate"))?;
    if output.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&output.stderr);
        Err(CliError::Step(format!("migrations failed: {}", text.trim().lines().last().unwrap_or("no output"))))
    }
}
