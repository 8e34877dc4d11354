//! Token throughput, in one run on this machine: tokens issued per second over HTTP by the
//! STS (`POST /oauth/token`, client authenticated by Basic) beside the limit — a bare axum
//! handler, no layers, that only signs the same claims with the same key — and verifications
//! per second on one core by the shared verifier, both cold (every token new, so every
//! signature is checked) and warm (a token presented again, as a scraper does for its
//! lifetime). Run with `cargo bench -p caracal-sts --bench tokens` (needs `wrk`).
//!
//! Both HTTP targets are served by the same kind of runtime (two worker threads) on loopback,
//! `wrk` runs as a separate process with one thread and 32 connections, and targets rotate
//! over several rounds; the median of each is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use caracal_core::config::{Config, CoreConfig, Mode, Secret};
use caracal_testkit::bench::{self, median, which};
use caracal_testkit::{Postgres, Redis};
use caracal_tokens::claims::now_unix;
use caracal_tokens::{AccessClaims, TokensConfig, Verifier};
use jsonwebtoken::{EncodingKey, Header};

const ROUNDS: usize = 3;
const SECONDS: u32 = 5;
const COLD_TOKENS: usize = 20_000;
const WARM_VERIFICATIONS: usize = 500_000;

#[allow(clippy::print_stdout)] // the table on stdout is this harness's output
fn main() {
    let wrk = which("wrk").unwrap_or_else(|| {
        eprintln!("wrk is not installed: apt-get install -y wrk");
        std::process::exit(2);
    });
    let postgres = Postgres::start_default().expect("start PostgreSQL (apt-get install -y postgresql)");
    let redis = Redis::start_default().expect("start Redis (apt-get install -y redis-server)");
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek: [u8; 32] = caracal_sts::keys::random().expect("random");
    std::fs::write(kek_dir.path().join("kek"), STANDARD.encode(kek)).expect("kek");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let setup = runtime.block_on(serve(&postgres, &redis, &kek_dir.path().join("kek"), &kek));
    let basic = STANDARD.encode(format!("bench:{}", setup.secret));
    let script = kek_dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"grant_type=client_credentials&scope=targets:read\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"Basic {basic}\"\n"
        ),
    )
    .expect("script");
    let targets = [
        ("bare signing handler (limit)", format!("{}/sign", setup.bare)),
        ("STS /oauth/token", format!("{}/oauth/token", setup.sts)),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..ROUNDS {
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let rps = run_wrk(&wrk, &script, &targets[index].1);
            eprintln!("round {round}: {:<30} {rps:>10.0} req/s", targets[index].0);
            results[index].push(rps);
        }
    }
    let medians: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    drop(runtime);

    let (cold, warm) = verify_per_core(&setup);
    let raw = raw_signature_checks(&setup);
    println!("| measure | figure |");
    println!("|---|---:|");
    println!("| bare signing handler, tokens/s (median of {ROUNDS} x {SECONDS} s) | {:.0} |", medians[0]);
    println!("| STS `POST /oauth/token`, tokens/s | {:.0} |", medians[1]);
    println!("| **issuance ratio to the limit** (target ≥ 0.7) | **{:.2}** |", medians[1] / medians[0]);
    println!("| verifications/s on one core, cold (every token new: signature checked) | {cold:.0} |");
    println!("| verifications/s on one core, warm (a token presented again) | {warm:.0} |");
    println!("| raw Ed25519 signature checks/s on one core (aws-lc, no JWT work) | {raw:.0} |");
    println!("| cold verification ratio to the raw signature check | {:.2} |", cold / raw);
}

struct Setup {
    sts: String,
    bare: String,
    secret: String,
    kid: String,
    key: EncodingKey,
    jwks: jsonwebtoken::jwk::JwkSet,
}

