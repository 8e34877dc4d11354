//! Plain `http://` probes over kept-alive HTTP/1.1 connections.
//!
//! A GET takes an idle connection to its address from [`Connections`] (or opens one through
//! the outbound policy), drives it in the probe's own task (no connection task, no wake-up
//! between two tasks per read and write), and hands it back once the answer is read whole. An
//! instance probed every few seconds thus pays for a request, not for a connection, and an
//! idle instance holds nothing: connections belong to addresses, a probe whose instance comes
//! back within [`IDLE_FOR`] leaves its connection for [`IDLE_FOR`], and any other for
//! [`IDLE_BRIEFLY`] (long enough for the probes of a burst to share it).
//!
//! At most [`OPENING_PER_ADDRESS`] connections to one address are being opened at once; a GET
//! beyond that waits for one of them, or for a connection another GET hands back. Probing a
//! thousand instances behind one address at once (a start, everything announced as changed)
//! thus reuses connections as their answers come, instead of a thousand connection attempts
//! overflowing the server's accept queue and timing out.
//!
//! A kept connection may have been closed by the server meanwhile. One that says so before
//! the request goes out is dropped for the next; a request on a reused connection that gets
//! nothing back at all (the server closed it just as the request left) is sent once more on a
//! fresh connection. A GET is safe to repeat, and a probe must not report an instance down
//! for a keep-alive timeout that is the server's normal business.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::outbound::Policy;
use caracal_core::telemetry;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::protocols::{self, Address, BODY_CAP};

/// How long an idle connection waits for the next probe of its address. A probe leaves its
/// connection behind only when its instance's interval is at most [`KEEP_WHEN_EVERY`].
pub const IDLE_FOR: Duration = Duration::from_secs(30);

/// The longest probe interval whose probes keep their connection (with a tenth of jitter
/// and a late probe, still within [`IDLE_FOR`]).
pub const KEEP_WHEN_EVERY: Duration = Duration::from_secs(20);

/// How long the connection of a probe whose instance comes back later than
/// [`KEEP_WHEN_EVERY`] waits for another GET to its address.
pub const IDLE_BRIEFLY: Duration = Duration::from_secs(1);

/// Connections to one address being opened at once, at most.
pub const OPENING_PER_ADDRESS: usize = 64;

/// Idle connections kept per address: two GETs of a probe run at once, and instances behind
/// one address (a load balancer, a port per host) share them.
const IDLE_PER_ADDRESS: usize = 64;

/// Idle connections kept in all: each holds its buffers (about 10 KB with the kernel's
/// socket) and a server's slot, so beyond this many a probe closes its connection as if it
/// were not kept. Memory stays bounded however large the fleet and however short its intervals.
pub const IDLE_AT_MOST: usize = 1_024;

/// One connection's HTTP/1.1 sender.
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
/// The connection behind a [`Sender`], driven by the task that uses it.
type Connection = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// An open connection between two uses.
struct Open {
    sender: Sender,
    connection: Connection,
    /// When it is closed if nobody took it.
    until: Instant,
}

/// Idle kept-alive connections, by address (`host:port`), and how many connections are kept
/// elsewhere (a TLS connection its instance keeps: see [`Place`]).
#[derive(Default)]
pub struct Connections {
    idle: Mutex<Idle>,
    elsewhere: Arc<AtomicUsize>,
    /// Told whenever a connection is handed back or an opening ends.
    changed: tokio::sync::Notify,
}

/// A connection's place among the [`IDLE_AT_MOST`] kept, held by whoever keeps it outside
/// [`Connections`]; dropping it frees the place.
#[derive(Debug)]
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The idle connections and how many there are.
#[derive(Default)]
struct Idle {
    by_address: HashMap<String, Vec<Open>>,
    count: usize,
    /// Connections being opened, by address (no entry: none).
    opening: HashMap<String, usize>,
}

