//! Every error case answers its status and stable code, and writes nothing.

use caracal_core::Mode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{self, ADMIN};

async fn send(
    served: &caracal_testkit::app::Served,
    method: Method,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> (u16, Value) {
    let mut request = served.http.request(method, served.url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.header("content-type", content_type).body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Method, path, body, content type, expected status, code and field.
type Case<'a> = (Method, &'a str, Option<String>, &'a str, u16, &'a str, Option<&'a str>);

#[tokio::test(flavor = "multi_thread")]
async fn each_bad_request_is_answered_and_writes_nothing() {
    let mut pki = caracal_testkit::pki::Pki::new().expect("a CA from openssl");
    let client = pki.client(10).expect("a client certificate");
    // The client certificate is in the operator's directory; the key named below is not there.
    let shared = support::shared();
    let sections = json!({"coordinator": {"tls": {"client_dir": client.cert.parent().expect("its directory")}}});
    let (served, pool) = support::api_on(&shared.postgres, &shared.redis, Mode::Stable, sections).await;
    let good = json!({"name": "shop", "instances": ["http://127.0.0.1:7001"]}).to_string();
    let (status, _) = send(&served, Method::POST, "/v1/targets", Some(&good), "application/json").await;
    assert_eq!(status, 201);
    let before = support::counts(&pool).await;
    assert_eq!(before, (1, 1, 2), "one target, one instance, its event and registry.changed");

    let big =
        json!({"name": "big", "instances": ["http://127.0.0.1:1"], "labels": {"x": "y".repeat(100_000)}}).to_string();
    let cases: Vec<Case<'_>> = vec![
        (Method::POST, "/v1/targets", Some("{\"name\": \"sh".into()), "application/json", 400, "malformed_json", None),
        (Method::POST, "/v1/targets", Some(good.clone()), "text/plain", 415, "unsupported_media_type", None),
        (Method::POST, "/v1/targets", Some(big), "application/json", 413, "payload_too_large", None),
        (Method::POST, "/v1/targets", Some(good.clone()), "application/json", 409, "conflict", None),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"instances": ["http://a:1"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("name"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "Bad Name", "instances": ["http://a:1"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("name"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["ftp://a"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("instances[0]"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": [7]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("instances[0]"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["http://a:1"], "interval_ms": 10}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("interval_ms"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["http://a:1"], "timeout_ms": 60_001}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("timeout_ms"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(
                json!({"name": "d", "instances": ["http://a:1"], "discovery": {"dns": {"name": "d.test", "port": 80}}})
                    .to_string(),
            ),
            "application/json",
            422,
            "validation_failed",
            Some("discovery"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(
                json!({"name": "d", "discovery": {"dns": {"name": "_http._tcp.d.test", "type": "SRV", "port": 80}}})
                    .to_string(),
            ),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.port"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "d", "discovery": {"dns": {"name": "d.test"}}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.port"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "d", "discovery": {"dns": {"name": "d.test", "type": "MX", "port": 80}}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.type"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "d", "discovery": {"dns": {"name": "not a dns name", "port": 80}}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.name"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(
                json!({"name": "d", "discovery": {"dns": {"name": "d.test", "port": 80, "refresh_ms": 5}}}).to_string(),
            ),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.refresh_ms"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "d", "discovery": {"dns": {"name": "d.test", "port": 80, "ttl": 5}}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("discovery.dns.ttl"),
        ),
        (
            // PostgreSQL cannot store NUL: refused up front, never a 500.
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["http://a:1"], "labels": {"team": "a\u{0}b"}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("labels.team"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["http://a:1"], "extra": 1}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("extra"),
        ),
        (
            Method::PUT,
            "/v1/targets/shop",
            Some(json!({"name": "other", "instances": ["http://a:1"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("name"),
        ),
        (
            Method::PUT,
            "/v1/targets/nope",
            Some(json!({"name": "nope", "instances": ["http://a:1"]}).to_string()),
            "application/json",
            404,
            "not_found",
            None,
        ),
        // TLS and gRPC settings: each refusal names its field.
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["https://a:1"], "tls": {"ca_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("tls.ca_pem"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["https://a:1"], "tls": {"client_cert_file": client.cert, "client_key_file": "/nonexistent/client.key"}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("tls.client_key_file"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["http://a:1"], "tls": {"insecure_skip_verify": true}}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("tls"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["https://a:1"], "grpc_service": "shop.Cart"}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("grpc_service"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["https://a:1", "http://a:2"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("instances[1]"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "x", "instances": ["grpc://a"]}).to_string()),
            "application/json",
            422,
            "validation_failed",
            Some("instances[0]"),
        ),
        (Method::DELETE, "/v1/targets/nope", None, "", 404, "not_found", None),
        (Method::GET, "/v1/targets/nope", None, "", 404, "not_found", None),
        (Method::GET, "/v1/targets/nope/history", None, "", 404, "not_found", None),
        (Method::GET, "/v1/targets/shop/history?limit=0", None, "", 422, "validation_failed", Some("limit")),
        (Method::GET, "/v1/targets/shop/history?cursor=abc", None, "", 422, "validation_failed", Some("cursor")),
    ];
    for (method, path, body, content_type, want_status, want_code, want_field) in cases {
        let (status, body_json) = send(&served, method.clone(), path, body.as_deref(), content_type).await;
        assert_eq!(status, want_status, "{method} {path}: {body_json}");
        assert_eq!(body_json["error"]["code"], want_code, "{method} {path}: {body_json}");
        if let Some(field) = want_field {
            assert_eq!(body_json["error"]["field"], field, "{method} {path}: {body_json}");
        }
        assert_eq!(support::counts(&pool).await, before, "{method} {path} must write nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_bearer_guards_writes_always_and_reads_outside_dev() {
    let (stable, pool) = support::api(Mode::Stable).await;
    let body = json!({"name": "shop", "instances": ["http://127.0.0.1:7001"]});
    let no_token = stable.http.post(stable.url("/v1/targets")).json(&body).send().await.expect("request");
    assert_eq!(no_token.status(), 401);
    assert!(no_token.headers().contains_key("www-authenticate"));
    let wrong =
        stable.http.post(stable.url("/v1/targets")).bearer_auth("nope").json(&body).send().await.expect("request");
    assert_eq!(wrong.status(), 401);
    assert_eq!(stable.get("/v1/targets").await.status(), 401, "reads need the bearer in stable");
    assert_eq!(stable.get("/v1/status").await.status(), 401);
    assert_eq!(stable.get("/v1/targets/_digests").await.status(), 401);
    assert_eq!(support::counts(&pool).await, (0, 0, 0));
    assert_eq!(stable.get("/healthchecks").await.status(), 200, "the aggregate is public");
    assert_eq!(stable.get("/v1/healthchecks").await.status(), 200, "in both shapes");

    let (dev, _) = support::api(Mode::Dev).await;
    assert_eq!(dev.get("/v1/targets").await.status(), 200, "reads are open in dev");
    let write = dev.http.post(dev.url("/v1/targets")).json(&body).send().await.expect("request");
    assert_eq!(write.status(), 401, "a configured admin token is required for writes even in dev");
}

/// Addresses the outbound policy denies, and numeric forms resolvers read differently, are
/// refused at the door, naming the instance.
#[tokio::test(flavor = "multi_thread")]
async fn denied_and_numeric_addresses_are_refused_naming_the_instance() {
    let (served, pool) = support::api(Mode::Stable).await;
    for url in [
        "http://169.254.169.254/latest",
        "http://2852039166/",
        "http://0x7f.1:80",
        "tcp://0.0.0.0:22",
        "https://224.0.0.1",
    ] {
        let body = json!({"name": "meta", "instances": ["http://10.0.0.1:80", url]}).to_string();
        let (status, answer) = send(&served, Method::POST, "/v1/targets", Some(&body), "application/json").await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert_eq!(answer["error"]["field"], "instances[1]", "{url}: {answer}");
    }
    assert_eq!(support::counts(&pool).await, (0, 0, 0));
}

/// A client certificate file outside the operator's directory, missing, or a device gets one
/// answer, fast, having read nothing; without a directory the fields are refused outright.
#[tokio::test(flavor = "multi_thread")]
async fn client_files_outside_the_directory_are_one_answer_and_read_nothing() {
    let dir = tempfile::tempdir().expect("a client directory");
    let shared = support::shared();
    let sections = json!({"coordinator": {"tls": {"client_dir": dir.path()}}});
    let (served, pool) = support::api_on(&shared.postgres, &shared.redis, Mode::Stable, sections).await;
    let before = caracal_testkit::process::rss(std::process::id());
    let mut answers = Vec::new();
    for path in ["/etc/passwd", "/nonexistent/client.pem", "missing.pem", "/dev/zero", "../../../../etc/passwd"] {
        let tls = json!({"client_cert_file": path, "client_key_file": path});
        let body = json!({"name": "mtls", "instances": ["https://127.0.0.1:8443"], "tls": tls}).to_string();
        let started = std::time::Instant::now();
        let (status, answer) = send(&served, Method::POST, "/v1/targets", Some(&body), "application/json").await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{path}: {:?}", started.elapsed());
        assert_eq!(status, 422, "{path}: {answer}");
        answers.push(answer);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one answer for all: {answers:?}");
    assert_eq!(answers[0]["error"]["field"], "tls.client_cert_file");
    assert!(caracal_testkit::process::rss(std::process::id()) < before + 64 * 1024 * 1024, "nothing large was read");
    assert_eq!(support::counts(&pool).await, (0, 0, 0));

    let (unset, _) = support::api(Mode::Stable).await;
    let tls = json!({"client_cert_file": "client.pem", "client_key_file": "client.key"});
    let body = json!({"name": "mtls", "instances": ["https://127.0.0.1:8443"], "tls": tls}).to_string();
    let (status, answer) = send(&unset, Method::POST, "/v1/targets", Some(&body), "application/json").await;
    assert_eq!(status, 422);
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("coordinator.tls.client_dir")), "{answer}");
}
