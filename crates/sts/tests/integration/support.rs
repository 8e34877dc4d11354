//! One PostgreSQL and Redis for the binary; each test gets its own migrated database, and an
//! STS in `rc` mode with a key-encryption key of its own.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use caracal_core::Mode;
use caracal_core::config::Secret;
use caracal_testkit::app::{Served, core_config, serve};

pub const ADMIN: &str = "admin-token-for-tests";

/// A key-encryption key in a file that lives as long as the test.
pub struct Kek {
    pub dir: tempfile::TempDir,
    pub bytes: [u8; 32],
}

impl Kek {
    pub fn new() -> Self {
        let bytes: [u8; 32] = caracal_sts::keys::random().expect("random");
        let dir = tempfile::tempdir().expect("tempdir");
        caracal_testkit::write_secret(dir.path().join("kek"), STANDARD.encode(bytes));
        Self { dir, bytes }
    }

    pub fn path(&self) -> String {
        self.dir.path().join("kek").display().to_string()
    }
}

/// An STS under test: served, its database, its KEK.
pub struct Sts {
    pub served: Served,
    pub pool: sqlx::PgPool,
    pub database_url: String,
    pub kek: Kek,
}

/// A fresh migrated database.
pub async fn database() -> (String, sqlx::PgPool) {
    let url = caracal_testkit::shared().postgres.fresh_database("sts").expect("database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    (url, pool)
}

/// Builds an STS app on `database_url` with `[sts]` settings `sts` (the KEK file is added).
pub fn app(database_url: &str, kek: &Kek, mut sts: serde_json::Value) -> caracal_core::App {
    let mut core = core_config(Mode::Rc);
    core.database_url = Some(Secret::new(database_url));
    core.redis_url = Some(Secret::new(caracal_testkit::shared().redis.url()));
    core.admin_token = Some(Secret::new(ADMIN));
    core.checks.timeout = Duration::from_secs(1);
    sts["key_encryption_file"] = serde_json::json!(kek.path());
    let sections = serde_json::json!({ "sts": sts, "tokens": { "issuer": "https://sts.test" } });
    caracal_testkit::app::app("sts", core, sections)
}

/// Serves an STS built by [`app`] and waits until it is ready.
pub async fn serve_ready(app: caracal_core::App) -> Served {
    let served = serve(caracal_sts::build(app).expect("build the sts")).await;
    served.wait_ready_status(200, Duration::from_secs(15)).await.expect("sts ready");
    served
}

/// An STS on a fresh database with `[sts]` settings `sts`.
pub async fn sts_with(sts: serde_json::Value) -> Sts {
    let (database_url, pool) = database().await;
    let kek = Kek::new();
    let served = serve_ready(app(&database_url, &kek, sts)).await;
    Sts { served, pool, database_url, kek }
}

/// An STS with default settings.
pub async fn sts() -> Sts {
    sts_with(serde_json::json!({})).await
}

impl Sts {
    /// Creates a client with `scopes` through the admin API; returns (id, secret).
    pub async fn client(&self, scopes: &[&str]) -> (String, String) {
        let id = caracal_testkit::unique_name("client").replace('_', "-");
        let response = self
            .served
            .http
            .post(self.served.url("/v1/clients"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({ "client_id": id, "scopes": scopes }))
            .send()
            .await
            .expect("create client");
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.expect("json");
        (id, body["client_secret"].as_str().expect("secret").to_string())
    }

    /// POSTs a form body to `path` with optional Basic credentials.
    pub async fn post_form(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut request = self
            .served
            .http
            .post(self.served.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.expect("post");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, headers, body)
    }

    /// A token for the client, by Basic; panics unless issued.
    pub async fn token(&self, id: &str, secret: &str, scope: Option<&str>) -> String {
        let body = match scope {
            Some(s) => format!("grant_type=client_credentials&scope={}", s.replace(' ', "+")),
            None => "grant_type=client_credentials".into(),
        };
        let (status, _, json) = self.post_form("/oauth/token", Some((id, secret)), &body).await;
        assert_eq!(status, 200, "{json}");
        json["access_token"].as_str().expect("token").to_string()
    }

    /// Whether introspection calls `token` active (asked as client `id`).
    pub async fn active(&self, id: &str, secret: &str, token: &str) -> bool {
        let (status, _, json) =
            self.post_form("/oauth/introspect", Some((id, secret)), &format!("token={token}")).await;
        assert_eq!(status, 200, "{json}");
        json["active"] == true
    }
}

/// A JWT's header and claims, decoded without verification (to look at them).
pub fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut it = token.split('.');
    let mut next = || -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().expect("part")).expect("base64")).expect("json")
    };
    let header = next();
    (header, next())
}
