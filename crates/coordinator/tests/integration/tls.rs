//! Probes beyond plain HTTP: HTTPS against `openssl s_server` with certificates from `openssl`
//! (expiry to the second, each handshake failure by name, mTLS, insecure mode), TCP, and gRPC
//! health against a real tonic server, in clear and over TLS.

use std::time::Duration;

use caracal_testkit::pki::{Pki, TlsServer};

use crate::support::{self, Replica, create, settled};

#[tokio::test(flavor = "multi_thread")]
async fn https_probes_record_expiry_and_name_each_failure() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let mut pki = Pki::new().expect("a CA from openssl");
    let names = "DNS:localhost,IP:127.0.0.1";
    let good = pki.server(names, 10, None).expect("a leaf valid 10 days");
    let expired = pki.server(names, 0, Some(("20200101000000Z", "20200201000000Z"))).expect("an expired leaf");
    let elsewhere = pki.server("DNS:other.test", 10, None).expect("a leaf for another name");
    let client = pki.client(10).expect("a client certificate");
    let mut stranger = Pki::new().expect("another CA");
    let unknown = stranger.server(names, 10, None).expect("a leaf from an unknown CA");

    let good_server = TlsServer::start(&good, None).expect("s_server");
    let expired_server = TlsServer::start(&expired, None).expect("s_server");
    let elsewhere_server = TlsServer::start(&elsewhere, None).expect("s_server");
    let unknown_server = TlsServer::start(&unknown, None).expect("s_server");
    let mtls_server = TlsServer::start(&good, Some(&pki.ca.cert)).expect("s_server requiring a client certificate");

    let ca = pki.ca.pem().expect("CA PEM");
    let target = |name: &str, port: u16, tls: serde_json::Value| {
        serde_json::json!({"name": name, "instances": [format!("https://127.0.0.1:{port}")],
                           "interval_ms": 300, "timeout_ms": 2000, "tls": tls})
    };
    let with_client = serde_json::json!({"ca_pem": ca, "client_cert_file": client.cert, "client_key_file": client.key});
    create(&pool, target("good", good_server.port(), serde_json::json!({"ca_pem": ca}))).await;
    create(&pool, target("expired", expired_server.port(), serde_json::json!({"ca_pem": ca}))).await;
    create(&pool, target("elsewhere", elsewhere_server.port(), serde_json::json!({"ca_pem": ca}))).await;
    create(&pool, target("stranger", unknown_server.port(), serde_json::json!({"ca_pem": ca}))).await;
    create(&pool, target("insecure", unknown_server.port(), serde_json::json!({"insecure_skip_verify": true}))).await;
    create(&pool, target("mtls", mtls_server.port(), with_client)).await;
    create(&pool, target("mtls-without", mtls_server.port(), serde_json::json!({"ca_pem": ca}))).await;
    // A key outside the operator's client directory is never read, whatever the registry says.
    let outside = serde_json::json!({"ca_pem": ca, "client_cert_file": client.cert, "client_key_file": "/etc/passwd"});
    create(&pool, target("mtls-outside", mtls_server.port(), outside)).await;

    let mut config = support::config(&caracal_testkit::unique_name("members"));
    config.tls.client_dir = client.cert.parent().map(std::path::Path::to_path_buf);
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let all = ["good", "expired", "elsewhere", "stranger", "insecure", "mtls", "mtls-without", "mtls-outside"];
    let statuses = settled(&pool, &all).await;
    let status = |name: &str| statuses[name].clone();
    assert_eq!(status("good"), ("up".into(), None), "a valid chain from the target's CA");
    assert_eq!(status("expired"), ("down".into(), Some("certificate_expired".into())));
    assert_eq!(status("elsewhere"), ("down".into(), Some("hostname_mismatch".into())));
    assert_eq!(status("stranger"), ("down".into(), Some("unknown_issuer".into())));
    assert_eq!(status("insecure"), ("up".into(), None), "insecure_skip_verify accepts any certificate");
    assert_eq!(status("mtls"), ("up".into(), None), "the client certificate files are presented");
    let (outside_status, outside_why) = status("mtls-outside");
    assert_eq!(outside_status, "down");
    assert!(
        outside_why.as_deref().is_some_and(|w| w.starts_with("tls_client_certificate") && !w.contains("PEM")),
        "refused before reading: {outside_why:?}"
    );
    assert_eq!(status("mtls-without"), ("down".into(), Some("tls_handshake".into())));

    // (The test registry has no `caracal_coordinator` prefix; the service's has.)
    // The expiry: to the second, as openssl prints it, in the table, the metric and an event.
    let not_after = good.not_after().expect("openssl's notAfter");
    let recorded: Vec<(String, i64)> =
        caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT t.name, extract(epoch FROM s.certificate_expires_at)::bigint FROM instance_status s \
             JOIN instances i ON i.id = s.instance_id JOIN targets t ON t.id = i.target_id \
             WHERE s.certificate_expires_at IS NOT NULL ORDER BY t.name",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            (rows.len() == 7).then_some(rows)
        })
        .await
        .expect("every TLS instance's certificate recorded, even those that failed verification");
    let of = |name: &str| recorded.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
    assert_eq!(of("good"), Some(not_after));
    assert_eq!(of("expired"), Some(expired.not_after().expect("notAfter")), "an expired date is shown too");
    let exposition = replica.exposition();
    let line = format!(
        "caracal_target_certificate_expiry_timestamp_seconds{{target=\"good\",instance=\"https://127.0.0.1:{}\"}} {not_after}",
        good_server.port()
    );
    assert!(exposition.contains(&line), "{line} not in:\n{exposition}");
    let unverified = exposition.lines().find(|l| l.starts_with("tls_unverified_probes_total")).unwrap_or("");
    assert!(!unverified.ends_with(" 0") && !unverified.is_empty(), "insecure probes are counted: {unverified}");
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'target.certificate_changed' AND target = 'good'",
    )
    .fetch_one(&pool)
    .await
    .expect("outbox");
    assert_eq!(events, 1, "the certificate is announced once, not at every probe");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let again: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type = 'target.certificate_changed' AND target = 'good'",
    )
    .fetch_one(&pool)
    .await
    .expect("outbox");
    assert_eq!(again, 1, "the same certificate seen again is not news");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_grpc_targets_are_probed_by_their_protocol() {
    use tonic_health::ServingStatus;
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    // A real tonic gRPC health server (served by axum over h2c, as caracal-core serves its own).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("shop.Cart", ServingStatus::Serving).await;
    reporter.set_service_status("shop.Payments", ServingStatus::NotServing).await;
    let app = axum::Router::new().route_service("/grpc.health.v1.Health/{*method}", health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A port nothing listens on.
    let closed = caracal_testkit::free_port().expect("a free port");

    let target = |name: &str, url: String, service: Option<&str>| {
        let mut t = serde_json::json!({"name": name, "instances": [url], "interval_ms": 300, "timeout_ms": 1000});
        if let Some(s) = service {
            t["grpc_service"] = serde_json::json!(s);
        }
        t
    };
    create(&pool, target("tcp-open", format!("tcp://127.0.0.1:{grpc}"), None)).await;
    create(&pool, target("tcp-closed", format!("tcp://127.0.0.1:{closed}"), None)).await;
    create(&pool, target("grpc-server", format!("grpc://127.0.0.1:{grpc}"), None)).await;
    create(&pool, target("grpc-cart", format!("grpc://127.0.0.1:{grpc}"), Some("shop.Cart"))).await;
    create(&pool, target("grpc-payments", format!("grpc://127.0.0.1:{grpc}"), Some("shop.Payments"))).await;
    create(&pool, target("grpc-unknown", format!("grpc://127.0.0.1:{grpc}"), Some("shop.Nothing"))).await;
    create(&pool, target("grpc-closed", format!("grpc://127.0.0.1:{closed}"), None)).await;

    let config = support::config(&caracal_testkit::unique_name("members"));
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let all = ["tcp-open", "tcp-closed", "grpc-server", "grpc-cart", "grpc-payments", "grpc-unknown", "grpc-closed"];
    let statuses = settled(&pool, &all).await;
    let status = |name: &str| statuses[name].clone();
    assert_eq!(status("tcp-open"), ("up".into(), None));
    assert_eq!(status("tcp-closed"), ("down".into(), Some("connection_refused".into())));
    assert_eq!(status("grpc-server"), ("up".into(), None), "service \"\" is the server as a whole");
    assert_eq!(status("grpc-cart"), ("up".into(), None));
    assert_eq!(status("grpc-payments"), ("down".into(), Some("not_serving".into())));
    assert_eq!(status("grpc-unknown"), ("down".into(), Some("service_unknown".into())));
    assert_eq!(status("grpc-closed"), ("down".into(), Some("connection_refused".into())));

    // A change of the served status is followed.
    reporter.set_service_status("shop.Payments", ServingStatus::Serving).await;
    caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        let s: String = sqlx::query_scalar(
            "SELECT s.status FROM instance_status s JOIN instances i ON i.id = s.instance_id \
             JOIN targets t ON t.id = i.target_id WHERE t.name = 'grpc-payments'",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (s == "up").then_some(())
    })
    .await
    .expect("SERVING again is up again");
    replica.stop().await;
}

