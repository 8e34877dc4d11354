//! `haproxy` in TCP mode in front of replicated servers, as a Kubernetes Service or a load
//! balancer in front of a store would be: new connections go to the first server whose TCP
//! check passes, the others being backups, and sessions to a server marked down are cut.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y haproxy";

/// A running `haproxy`; killed and removed on drop.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    dir: PathBuf,
    process: Supervised,
}

impl TcpProxy {
    /// Starts `haproxy` on a free loopback port in front of the servers on `ports` (loopback):
    /// the first is the active one, the rest are backups, each checked every 250 ms and marked
    /// down after two failed checks.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when `haproxy` is not installed, or it does not listen within 10 s.
    pub fn start(ports: &[u16]) -> Result<Self, Error> {
        let binary = find_binary("haproxy", &[PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")], INSTALL)?;
        let dir = spawn::scratch_dir("haproxy")?;
        let port = crate::free_port()?;
        let mut config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1h\n  timeout server 1h\n\
             frontend store\n  bind 127.0.0.1:{port}\n  default_backend servers\n\
             backend servers\n"
        );
        for (i, server) in ports.iter().enumerate() {
            let backup = if i == 0 { "" } else { " backup" };
            config.push_str(&format!(
                "  server s{i} 127.0.0.1:{server} check inter 250ms fall 2 rise 2 on-marked-down shutdown-sessions{backup}\n"
            ));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).map_err(Error::io("write the haproxy config"))?;
        let log = dir.join("haproxy.log");
        let out = OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the haproxy log"))?;
        let err = out.try_clone().map_err(Error::io("open the haproxy log"))?;
        let mut command = Command::new(binary);
        command.args(["-db", "-f"]).arg(&file).stdin(Stdio::null()).stdout(out).stderr(err);
        let mut process = Supervised::new(Signal::SIGTERM);
        process.started(spawn::spawn(command).map_err(Error::io("start haproxy"))?);
        let listening = crate::poll::wait_for_blocking(Duration::from_secs(10), Duration::from_millis(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !listening {
            return Err(Error::NotReady { what: "haproxy".into(), seconds: 10, log });
        }
        Ok(Self { port, dir, process })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
