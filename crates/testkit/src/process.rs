//! A built binary under test: started with its own environment, signalled, waited for.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{Error, spawn};

/// The resident set size of process `pid` in bytes (`VmRSS`), or of this process for
/// `std::process::id()`; 0 when it cannot be read (the process is gone).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| {
        let v = v.trim();
        v.strip_suffix("kB").unwrap_or(v).trim().parse::<u64>().ok()
    });
    kb.unwrap_or(0) * 1024
}

/// A child process whose stdout and stderr go to files in its scratch directory; killed on drop.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    dir: PathBuf,
    status: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts `program` with `args` and exactly `env` (plus `PATH`), in a fresh directory.
    ///
    /// # Errors
    /// When the program cannot be started (not built, say).
    pub fn spawn(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self, Error> {
        let dir = spawn::scratch_dir("process")?;
        let stdout = File::create(dir.join("stdout")).map_err(Error::io("create a stdout file"))?;
        let stderr = File::create(dir.join("stderr")).map_err(Error::io("create a stderr file"))?;
        let mut command = Command::new(program);
        command.args(args).env_clear().current_dir(&dir).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(env.iter().copied());
        let child = spawn::spawn(command).map_err(Error::io(format!("start {}", program.display())))?;
        Ok(Self { child, dir, status: None })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let child = &mut self.child;
            let mut status = None;
            crate::poll::wait_for_blocking(within, Duration::from_millis(10), || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            });
            self.status = status;
        }
        self.status
    }

    /// What the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// What the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            spawn::stop_child(&mut self.child, Signal::SIGKILL, Duration::from_secs(1));
        }
        crate::postgres::keep_or_remove(&self.dir, "process", "read its stdout and stderr files");
    }
}
