//! Slow and greedy clients over real sockets: a header trickle is cut by the header-read
//! timeout without slowing the probes, and with every connection taken by idle clients a
//! probe still answers (the probe reserve) while the rest are refused at once.

use std::time::{Duration, Instant};

use caracal_core::config::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;

/// How long `path` takes to answer on a fresh connection; its status.
async fn timed(url: &str) -> (Duration, u16) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let started = Instant::now();
    let status = client.get(url).send().await.expect("answer").status().as_u16();
    (started.elapsed(), status)
}

/// Whether the server closed `stream` within `within` (a read sees EOF or a reset).
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_header_trickles_are_cut_and_never_slow_the_probes() {
    caracal_testkit::raise_fd_limit().expect("raise the open-file limit");
    let mut core = support::core_config(Mode::Stable);
    core.http.header_read_timeout = Duration::from_secs(2);
    let served = support::serve(support::app(core)).await;
    let addr = served.url("/").trim_start_matches("http://").trim_end_matches('/').to_string();

    let mut trickles = Vec::new();
    for _ in 0..500 {
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(b"G").await.expect("first byte");
        trickles.push(stream);
    }
    // One more header byte a second from each, while the probes are timed.
    let feeder = tokio::spawn(async move {
        for byte in b"ET /health HTTP/1.1\r\nHost: x\r\n".iter().take(2) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for stream in &mut trickles {
                let _ = stream.write_all(&[*byte]).await;
            }
        }
        trickles
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        for path in ["/health", "/ready"] {
            let (took, status) = timed(&served.url(path)).await;
            assert_eq!(status, 200, "{path}");
            slowest = slowest.max(took);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 100 ms on an idle machine; generous here, as tests share two cores.
    eprintln!("slowest probe during 500 header trickles: {slowest:?}");
    assert!(slowest < Duration::from_millis(500), "a probe took {slowest:?} during the trickle");

    let mut trickles = feeder.await.expect("feeder");
    let mut cut = 0;
    for stream in &mut trickles {
        if closed(stream, Duration::from_secs(3)).await {
            cut += 1;
        }
    }
    assert_eq!(cut, 500, "every trickle is closed by the header-read timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_held_by_idle_clients_a_probe_still_answers() {
    let mut core = support::core_config(Mode::Stable);
    core.http.max_connections = 8;
    core.http.probe_connections = 2;
    let served = support::serve(support::app(core)).await;
    let addr = served.url("/").trim_start_matches("http://").trim_end_matches('/').to_string();

    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The cap is reached: probes answer on the reserve, anything else is told to come back.
    for path in ["/health", "/ready"] {
        let (_, status) = timed(&served.url(path)).await;
        assert_eq!(status, 200, "{path}");
    }
    let response = reqwest::get(served.url("/v1/anything")).await.expect("answer");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");

    // The reserve taken too: the next connection is closed at once, not queued.
    let mut reserve = Vec::new();
    for _ in 0..2 {
        reserve.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(&addr).await.expect("the kernel accepts");
    let started = Instant::now();
    assert!(closed(&mut extra, Duration::from_secs(2)).await, "refused at once");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Idle clients let go: everything answers again.
    drop(idle);
    drop(reserve);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = reqwest::get(served.url("/v1/anything")).await.expect("answer");
    assert_eq!(response.status(), 404, "served normally once connections are free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let mut core = support::core_config(Mode::Stable);
    core.http.header_read_timeout = Duration::from_secs(1);
    let served = support::serve(support::app(core)).await;
    let addr = served.url("/").trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
    let mut answer = [0u8; 1024];
    let n = stream.read(&mut answer).await.expect("answer");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"), "answered, kept alive");
    let started = Instant::now();
    assert!(closed(&mut stream, Duration::from_secs(5)).await, "an idle connection is not kept forever");
    assert!(started.elapsed() >= Duration::from_millis(800), "but for the timeout: {:?}", started.elapsed());
}