/// A gRPC health server over TLS (rustls, ALPN `h2`) with a certificate from openssl.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Handshakes completed.
    handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that refuses our certificate ends its handshake; wait for the next.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                self.handshakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcs_targets_are_verified_and_their_certificate_recorded() {
    use std::sync::Arc;
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let mut pki = Pki::new().expect("a CA from openssl");
    let leaf = pki.server("DNS:localhost,IP:127.0.0.1", 10, None).expect("a leaf");
    let chain = caracal_store::tls::parse_certificates(&std::fs::read(&leaf.cert).expect("cert")).expect("PEM");
    let key = caracal_store::tls::parse_private_key(&std::fs::read(&leaf.key).expect("key")).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (_reporter, health) = tonic_health::server::health_reporter();
    let app = axum::Router::new().route_service("/grpc.health.v1.Health/{*method}", health);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let listener =
        TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), handshakes: Arc::default() };
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ca = pki.ca.pem().expect("CA PEM");
    let url = format!("grpcs://127.0.0.1:{port}");
    create(
        &pool,
        serde_json::json!({"name": "secure-grpc", "instances": [url], "interval_ms": 300, "tls": {"ca_pem": ca}}),
    )
    .await;
    create(&pool, serde_json::json!({"name": "stranger-grpc", "instances": [url], "interval_ms": 300})).await;
    let config = support::config(&caracal_testkit::unique_name("members"));
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let statuses = settled(&pool, &["secure-grpc", "stranger-grpc"]).await;
    assert_eq!(statuses["secure-grpc"], ("up".into(), None), "gRPC health over TLS, verified with the target's CA");
    assert_eq!(statuses["stranger-grpc"], ("down".into(), Some("unknown_issuer".into())), "system roots only");
    let expires: i64 = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT extract(epoch FROM s.certificate_expires_at)::bigint FROM instance_status s \
             JOIN instances i ON i.id = s.instance_id JOIN targets t ON t.id = i.target_id WHERE t.name = 'secure-grpc'",
        )
        .fetch_one(&pool)
        .await
        .ok()
        .flatten()
    })
    .await
    .expect("the certificate a gRPCS server presents is recorded");
    assert_eq!(expires, leaf.not_after().expect("openssl's notAfter"));
    replica.stop().await;
}

