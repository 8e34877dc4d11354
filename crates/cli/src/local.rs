//! The local PostgreSQL and Redis `caracal up` runs under `.caracal/`, as daemons that outlive
//! the command (`pg_ctl` and `redis-server --daemonize`), on non-default loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::CliError;
use crate::state::Home;

const PG_INSTALL: &str = "install it with `apt-get install -y postgresql`";
const REDIS_INSTALL: &str = "install it with `apt-get install -y redis-server`";

/// The database the services use.
pub const DATABASE: &str = "caracal";

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Errors
/// [`CliError::Missing`] when PostgreSQL's server binaries are not installed.
pub fn pg_bin_dir() -> Result<PathBuf, CliError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| ["initdb", "pg_ctl", "postgres"].iter().all(|b| bin.join(b).is_file()))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| CliError::Missing {
        what: "PostgreSQL server binaries (initdb, pg_ctl, postgres)".into(),
        looked: "/usr/lib/postgresql/*/bin".into(),
        remedy: PG_INSTALL.into(),
    })
}

/// `redis-server` on the usual paths.
///
/// # Errors
/// [`CliError::Missing`] when it is not installed.
pub fn redis_server() -> Result<PathBuf, CliError> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(
        || CliError::Missing {
            what: "redis-server".into(),
            looked: "/usr/bin, /usr/local/bin".into(),
            remedy: REDIS_INSTALL.into(),
        },
    )
}

/// The uid/gid PostgreSQL must run as: `postgres` when we are root (it refuses root).
fn pg_owner() -> Result<Option<(u32, u32)>, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(CliError::Missing {
            what: "the `postgres` system user".into(),
            looked: "/etc/passwd".into(),
            remedy: PG_INSTALL.into(),
        }),
    }
}

fn as_owner(mut command: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

/// Runs a helper to completion; its combined output in the error when it fails.
fn run(command: &mut Command, what: &str) -> Result<(), CliError> {
    let output = command.stdin(Stdio::null()).output().map_err(CliError::io(format!("run {what}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Err(CliError::Step(format!("{what} failed: {}", text.trim().lines().last().unwrap_or("no output"))))
    }
}

/// Whether `port` on 127.0.0.1 is taken: something accepts connections there, or it cannot be
/// bound (an outgoing connection uses it as its local port).
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(300))
        .is_ok()
        || std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_err()
}

/// Whether the user `uid`/`gid` may enter `dir` and every directory above it.
fn reachable(dir: &Path, (uid, gid): (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|d| match std::fs::metadata(d) {
        Ok(m) if m.uid() == uid => m.mode() & 0o100 != 0,
        Ok(m) if m.gid() == gid => m.mode() & 0o010 != 0,
        Ok(m) => m.mode() & 0o001 != 0,
        // Not created yet: what matters is the directories above it.
        Err(_) => true,
    })
}

/// The PostgreSQL under `home`.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

impl LocalPostgres {
    /// Describes (does not start) the server under `home` on `port`.
    ///
    /// # Errors
    /// When PostgreSQL is not installed.
    pub fn new(home: &Home, port: u16) -> Result<Self, CliError> {
        let owner = pg_owner()?;
        let dir = match (home.relocated_postgres(), owner) {
            (Some(dir), _) => dir,
            // Root in a private directory (root's home, a `mktemp -d`): the `postgres` user
            // cannot enter it, so PostgreSQL's directory goes where it can, owned by it, and
            // `.caracal/postgres.path` remembers where (`down -v` removes it).
            (None, Some(owner)) if !reachable(&home.root, owner) => {
                let suffix: String = crate::state::random_bytes(6)?.iter().map(|b| format!("{b:02x}")).collect();
                std::env::temp_dir().join(format!("caracal-postgres-{suffix}"))
            }
            (None, _) => home.postgres(),
        };
        Ok(Self { bin: pg_bin_dir()?, dir, port, owner })
    }

    /// PostgreSQL's directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The URL of the services' database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Whether our server is running (its postmaster answers `pg_ctl status`).
    pub fn running(&self) -> bool {
        self.data().join("PG_VERSION").exists()
            && as_owner(Command::new(self.bin.join("pg_ctl")), self.owner)
                .arg("status")
                .arg("-D")
                .arg(self.data())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Initialises the cluster once, starts it unless running, and creates the database.
    ///
    /// # Errors
    /// A taken port, or a failing `initdb`/`pg_ctl`/`createdb`, with its log's path.
    pub fn start(&self, home: &Home) -> Result<(), CliError> {
        if !self.data().join("PG_VERSION").exists() {
            std::fs::create_dir_all(&self.dir).map_err(CliError::io(format!("create {}", self.dir.display())))?;
            if !self.dir.starts_with(&home.root) {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(CliError::io(format!("restrict {}", self.dir.display())))?;
                std::fs::create_dir_all(&home.root).map_err(CliError::io(format!("create {}", home.root.display())))?;
                std::fs::write(home.postgres_pointer(), format!("{}\n", self.dir.display()))
                    .map_err(CliError::io(format!("write {}", home.postgres_pointer().display())))?;
            }
            if let Some((uid, gid)) = self.owner {
                nix::unistd::chown(&self.dir, Some(uid.into()), Some(gid.into())).map_err(|e| {
                    CliError::Step(format!("cannot give {} to the postgres user: {e}", self.dir.display()))
                })?;
            }
            run(
                as_owner(Command::new(self.bin.join("initdb")), self.owner).arg("-D").arg(self.data()).args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]),
                "initdb",
            )
            .map_err(|e| match e {
                CliError::Step(text) if text.contains("Permission denied") && self.owner.is_some() => CliError::Step(format!(
                    "{text}; PostgreSQL runs as the `postgres` user, which must be able to enter every directory above {} (chmod o+x)",
                    self.dir.display()
                )),
                other => other,
            })?;
        }
        if self.running() {
            return Ok(());
        }
        if port_in_use(self.port) {
            return Err(CliError::PortTaken { port: self.port, what: "PostgreSQL", flag: "--pg-port" });
        }
        let log = self.dir.join("postgres.log");
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.dir.display());
        let started = run(
            as_owner(Command::new(self.bin.join("pg_ctl")), self.owner)
                .arg("start")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o", &options]),
            &format!("starting PostgreSQL (log: {})", log.display()),
        );
        if started.is_err()
            && std::fs::read_to_string(&log).is_ok_and(|text| {
                text.lines()
                    .rev()
                    .take(20)
                    .any(|l| l.contains("could not bind") || l.contains("Address already in use"))
            })
        {
            // Taken between our check and its bind (or by a connection's local port).
            return Err(CliError::PortTaken { port: self.port, what: "PostgreSQL", flag: "--pg-port" });
        }
        started?;
        // The database may exist already (a restart): createdb then fails harmlessly.
        let _ = as_owner(Command::new(self.bin.join("createdb")), self.owner)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", DATABASE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(())
    }

    /// Stops the server (fast shutdown), if running.
    ///
    /// # Errors
    /// When `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<(), CliError> {
        if !self.running() {
            return Ok(());
        }
        run(
            as_owner(Command::new(self.bin.join("pg_ctl")), self.owner)
                .arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w"]),
            "stopping PostgreSQL",
        )
    }
}

