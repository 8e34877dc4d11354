//! Upgrades without an outage: a running release stays ready when the next release's migration
//! is declared compatible with it, and turns unready, naming the versions, when it is not.

use std::time::Duration;

use crate::support::{self, Stores};

const API: &str = env!("CARGO_BIN_EXE_caracal-api");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_caracal-coordinator");
const AUDIT: &str = env!("CARGO_BIN_EXE_caracal-audit");
const STS: &str = env!("CARGO_BIN_EXE_caracal-sts");
const GATEWAY: &str = env!("CARGO_BIN_EXE_caracal-gateway");
const CONTROL: &str = env!("CARGO_BIN_EXE_caracal-control");

/// Every service's `/ready` status code, after `settle` (several check intervals).
async fn ready_codes(services: &[&support::Service], settle: Duration) -> Vec<(String, u16, String)> {
    tokio::time::sleep(settle).await;
    let mut out = Vec::new();
    for s in services {
        let r = reqwest::get(format!("{}/ready", s.base)).await.expect("ready");
        out.push((s.base.clone(), r.status().as_u16(), r.text().await.unwrap_or_default()));
    }
    out
}

/// The reproduction: a row for the next version in `_sqlx_migrations` — once with a
/// declaration of compatibility (every service stays ready), once without (every service is
/// unready, saying which versions).
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_compatible_schema_leaves_every_service_ready_and_an_incompatible_one_names_the_versions() {
    let stores = Stores::start();
    support::migrate(&stores);
    let services = [
        support::start(API, &stores, &[]).await,
        support::start(COORDINATOR, &stores, &[]).await,
        support::start(AUDIT, &stores, &[]).await,
        support::start(STS, &stores, &[]).await,
        support::start(GATEWAY, &stores, &[]).await,
        support::start(CONTROL, &stores, &[]).await,
    ];
    let all: Vec<&support::Service> = services.iter().collect();
    let pool = stores.pool().await;
    let next = caracal_store::expected_version() + 1;
    sqlx::query("INSERT INTO _schema_compatibility (version, compatible_with) VALUES ($1, $1 - 1)")
        .bind(next)
        .execute(&pool)
        .await
        .expect("declare");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'next release', true, '\\x00', 0)",
    )
    .bind(next)
    .execute(&pool)
    .await
    .expect("the next release's migration");
    // Check intervals are 200 ms: 2 s is ten evaluations.
    for (base, code, body) in ready_codes(&all, Duration::from_secs(2)).await {
        assert_eq!(code, 200, "{base} turned unready on a compatible schema: {body}");
    }

    // The release after it, which needs builds of `next`: this build is past its window.
    sqlx::query("INSERT INTO _schema_compatibility (version, compatible_with) VALUES ($1 + 1, $1)")
        .bind(next)
        .execute(&pool)
        .await
        .expect("declare");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1 + 1, 'the release after', true, '\\x00', 0)",
    )
    .bind(next)
    .execute(&pool)
    .await
    .expect("the release after's migration");
    let named = format!("schema at version {}, this build expects {}", next + 1, next - 1);
    for (base, code, body) in ready_codes(&all, Duration::from_secs(2)).await {
        assert_eq!(code, 503, "{base} stayed ready past its window: {body}");
        assert!(body.contains(&named), "{base} does not name the versions ({named}): {body}");
    }
    for s in services {
        s.stop();
    }
}