/// A place among the connections to an address being opened, freed on drop.
struct Opening<'a> {
    connections: &'a Connections,
    authority: &'a str,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut idle = self.connections.lock();
        if let Some(n) = idle.opening.get_mut(self.authority) {
            *n -= 1;
            if *n == 0 {
                idle.opening.remove(self.authority);
            }
        }
        drop(idle);
        self.connections.changed.notify_waiters();
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("idle", &self.len()).finish()
    }
}

/// Why a GET failed.
enum Failed {
    /// Nothing came back: the connection was closed under the request (repeatable on a
    /// fresh connection when it was a reused one).
    Closed,
    /// The outbound policy refused the address, or the name did not resolve (its word).
    Refused(&'static str),
    /// No connection opened.
    Unreachable,
    /// The request could not be made or its answer was not HTTP.
    Request,
    /// An answer other than 2xx.
    Answered(u16),
}

/// What a GET needs besides the connection.
pub struct Get<'a> {
    /// Where.
    pub address: &'a Address,
    /// The instance's URL as registered (for the span), without a trailing `/`.
    pub url: &'a str,
    /// The path probed (`/health`).
    pub path: &'a str,
    /// The `User-Agent`.
    pub user_agent: &'a str,
    /// Whether the connection is kept for the next probe for [`IDLE_FOR`] (see
    /// [`KEEP_WHEN_EVERY`]), or only [`IDLE_BRIEFLY`].
    pub keep: bool,
    /// How long the GET may take, a connection's opening included.
    pub timeout: Duration,
}

impl Connections {
    /// How many idle connections are kept, here and elsewhere.
    pub fn len(&self) -> usize {
        self.lock().count + self.elsewhere.load(Ordering::Relaxed)
    }

    /// A place for a connection kept outside (see [`Place`]), when there is room.
    pub fn place(&self) -> Option<Place> {
        let here = self.lock().count;
        self.elsewhere
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (here + n < IDLE_AT_MOST).then_some(n + 1))
            .ok()
            .map(|_| Place(Arc::clone(&self.elsewhere)))
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // Every change under the lock leaves the map and its count in step, so a panic
        // elsewhere while it was held leaves nothing half done.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place among the connections to `authority` being opened, when one is free (the
    /// caller frees it with an [`Opening`]).
    fn reserve(&self, authority: &str) -> bool {
        let mut idle = self.lock();
        let opening = idle.opening.entry(authority.to_string()).or_default();
        if *opening >= OPENING_PER_ADDRESS {
            return false;
        }
        *opening += 1;
        true
    }

    /// Whether an idle connection to `authority` is there to take.
    fn has_idle(&self, authority: &str) -> bool {
        let now = Instant::now();
        self.lock().by_address.get(authority).is_some_and(|list| list.iter().any(|open| open.until > now))
    }

    /// The most recently used idle connection to `authority` that has not waited too long.
    fn take(&self, authority: &str) -> Option<Open> {
        let mut guard = self.lock();
        let idle = &mut *guard;
        let list = idle.by_address.get_mut(authority)?;
        let before = list.len();
        let now = Instant::now();
        let found = std::iter::from_fn(|| list.pop()).find(|open| open.until > now);
        let gone = before - list.len();
        if list.is_empty() {
            idle.by_address.remove(authority);
        }
        idle.count -= gone;
        found
    }

    /// Keeps a connection for the next GET to `authority` for `idle_for` (closes it when
    /// enough are kept), and tells a GET waiting for one.
    fn put(&self, authority: &str, sender: Sender, connection: Connection, idle_for: Duration) {
        let mut guard = self.lock();
        let idle = &mut *guard;
        if idle.count + self.elsewhere.load(Ordering::Relaxed) >= IDLE_AT_MOST {
            return;
        }
        let list = match idle.by_address.get_mut(authority) {
            Some(list) => list,
            None => idle.by_address.entry(authority.to_string()).or_default(),
        };
        if list.len() < IDLE_PER_ADDRESS {
            list.push(Open { sender, connection, until: Instant::now() + idle_for });
            idle.count += 1;
        }
        drop(guard);
        self.changed.notify_waiters();
    }

