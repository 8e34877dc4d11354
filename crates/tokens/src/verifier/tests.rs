//! The verifier against tokens an attacker could present: each refused for its own reason.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use caracal_store::revocation::Revocation;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{Verifier, VerifyError};
use crate::claims::{AccessClaims, now_unix};
use crate::config::TokensConfig;
use crate::metrics::Metrics;

struct Keys {
    kid: String,
    pkcs8: Vec<u8>,
    x: String,
}

fn keys(kid: &str) -> Keys {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate");
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("load");
    Keys { kid: kid.into(), pkcs8: doc.as_ref().to_vec(), x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()) }
}

fn jwks(keys: &[&Keys]) -> JwkSet {
    JwkSet {
        keys: keys
            .iter()
            .map(|k| Jwk {
                common: CommonParameters {
                    key_algorithm: Some(KeyAlgorithm::EdDSA),
                    key_id: Some(k.kid.clone()),
                    ..Default::default()
                },
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    curve: EllipticCurve::Ed25519,
                    x: k.x.clone(),
                    ..Default::default()
                }),
            })
            .collect(),
    }
}

fn claims() -> AccessClaims {
    let now = now_unix();
    AccessClaims {
        iss: "https://sts.test".into(),
        sub: "ci".into(),
        client_id: "ci".into(),
        aud: "caracal".into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "jti-1".into(),
        scope: "targets:read".into(),
    }
}

fn sign(keys: &Keys, claims: &impl serde::Serialize) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(keys.kid.clone());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&keys.pkcs8)).expect("sign")
}

fn verifier(keys: &[&Keys]) -> Verifier {
    let config = TokensConfig { issuer: Some("https://sts.test".into()), ..TokensConfig::default() };
    let verifier = Verifier::new(&config, Metrics::default());
    verifier.set_keys(&jwks(keys));
    verifier.revocations().replace(&[]);
    verifier
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

#[tokio::test]
async fn a_good_token_verifies_and_is_remembered() {
    let k = keys("k1");
    let v = verifier(&[&k]);
    let token = sign(&k, &claims());
    assert_eq!(v.verify(&token).await, Ok(claims()));
    assert_eq!(v.verify(&token).await, Ok(claims()), "the second time from memory");
}

#[tokio::test]
async fn forged_and_wrong_tokens_are_refused_for_their_reason() {
    let k = keys("k1");
    let v = verifier(&[&k]);
    let good = sign(&k, &claims());
    let (header, payload) = {
        let mut parts = good.split('.');
        (parts.next().expect("header").to_string(), parts.next().expect("payload").to_string())
    };

    // alg: none, no signature.
    let none = format!("{}.{payload}.", b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})));
    assert_eq!(v.verify(&none).await, Err(VerifyError::Malformed));

    // HS256 "signed" with the public key as the HMAC secret: the key is EdDSA, so refused.
    let mut hs = Header::new(Algorithm::HS256);
    hs.typ = Some("at+jwt".into());
    hs.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(&hs, &claims(), &EncodingKey::from_secret(k.x.as_bytes())).expect("hs256");
    assert_eq!(v.verify(&confused).await, Err(VerifyError::WrongAlgorithm));

    // Another key under our kid: the signature does not hold.
    let other = keys("k1");
    assert_eq!(v.verify(&sign(&other, &claims())).await, Err(VerifyError::BadSignature));

    // A payload swapped under a good signature.
    let mut more = claims();
    more.scope = "clients:write".into();
    let swapped = format!(
        "{header}.{}.{}",
        sign(&k, &more).split('.').nth(1).expect("payload"),
        good.split('.').nth(2).expect("sig")
    );
    assert_eq!(v.verify(&swapped).await, Err(VerifyError::BadSignature));

    let with = |f: &dyn Fn(&mut AccessClaims)| {
        let mut c = claims();
        f(&mut c);
        sign(&k, &c)
    };
    assert_eq!(v.verify(&with(&|c| c.aud = "elsewhere".into())).await, Err(VerifyError::WrongAudience));
    assert_eq!(v.verify(&with(&|c| c.iss = "https://evil.test".into())).await, Err(VerifyError::WrongIssuer));
    assert_eq!(v.verify(&with(&|c| c.exp = now_unix() - 60)).await, Err(VerifyError::Expired));
    assert_eq!(v.verify(&with(&|c| c.nbf = now_unix() + 600)).await, Err(VerifyError::NotYetValid));

    // A claim of the wrong type, and one missing.
    let mut odd = serde_json::to_value(claims()).expect("json");
    odd["exp"] = serde_json::json!("never");
    assert_eq!(v.verify(&sign(&k, &odd)).await, Err(VerifyError::BadClaims));
    odd = serde_json::to_value(claims()).expect("json");
    odd.as_object_mut().expect("object").remove("jti");
    assert_eq!(v.verify(&sign(&k, &odd)).await, Err(VerifyError::BadClaims));

    // Not an access token.
    let mut id_token = Header::new(Algorithm::EdDSA);
    id_token.kid = Some("k1".into());
    id_token.typ = Some("JWT".into());
    let plain = jsonwebtoken::encode(&id_token, &claims(), &EncodingKey::from_ed_der(&k.pkcs8)).expect("sign");
    assert_eq!(v.verify(&plain).await, Err(VerifyError::WrongType));

    // An unknown kid (no JWKS source: nothing to refresh from).
    assert_eq!(v.verify(&sign(&keys("k9"), &claims())).await, Err(VerifyError::UnknownKey));

    for junk in ["", "abc", "a.b", "a.b.c.d", "%%%.%%%.%%%", &"x".repeat(20_000)] {
        assert_eq!(v.verify(junk).await, Err(VerifyError::Malformed), "{junk:.20}");
    }
}

