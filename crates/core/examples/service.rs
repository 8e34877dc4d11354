//! A complete small service on caracal-core: PostgreSQL and Redis checks, one route of its
//! own, and every standard endpoint and environment variable.
//!
//! ```text
//! DATABASE_URL=postgres://... REDIS_URL=redis://... CARACAL_MODE=dev \
//!     cargo run -p caracal-core --example service
//! curl localhost:8000/ready?verbose
//! ```
//!
//! `GET /work?ms=N` answers after N milliseconds (at most 60 000): a stand-in for real work,
//! handy for watching a drain finish an in-flight request.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use caracal_core::{App, checks};
use serde::Deserialize;

fn main() -> std::process::ExitCode {
    caracal_core::main("example", env!("CARGO_PKG_VERSION"), 8000, |app: App| async move {
        let pg = app.postgres()?;
        let redis = app.redis()?;
        Ok(app.check(checks::postgres(pg)).check(checks::redis(redis)).routes(Router::new().route("/work", get(work))))
    })
}

#[derive(Deserialize)]
struct WorkParams {
    #[serde(default)]
    ms: u64,
}

async fn work(Query(params): Query<WorkParams>) -> Json<serde_json::Value> {
    let ms = params.ms.min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(serde_json::json!({ "worked_ms": ms }))
}
