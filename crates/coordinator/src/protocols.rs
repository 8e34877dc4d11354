//! The probes beyond plain HTTP (which is [`crate::http`]): HTTPS (one fresh TLS connection per probe, both paths
//! over it), TCP (a connection opening) and gRPC (`grpc.health.v1.Health/Check`, over TLS for
//! `grpcs://`). Each returns what it saw in [`Seen`]; reasons are stable words or, for HTTP
//! answers, the path and status (`/ready answered 503`).

use std::time::Duration;

use caracal_core::telemetry;
use caracal_store::target::Scheme;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tracing::Instrument;

use caracal_core::outbound::Policy;

use crate::tls::{Presented, TlsClient};

/// Where an instance listens, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The host as written (a bracketed IPv6 address keeps its brackets).
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The path prefix (`""` or `/prefix`, no trailing slash).
    pub prefix: String,
}

impl Address {
    /// The address in `url` (already validated by the registry's patterns).
    pub fn parse(url: &str, scheme: Scheme) -> Option<Self> {
        let rest = url.split_once("://")?.1;
        let (authority, prefix) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], authority[i + 1..].parse().ok()?),
            _ => (authority, if scheme == Scheme::Https { 443 } else { 80 }),
        };
        Some(Self { host: host.into(), port, prefix: prefix.trim_end_matches('/').into() })
    }

    /// `host:port`, as a connect address and an HTTP `Host`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host to connect to (an IPv6 literal without its brackets).
    pub(crate) fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// What one probe saw: the worst path's result (health first), and the certificate presented.
#[derive(Debug)]
pub struct Seen {
    /// `Err(reason)` when `/health` (or the connection) failed.
    pub health: Result<(), String>,
    /// `Err(reason)` when `/ready` failed.
    pub ready: Result<(), String>,
    /// The certificate the server presented, for TLS schemes.
    pub presented: Option<Presented>,
}

/// The most of an answer's body a probe reads: what is beyond is never read, and the
/// connection is closed instead of kept (the status code is the verdict).
pub const BODY_CAP: usize = 64 * 1024;

/// The word for a connection that did not open.
fn connect_reason(error: &std::io::Error) -> String {
    if let Some(refused) = caracal_core::outbound::refused_in(error) {
        return refused.word().into();
    }
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection_refused".into(),
        std::io::ErrorKind::TimedOut => "timeout".into(),
        std::io::ErrorKind::NotFound => "dns_not_found".into(),
        _ if error.to_string().contains("failed to lookup address") => "dns_not_found".into(),
        _ => "unreachable".into(),
    }
}