/// `YYYYMMDDHHMMSSZ` (as `openssl ca` takes dates) for `seconds` from now.
fn openssl_date(seconds: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let at = i64::try_from(now).expect("seconds") + seconds;
    let out = std::process::Command::new("date").args(["-u", "-d", &format!("@{at}"), "+%Y%m%d%H%M%SZ"]).output();
    String::from_utf8(out.expect("date").stdout).expect("UTF-8").trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_tls_connection_serves_its_instance_until_the_chain_expires() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let mut pki = Pki::new().expect("a CA from openssl");
    // Valid for a few seconds more: long enough to be probed over one kept connection, short
    // enough to expire while that connection is still open.
    let leaf =
        pki.server("DNS:localhost,IP:127.0.0.1", 0, Some((&openssl_date(-3600), &openssl_date(8)))).expect("a leaf");
    let not_after = leaf.not_after().expect("openssl's notAfter");
    let chain = caracal_store::tls::parse_certificates(&std::fs::read(&leaf.cert).expect("cert")).expect("PEM");
    let key = caracal_store::tls::parse_private_key(&std::fs::read(&leaf.key).expect("key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TlsListener { tcp, acceptor, handshakes: Arc::clone(&handshakes) };
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ca = pki.ca.pem().expect("CA PEM");
    let target = serde_json::json!({"name": "kept", "instances": [format!("https://127.0.0.1:{port}")],
                                    "interval_ms": 200, "timeout_ms": 1000, "tls": {"ca_pem": ca}});
    create(&pool, target).await;
    let config = support::config(&caracal_testkit::unique_name("members"));
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    assert_eq!(settled(&pool, &["kept"]).await["kept"], ("up".into(), None));
    let before = (handshakes.load(Ordering::SeqCst), requests.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (handshakes.load(Ordering::SeqCst), requests.load(Ordering::SeqCst));
    assert!(after.1 >= before.1 + 8, "probed meanwhile (two paths a probe): {before:?} → {after:?}");
    assert!(after.0 <= before.0 + 1, "over the connection kept, not a handshake a probe: {before:?} → {after:?}");

    // Past the chain's notAfter the kept connection is not used: a fresh handshake finds the
    // certificate expired.
    let (status, why, changed_at): (String, Option<String>, i64) =
        caracal_testkit::wait_for(Duration::from_secs(20), Duration::from_millis(100), || async {
            let row: (String, Option<String>, i64) = sqlx::query_as(
                "SELECT s.status, s.last_error, extract(epoch FROM s.since)::bigint FROM instance_status s \
                 JOIN instances i ON i.id = s.instance_id JOIN targets t ON t.id = i.target_id WHERE t.name = 'kept'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (row.0 == "down").then_some(row)
        })
        .await
        .expect("down once the certificate expired");
    assert_eq!((status.as_str(), why.as_deref()), ("down", Some("certificate_expired")));
    assert!(changed_at >= not_after && changed_at <= not_after + 5, "seen at once: {changed_at} against {not_after}");
    replica.stop().await;
}