    /// Closes the connections that waited their time. What it walks is the connections kept
    /// (at most [`IDLE_AT_MOST`]), not the fleet.
    pub fn sweep(&self) {
        let mut guard = self.lock();
        let idle = &mut *guard;
        let now = Instant::now();
        idle.by_address.retain(|_, list| {
            list.retain(|open| open.until > now);
            !list.is_empty()
        });
        idle.count = idle.by_address.values().map(Vec::len).sum();
    }

    /// One GET of `get.path` within `get.timeout`: `Ok` for a 2xx, else a short reason (no
    /// body, no headers: it ends up in events and the public history).
    pub async fn get(&self, outbound: &Policy, get: &Get<'_>) -> Result<(), String> {
        let span = if telemetry::exporting() {
            telemetry::http_client_span("GET", &format!("{}{}", get.url, get.path))
        } else {
            tracing::Span::none()
        };
        let path = get.path;
        let (why, word) = match tokio::time::timeout(get.timeout, self.attempt(outbound, get, &span)).await {
            Ok(Ok(())) => return Ok(()),
            Err(_) => (format!("{path} timed out"), "timeout"),
            Ok(Err(Failed::Answered(status))) => return Err(format!("{path} answered {status}")),
            Ok(Err(Failed::Refused(word))) => (word.to_string(), word),
            Ok(Err(Failed::Unreachable)) => {
                (format!("{path}: connection refused or unreachable"), "connection_refused")
            }
            Ok(Err(Failed::Closed | Failed::Request)) => (format!("{path}: request failed"), "request_failed"),
        };
        telemetry::record_client_error(&span, word);
        Err(why)
    }

    /// The GET on a kept connection (one the server closed meanwhile says so and is passed
    /// over), or on a fresh one; a reused one that fails with nothing back is repeated once
    /// on a fresh one.
    async fn attempt(&self, outbound: &Policy, get: &Get<'_>, span: &tracing::Span) -> Result<(), Failed> {
        let authority = get.address.authority();
        loop {
            // Asked for before looking, so a connection handed back in between is not missed.
            let changed = self.changed.notified();
            if let Some(open) = self.take(&authority) {
                match self.exchange(open.sender, Some(open.connection), get, &authority, span).await {
                    Err(Failed::Closed) => continue,
                    done => return done,
                }
            }
            if !self.reserve(&authority) {
                changed.await;
                continue;
            }
            let opening = Opening { connections: self, authority: &authority };
            // Whichever comes first: the new connection, or one another GET hands back
            // meanwhile (a connection the server is slow to accept, in a burst, must not make
            // this GET time out while others free up). A connection attempt overtaken is
            // dropped.
            let opened = open(outbound, get.address);
            tokio::pin!(opened);
            let fresh = loop {
                let handed_back = self.changed.notified();
                if self.has_idle(&authority) {
                    break None;
                }
                tokio::select! {
                    opened = &mut opened => break Some(opened),
                    () = handed_back => {}
                }
            };
            drop(opening);
            match fresh {
                None => {}
                Some(Ok((sender, connection))) => {
                    return self.exchange(sender, Some(connection), get, &authority, span).await;
                }
                Some(Err(e)) => {
                    return Err(caracal_core::outbound::refused_in(&e)
                        .map_or(Failed::Unreachable, |refused| Failed::Refused(refused.word())));
                }
            }
        }
    }

