//! `/oauth/token`, `/oauth/revoke`, `/oauth/introspect`: the happy paths and every error.

use crate::support::{parts, sts};

/// A token request and what it must answer: (case, Basic credentials, body, status, error).
type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, String, u16, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn issues_rfc9068_tokens_by_basic_and_by_post() {
    let sts = sts().await;
    let (id, secret) = sts.client(&["targets:read", "events:read"]).await;

    let (status, headers, body) =
        sts.post_form("/oauth/token", Some((&id, &secret)), "grant_type=client_credentials&scope=events:read").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "events:read");
    let (header, claims) = parts(body["access_token"].as_str().expect("token"));
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    assert_eq!(claims["iss"], "https://sts.test");
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["aud"], "caracal");
    assert_eq!(claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"), 600);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // client_secret_post, no scope: every allowed scope.
    let form = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
    let (status, _, body) = sts.post_form("/oauth/token", None, &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "targets:read events:read");
    let (_, claims) = parts(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["scope"], "targets:read events:read");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_rfc6749_shaped_and_never_echoes_the_secret() {
    let sts = sts().await;
    let (id, secret) = sts.client(&["targets:read"]).await;
    let (off, off_secret) = sts.client(&["targets:read"]).await;
    let disabled = sts
        .served
        .http
        .delete(sts.served.url(&format!("/v1/clients/{off}")))
        .bearer_auth(crate::support::ADMIN)
        .send()
        .await
        .expect("disable");
    assert_eq!(disabled.status(), 204);
    let grant = "grant_type=client_credentials";
    let post = |body: &str| format!("{body}&client_id={id}&client_secret={secret}");
    let basic = Some((id.as_str(), secret.as_str()));

    let cases: Vec<Case<'_>> = vec![
        ("no grant_type", basic, "scope=targets:read".into(), 400, "invalid_request"),
        ("repeated grant_type", basic, format!("{grant}&{grant}"), 400, "invalid_request"),
        ("repeated scope", basic, format!("{grant}&scope=targets:read&scope=targets:read"), 400, "invalid_request"),
        ("Basic and client_secret", basic, post(grant), 400, "invalid_request"),
        ("no credentials", None, grant.into(), 401, "invalid_client"),
        ("unknown client", Some(("nobody", secret.as_str())), grant.into(), 401, "invalid_client"),
        ("wrong secret", Some((id.as_str(), "not-the-secret")), grant.into(), 401, "invalid_client"),
        ("disabled client", Some((off.as_str(), off_secret.as_str())), grant.into(), 401, "invalid_client"),
        ("wrong secret by post", None, format!("{grant}&client_id={id}&client_secret=nope"), 401, "invalid_client"),
        ("password grant", basic, "grant_type=password&username=a&password=b".into(), 400, "unsupported_grant_type"),
        (
            "authorization_code grant",
            basic,
            "grant_type=authorization_code&code=x".into(),
            400,
            "unsupported_grant_type",
        ),
        ("scope not allowed", basic, format!("{grant}&scope=targets:write"), 400, "invalid_scope"),
        ("unknown scope", basic, format!("{grant}&scope=root"), 400, "invalid_scope"),
        ("one good one bad scope", basic, format!("{grant}&scope=targets:read+clients:write"), 400, "invalid_scope"),
    ];
    let mut client_failures = Vec::new();
    for (case, auth, body, want_status, want_error) in cases {
        let (status, headers, json) = sts.post_form("/oauth/token", auth, &body).await;
        assert_eq!((status, json["error"].as_str()), (want_status, Some(want_error)), "{case}: {json}");
        assert!(json["error_description"].is_string(), "{case}: {json}");
        assert_eq!(json.as_object().map(|o| o.len()), Some(2), "{case}: exactly error and error_description");
        assert_eq!(headers["cache-control"], "no-store", "{case}");
        let text = json.to_string();
        assert!(!text.contains(&secret) && !text.contains(&off_secret), "{case}: echoes a secret: {text}");
        if status == 401 {
            assert!(headers["www-authenticate"].to_str().expect("ascii").starts_with("Basic realm="), "{case}");
            client_failures.push(text);
        }
    }
    client_failures.dedup();
    assert_eq!(client_failures.len(), 1, "one answer for unknown, wrong and disabled: {client_failures:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_4xx_never_5xx() {
    let sts = sts().await;
    let (id, secret) = sts.client(&["targets:read"]).await;
    let http = &sts.served.http;
    let url = sts.served.url("/oauth/token");
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap_or_default())
    };

    let json = send(
        http.post(&url).basic_auth(&id, Some(&secret)).json(&serde_json::json!({"grant_type": "client_credentials"})),
    )
    .await;
    assert_eq!((json.0, json.1["error"].as_str()), (400, Some("invalid_request")), "JSON instead of a form");

    let no_type = send(http.post(&url).basic_auth(&id, Some(&secret)).body("grant_type=client_credentials")).await;
    assert_eq!((no_type.0, no_type.1["error"].as_str()), (400, Some("invalid_request")), "no content type");

    let mut latin1 = b"grant_type=client_credentials&scope=".to_vec();
    latin1.extend_from_slice(&[0xe9, 0xff, 0xfe]);
    let form = "application/x-www-form-urlencoded";
    let bad_utf8 = send(http.post(&url).basic_auth(&id, Some(&secret)).header("content-type", form).body(latin1)).await;
    assert_eq!((bad_utf8.0, bad_utf8.1["error"].as_str()), (400, Some("invalid_request")), "not UTF-8");

    let huge = format!("grant_type=client_credentials&pad={}", "x".repeat(200_000));
    let too_big = send(http.post(&url).basic_auth(&id, Some(&secret)).header("content-type", form).body(huge)).await;
    assert_eq!(too_big.0, 413, "{:?}", too_big.1);

    for header in ["Basic !!!not-base64!!!", "Basic ", "Basic bm8tY29sb24=", "Bearer abc", "Basic //79"] {
        let (status, body) = send(
            http.post(&url)
                .header("authorization", header)
                .header("content-type", form)
                .body("grant_type=client_credentials"),
        )
        .await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{header}");
    }
    let two = send(
        http.post(&url)
            .basic_auth(&id, Some(&secret))
            .header("authorization", "Basic eDp5")
            .header("content-type", form)
            .body("grant_type=client_credentials"),
    )
    .await;
    assert_eq!((two.0, two.1["error"].as_str()), (400, Some("invalid_request")), "two Authorization headers");

    let get = http.get(&url).send().await.expect("get");
    assert_eq!(get.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_and_introspection() {
    let sts = sts().await;
    let (id, secret) = sts.client(&["targets:read"]).await;
    let (other, other_secret) = sts.client(&["targets:read"]).await;
    let token = sts.token(&id, &secret, None).await;
    assert!(!sts.active(&other, &other_secret, &token).await, "another client's token is not its to learn about");
    let (auditor, auditor_secret) = sts.client(&["tokens:introspect"]).await;
    assert!(sts.active(&auditor, &auditor_secret, &token).await, "tokens:introspect may introspect any");
    assert!(sts.active(&id, &secret, &token).await, "a client may introspect its own");

    let (status, _, body) = sts.post_form("/oauth/introspect", Some((&id, &secret)), &format!("token={token}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["client_id"], id.as_str());
    assert_eq!(body["scope"], "targets:read");
    assert_eq!(body["token_type"], "Bearer");

    let (status, _, body) =
        sts.post_form("/oauth/revoke", Some((&other, &other_secret)), &format!("token={token}")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "not its token: {body}");
    assert!(sts.active(&id, &secret, &token).await, "still active");

    let (status, headers, _) = sts.post_form("/oauth/revoke", Some((&id, &secret)), &format!("token={token}")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!sts.active(&id, &secret, &token).await, "revoked");
    let (again, _, _) = sts.post_form("/oauth/revoke", Some((&id, &secret)), &format!("token={token}")).await;
    assert_eq!(again, 200, "revoking twice is fine (RFC 7009)");
    let (unknown, _, _) = sts.post_form("/oauth/revoke", Some((&id, &secret)), "token=not.a.token").await;
    assert_eq!(unknown, 200, "an unknown token is 200 too");

    let (status, _, body) = sts.post_form("/oauth/introspect", Some((&id, &secret)), "token=garbage").await;
    assert_eq!((status, body), (200, serde_json::json!({"active": false})));
    let (status, _, body) = sts.post_form("/oauth/introspect", None, &format!("token={token}")).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, _, body) = sts.post_form("/oauth/revoke", Some((&id, &secret)), "").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "no token parameter");

    // The revocation is durable and announced: a row and its outbox event.
    let (rows, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM token_revocations WHERE jti IS NOT NULL), \
                (SELECT count(*) FROM outbox WHERE event_type = 'token.revoked')",
    )
    .fetch_one(&sts.pool)
    .await
    .expect("count");
    assert_eq!((rows, events), (1, 1));
}
