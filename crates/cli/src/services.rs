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

/// The environment `up` gives every service, and which of it the caller chose.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Each variable and its value, as the services get them.
    pub vars: Vec<(String, String)>,
    /// The variables whose value came from the caller's environment rather than `up`.
    pub from_caller: Vec<String>,
}

impl Environment {
    /// The value a service gets for `key`, if `up` gives it one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Adds `key` with `up`'s `value`, unless the caller exported a non-empty value for it:
    /// that one wins, as a setting given on purpose must (`CARACAL_CONTROL__TARGETS_DIR`
    /// pointing at a checkout, a `DATABASE_URL` of one's own). An empty value counts as unset.
    fn set(&mut self, key: impl Into<String>, value: impl Into<String>, caller: &impl Fn(&str) -> Option<String>) {
        let key = key.into();
        match caller(&key).filter(|v| !v.is_empty()) {
            Some(theirs) => {
                self.from_caller.push(key.clone());
                self.vars.push((key, theirs));
            }
            None => self.vars.push((key, value.into())),
        }
    }
}

/// The environment every service gets: URLs, mode, secrets as files, where the STS is (for
/// the services that verify its tokens), and the platform's own services for the API to
/// register as targets. A variable the caller exported wins over `up`'s value (`caller` reads
/// the caller's environment: `std::env::var(k).ok()`). Two are `up`'s own options instead:
/// `CARACAL_MODE` is `--mode` (whose default is the caller's `CARACAL_MODE`), and each service
/// gets its own `PORT`, chosen with `--api-port` and the like.
pub fn environment(
    home: &Home,
    state: &State,
    database_url: &str,
    redis_url: &str,
    caller: impl Fn(&str) -> Option<String>,
) -> Environment {
    let mut env = Environment::default();
    env.set("DATABASE_URL", database_url, &caller);
    env.set("REDIS_URL", redis_url, &caller);
    // The mode is `up --mode`, which itself defaults to the caller's CARACAL_MODE.
    env.vars.push(("CARACAL_MODE".into(), state.mode.clone()));
    env.set("METRICS_BEARER_FILE", home.metrics_bearer().display().to_string(), &caller);
    env.set("CARACAL_ADMIN_TOKEN_FILE", home.admin_token().display().to_string(), &caller);
    env.set("CARACAL_BIND", "127.0.0.1", &caller);
    env.set("CARACAL_TOKENS__STS_URL", format!("http://127.0.0.1:{}", state.ports.sts), &caller);
    // Control reconciles the declared targets kept here (a ConfigMap in Kubernetes).
    env.set(TARGETS_DIR, home.targets_dir().display().to_string(), &caller);
    // The credentials the gateway may present to targets that name one (none but the
    // metrics bearer to the platform's own services otherwise).
    env.set("CARACAL_GATEWAY__CREDENTIALS_DIR", home.credentials().display().to_string(), &caller);
    for service in SERVICES {
        let key = format!("CARACAL_API__PLATFORM__{}", service.name.to_ascii_uppercase());
        env.set(key, format!("[\"http://127.0.0.1:{}\"]", service.port(&state.ports)), &caller);
    }
    env
}

/// The variable naming the directory caracal-control reads declared targets from.
pub const TARGETS_DIR: &str = "CARACAL_CONTROL__TARGETS_DIR";

/// The variable naming the file that opens the STS's signing keys (given to the STS only).
const KEY_ENCRYPTION: &str = "CARACAL_STS_KEY_ENCRYPTION_FILE";

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
    env: &Environment,
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
    if service.name == "sts" && std::env::var_os(KEY_ENCRYPTION).is_none_or(|v| v.is_empty()) {
        // Only the STS gets the key that opens its signing keys (unless the caller gave one).
        command.env(KEY_ENCRYPTION, home.sts_key_encryption());
    }
    let child = command
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
pub fn migrate(bin: &std::path::Path, env: &Environment) -> Result<(), CliError> {
    let output = Command::new(bin.join("caracal-api"))
        .args(["--migrate", "--post-deploy"])
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

#[cfg(test)]
mod tests {
    use super::{TARGETS_DIR, environment};
    use crate::state::{Home, Ports, State};

    #[test]
    fn what_the_caller_exported_wins_over_ups_defaults_but_the_mode_is_ups_option() {
        let home = Home::new(std::path::Path::new("/srv/here"));
        let state = State { mode: "rc".into(), ports: Ports::default() };
        let exported = |key: &str| match key {
            TARGETS_DIR => Some("/somewhere".to_string()),
            "DATABASE_URL" => Some("postgres://me@db/mine".to_string()),
            "CARACAL_MODE" => Some("stable".to_string()),
            // Exported but empty: as good as unset.
            "CARACAL_BIND" => Some(String::new()),
            _ => None,
        };
        let env = environment(&home, &state, "postgres://local/caracal", "redis://local/", exported);
        assert_eq!(env.get(TARGETS_DIR), Some("/somewhere"));
        assert_eq!(env.get("DATABASE_URL"), Some("postgres://me@db/mine"));
        assert_eq!(env.get("REDIS_URL"), Some("redis://local/"));
        assert_eq!(env.get("CARACAL_BIND"), Some("127.0.0.1"));
        assert_eq!(env.get("CARACAL_MODE"), Some("rc"), "--mode (itself defaulting to CARACAL_MODE) decides");
        assert_eq!(env.from_caller, [String::from("DATABASE_URL"), TARGETS_DIR.to_string()]);
        let nothing = environment(&home, &state, "postgres://local/caracal", "redis://local/", |_| None);
        assert_eq!(nothing.get(TARGETS_DIR), Some(home.targets_dir().display().to_string().as_str()));
        assert!(nothing.from_caller.is_empty());
        let keys: Vec<&str> = nothing.vars.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "each variable once: {keys:?}");
    }
}
