//! A real `redis-server` for one test binary (or one fault-injection test).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::Error;
use crate::spawn::{self, Supervised, find_binary};

const INSTALL: &str = "apt-get install -y redis-server";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for a [`Redis`] server; `RedisBuilder::default().start()` is the usual use.
#[derive(Debug, Default, Clone)]
pub struct RedisBuilder {
    persistent: bool,
    tls: Option<Tls>,
    replica_of: Option<u16>,
}

/// TLS-only serving (`--port 0 --tls-port`): the server's certificate, and the CA whose client
/// certificates it requires, if it requires one.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The server's certificate and key (issued for `127.0.0.1`).
    pub server: crate::pki::Issued,
    /// The CA certificate client certificates must chain to; `None`: no client certificate.
    pub client_ca: Option<PathBuf>,
}

impl RedisBuilder {
    /// Keeps data across [`Redis::restart`] with an fsync-always append-only file, for tests
    /// that restart Redis and then count what survived.
    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// Serves TLS only, with `tls`'s certificate: [`Redis::url`] is then `rediss://`, and
    /// [`Redis::command`] (plain TCP) does not reach it.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts as a replica of the loopback server on `port` (`--replicaof`), as the second node
    /// of a Sentinel-watched pair.
    pub fn replica_of(mut self, port: u16) -> Self {
        self.replica_of = Some(port);
        self
    }

    /// Starts `redis-server` on a free loopback port.
    ///
    /// # Errors
    /// [`Error::MissingBinary`] when `redis-server` is not installed, or it does not answer
    /// `PING` within 20 s.
    pub fn start(self) -> Result<Redis, Error> {
        let binary =
            find_binary("redis-server", &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")], INSTALL)?;
        let mut redis = Redis {
            binary,
            dir: spawn::scratch_dir("redis")?,
            port: crate::free_port()?,
            persistent: self.persistent,
            tls: self.tls,
            replica_of: self.replica_of,
            process: Supervised::new(Signal::SIGTERM),
        };
        redis.start()?;
        Ok(redis)
    }
}

/// A running (or deliberately stopped or paused) Redis; killed and removed on drop.
#[derive(Debug)]
pub struct Redis {
    binary: PathBuf,
    /// Scratch directory: the log, and the append-only file when persistent.
    dir: PathBuf,
    port: u16,
    persistent: bool,
    tls: Option<Tls>,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    /// `redis-server`; SIGTERM stops it (after writing its append-only file when persistent).
    process: Supervised,
}

impl Redis {
    /// Starts a non-persistent server; see [`RedisBuilder::start`].
    ///
    /// # Errors
    /// As [`RedisBuilder::start`].
    pub fn start_default() -> Result<Self, Error> {
        RedisBuilder::default().start()
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL (`redis://127.0.0.1:<port>/`, or `rediss://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Starts the server again after [`stop`](Self::stop); a no-op while it runs.
    ///
    /// # Errors
    /// When it does not answer `PING` within 20 s.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.process.is_running() {
            return Ok(());
        }
        let log = self.log_path();
        let out = OpenOptions::new().create(true).append(true).open(&log).map_err(Error::io("open the redis log"))?;
        let err = out.try_clone().map_err(Error::io("open the redis log"))?;
        let mut command = Command::new(&self.binary);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(tls) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
                command.arg("--tls-cert-file").arg(&tls.server.cert).arg("--tls-key-file").arg(&tls.server.key);
                match &tls.client_ca {
                    Some(ca) => command.arg("--tls-ca-cert-file").arg(ca).args(["--tls-auth-clients", "yes"]),
                    None => command.args(["--tls-auth-clients", "no"]),
                }
            }
        };
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.process.started(spawn::spawn(command).map_err(Error::io("start redis-server"))?);
        // A TLS-only server cannot be pinged in plain text: it is up once it accepts connections.
        let tls = self.tls.is_some();
        let up = || if tls { std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() } else { ping(self.port) };
        if crate::poll::wait_for_blocking(START_TIMEOUT, Duration::from_millis(10), up) {
            Ok(())
        } else {
            Err(Error::NotReady { what: "redis-server".into(), seconds: START_TIMEOUT.as_secs(), log })
        }
    }

    /// Stops the server (SIGTERM); a persistent server keeps its data for the next start.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// [`stop`](Self::stop), then [`start`](Self::start) on the same port.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.start()
    }

    /// Kills the server with SIGKILL, as a crashed node: its connections drop at once and it
    /// writes nothing on the way out.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Freezes the server with SIGSTOP: connections stay open and hang.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Sends one inline command (e.g. `INFO commandstats`) and returns the raw reply, for tests
    /// that read the server's own counters.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub fn command(&self, line: &str) -> Result<String, Error> {
        inline_command(self.port, line)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        crate::postgres::keep_or_remove(
            &self.dir,
            "redis",
            &format!("{} --port {} --dir {}", self.binary.display(), self.port, self.dir.display()),
        );
    }
}

/// Sends one inline command to the loopback server on `port` and returns the raw reply.
pub(crate) fn inline_command(port: u16, line: &str) -> Result<String, Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(Error::io("connect to redis"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(Error::io("set a read timeout"))?;
    stream.write_all(format!("{line}\r\n").as_bytes()).map_err(Error::io("write to redis"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    // Bulk replies start with `$<len>`; read until the announced length has arrived.
    loop {
        let n = stream.read(&mut buf).map_err(Error::io("read from redis"))?;
        reply.extend_from_slice(&buf[..n]);
        if n == 0 || reply_complete(&reply) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether a RESP reply in `buf` is whole (simple, error, integer, bulk string, or an array
/// of any of these).
fn reply_complete(buf: &[u8]) -> bool {
    value_end(buf, 0).is_some()
}

/// Where the RESP value starting at `at` ends, if `buf` holds all of it.
fn value_end(buf: &[u8], at: usize) -> Option<usize> {
    let line = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
    let after = line + 2;
    let number = || std::str::from_utf8(buf.get(at + 1..line)?).ok()?.parse::<i64>().ok();
    match buf.get(at)? {
        b'$' => match number()? {
            n if n < 0 => Some(after),
            n => Some(after + n as usize + 2).filter(|end| buf.len() >= *end),
        },
        b'*' => (0..number()?.max(0)).try_fold(after, |next, _| value_end(buf, next)),
        _ => Some(after),
    }
}

pub(crate) fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[cfg(test)]
mod tests {
    use super::reply_complete;

    #[test]
    fn resp_replies_are_complete_only_when_whole() {
        assert!(reply_complete(b"+PONG\r\n"));
        assert!(reply_complete(b":42\r\n"));
        assert!(!reply_complete(b"+PON"));
        assert!(reply_complete(b"$5\r\nhello\r\n"));
        assert!(!reply_complete(b"$5\r\nhel"), "a bulk string waits for its announced length");
        assert!(reply_complete(b"$-1\r\n"), "a nil bulk string is whole");
        assert!(!reply_complete(b"*2\r\n$9\r\n127.0.0.1\r\n"), "an array waits for every element");
        assert!(reply_complete(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n"));
        assert!(reply_complete(b"*-1\r\n"), "a nil array is whole");
        assert!(reply_complete(b"*4\r\n:0\r\n$-1\r\n$-1\r\n*0\r\n"), "XPENDING of an empty group");
        assert!(!reply_complete(b"*2\r\n*2\r\n$1\r\na\r\n"), "nested arrays wait too");
    }
}
