//! `caracal-testkit`: real servers and processes for Caracal's tests.
//!
//! Tests in this workspace never mock PostgreSQL or Redis. This crate starts the machine's own
//! server binaries as child processes on free loopback ports, in throw-away directories, and
//! hands out connection URLs plus fault injection (`stop`, `start`, `restart`, `pause`,
//! `resume`). A missing server binary is a loud error saying what to install.
//!
//! # Layout
//! - [`postgres`]: [`Postgres`], a PostgreSQL cluster (`initdb` + `postgres`).
//! - [`redis`]: [`Redis`], a `redis-server` (TLS, replica, SIGKILL); [`sentinel`]: a Redis
//!   Sentinel watching one.
//! - [`dns`]: [`Dnsmasq`], an authoritative DNS server for `.test` (hosts file, SRV records).
//! - [`alertmanager`]: a `prometheus-alertmanager` to post alerts to; [`prometheus`]: a
//!   `prometheus` with a test's configuration.
//! - [`pki`]: certificates from `openssl` and `openssl s_server` as a TLS server.
//! - [`process`]: [`ServiceProcess`], a spawned binary under test (signals, logs, exit status).
//! - [`poll`]: [`wait_for`], polling a condition instead of sleeping.
//! - `app` (feature `app`): serving a caracal-core app in-process, with polling helpers.
//! - `otlp` (feature `otlp`): a collector for OTLP/HTTP span exports, decoded with the official
//!   protobuf definitions (`opentelemetry-proto`), that can be stopped to play a dead one.
//! - [`bench`]: what the benchmark harnesses share (`wrk`'s rate, medians, CPU and memory).
//! - `spawn` (private): the long-lived spawner thread and the scratch directory.
//!
//! Children are started with `PR_SET_PDEATHSIG`, so a test binary that exits (or crashes)
//! takes its servers with it; scratch directories of dead test processes are removed the next
//! time the toolkit starts.

pub mod alertmanager;
#[cfg(feature = "app")]
pub mod app;
pub mod bench;
pub mod dns;
pub mod error;
pub mod haproxy;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod pki;
pub mod poll;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod sentinel;
mod spawn;

pub use dns::Dnsmasq;
pub use error::Error;
/// Signals for [`ServiceProcess::signal`], re-exported so tests need no `nix` of their own.
pub use nix::sys::signal::Signal;
pub use poll::wait_for;
pub use postgres::Postgres;
pub use process::ServiceProcess;
pub use redis::Redis;

/// The PostgreSQL and Redis one test binary shares: started on first use, killed when the
/// binary exits. Tests that stop, restart or pause a server start their own instead.
#[derive(Debug)]
pub struct Shared {
    /// The shared PostgreSQL; give each test its own database ([`Postgres::fresh_database`]).
    pub postgres: Postgres,
    /// The shared Redis; give each test its own keys ([`unique_name`]).
    pub redis: Redis,
}

/// The servers shared by this test binary.
///
/// # Panics
/// When either server cannot start (not installed, say): no test could run anyway.
pub fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| Shared {
        postgres: Postgres::start_default().unwrap_or_else(|e| panic!("cannot start the shared PostgreSQL: {e}")),
        redis: Redis::start_default().unwrap_or_else(|e| panic!("cannot start the shared Redis: {e}")),
    })
}

/// A name unique within this machine for the life of the test run (`prefix_<pid>_<n>`), for
/// databases and key prefixes, so tests sharing one server never see each other's data.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}

/// A free TCP port on 127.0.0.1 right now (the OS picks it; it may be taken again later, but
/// the window is short and servers here bind it at once).
///
/// # Errors
/// When no loopback socket can be bound.
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::io("bind a free port"))?;
    Ok(listener.local_addr().map_err(Error::io("read a bound address"))?.port())
}

/// Writes a secret file as a service outside `dev` accepts one: readable by its owner alone
/// (`0600`).
///
/// # Panics
/// When the file cannot be written.
pub fn write_secret(path: impl AsRef<std::path::Path>, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path.as_ref())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.as_ref().display()));
    file.write_all(contents.as_ref()).unwrap_or_else(|e| panic!("write {}: {e}", path.as_ref().display()));
}

/// Raises this process's open-file limit to its hard limit, for tests that hold thousands of
/// sockets at once (both ends of every loopback connection count).
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> Result<u64, Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let to_io = |e: nix::Error| std::io::Error::from(e);
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| Error::Io { action: "read the open-file limit".into(), source: to_io(e) })?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|e| Error::Io { action: "raise the open-file limit".into(), source: to_io(e) })?;
    Ok(hard)
}
