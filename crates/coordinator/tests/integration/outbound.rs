//! Probes go only where the address policy permits, and read no more of an answer than they
//! need: a denied address is `address_denied` and never contacted; an endless body is judged by
//! its status code within the timeout, without the coordinator's memory growing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::support::{self, Replica, create, settled};

/// A server that answers every path 200 and counts the connections it accepted.
async fn counted() -> (u16, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    let app = Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, connections)
}

/// With loopback closed by the policy, an instance on loopback — by literal, by name, over
/// every scheme — is down with `address_denied` and gets not one connection; the cloud
/// metadata address is refused by the defaults.
#[tokio::test(flavor = "multi_thread")]
async fn denied_addresses_are_down_and_never_contacted() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    let (port, connections) = counted().await;
    for (name, url) in [
        ("literal", format!("http://127.0.0.1:{port}")),
        ("by-name", format!("http://localhost:{port}")),
        ("tcp", format!("tcp://localhost:{port}")),
        ("grpc", format!("grpc://localhost:{port}")),
        ("https", format!("https://localhost:{port}")),
        ("metadata", "http://169.254.169.254".to_string()),
    ] {
        create(&pool, serde_json::json!({"name": name, "instances": [url], "interval_ms": 300, "timeout_ms": 1000}))
            .await;
    }
    let mut policy = caracal_core::outbound::OutboundConfig::default();
    policy.deny.extend([
        "127.0.0.0/8".parse::<caracal_core::outbound::IpNet>().expect("a range"),
        "::1/128".parse::<caracal_core::outbound::IpNet>().expect("a range"),
    ]);
    let config = support::config(&caracal_testkit::unique_name("members"));
    let replica =
        Replica::start_with(&pool, &shared.redis.url(), &config, caracal_core::outbound::Policy::new(policy)).await;
    let names = ["literal", "by-name", "tcp", "grpc", "https", "metadata"];
    let statuses = settled(&pool, &names).await;
    for name in names {
        assert_eq!(statuses[name], ("down".into(), Some("address_denied".into())), "{name}");
    }
    // A few more rounds of probes, then not one connection may have been opened.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    replica.stop().await;
}

/// An instance whose `/health` and `/ready` answer an endless body: judged by the status code
/// (200 up, 503 unready) within the timeout; the probes read 64 KiB of it, not gigabytes.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_body_is_judged_by_its_status_within_the_timeout() {
    let shared = support::shared();
    let pool = support::database(&shared.postgres).await;
    // How many answers began and how many bytes the server managed to hand over: a probe that
    // stops reading leaves the server blocked after what the sockets' buffers hold.
    let (answers, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let endless = |status: StatusCode| {
        let (answers, sent) = (Arc::clone(&answers), Arc::clone(&sent));
        move || async move {
            answers.fetch_add(1, Ordering::SeqCst);
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let forever = futures_util::stream::repeat_with(move || {
                sent.fetch_add(chunk.len(), Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            (status, axum::body::Body::from_stream(forever)).into_response()
        }
    };
    let app = Router::new()
        .route("/health", axum::routing::get(endless(StatusCode::OK)))
        .route("/ready", axum::routing::get(endless(StatusCode::OK)))
        .route("/sick/health", axum::routing::get(endless(StatusCode::OK)))
        .route("/sick/ready", axum::routing::get(endless(StatusCode::SERVICE_UNAVAILABLE)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    create(&pool, serde_json::json!({"name": "endless", "instances": [base], "interval_ms": 200, "timeout_ms": 2000}))
        .await;
    create(
        &pool,
        serde_json::json!({"name": "sick", "instances": [format!("{base}/sick")], "interval_ms": 200, "timeout_ms": 2000}),
    )
    .await;
    let before = caracal_testkit::process::rss(std::process::id());
    let config = support::config(&caracal_testkit::unique_name("members"));
    let replica = Replica::start(&pool, &shared.redis.url(), &config).await;
    let started = std::time::Instant::now();
    let statuses = settled(&pool, &["endless", "sick"]).await;
    assert_eq!(statuses["endless"], ("up".into(), None));
    assert_eq!(statuses["sick"], ("unready".into(), Some("/ready answered 503".into())));
    assert!(started.elapsed() < Duration::from_secs(10), "judged in {:?}", started.elapsed());
    // Keep probing for a while: every probe cuts the body at 64 KiB.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_answer = sent.load(Ordering::SeqCst) / answers.load(Ordering::SeqCst).max(1);
    assert!(per_answer < 32 * 1024 * 1024, "{} MB handed over per answer", per_answer / (1024 * 1024));
    let grown = caracal_testkit::process::rss(std::process::id()).saturating_sub(before);
    assert!(grown < 150 * 1024 * 1024, "the process grew {} MB while probing endless bodies", grown / (1024 * 1024));
    replica.stop().await;
}
