//! STS tokens across the platform, on the built binaries in `rc` mode: a scoped token works
//! at api and audit, a revocation (one token, or a whole client) reaches both within 2 s
//! through outbox → relay → `caracal.revocations`, and an STS restart keeps tokens valid.

use std::time::{Duration, Instant};

use caracal_testkit::Signal;

use crate::support::{self, Service, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const STS: &str = env!("CARGO_BIN_EXE_caracal-sts");
const ADMIN: &str = "e2e-admin-token";

/// The four services in `rc` mode; api and audit verify the STS's tokens.
struct Platform {
    stores: Stores,
    kek: tempfile::TempDir,
    sts: Service,
    sts_port: u16,
    api: Service,
    audit: Service,
    _coordinator: Service,
    http: reqwest::Client,
}

fn kek_file(dir: &tempfile::TempDir) -> String {
    use base64::Engine;
    let path = dir.path().join("kek");
    if !path.exists() {
        let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(fastrand::u8(..)));
        caracal_testkit::write_secret(&path, base64::engine::general_purpose::STANDARD.encode(key));
    }
    path.display().to_string()
}

async fn start_sts(stores: &Stores, port: u16, kek: &str) -> Service {
    let env = [("CARACAL_MODE", "rc"), ("CARACAL_ADMIN_TOKEN", ADMIN), ("CARACAL_STS_KEY_ENCRYPTION_FILE", kek)];
    support::start_on(STS, stores, port, &env).await
}

impl Platform {
    async fn start() -> Platform {
        let stores = Stores::start();
        support::migrate(&stores);
        let kek = tempfile::tempdir().expect("tempdir");
        let sts_port = caracal_testkit::free_port().expect("port");
        let sts = start_sts(&stores, sts_port, &kek_file(&kek)).await;
        let sts_url = sts.base.clone();
        let verifying =
            [("CARACAL_MODE", "rc"), ("CARACAL_ADMIN_TOKEN", ADMIN), ("CARACAL_TOKENS__STS_URL", sts_url.as_str())];
        let api = support::start(API, &stores, &verifying).await;
        let audit = support::start(AUDIT, &stores, &verifying).await;
        let coordinator = support::start(COORDINATOR, &stores, &[("CARACAL_MODE", "rc")]).await;
        Platform { stores, kek, sts, sts_port, api, audit, _coordinator: coordinator, http: reqwest::Client::new() }
    }