#[tokio::test]
async fn revocations_apply_to_remembered_tokens_too() {
    let k = keys("k1");
    let v = verifier(&[&k]);
    let token = sign(&k, &claims());
    assert!(v.verify(&token).await.is_ok());
    let now = now_unix() as i64;
    v.revocations().insert(&Revocation {
        jti: Some("jti-1".into()),
        client_id: None,
        revoked_at: now,
        expires_at: now + 600,
    });
    assert_eq!(v.verify(&token).await, Err(VerifyError::Revoked));

    let mut later = claims();
    later.jti = "jti-2".into();
    let other = sign(&k, &later);
    assert!(v.verify(&other).await.is_ok());
    v.revocations().insert(&Revocation {
        jti: None,
        client_id: Some("ci".into()),
        revoked_at: now,
        expires_at: now + 600,
    });
    assert_eq!(v.verify(&other).await, Err(VerifyError::Revoked), "every token of the client issued before");
}

#[tokio::test]
async fn nothing_verifies_before_revocations_are_loaded_or_after_its_key_leaves() {
    let k = keys("k1");
    let config = TokensConfig { issuer: Some("https://sts.test".into()), ..TokensConfig::default() };
    let v = Verifier::new(&config, Metrics::default());
    v.set_keys(&jwks(&[&k]));
    let token = sign(&k, &claims());
    assert_eq!(v.verify(&token).await, Err(VerifyError::RevocationsNotLoaded), "fail closed");
    v.revocations().replace(&[]);
    assert!(v.verify(&token).await.is_ok());
    let k2 = keys("k2");
    v.set_keys(&jwks(&[&k2]));
    assert_eq!(v.verify(&token).await, Err(VerifyError::UnknownKey), "the memory does not outlive the key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_costs_the_sts_one_fetch_per_floor() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let k = keys("k1");
    let fetches = std::sync::Arc::new(AtomicUsize::new(0));
    let jwks_body = serde_json::to_string(&jwks(&[&k])).expect("json");
    let counted = std::sync::Arc::clone(&fetches);
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = jwks_body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = TokensConfig {
        issuer: Some("https://sts.test".into()),
        jwks_min_refresh: std::time::Duration::from_secs(30),
        ..TokensConfig::default()
    };
    let v = std::sync::Arc::new(Verifier::new(&config, Metrics::default()));
    v.revocations().replace(&[]);
    let _fetcher = super::JwksFetcher::new(std::sync::Arc::clone(&v), url, &config).expect("client");
    // The first unknown kid fetches (and finds k1); 500 more unknown kids, all at once, fetch
    // nothing more within the floor.
    assert!(v.verify(&sign(&k, &claims())).await.is_ok(), "fetched on the first unknown kid");
    let forged: Vec<String> = (0..500).map(|i| sign(&keys(&format!("made-up-{i}")), &claims())).collect();
    let mut calls = tokio::task::JoinSet::new();
    for token in forged {
        let v = std::sync::Arc::clone(&v);
        calls.spawn(async move { v.verify(&token).await });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.expect("join"), Err(VerifyError::UnknownKey));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for the whole flood");
}

/// Serves `app` on loopback; its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_fetch_follows_no_redirect_and_reads_at_most_a_mebibyte() {
    let k = keys("k1");
    let jwks_body = serde_json::to_string(&jwks(&[&k])).expect("json");
    let genuine = serve(axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = jwks_body.clone();
            async move { body }
        }),
    ))
    .await;
    let elsewhere = format!("{genuine}/.well-known/jwks.json");
    let redirecting = serve(axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let to = elsewhere.clone();
            async move { axum::response::Redirect::temporary(&to) }
        }),
    ))
    .await;
    // A JSON array padded past the cap: a key set would be read whole.
    let huge = serve(axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(|| async { format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)) }),
    ))
    .await;
    let config = TokensConfig { issuer: Some("https://sts.test".into()), ..TokensConfig::default() };
    for (base, loads) in [(&genuine, true), (&redirecting, false), (&huge, false)] {
        let v = std::sync::Arc::new(Verifier::new(&config, Metrics::default()));
        v.revocations().replace(&[]);
        let url = format!("{base}/.well-known/jwks.json");
        let _fetcher = super::JwksFetcher::new(std::sync::Arc::clone(&v), url, &config).expect("client");
        assert_eq!(v.verify(&sign(&k, &claims())).await.is_ok(), loads, "{base}");
    }
}

#[test]
fn outside_dev_the_sts_is_reached_over_https_or_on_loopback() {
    use caracal_core::Mode;
    let with = |url: &str, insecure: bool| TokensConfig {
        sts_url: Some(url.into()),
        insecure_sts_url: insecure,
        ..TokensConfig::default()
    };
    for url in ["https://sts.internal:8080", "http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080"] {
        assert!(with(url, false).validate(Mode::Stable).is_ok(), "{url}");
    }
    let error = with("http://caracal-sts:8080", false).validate(Mode::Rc).expect_err("refused").to_string();
    assert!(error.contains("tokens.sts_url") && error.contains("https"), "{error}");
    assert!(with("http://caracal-sts:8080", true).validate(Mode::Stable).is_ok(), "when told the path is protected");
    assert!(with("http://caracal-sts:8080", false).validate(Mode::Dev).is_ok(), "dev");
    assert!(with("ftp://sts", false).validate(Mode::Dev).is_err(), "not a URL for it");
}
