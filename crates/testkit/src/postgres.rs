//! A real PostgreSQL cluster for one test binary (or one fault-injection test).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y postgresql";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for a [`Postgres`] cluster; `PostgresBuilder::default().start()` is the usual use.
#[derive(Debug, Default, Clone)]
pub struct PostgresBuilder {
    settings: Vec<(String, String)>,
    tls: Option<crate::pki::Issued>,
}

impl PostgresBuilder {
    /// Adds a server setting (`-c name=value`), e.g. `max_connections`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Offers TLS (`ssl = on`) with `server`'s certificate and key, copied into the data
    /// directory for the cluster's owner (PostgreSQL refuses a key others can read). Plain
    /// connections are still accepted: `sslmode` decides.
    pub fn tls(mut self, server: crate::pki::Issued) -> Self {
        self.tls = Some(server);
        self
    }

    /// Runs `initdb` in a fresh directory and starts the server on a free loopback port.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when PostgreSQL's server binaries are not installed, and any
    /// failure of `initdb` or of the server to accept connections within 30 s.
    pub fn start(self) -> Result<Postgres, Error> {
        let bin_dir = bin_dir()?;
        let dir = spawn::scratch_dir("postgres")?;
        let owner = server_user()?;
        let data = dir.join("data");
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(|e| Error::Io {
                action: format!("give {} to the postgres user", dir.display()),
                source: e.into(),
            })?;
        }
        let mut pg = Postgres {
            bin_dir,
            dir,
            data,
            port: crate::free_port()?,
            owner,
            process: Supervised::new(Signal::SIGINT),
            settings: self.settings,
        };
        pg.initdb()?;
        if let Some(server) = &self.tls {
            pg.install_tls(server)?;
        }
        pg.start()?;
        Ok(pg)
    }
}

/// A running (or deliberately stopped or paused) PostgreSQL server; killed and removed on drop.
///
/// The superuser is `postgres` with `trust` authentication on 127.0.0.1 only. The port stays
/// the same across [`stop`](Self::stop) and [`start`](Self::start), so clients can reconnect.
#[derive(Debug)]
pub struct Postgres {
    bin_dir: PathBuf,
    /// Scratch directory holding `data/` and `postgres.log`.
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    /// uid/gid the server runs as: `postgres` when we are root (initdb refuses root).
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    /// The postmaster; a fast shutdown (SIGINT) disconnects clients and stops it.
    process: Supervised,
    settings: Vec<(String, String)>,
}

impl Postgres {
    /// Starts a cluster with default settings; see [`PostgresBuilder::start`].
    ///
    /// # Errors
    /// As [`PostgresBuilder::start`].
    pub fn start_default() -> Result<Self, Error> {
        PostgresBuilder::default().start()
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `name`.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A connection URL for the `postgres` maintenance database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Creates a new, empty database with a unique name and returns its URL.
    ///
    /// # Errors
    /// When the server refuses the statement (stopped or paused, say).
    pub fn fresh_database(&self, prefix: &str) -> Result<String, Error> {
        let name = crate::unique_name(prefix);
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url_for(&name))
    }

