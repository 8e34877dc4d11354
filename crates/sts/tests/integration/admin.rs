//! `/v1/clients` behind the admin token or a `clients:write` token, and forged tokens at that
//! guard: each refused with a 4xx and a stable code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caracal_tokens::claims::now_unix;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::support::{ADMIN, Sts, parts, sts};

#[tokio::test(flavor = "multi_thread")]
async fn clients_are_created_once_listed_without_secrets_and_disabled() {
    let sts = sts().await;
    let http = &sts.served.http;
    let created = http
        .post(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"client_id": "scraper", "scopes": ["metrics:read", "targets:read"], "description": "CI"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.expect("json");
    let secret = body["client_secret"].as_str().expect("secret").to_string();
    assert_eq!(URL_SAFE_NO_PAD.decode(&secret).expect("base64url").len(), 32, "256 random bits");
    assert_eq!(body["scopes"], serde_json::json!(["targets:read", "metrics:read"]), "in the platform's order");

    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM sts_clients WHERE id = 'scraper'")
        .fetch_one(&sts.pool)
        .await
        .expect("row");
    assert_eq!(stored.len(), 32, "a digest");
    assert!(!String::from_utf8_lossy(&stored).contains(&secret));

    let one: serde_json::Value = http
        .get(sts.served.url("/v1/clients/scraper"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(one["client_id"], "scraper");
    assert!(one.get("client_secret").is_none(), "the secret is shown once: {one}");
    let list: serde_json::Value = http
        .get(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(!list.to_string().contains(&secret));

    let again = http
        .post(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"client_id": "scraper", "scopes": ["targets:read"]}))
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), 409);

    let token = sts.token("scraper", &secret, None).await;
    assert!(sts.active("scraper", &secret, &token).await);
    let deleted = http.delete(sts.served.url("/v1/clients/scraper")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    let (status, _, _) =
        sts.post_form("/oauth/token", Some(("scraper", &secret)), "grant_type=client_credentials").await;
    assert_eq!(status, 401, "a disabled client gets no token");
    // Asked by a client that may introspect any token, so `false` means revoked.
    let (other, other_secret) = sts.client(&["tokens:introspect"]).await;
    assert!(!sts.active(&other, &other_secret, &token).await, "its live token is revoked at once");
    let gone = http.get(sts.served.url("/v1/clients/scraper")).bearer_auth(ADMIN).send().await.expect("get");
    assert_eq!(gone.status(), 404, "a deleted client is gone");
    let listed: serde_json::Value = http
        .get(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(!listed.to_string().contains("\"scraper\""), "and not listed: {listed}");
    let twice = http.delete(sts.served.url("/v1/clients/scraper")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(twice.status(), 404, "deleted already");
    let reused = http
        .post(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"client_id": "scraper", "scopes": ["targets:read"]}))
        .send()
        .await
        .expect("reuse");
    assert_eq!(reused.status(), 409, "its id stays taken");
    let missing = http.delete(sts.served.url("/v1/clients/nobody")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(missing.status(), 404);

    let events: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY id").fetch_all(&sts.pool).await.expect("outbox");
    assert!(events.starts_with(&["sts.client_created".to_string()]), "{events:?}");
    assert!(
        events.contains(&"token.revoked".to_string()) && events.contains(&"sts.client_disabled".to_string()),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_client_documents_are_refused_and_write_nothing() {
    let sts = sts().await;
    let post = |body: reqwest::Body, content_type: &'static str| {
        let request = sts
            .served
            .http
            .post(sts.served.url("/v1/clients"))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.expect("post");
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let json = "application/json";
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("not JSON", "{nope".into(), json, 400, "malformed_json"),
        ("not application/json", r#"{"scopes":["targets:read"]}"#.into(), "text/plain", 415, "unsupported_media_type"),
        ("unknown scope", r#"{"scopes":["root"]}"#.into(), json, 422, "validation_failed"),
        ("no scope", r#"{"scopes":[]}"#.into(), json, 422, "validation_failed"),
        ("bad id", r#"{"client_id":"a b:c","scopes":["targets:read"]}"#.into(), json, 422, "validation_failed"),
        ("unknown field", r#"{"scopes":["targets:read"],"admin":true}"#.into(), json, 422, "validation_failed"),
        (
            "huge",
            format!(r#"{{"scopes":["targets:read"],"description":"{}"}}"#, "x".repeat(100_000)),
            json,
            413,
            "payload_too_large",
        ),
    ];
    for (case, body, content_type, want_status, want_code) in cases {
        let (status, body) = post(body.into(), content_type).await;
        assert_eq!((status, body["error"]["code"].as_str()), (want_status, Some(want_code)), "{case}: {body}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sts_clients").fetch_one(&sts.pool).await.expect("count");
    assert_eq!(count, 0);
    let generated: serde_json::Value = sts
        .served
        .http
        .post(sts.served.url("/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"scopes": ["targets:read"]}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert!(generated["client_id"].as_str().is_some_and(|id| id.starts_with("client-")), "{generated}");
}

/// Signs `claims` with the STS's own active key, opened from PostgreSQL with the test's KEK:
/// a validly signed token whose claims the test chooses.
async fn forge(sts: &Sts, header_alg: Algorithm, claims: &serde_json::Value) -> String {
    let (kid, sealed): (String, Vec<u8>) = sqlx::query_as(
        "SELECT kid, private_sealed FROM sts_signing_keys WHERE signs_from <= now() AND signs_until > now()",
    )
    .fetch_one(&sts.pool)
    .await
    .expect("active key");
    let pkcs8 = caracal_sts::keys::Sealer::new(&sts.kek.bytes).expect("sealer").open(&kid, &sealed).expect("open");
    let mut header = Header::new(header_alg);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&pkcs8)).expect("sign")
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_at_the_guard_need_the_scope_and_forged_ones_are_401() {
    let sts = sts().await;
    let (writer, writer_secret) = sts.client(&["clients:write"]).await;
    let (reader, reader_secret) = sts.client(&["targets:read"]).await;
    let list = |token: String| {
        let request = sts.served.http.get(sts.served.url("/v1/clients")).bearer_auth(token);
        async move {
            let response = request.send().await.expect("get");
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap_or("").to_string());
            (status, challenge, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let good = sts.token(&writer, &writer_secret, None).await;
    assert_eq!(list(good.clone()).await.0, 200, "clients:write may");
    let (status, challenge, body) = list(sts.token(&reader, &reader_secret, None).await).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("insufficient_scope")));
    assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));

    let (_, claims) = parts(&good);
    let with = |key: &str, value: serde_json::Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    let now = now_unix();
    let (header, payload) = {
        let mut p = good.split('.');
        (p.next().expect("h").to_string(), p.next().expect("p").to_string())
    };
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#);
    let x = {
        let jwks: serde_json::Value = sts
            .served
            .http
            .get(sts.served.url("/.well-known/jwks.json"))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        jwks["keys"][0]["x"].as_str().expect("x").to_string()
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.typ = Some("at+jwt".into());
    hs.kid = parts(&good).0["kid"].as_str().map(String::from);
    let forged = vec![
        ("alg none", format!("{none_header}.{payload}.")),
        (
            "HS256 with the public key",
            jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(x.as_bytes())).expect("hs"),
        ),
        ("wrong aud", forge(&sts, Algorithm::EdDSA, &with("aud", "elsewhere".into())).await),
        ("expired", forge(&sts, Algorithm::EdDSA, &with("exp", (now - 3600).into())).await),
        ("not yet valid", forge(&sts, Algorithm::EdDSA, &with("nbf", (now + 3600).into())).await),
        ("wrong iss", forge(&sts, Algorithm::EdDSA, &with("iss", "https://evil.test".into())).await),
        (
            "tampered",
            format!(
                "{header}.{}.{}",
                URL_SAFE_NO_PAD.encode(with("scope", "clients:write targets:write".into()).to_string()),
                good.split('.').nth(2).expect("sig")
            ),
        ),
        ("garbage", "not-a-jwt".into()),
    ];
    for (case, token) in forged {
        let (status, challenge, body) = list(token).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_token")), "{case}: {body}");
        assert!(challenge.is_some_and(|c| c.contains("invalid_token")), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_v1_and_oauth_route() {
    let sts = sts().await;
    let (status, doc) = sts.served.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/oauth/token", &["post"][..]),
        ("/oauth/revoke", &["post"]),
        ("/oauth/introspect", &["post"]),
        ("/.well-known/jwks.json", &["get"]),
        ("/.well-known/oauth-authorization-server", &["get"]),
        ("/v1/clients", &["get", "post"]),
        ("/v1/clients/{id}", &["get", "delete"]),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path} is not described");
        }
    }
    let form = &paths["/oauth/token"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"];
    assert!(form.is_object(), "the token request is a form: {}", paths["/oauth/token"]);
}
