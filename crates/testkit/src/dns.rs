//! A real DNS server for discovery tests: Debian's `dnsmasq`, authoritative for `.test` on a
//! free loopback port, answering from a hosts file it re-reads on SIGHUP and from SRV records
//! given at start.

use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y dnsmasq-base";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or deliberately stopped) `dnsmasq`; killed and removed on drop.
///
/// Names under `.test` that the hosts file does not hold are answered `NXDOMAIN`
/// (authoritatively); records have a TTL of 1 s. Names under `down.test` are forwarded to an
/// upstream that is not there, so they fail (SERVFAIL or REFUSED) as a broken upstream does.
#[derive(Debug)]
pub struct Dnsmasq {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    /// A loopback port nothing listens on: the upstream of `down.test`.
    nowhere: u16,
    /// `--srv-host` values (`_http._tcp.shop.test,host,port`).
    srv: Vec<String>,
    /// The TTL of every record, in seconds.
    ttl: u32,
    process: Supervised,
}

impl Dnsmasq {
    /// Starts `dnsmasq` with `hosts` (lines of `address name`) and SRV records.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when `dnsmasq` is not installed, or it does not answer within
    /// 10 s.
    pub fn start(hosts: &str, srv: &[&str]) -> Result<Self, Error> {
        Self::start_with_ttl(hosts, srv, 1)
    }

    /// [`start`](Self::start) with records of TTL `ttl` seconds.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_ttl(hosts: &str, srv: &[&str], ttl: u32) -> Result<Self, Error> {
        let binary = find_binary("dnsmasq", &[PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")], INSTALL)?;
        let mut dns = Dnsmasq {
            binary,
            dir: spawn::scratch_dir("dnsmasq")?,
            port: crate::free_port()?,
            nowhere: crate::free_port()?,
            srv: srv.iter().map(|s| s.to_string()).collect(),
            ttl,
            process: Supervised::new(Signal::SIGTERM),
        };
        dns.set_hosts(hosts)?;
        dns.run()?;
        Ok(dns)
    }

    /// The port it answers on (UDP and TCP, 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as `control.nameservers` takes it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Replaces the hosts file and has a running server re-read it (SIGHUP).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_hosts(&mut self, hosts: &str) -> Result<(), Error> {
        std::fs::write(self.hosts_path(), hosts).map_err(Error::io("write the dnsmasq hosts file"))?;
        self.process.signal(Signal::SIGHUP);
        Ok(())
    }

    /// Replaces the SRV records: they are start-up options, so a running server is restarted.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn set_srv(&mut self, srv: &[&str]) -> Result<(), Error> {
        self.srv = srv.iter().map(|s| s.to_string()).collect();
        self.stop();
        self.run()
    }

    /// Stops the server: queries then time out (or are refused), as with a DNS outage.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again after [`stop`](Self::stop), on the same port.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn run(&mut self) -> Result<(), Error> {
        if self.process.is_running() {
            return Ok(());
        }
        let log = self.dir.join("dnsmasq.log");
        let out = OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the dnsmasq log"))?;
        let err = out.try_clone().map_err(Error::io("open the dnsmasq log"))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["-k", "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1"])
            // Root keeps its rights, so SIGHUP can re-read a hosts file in a private directory.
            .args(["--user=root", "--local=/test/", "--log-facility=-"])
            .arg(format!("--local-ttl={}", self.ttl))
            .arg(format!("--port={}", self.port))
            .arg(format!("--server=/down.test/127.0.0.1#{}", self.nowhere))
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .args(self.srv.iter().map(|s| format!("--srv-host={s}")))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.process.started(spawn::spawn(command).map_err(Error::io("start dnsmasq"))?);
        if crate::poll::wait_for_blocking(START_TIMEOUT, Duration::from_millis(10), || answers(self.port)) {
            Ok(())
        } else {
            Err(Error::NotReady { what: "dnsmasq".into(), seconds: START_TIMEOUT.as_secs(), log })
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server on `port` answers a query (any answer will do).
fn answers(port: u16) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else { return false };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    // A query for `probe.test` A: id 0x1234, recursion desired, one question.
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    for label in ["probe", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0x00, 0x00, 0x01, 0x00, 0x01]);
    if socket.send_to(&query, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv(&mut buf), Ok(n) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}