async fn serve(postgres: &Postgres, redis: &Redis, kek_path: &std::path::Path, kek: &[u8; 32]) -> Setup {
    let database = postgres.fresh_database("bench").expect("database");
    let pool = sqlx::PgPool::connect(&database).await.expect("connect");
    caracal_store::migrate(&pool).await.expect("migrate");
    let mut core = CoreConfig::defaults(0);
    core.mode = Mode::Stable;
    core.database_url = Some(Secret::new(&database));
    core.redis_url = Some(Secret::new(redis.url()));
    core.admin_token = Some(Secret::new("bench-admin"));
    let sections = serde_json::json!({
        "sts": { "key_encryption_file": kek_path.display().to_string() },
        "tokens": { "issuer": "https://sts.bench" },
    });
    let app = caracal_core::App::new("sts", "0.0.0", Config::from_core(core, sections).expect("config")).expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sts = format!("http://{}", listener.local_addr().expect("addr"));
    std::mem::forget(caracal_sts::build(app).expect("build").start(listener));
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{sts}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created: serde_json::Value = http
        .post(format!("{sts}/v1/clients"))
        .bearer_auth("bench-admin")
        .json(&serde_json::json!({"client_id": "bench", "scopes": ["targets:read"]}))
        .send()
        .await
        .expect("create client")
        .json()
        .await
        .expect("json");
    let secret = created["client_secret"].as_str().expect("secret").to_string();
    let (kid, sealed): (String, Vec<u8>) =
        sqlx::query_as("SELECT kid, private_sealed FROM sts_signing_keys").fetch_one(&pool).await.expect("key");
    let pkcs8 = caracal_sts::keys::Sealer::new(kek).expect("sealer").open(&kid, &sealed).expect("open");
    let key = EncodingKey::from_ed_der(&pkcs8);
    let jwks = http.get(format!("{sts}/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("json");

    // The limit: sign the same claims with the same key, nothing else.
    let signer = Arc::new((kid.clone(), key.clone()));
    let bare_app = Router::new().route(
        "/sign",
        post(move || {
            let signer = Arc::clone(&signer);
            async move {
                let token = sign(&signer.0, &signer.1, claims(&random_jti()));
                axum::Json(serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 600, "scope": "targets:read"}))
            }
        }),
    );
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let bare = format!("http://{}", bare_listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(bare_listener, bare_app).await });
    Setup { sts, bare, secret, kid, key, jwks }
}

fn claims(jti: &str) -> AccessClaims {
    let now = now_unix();
    AccessClaims {
        iss: "https://sts.bench".into(),
        sub: "bench".into(),
        client_id: "bench".into(),
        aud: "caracal".into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: jti.into(),
        scope: "targets:read".into(),
    }
}

fn random_jti() -> String {
    URL_SAFE_NO_PAD.encode(caracal_sts::keys::random::<16>().expect("random"))
}

fn sign(kid: &str, key: &EncodingKey, claims: AccessClaims) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

/// Verifications per second on one thread: cold (distinct tokens), warm (one token again).
fn verify_per_core(setup: &Setup) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let config = TokensConfig {
        issuer: Some("https://sts.bench".into()),
        cache_size: COLD_TOKENS * 2,
        ..TokensConfig::default()
    };
    let verifier = Verifier::new(&config, caracal_tokens::metrics::Metrics::default());
    verifier.set_keys(&setup.jwks);
    verifier.revocations().replace(&[]);
    let tokens: Vec<String> =
        (0..COLD_TOKENS).map(|i| sign(&setup.kid, &setup.key, claims(&format!("jti-{i}")))).collect();
    runtime.block_on(async {
        let started = Instant::now();
        for token in &tokens {
            verifier.verify(token).await.expect("a valid token");
        }
        let cold = COLD_TOKENS as f64 / started.elapsed().as_secs_f64();
        let token = &tokens[0];
        let started = Instant::now();
        for _ in 0..WARM_VERIFICATIONS {
            verifier.verify(token).await.expect("a valid token");
        }
        let warm = WARM_VERIFICATIONS as f64 / started.elapsed().as_secs_f64();
        (cold, warm)
    })
}

/// The bound under cold verification: the signature check alone, straight from aws-lc.
fn raw_signature_checks(setup: &Setup) -> f64 {
    use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
    let x = setup.jwks.keys[0].algorithm.clone();
    let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) = x else { panic!("an Ed25519 key") };
    let public = URL_SAFE_NO_PAD.decode(okp.x).expect("x");
    let key = UnparsedPublicKey::new(&ED25519, public);
    let signed: Vec<(Vec<u8>, Vec<u8>)> = (0..COLD_TOKENS)
        .map(|i| {
            let token = sign(&setup.kid, &setup.key, claims(&format!("raw-{i}")));
            let (message, signature) = token.rsplit_once('.').expect("jws");
            (message.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(signature).expect("sig"))
        })
        .collect();
    let started = Instant::now();
    for (message, signature) in &signed {
        key.verify(message, signature).expect("valid");
    }
    COLD_TOKENS as f64 / started.elapsed().as_secs_f64()
}

fn run_wrk(wrk: &str, script: &std::path::Path, url: &str) -> f64 {
    let script = script.display().to_string();
    bench::wrk_rate(wrk, &["-t1", "-c32", &format!("-d{SECONDS}s"), "-s", &script], url)
}
