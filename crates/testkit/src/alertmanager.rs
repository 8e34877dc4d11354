//! A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, for tests
//! that post alerts to it (`POST /api/v2/alerts`), silence them, and read what a service makes
//! of them.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y prometheus-alertmanager";

/// A running Alertmanager with one receiver that sends nowhere; killed and removed on drop.
#[derive(Debug)]
pub struct Alertmanager {
    port: u16,
    dir: PathBuf,
    process: Supervised,
}

impl Alertmanager {
    /// Starts Alertmanager on a free loopback port, clustering off.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when it is not installed, or it is not ready within 20 s.
    pub fn start() -> Result<Self, Error> {
        let binary = find_binary(
            "prometheus-alertmanager",
            &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")],
            INSTALL,
        )?;
        let dir = spawn::scratch_dir("alertmanager")?;
        let port = crate::free_port()?;
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n")
            .map_err(Error::io("write the alertmanager config"))?;
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".to_string(),
        ];
        let process = start_ready(&binary, &args, &dir, port, "alertmanager")?;
        Ok(Self { port, dir, process })
    }

    /// Its base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it (SIGTERM), as an Alertmanager that went away.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `binary` with `args` in `dir` (its output in `<name>.log` there) and waits up to 20 s
/// for `GET /-/ready` on loopback `port` to answer 200, as Prometheus and Alertmanager do.
pub(crate) fn start_ready(
    binary: &std::path::Path,
    args: &[String],
    dir: &std::path::Path,
    port: u16,
    name: &str,
) -> Result<Supervised, Error> {
    let log = dir.join(format!("{name}.log"));
    let out =
        OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io(format!("open the {name} log")))?;
    let err = out.try_clone().map_err(Error::io(format!("open the {name} log")))?;
    let mut command = Command::new(binary);
    command.args(args).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err);
    let mut process = Supervised::new(Signal::SIGTERM);
    process.started(spawn::spawn(command).map_err(Error::io(format!("start {name}")))?);
    let ready = crate::poll::wait_for_blocking(Duration::from_secs(20), Duration::from_millis(50), || {
        http_ok(port, "/-/ready")
    });
    if !ready {
        return Err(Error::NotReady { what: name.into(), seconds: 20, log });
    }
    Ok(process)
}

/// Whether `GET path` on loopback `port` answers 200.
pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    matches!(stream.read(&mut head), Ok(n) if head[..n].starts_with(b"HTTP/1.1 200") || head[..n].starts_with(b"HTTP/1.0 200"))
}