/// The Redis under `home`.
#[derive(Debug)]
pub struct LocalRedis {
    dir: PathBuf,
    port: u16,
}

impl LocalRedis {
    /// Describes (does not start) the server under `home` on `port`.
    pub fn new(home: &Home, port: u16) -> Self {
        Self { dir: home.redis(), port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    /// Whether our server runs (its pid file names a live process).
    pub fn running(&self) -> bool {
        pid_alive(&self.pid_file()).is_some()
    }

    /// Starts `redis-server` as a daemon with an append-only file, unless running.
    ///
    /// # Errors
    /// Not installed, a taken port, or no answer within 10 s.
    pub fn start(&self) -> Result<(), CliError> {
        if self.running() {
            return Ok(());
        }
        let binary = redis_server()?;
        if port_in_use(self.port) {
            return Err(CliError::PortTaken { port: self.port, what: "Redis", flag: "--redis-port" });
        }
        std::fs::create_dir_all(&self.dir).map_err(CliError::io(format!("create {}", self.dir.display())))?;
        let log = self.dir.join("redis.log");
        run(
            Command::new(binary)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--daemonize",
                    "yes",
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ])
                .arg("--pidfile")
                .arg(self.pid_file())
                .arg("--logfile")
                .arg(&log)
                .arg("--dir")
                .arg(&self.dir),
            "starting Redis",
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(CliError::Step(format!("Redis did not answer within 10 s; see {}", log.display())))
    }

    /// Stops the server (SIGTERM, which also flushes the append-only file), if running.
    ///
    /// # Errors
    /// When it does not stop within 10 s.
    pub fn stop(&self) -> Result<(), CliError> {
        match pid_alive(&self.pid_file()) {
            Some(pid) => terminate(pid, Duration::from_secs(10), "Redis"),
            None => Ok(()),
        }
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok() && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// The pid in `file`, if that process is alive.
pub fn pid_alive(file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    (alive && !zombie).then_some(pid)
}

/// SIGTERM, then SIGKILL after `grace`.
///
/// # Errors
/// When the process survives even SIGKILL.
pub fn terminate(pid: i32, grace: Duration, what: &str) -> Result<(), CliError> {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(pid);
    let gone = |pid| {
        kill(pid, None).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
                .unwrap_or(false)
    };
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if gone(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    if gone(pid) { Ok(()) } else { Err(CliError::Step(format!("{what} (pid {pid}) did not stop"))) }
}