/// Connects through the outbound policy: the name is resolved, every answer checked, and the
/// connection made to a checked address.
async fn connect(outbound: &Policy, address: &Address) -> Result<TcpStream, String> {
    let stream = outbound.connect(address.connect_host(), address.port).await.map_err(|e| connect_reason(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `tcp://`: up when a connection opens within `timeout`.
pub async fn tcp(outbound: &Policy, address: &Address, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, connect(outbound, address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err("timeout".into()),
    }
}

/// One TLS connection's HTTP/1.1 sender.
type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
/// The connection behind a [`Sender`]: driven by the probe's own task (see [`drive`]).
type Connection =
    hyper::client::conn::http1::Connection<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, Empty<Bytes>>;

async fn open_https(outbound: &Policy, address: &Address, client: &TlsClient) -> Result<(Sender, Connection), String> {
    let name = client.server_name(&address.host)?;
    let tcp = connect(outbound, address).await?;
    let tls = client
        .connector()
        .connect(name, tcp)
        .await
        .map_err(|e| crate::tls::reason(&e).unwrap_or("tls_handshake").to_string())?;
    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| request_reason(&e))
}

/// Runs `request` while driving its `connection` in the same task. A probe's connection lives
/// only for the probe, so a task of its own would only add a wake-up between two tasks for
/// every read and write.
/// `None` once the connection has ended.
pub(crate) async fn drive<C, T>(connection: &mut Option<C>, request: impl Future<Output = T>) -> T
where
    C: Future + Unpin,
{
    tokio::pin!(request);
    let Some(open) = connection else { return request.await };
    tokio::select! {
        biased;
        answer = &mut request => answer,
        // The connection ended (the server closed it, perhaps right after answering): what it
        // delivered is already with the request, which now resolves either way.
        _ = open => {
            *connection = None;
            request.await
        }
    }
}

/// The word for a request that got no answer over an open connection: a TLS alert the server
/// sent after the handshake (TLS 1.3 reports a refused client certificate this way) or
/// `connection_closed`.
fn request_reason(error: &hyper::Error) -> String {
    if let Some(word) = crate::tls::reason(error) {
        return word.into();
    }
    if error.is_timeout() { "timeout".into() } else { "connection_closed".into() }
}

/// What one GET over a TLS connection came to.
struct Got {
    verdict: Result<(), String>,
    /// Nothing came back: the connection was closed under the request.
    nothing_back: bool,
    /// The answer was read whole (the connection may carry another).
    whole: bool,
}

async fn get(sender: &mut Sender, address: &Address, path: &str, user_agent: &str) -> Got {
    let failed = |why: String| Got { verdict: Err(why), nothing_back: false, whole: false };
    let Ok(mut request) = hyper::Request::get(format!("{}{path}", address.prefix))
        .header(hyper::header::HOST, address.authority())
        .header(hyper::header::USER_AGENT, user_agent)
        .body(Empty::new())
    else {
        return failed(format!("{path}: request failed"));
    };
    let span = if telemetry::exporting() {
        telemetry::http_client_span("GET", &format!("https://{}{}{path}", address.authority(), address.prefix))
    } else {
        tracing::Span::none()
    };
    telemetry::inject_span_context(&span, request.headers_mut());
    let response = match sender.send_request(request).instrument(span.clone()).await {
        Ok(response) => response,
        Err(e) => {
            let why = request_reason(&e);
            telemetry::record_client_error(&span, &why);
            return Got { nothing_back: crate::http::nothing_back(&e), ..failed(why) };
        }
    };
    let status = response.status();
    telemetry::record_client_status(&span, status.as_u16());
    // Reading a small body lets the connection carry the next request; a larger one is cut
    // at the cap (the connection is then not reused).
    let whole = http_body_util::Limited::new(response.into_body(), BODY_CAP).collect().await.is_ok();
    let verdict = if status.is_success() { Ok(()) } else { Err(format!("{path} answered {}", status.as_u16())) };
    Got { verdict, nothing_back: false, whole }
}

/// How long a kept TLS connection serves its instance: the first probe after this makes a
/// fresh handshake, so a renewed certificate (or a handshake that now fails) is seen within
/// it. An expired certificate is seen at once: a kept connection is not used past the
/// earliest `notAfter` of the chain it was opened with.
pub const TLS_KEPT_FOR: Duration = Duration::from_secs(60);

/// A TLS connection its instance keeps for the next probe (see [`crate::http`]), with what
/// the server presented when it was opened.
pub struct Kept {
    sender: Sender,
    connection: Connection,
    presented: Presented,
    opened: std::time::Instant,
    _place: crate::http::Place,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("presented", &self.presented).field("opened", &self.opened).finish()
    }
}

impl Kept {
    /// Whether it may still serve: younger than [`TLS_KEPT_FOR`], its chain not expired.
    pub(crate) fn fresh(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.opened.elapsed() < TLS_KEPT_FOR && u64::try_from(self.presented.expires_at).is_ok_and(|at| at > now)
    }
}

/// Both paths over one connection (a second, fresh one when the server closes the first after
/// the first answer). `None` when `reused` and the connection turned out closed before
/// anything came back: the probe is then made afresh.
async fn over(
    outbound: &Policy,
    address: &Address,
    client: &TlsClient,
    (paths, user_agent): ([&str; 2], &str),
    (mut sender, connection): (Sender, Connection),
    reused: bool,
) -> Option<Result<(Results, Option<(Sender, Connection)>), String>> {
    let mut connection = Some(connection);
    if reused && drive(&mut connection, sender.ready()).await.is_err() {
        return None;
    }
    let health = drive(&mut connection, get(&mut sender, address, paths[0], user_agent)).await;
    if reused && health.nothing_back {
        return None;
    }
    let mut whole = health.whole;
    let ready = if paths[0] == paths[1] {
        health.verdict.clone()
    } else {
        if drive(&mut connection, sender.ready()).await.is_err() {
            match open_https(outbound, address, client).await {
                Ok((again, opened)) => (sender, connection) = (again, Some(opened)),
                Err(why) => return Some(Err(why)),
            }
        }
        let ready = drive(&mut connection, get(&mut sender, address, paths[1], user_agent)).await;
        whole = ready.whole;
        ready.verdict
    };
    let alive = connection.filter(|_| whole).map(|connection| (sender, connection));
    Some(Ok(((health.verdict, ready), alive)))
}

/// The two paths' results.
type Results = (Result<(), String>, Result<(), String>);

/// `https://`: both paths over one TLS connection (a second one when the server closes the
/// first after answering), all within `timeout`; one GET when the two paths are the same. With
/// `keep` (its instance is probed again soon), the connection is kept in `client` for the next
/// probe while a place among the kept is free, and a kept one is used while
/// [`Kept::fresh`]: what it reports as presented is the chain it was opened with.
pub async fn https(
    outbound: &Policy,
    address: &Address,
    client: &TlsClient,
    (paths, user_agent): ([&str; 2], &str),
    timeout: Duration,
    keep: Option<&crate::http::Connections>,
) -> Seen {
    let probe = async {
        let mut place = None;
        if let Some(kept) = client.take_kept() {
            let Kept { sender, connection, presented, opened, _place } = *kept;
            if let Some(done) = over(outbound, address, client, (paths, user_agent), (sender, connection), true).await {
                let (results, alive) = done?;
                if let (Some((sender, connection)), Some(_)) = (alive, keep) {
                    let presented = presented.clone();
                    client.keep(Box::new(Kept { sender, connection, presented, opened, _place }));
                }
                return Ok((results, Some(presented)));
            }
            place = Some(_place);
        }
        let opened = std::time::Instant::now();
        let pair = open_https(outbound, address, client).await?;
        let presented = client.take_presented();
        let (results, alive) = over(outbound, address, client, (paths, user_agent), pair, false)
            .await
            .unwrap_or_else(|| Err("connection_closed".into()))?;
        let place = place.or_else(|| keep.and_then(crate::http::Connections::place));
        if let (Some((sender, connection)), Some(presented), Some(_place), Some(_)) =
            (alive, presented.clone(), place, keep)
        {
            client.keep(Box::new(Kept { sender, connection, presented, opened, _place }));
        }
        Ok::<_, String>((results, presented))
    };
    let ((health, ready), presented) = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(done)) => done,
        Ok(Err(why)) => ((Err(why.clone()), Err(why)), None),
        Err(_) => ((Err("timeout".into()), Err("timeout".into())), None),
    };
    Seen { health, ready, presented: presented.or_else(|| client.take_presented()) }
}

