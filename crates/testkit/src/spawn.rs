//! Where children come from: one long-lived spawner thread, and one scratch directory per test
//! process.
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)` so they die with the test binary even when it is
//! killed. The kernel sends that signal when the *thread* that forked the child exits, not the
//! process, so every child is forked from a thread that lives as long as the process: tokio
//! test threads come and go, and a server forked from one would die with its test.
//! Each child also leads its own process group, so `pause` can stop a server's workers too
//! (a PostgreSQL backend is a separate process from the postmaster).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use crate::Error;

type Job = (Command, SyncSender<io::Result<Child>>);

/// Starts `command` from the spawner thread, in a new process group, killed with this process.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(spawn_here(&mut command));
                }
            })
            .expect("the OS refused a thread at test start-up; nothing can run");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::sync_channel(1);
    sender
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((command, reply))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    answer.recv().map_err(|_| io::Error::other("spawner thread is gone"))?
}

#[allow(unsafe_code)]
fn spawn_here(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: the closure runs between fork and exec and calls only prctl(2) through nix,
    // which is async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from));
    }
    command.spawn()
}

/// A fresh directory for one server or process, below this test process's scratch directory.
///
/// The directory is world-traversable (0755) because PostgreSQL runs as the `postgres` user
/// when the tests run as root.
pub(crate) fn scratch_dir(kind: &str) -> Result<PathBuf, Error> {
    static PROCESS_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let base = PROCESS_DIR
        .get_or_init(|| {
            let root = std::env::temp_dir().join("caracal-testkit");
            create_traversable(&root).map_err(|e| e.to_string())?;
            remove_stale(&root);
            let mine = root.join(std::process::id().to_string());
            create_traversable(&mine).map_err(|e| e.to_string())?;
            Ok(mine)
        })
        .clone()
        .map_err(|e| Error::Io {
            action: "create the testkit scratch directory".into(),
            source: io::Error::other(e),
        })?;
    let dir = base.join(crate::unique_name(kind));
    create_traversable(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    Ok(dir)
}

fn create_traversable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Removes scratch directories left by test processes that no longer run.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Finds `binary` in the first of `dirs` that has it, else on `PATH`.
pub(crate) fn find_binary(binary: &'static str, dirs: &[PathBuf], install: &'static str) -> Result<PathBuf, Error> {
    let path_dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.iter().chain(path_dirs.iter()).map(|d| d.join(binary)).find(|p| p.is_file()).ok_or_else(|| {
        Error::MissingBinary {
            binary,
            looked_in: dirs
                .iter()
                .map(|d| d.display().to_string())
                .chain(["$PATH".to_string()])
                .collect::<Vec<_>>()
                .join(", "),
            install,
        }
    })
}

/// Sends `signal` to the process group led by `child`, and to every descendant of `child`
/// (PostgreSQL backends call `setsid` and leave the group).
pub(crate) fn signal_group(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pid, signal);
    for descendant in descendants(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(descendant as i32), signal);
    }
}

/// Every live descendant of `root`, read from `/proc/<pid>/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// Stops `child` politely with `signal`, then by force after `grace`; reaps it.
pub(crate) fn stop_child(child: &mut Child, signal: nix::sys::signal::Signal, grace: std::time::Duration) {
    use nix::sys::signal::Signal;
    // A paused (SIGSTOPped) server cannot act on a polite signal.
    signal_group(child, Signal::SIGCONT);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, signal);
    let exited = crate::poll::wait_for_blocking(grace, std::time::Duration::from_millis(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        signal_group(child, Signal::SIGKILL);
        let _ = child.wait();
    }
    // Workers of the group (PostgreSQL backends) may outlive a killed leader for a moment.
    signal_group(child, Signal::SIGKILL);
}

/// A server's child process: stopped politely (then by force), paused and resumed as a whole.
#[derive(Debug)]
pub(crate) struct Supervised {
    child: Option<Child>,
    /// The signal that asks this server to shut down cleanly.
    stop_signal: nix::sys::signal::Signal,
}

impl Supervised {
    pub(crate) fn new(stop_signal: nix::sys::signal::Signal) -> Self {
        Self { child: None, stop_signal }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn started(&mut self, child: Child) {
        self.child = Some(child);
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, self.stop_signal, std::time::Duration::from_secs(10));
        }
    }

    pub(crate) fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Kills the server and its whole process group at once (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, nix::sys::signal::Signal::SIGKILL, std::time::Duration::from_secs(5));
        }
    }

    /// Sends `signal` to the server's process group, if it runs.
    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            signal_group(child, signal);
        }
    }

    pub(crate) fn resume(&self) {
        if let Some(child) = &self.child {
            signal_group(child, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn a_missing_binary_says_what_to_install() {
        let error =
            super::find_binary("caracal-no-such-server", &["/nonexistent".into()], "apt-get install -y something")
                .expect_err("not installed");
        let text = error.to_string();
        assert!(text.contains("caracal-no-such-server") && text.contains("apt-get install -y something"), "{text}");
        assert!(text.contains("/nonexistent") && text.contains("$PATH"), "says where it looked: {text}");
    }

    #[test]
    fn descendants_include_grandchildren() {
        // sh -> sleep: the shell is a child of the test, sleep a grandchild.
        let mut child = super::spawn({
            let mut c = Command::new("sh");
            c.args(["-c", "sleep 30 & wait"]);
            c
        })
        .expect("spawn sh");
        let found = crate::poll::wait_for_blocking(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(10),
            || !super::descendants(child.id()).is_empty(),
        );
        assert!(found, "the sleeping grandchild is found through /proc");
        super::stop_child(&mut child, nix::sys::signal::Signal::SIGTERM, std::time::Duration::from_secs(2));
        assert!(super::descendants(child.id()).is_empty(), "stopping the group leaves no descendant");
    }
}
