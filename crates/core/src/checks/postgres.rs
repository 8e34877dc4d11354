//! `postgres:connectivity`.

use std::time::Instant;

use crate::{Check, Failure, Observed, Rung};

/// Acquires a pooled connection and runs `SELECT 1`; observes the time taken, in ms.
pub fn postgres(pool: sqlx::PgPool) -> Check {
    Check::new("postgres:connectivity", Rung::Storage, move || {
        let pool = pool.clone();
        async move {
            let start = Instant::now();
            let mut conn = pool.acquire().await.map_err(|e| Failure::new(format!("cannot get a connection: {e}")))?;
            sqlx::query("SELECT 1")
                .execute(&mut *conn)
                .await
                .map_err(|e| Failure::new(format!("SELECT 1 failed: {e}")))?;
            Ok(Observed::new(super::elapsed_ms(start), "ms"))
        }
    })
    .component_type("datastore")
}