/// `grpc://` and `grpcs://`: `Check` for `service` over a fresh connection, within `timeout`.
/// `SERVING` is up; anything else is down with the status (`not_serving`, `unknown`,
/// `service_unknown`) or the transport's failure as the reason.
pub async fn grpc(
    outbound: &Policy,
    address: &Address,
    tls: Option<&TlsClient>,
    service: &str,
    timeout: Duration,
) -> (Result<(), String>, Option<Presented>) {
    let check = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", address.authority()))
            .map_err(|_| "grpc: the address is not usable".to_string())?
            .connect_timeout(timeout)
            .timeout(timeout);
        // Both schemes connect through the outbound policy with a connector of ours, so tonic
        // never resolves the name itself.
        let channel = match tls {
            None => {
                let (address, outbound) = (address.clone(), outbound.clone());
                let connect = tower::service_fn(move |_: hyper::Uri| {
                    let (address, outbound) = (address.clone(), outbound.clone());
                    async move {
                        let tcp = connect(&outbound, &address).await.map_err(std::io::Error::other)?;
                        Ok::<_, std::io::Error>(TokioIo::new(tcp))
                    }
                });
                endpoint.connect_with_connector(connect).await.map_err(|e| transport_reason(&e))?
            }
            Some(client) => {
                let (address, outbound) = (address.clone(), outbound.clone());
                let name = client.server_name(&address.host)?;
                let connector = client.connector();
                let connect = tower::service_fn(move |_: hyper::Uri| {
                    let (address, outbound, name, connector) =
                        (address.clone(), outbound.clone(), name.clone(), connector.clone());
                    async move {
                        let tcp = connect(&outbound, &address).await.map_err(std::io::Error::other)?;
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                });
                endpoint.connect_with_connector(connect).await.map_err(|e| transport_reason(&e))?
            }
        };
        let span = grpc_span(address);
        let mut headers = hyper::HeaderMap::new();
        telemetry::inject_span_context(&span, &mut headers);
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_string() });
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        // A health answer is a few bytes: a larger message is refused, not buffered.
        let answer = match HealthClient::new(channel)
            .max_decoding_message_size(BODY_CAP)
            .check(request)
            .instrument(span.clone())
            .await
        {
            Ok(response) => {
                span.record("rpc.grpc.status_code", 0);
                match response.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    ServingStatus::NotServing => Err("not_serving".to_string()),
                    ServingStatus::ServiceUnknown => Err("service_unknown".into()),
                    ServingStatus::Unknown => Err("unknown".into()),
                }
            }
            Err(status) => {
                span.record("rpc.grpc.status_code", status.code() as i32);
                Err(status_reason(&status))
            }
        };
        if let Err(why) = &answer {
            telemetry::record_client_error(&span, why);
        }
        answer
    };
    let result = match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err("timeout".into()),
    };
    (result, tls.and_then(TlsClient::take_presented))
}