    /// The GET on one connection, which is kept afterwards when it may carry the next.
    async fn exchange(
        &self,
        mut sender: Sender,
        mut connection: Option<Connection>,
        get: &Get<'_>,
        authority: &str,
        span: &tracing::Span,
    ) -> Result<(), Failed> {
        if protocols::drive(&mut connection, sender.ready()).await.is_err() {
            return Err(Failed::Closed);
        }
        let mut request = hyper::Request::get(format!("{}{}", get.address.prefix, get.path))
            .header(hyper::header::HOST, host_header(get.address))
            .header(hyper::header::USER_AGENT, get.user_agent)
            .body(Empty::new())
            .map_err(|_| Failed::Request)?;
        telemetry::inject_span_context(span, request.headers_mut());
        let response =
            match protocols::drive(&mut connection, sender.send_request(request)).instrument(span.clone()).await {
                Ok(response) => response,
                Err(e) if nothing_back(&e) => return Err(Failed::Closed),
                Err(_) => return Err(Failed::Request),
            };
        let status = response.status();
        telemetry::record_client_status(span, status.as_u16());
        // Reading a small body lets the connection carry the next probe; a larger one is cut
        // at the cap and its connection closed (the status is the verdict).
        let whole =
            protocols::drive(&mut connection, http_body_util::Limited::new(response.into_body(), BODY_CAP).collect())
                .await
                .is_ok();
        if let (true, Some(connection)) = (whole, connection) {
            self.put(authority, sender, connection, if get.keep { IDLE_FOR } else { IDLE_BRIEFLY });
        }
        if status.is_success() { Ok(()) } else { Err(Failed::Answered(status.as_u16())) }
    }
}

/// Whether a request failed before anything of an answer came back: the connection was
/// closed (or reset) under it, which a kept-alive connection may be at any moment.
pub(crate) fn nothing_back(error: &hyper::Error) -> bool {
    error.is_canceled() || error.is_incomplete_message() || error.is_closed() || {
        let source = std::error::Error::source(error).and_then(|s| s.downcast_ref::<std::io::Error>());
        source
            .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
    }
}

/// `Host` as a browser sends it: the port only when it is not 80.
fn host_header(address: &Address) -> String {
    if address.port == 80 { address.host.clone() } else { address.authority() }
}

