//! A real Redis Sentinel (`redis-server --sentinel`) watching a [`crate::Redis`] master, for
//! failover tests: several of them, a master and a replica make the shape operators run.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y redis-server";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running Sentinel; killed and removed on drop.
#[derive(Debug)]
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    process: Supervised,
}

impl Sentinel {
    /// Starts a Sentinel on a free loopback port monitoring the master on loopback
    /// `master_port` as `name`, with `quorum` Sentinels needed to agree it is down. A master
    /// that has not answered for 1 s is down; Sentinels find each other and the replicas
    /// through the master.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when `redis-server` is not installed, or the Sentinel does not
    /// answer `PING` within 20 s.
    pub fn start(name: &str, master_port: u16, quorum: u32) -> Result<Self, Error> {
        let binary =
            find_binary("redis-server", &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")], INSTALL)?;
        let dir = spawn::scratch_dir("sentinel")?;
        let port = crate::free_port()?;
        // Sentinel rewrites its config file as it learns the topology, so it gets its own copy.
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 10000\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.display()
        );
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, config).map_err(Error::io("write the sentinel config"))?;
        let log = dir.join("sentinel.log");
        let out =
            OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the sentinel log"))?;
        let err = out.try_clone().map_err(Error::io("open the sentinel log"))?;
        let mut command = Command::new(binary);
        command.arg(&file).arg("--sentinel").current_dir(&dir).stdin(Stdio::null()).stdout(out).stderr(err);
        let mut process = Supervised::new(Signal::SIGTERM);
        process.started(spawn::spawn(command).map_err(Error::io("start redis-server --sentinel"))?);
        if !crate::poll::wait_for_blocking(START_TIMEOUT, Duration::from_millis(10), || crate::redis::ping(port)) {
            return Err(Error::NotReady { what: "redis sentinel".into(), seconds: START_TIMEOUT.as_secs(), log });
        }
        Ok(Self { port, dir, process })
    }

    /// The Sentinel's URL (`redis://127.0.0.1:<port>/`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port of the master this Sentinel names for `name` now (`SENTINEL
    /// get-master-addr-by-name`), if it names one.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let reply = self.command(&format!("SENTINEL get-master-addr-by-name {name}")).ok()?;
        // `*2 $9 127.0.0.1 $<n> <port>`: the port is the last line.
        reply.lines().rfind(|l| !l.is_empty())?.trim().parse().ok()
    }

    /// How many other Sentinels this one knows for `name` (they find each other through the
    /// master within a few seconds of starting).
    pub fn peers(&self, name: &str) -> usize {
        self.count(&format!("SENTINEL sentinels {name}"))
    }

    /// How many replicas of `name` this Sentinel knows (learnt from the master's `INFO`).
    pub fn replicas(&self, name: &str) -> usize {
        self.count(&format!("SENTINEL replicas {name}"))
    }

    /// Sends one inline command (`SENTINEL FAILOVER <name>`, say) and returns the raw reply.
    ///
    /// # Errors
    /// When the Sentinel cannot be reached.
    pub fn command(&self, line: &str) -> Result<String, Error> {
        crate::redis::inline_command(self.port, line)
    }

    /// The length of the array `line` answers, 0 when it cannot be read.
    fn count(&self, line: &str) -> usize {
        self.command(line)
            .ok()
            .and_then(|reply| reply.lines().next()?.strip_prefix('*')?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The Sentinel's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("sentinel.log")
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