/// The CLIENT span of a health `Check` (the RPC conventions' names); disabled while nothing is
/// exported.
fn grpc_span(address: &Address) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "grpc",
        otel.name = "grpc.health.v1.Health/Check",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "grpc.health.v1.Health",
        rpc.method = "Check",
        server.address = %address.host,
        server.port = i64::from(address.port),
        rpc.grpc.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The word for a gRPC error status: `service_unknown` for `NOT_FOUND` (what `Check` answers for
/// a service the server does not know), else the code in snake case (`unimplemented`).
fn status_reason(status: &tonic::Status) -> String {
    use tonic::Code;
    if let Some(word) = crate::tls::reason(status) {
        return word.into();
    }
    match status.code() {
        Code::NotFound => "service_unknown".into(),
        Code::DeadlineExceeded => "timeout".into(),
        Code::Unavailable => "unavailable".into(),
        code => {
            let name = format!("{code:?}");
            let mut word = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    word.push('_');
                }
                word.push(c.to_ascii_lowercase());
            }
            word
        }
    }
}

/// The word for a channel that did not connect: a TLS failure, or the connection's.
fn transport_reason(error: &tonic::transport::Error) -> String {
    if let Some(word) = crate::tls::reason(error) {
        return word.into();
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // Our connector wraps the connect word in an io::Error.
            let text = io.to_string();
            if ["connection_refused", "timeout", "unreachable", "dns_not_found", "address_denied"]
                .contains(&text.as_str())
            {
                return text;
            }
            return connect_reason(io);
        }
        next = e.source();
    }
    "unavailable".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_urls() {
        let a = Address::parse("https://shop.test/api/", Scheme::Https).expect("parses");
        assert_eq!((a.host.as_str(), a.port, a.prefix.as_str()), ("shop.test", 443, "/api"));
        let a = Address::parse("grpcs://[::1]:50051", Scheme::Grpcs).expect("parses");
        assert_eq!((a.host.as_str(), a.port, a.connect_host()), ("[::1]", 50051, "::1"));
        let a = Address::parse("tcp://db.test:5432", Scheme::Tcp).expect("parses");
        assert_eq!(a.authority(), "db.test:5432");
        assert_eq!(status_reason(&tonic::Status::unimplemented("x")), "unimplemented");
        assert_eq!(status_reason(&tonic::Status::not_found("x")), "service_unknown");
        assert_eq!(status_reason(&tonic::Status::resource_exhausted("x")), "resource_exhausted");
    }
}