/// A fresh connection through the outbound policy, with its HTTP/1.1 handshake.
async fn open(outbound: &Policy, address: &Address) -> std::io::Result<(Sender, Connection)> {
    let tcp = outbound.connect(address.connect_host(), address.port).await?;
    let _ = tcp.set_nodelay(true);
    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use caracal_store::target::Scheme;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Connections, Get, IDLE_AT_MOST, IDLE_BRIEFLY};
    use crate::protocols::{Address, BODY_CAP};

    /// How the test server treats each connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Server {
        /// Answers every request and keeps the connection.
        KeepsAlive,
        /// Closes the connection after each answer, without saying so.
        ClosesAfterAnswering,
        /// Answers a connection's first request and closes it when the second arrives (the
        /// race of a keep-alive timeout).
        DropsTheSecondRequest,
        /// Closes every connection when its first request arrives.
        AnswersNothing,
        /// Answers with a body beyond the cap.
        AnswersTooMuch,
    }

    /// A server on loopback; counts the connections it accepted and the answers it gave.
    async fn serve(how: Server) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (accepted, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counts = (Arc::clone(&accepted), Arc::clone(&answered));
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counts.0.fetch_add(1, Ordering::SeqCst);
                let answered = Arc::clone(&counts.1);
                tokio::spawn(async move {
                    let (mut buffer, mut requests) = (Vec::new(), 0);
                    let mut chunk = [0_u8; 1024];
                    loop {
                        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.clear();
                        requests += 1;
                        if how == Server::AnswersNothing || (how == Server::DropsTheSecondRequest && requests == 2) {
                            return;
                        }
                        let body =
                            if how == Server::AnswersTooMuch { vec![b'x'; BODY_CAP + 10] } else { b"ok".to_vec() };
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if tcp.write_all(&[head.as_bytes(), &body].concat()).await.is_err() {
                            return;
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        if how == Server::ClosesAfterAnswering {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted, answered)
    }

    /// `times` GETs of `/health` one after another; their results.
    async fn probe(connections: &Connections, port: u16, keep: bool, times: usize) -> Vec<Result<(), String>> {
        let url = format!("http://127.0.0.1:{port}");
        let address = Address::parse(&url, Scheme::Http).expect("address");
        let get = Get {
            address: &address,
            url: &url,
            path: "/health",
            user_agent: "test",
            keep,
            timeout: Duration::from_secs(5),
        };
        let policy = caracal_core::outbound::Policy::default();
        let mut results = Vec::new();
        for _ in 0..times {
            results.push(connections.get(&policy, &get).await);
            // Time for a server's close to arrive before the next GET.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results
    }

    #[tokio::test]
    async fn a_kept_connection_carries_every_probe_and_an_unkept_one_only_a_burst() {
        let (port, accepted, answered) = serve(Server::KeepsAlive).await;
        let connections = Connections::default();
        assert!(probe(&connections, port, true, 10).await.iter().all(Result::is_ok));
        assert_eq!((accepted.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)), (1, 10));
        assert_eq!(connections.len(), 1, "kept for the next probe");

        // An instance probed rarely leaves its connection only briefly.
        let (port, accepted, _) = serve(Server::KeepsAlive).await;
        let brief = Connections::default();
        assert!(probe(&brief, port, false, 3).await.iter().all(Result::is_ok));
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "shared by GETs close together");
        tokio::time::sleep(IDLE_BRIEFLY).await;
        brief.sweep();
        assert!(brief.is_empty(), "closed once its time is up");
        assert!(probe(&brief, port, false, 1).await.iter().all(Result::is_ok));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_at_one_address_shares_connections_and_fails_nothing() {
        let (port, accepted, answered) = serve(Server::KeepsAlive).await;
        let connections = Arc::new(Connections::default());
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..400 {
            let connections = Arc::clone(&connections);
            burst.spawn(async move { probe(&connections, port, false, 1).await });
        }
        let results: Vec<_> = burst.join_all().await.into_iter().flatten().collect();
        assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
        assert_eq!(answered.load(Ordering::SeqCst), 400);
        let opened = accepted.load(Ordering::SeqCst);
        assert!(opened < 400, "{opened} connections for 400 GETs: those handed back are shared");
    }

    #[tokio::test]
    async fn a_server_closing_kept_connections_causes_no_failed_probe() {
        // Closed between probes (seen before the request goes out), and closed just as the
        // request arrives (nothing comes back: made again on a fresh connection).
        for how in [Server::ClosesAfterAnswering, Server::DropsTheSecondRequest] {
            let (port, accepted, answered) = serve(how).await;
            let connections = Connections::default();
            let results = probe(&connections, port, true, 10).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            assert_eq!((accepted.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)), (10, 10));
        }
    }

    #[tokio::test]
    async fn a_fresh_connection_that_answers_nothing_fails_once_and_an_oversized_answer_is_not_kept() {
        let (port, accepted, _) = serve(Server::AnswersNothing).await;
        let connections = Connections::default();
        assert_eq!(probe(&connections, port, true, 1).await, [Err("/health: request failed".to_string())]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a fresh connection is not tried again");

        let (port, accepted, _) = serve(Server::AnswersTooMuch).await;
        assert!(probe(&connections, port, true, 3).await.iter().all(Result::is_ok), "the status is the verdict");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "a body cut at the cap closes its connection");
        assert!(connections.is_empty());
    }

    #[tokio::test]
    async fn connections_kept_elsewhere_count_against_the_same_bound() {
        let connections = Connections::default();
        let places: Vec<_> = std::iter::from_fn(|| connections.place()).take(IDLE_AT_MOST + 1).collect();
        assert_eq!(places.len(), IDLE_AT_MOST);
        assert_eq!(connections.len(), IDLE_AT_MOST);
        let (port, accepted, _) = serve(Server::KeepsAlive).await;
        assert!(probe(&connections, port, true, 3).await.iter().all(Result::is_ok));
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "no room: closed after each probe");
        assert_eq!(connections.len(), IDLE_AT_MOST);
        drop(places);
        assert!(connections.is_empty() && connections.place().is_some());
    }
}