    /// Runs one SQL statement with `psql` in database `db` and returns its unaligned output.
    ///
    /// # Errors
    /// When `psql` fails.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let port = self.port.to_string();
        run(Command::new(self.bin_dir.join("psql")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))
    }

    /// A streaming-replication standby of this server: a `pg_basebackup -R` of it, started on
    /// its own port. It answers reads, refuses writes (`pg_is_in_recovery()` is true) until
    /// [`promote`](Self::promote)d, and is removed on drop like any cluster.
    ///
    /// # Errors
    /// When the base backup fails or the standby does not accept connections within 30 s.
    pub fn standby(&self) -> Result<Postgres, Error> {
        let dir = spawn::scratch_dir("postgres-standby")?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(|e| Error::Io {
                action: format!("give {} to the postgres user", dir.display()),
                source: e.into(),
            })?;
        }
        let data = dir.join("data");
        let port = self.port.to_string();
        run(self
            .command("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-X", "stream", "-c", "fast", "-R", "--no-sync"])
            .arg("-D")
            .arg(&data))?;
        let mut standby = Postgres {
            bin_dir: self.bin_dir.clone(),
            dir,
            data,
            port: crate::free_port()?,
            owner: self.owner,
            process: Supervised::new(Signal::SIGINT),
            // A standby waits for no standby of its own: once promoted it must commit alone.
            settings: self.settings.iter().filter(|(name, _)| name != "synchronous_standby_names").cloned().collect(),
        };
        standby.start()?;
        Ok(standby)
    }

    /// Brings a crashed (or stopped) former primary back as a streaming standby of `primary`
    /// on its own port, as an operator does after a failover: its data directory is cloned
    /// again from the new primary (`pg_basebackup -R`, what Patroni's reinit and CloudNativePG
    /// do when a rewind is not possible), so whatever it had that the new primary lacks is gone.
    ///
    /// # Errors
    /// When the base backup fails or the standby does not accept connections within 30 s.
    pub fn rejoin_as_standby_of(&mut self, primary: &Postgres) -> Result<(), Error> {
        self.process.kill();
        std::fs::remove_dir_all(&self.data).map_err(Error::io("remove the old primary's data directory"))?;
        let port = primary.port.to_string();
        run(self
            .command("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-X", "stream", "-c", "fast", "-R", "--no-sync"])
            .arg("-D")
            .arg(&self.data))?;
        // A standby waits for no standby of its own.
        self.settings.retain(|(name, _)| name != "synchronous_standby_names");
        self.start()
    }

    /// Promotes a standby to a primary (`pg_promote()`, which waits until it takes writes).
    ///
    /// # Errors
    /// When the server is not a standby or does not finish promoting within 60 s.
    pub fn promote(&self) -> Result<(), Error> {
        let done = self.psql("postgres", "SELECT pg_promote(true, 60)")?;
        if done.trim() == "t" { Ok(()) } else { Err(Error::Command { command: "pg_promote()".into(), output: done }) }
    }

    /// Starts the server again after [`stop`](Self::stop); a no-op while it runs.
    ///
    /// # Errors
    /// When the server does not accept connections within 30 s.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.process.is_running() {
            return Ok(());
        }
        let log = self.log_path();
        let out =
            OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the postgres log"))?;
        let err = out.try_clone().map_err(Error::io("open the postgres log"))?;
        let mut command = self.command("postgres");
        command.arg("-D").arg(&self.data).args(["-p", &self.port.to_string()]);
        for (name, value) in
            default_settings().iter().map(|(n, v)| (n.to_string(), v.to_string())).chain(self.settings.clone())
        {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        self.process.started(spawn::spawn(command).map_err(Error::io("start postgres"))?);
        let isready = self.bin_dir.join("pg_isready");
        let port = self.port.to_string();
        let ready = crate::poll::wait_for_blocking(START_TIMEOUT, Duration::from_millis(25), || {
            Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .status()
                .is_ok_and(|s| s.success())
        });
        if ready {
            Ok(())
        } else {
            Err(Error::NotReady { what: "postgres".into(), seconds: START_TIMEOUT.as_secs(), log })
        }
    }

    /// Stops the server with a fast shutdown (clients are disconnected); the data is kept.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// [`stop`](Self::stop), then [`start`](Self::start) on the same port and data.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.start()
    }

    /// Kills the server and all its backends with SIGKILL, as a crashed node; the data stays
    /// (and [`start`](Self::start) would run crash recovery).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Freezes the server and all its backends with SIGSTOP: connections stay open and hang.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn initdb(&self) -> Result<(), Error> {
        run(self.command("initdb").arg("-D").arg(&self.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]))
        .map(drop)
    }

    /// Copies the server certificate and key into the data directory, owned by the cluster's
    /// owner with mode 0600, and turns `ssl` on.
    fn install_tls(&mut self, server: &crate::pki::Issued) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        for (from, name) in [(&server.cert, "server.crt"), (&server.key, "server.key")] {
            let to = self.data.join(name);
            std::fs::copy(from, &to).map_err(Error::io("copy a server certificate"))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(Error::io("restrict a server key"))?;
            if let Some((uid, gid)) = self.owner {
                nix::unistd::chown(&to, Some(uid), Some(gid)).map_err(|e| Error::Io {
                    action: format!("give {} to the postgres user", to.display()),
                    source: e.into(),
                })?;
            }
        }
        for (name, value) in [("ssl", "on"), ("ssl_cert_file", "server.crt"), ("ssl_key_file", "server.key")] {
            self.settings.push((name.into(), value.into()));
        }
        Ok(())
    }

    /// A command for one of the server binaries, run as the cluster's owner.
    fn command(&self, binary: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(self.bin_dir.join(binary));
        command.current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        keep_or_remove(
            &self.dir,
            "postgres",
            &format!("{} -D {} -p {}", self.bin_dir.join("postgres").display(), self.data.display(), self.port),
        );
    }
}

/// Settings that make a throw-away cluster fast and private.
fn default_settings() -> [(&'static str, &'static str); 7] {
    [
        ("listen_addresses", "127.0.0.1"),
        ("unix_socket_directories", ""),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "200"),
        ("shared_buffers", "32MB"),
    ]
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or `CARACAL_PG_BIN_DIR` when set.
fn bin_dir() -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("CARACAL_PG_BIN_DIR") {
        candidates.push(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    let initdb = find_binary("initdb", &candidates, INSTALL)?;
    let dir = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
    find_binary("postgres", std::slice::from_ref(&dir), INSTALL)?;
    Ok(dir)
}

/// `initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user.
fn server_user() -> Result<Option<(nix::unistd::Uid, nix::unistd::Gid)>, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid, user.gid))),
        _ => Err(Error::MissingBinary {
            binary: "postgres (the system user)",
            looked_in: "/etc/passwd".into(),
            install: INSTALL,
        }),
    }
}

/// Runs a helper command to completion; its output on success, an error with it on failure.
pub(crate) fn run(command: &mut Command) -> Result<String, Error> {
    let output = command.output().map_err(Error::io(format!("run {command:?}")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_string())
    } else {
        Err(Error::Command { command: format!("{command:?}"), output: text })
    }
}

/// Removes a server's scratch directory, or keeps it when a test is failing and says how to
/// reopen it.
pub(crate) fn keep_or_remove(dir: &Path, what: &str, reopen: &str) {
    if std::thread::panicking() {
        eprintln!("testkit: a test failed; kept the {what} directory {} (reopen with: {reopen})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}