    async fn client(&self, id: &str, scopes: &[&str]) -> String {
        let response = self
            .http
            .post(format!("{}/v1/clients", self.sts.base))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"client_id": id, "scopes": scopes}))
            .send()
            .await
            .expect("create client");
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        body["client_secret"].as_str().expect("secret").to_string()
    }

    async fn form(&self, path: &str, id: &str, secret: &str, body: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.sts.base))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn token(&self, id: &str, secret: &str, scope: &str) -> String {
        let (status, body) =
            self.form("/oauth/token", id, secret, &format!("grant_type=client_credentials&scope={scope}")).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_string()
    }

    /// Status of GET `url` with `token`.
    async fn get(&self, url: &str, token: &str) -> u16 {
        self.http.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    }

    fn targets(&self) -> String {
        format!("{}/v1/targets", self.api.base)
    }

    fn events(&self) -> String {
        format!("{}/v1/events", self.audit.base)
    }

    /// Waits until both api and audit refuse `token`; returns how long that took.
    async fn refused_everywhere(&self, token: &str, since: Instant) -> Duration {
        let done = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(10), || async {
            (self.get(&self.targets(), token).await == 401 && self.get(&self.events(), token).await == 401)
                .then_some(())
        })
        .await;
        assert!(done.is_ok(), "the token is still accepted 10 s after its revocation");
        since.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scoped_tokens_work_across_the_platform_and_revocations_reach_every_service_within_2s() {
    let p = Platform::start().await;
    let secret = p.client("ops", &["targets:read", "targets:write", "events:read"]).await;
    let reader = p.token("ops", &secret, "targets:read+events:read").await;

    assert_eq!(p.get(&p.targets(), &reader).await, 200, "targets:read at api");
    assert_eq!(p.get(&p.events(), &reader).await, 200, "events:read at audit");
    assert_eq!(p.http.get(p.targets()).send().await.expect("get").status(), 401, "no token");
    let write = p
        .http
        .post(p.targets())
        .bearer_auth(&reader)
        .json(&serde_json::json!({"name": "shop", "instances": ["http://127.0.0.1:9"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(write.status(), 403, "a read token cannot write");
    let writer = p.token("ops", &secret, "targets:write").await;
    let write = p
        .http
        .post(p.targets())
        .bearer_auth(&writer)
        .json(&serde_json::json!({"name": "shop", "instances": ["http://127.0.0.1:9"]}))
        .send()
        .await
        .expect("post");
    assert_eq!(write.status(), 201, "targets:write may");
    assert_eq!(p.get(&p.targets(), ADMIN).await, 200, "the admin token still works");

    // One token revoked: refused at api and audit within 2 s; the client's other token is not.
    let started = Instant::now();
    let (status, _) = p.form("/oauth/revoke", "ops", &secret, &format!("token={reader}")).await;
    assert_eq!(status, 200);
    let took = p.refused_everywhere(&reader, started).await;
    eprintln!("revocation of one token refused everywhere after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        p.get(&format!("{}/v1/targets/shop", p.api.base), &writer).await,
        403,
        "other tokens unaffected (403: no read scope)"
    );

    // The client disabled: every token it holds refused within 2 s.
    let live = p.token("ops", &secret, "targets:read+events:read").await;
    assert_eq!(p.get(&p.targets(), &live).await, 200);
    let started = Instant::now();
    let deleted =
        p.http.delete(format!("{}/v1/clients/ops", p.sts.base)).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    let took = p.refused_everywhere(&live, started).await;
    eprintln!("client-wide revocation refused everywhere after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // The ledger recorded the revocations like any other event.
    let pool = p.stores.pool().await;
    let recorded = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE event_type = 'token.revoked'")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 2).then_some(())
    })
    .await;
    assert!(recorded.is_ok(), "both revocations reach the audit ledger");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sts_restart_keeps_tokens_valid_across_the_platform() {
    let mut p = Platform::start().await;
    let secret = p.client("reader", &["targets:read"]).await;
    let token = p.token("reader", &secret, "targets:read").await;
    assert_eq!(p.get(&p.targets(), &token).await, 200);

    p.sts.process.signal(Signal::SIGTERM);
    assert!(p.sts.process.wait_timeout(Duration::from_secs(15)).is_some(), "the STS stops");
    assert_eq!(p.get(&p.targets(), &token).await, 200, "verified locally while the STS is down");

    p.sts = start_sts(&p.stores, p.sts_port, &kek_file(&p.kek)).await;
    assert_eq!(p.get(&p.targets(), &token).await, 200, "still valid after the restart");
    let (status, body) = p.form("/oauth/introspect", "reader", &secret, &format!("token={token}")).await;
    assert_eq!((status, &body["active"]), (200, &serde_json::json!(true)), "{body}");
    let fresh = p.token("reader", &secret, "targets:read").await;
    assert_eq!(p.get(&p.targets(), &fresh).await, 200, "new tokens verify too");
}

#[tokio::test(flavor = "multi_thread")]
async fn unverified_tls_needs_targets_admin_and_introspection_is_a_clients_own() {
    let p = Platform::start().await;
    let writer = p.client("writer", &["targets:write"]).await;
    let boss = p.client("boss", &["targets:write", "targets:admin"]).await;
    let post = |token: String, name: &'static str| {
        let body = serde_json::json!({"name": name, "instances": ["https://127.0.0.1:9443"], "tls": {"insecure_skip_verify": true}});
        let request = p.http.post(p.targets()).bearer_auth(token).json(&body).send();
        async move {
            let response = request.await.expect("post");
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = post(p.token("writer", &writer, "targets:write").await, "lab").await;
    assert_eq!((status, &body["error"]["code"]), (403, &serde_json::json!("insufficient_scope")), "{body}");
    let (status, body) = post(p.token("boss", &boss, "targets:write targets:admin").await, "lab").await;
    assert_eq!(status, 201, "{body}");

    // The writer's token, introspected by another client: not its to learn about.
    let token = p.token("writer", &writer, "targets:write").await;
    let (status, body) = p.form("/oauth/introspect", "boss", &boss, &format!("token={token}")).await;
    assert_eq!((status, &body), (200, &serde_json::json!({"active": false})));
    let (_, body) = p.form("/oauth/introspect", "writer", &writer, &format!("token={token}")).await;
    assert_eq!(body["active"], true, "its own");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_page_session_ends_when_its_token_is_revoked() {
    let p = Platform::start().await;
    let secret = p.client("viewer", &["targets:read"]).await;
    let token = p.token("viewer", &secret, "targets:read").await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let response = http
        .post(format!("{}/status/signin", p.api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={token}"))
        .send()
        .await
        .expect("signin");
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"].to_str().expect("cookie").to_string();
    let cookie = set.split(';').next().expect("pair").to_string();
    assert!(!cookie.contains(&token), "the cookie is not the token");
    let signed_in = || async {
        let page = http.get(format!("{}/status", p.api.base)).header("cookie", &cookie).send().await.expect("page");
        page.text().await.expect("body").contains("Sign out")
    };
    assert!(signed_in().await, "the session stands");
    let (status, _) = p.form("/oauth/revoke", "viewer", &secret, &format!("token={token}")).await;
    assert_eq!(status, 200);
    let ended = caracal_testkit::wait_for(Duration::from_secs(10), Duration::from_millis(100), || async {
        (!signed_in().await).then_some(())
    })
    .await;
    assert!(ended.is_ok(), "revoking the token ends its page session");
}
