//! `postgres:connectivity` and `postgres:writable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `postgres:writable` (storage rung, required): the database takes writes. A primary that has
/// been demoted, a connection that landed on a standby (`pg_is_in_recovery()`), or a database
/// whose sessions default to read-only fails readiness here, instead of every write failing
/// one by one. While it fails, idle pooled connections are tested and the read-only ones
/// closed, so that once a writable primary is reachable again (a Service or proxy switched
/// over) new connections go to it. Observes the time taken, in ms.
///
/// After a failure it passes again only once a sweep of the idle connections finds none
/// read-only: the connection it tested may be a fresh, writable one while sessions opened
/// during the outage still sit in the pool, and the first write after `/ready` turns 200 must
/// not get one of them.
pub fn postgres_writable(pool: sqlx::PgPool) -> Check {
    let recovering = Arc::new(AtomicBool::new(false));
    Check::new("postgres:writable", Rung::Storage, move || {
        let (pool, recovering) = (pool.clone(), Arc::clone(&recovering));
        async move {
            let start = Instant::now();
            let mut conn = pool.acquire().await.map_err(|e| Failure::new(format!("cannot get a connection: {e}")))?;
            if let Some(why) = read_only(&mut conn).await? {
                // This connection and any other idle one that is read-only goes: the next ones
                // are opened afresh, wherever the database's address now leads.
                recovering.store(true, Ordering::Relaxed);
                let _ = conn.close().await;
                let closed = close_read_only_idle(&pool).await;
                return Err(Failure::new(format!("{why}; {} read-only pooled connection(s) closed", closed + 1)));
            }
            if recovering.load(Ordering::Relaxed) {
                drop(conn);
                let closed = close_read_only_idle(&pool).await;
                if closed > 0 {
                    return Err(Failure::new(format!(
                        "the database is writable again; {closed} read-only pooled connection(s) from before closed"
                    )));
                }
                recovering.store(false, Ordering::Relaxed);
            }
            Ok(Observed::new(super::elapsed_ms(start), "ms"))
        }
    })
    .component_type("datastore")
}

/// Why the session on `conn` cannot write, if it cannot.
async fn read_only(conn: &mut sqlx::PgConnection) -> Result<Option<&'static str>, Failure> {
    let (in_recovery, read_only): (bool, String) =
        sqlx::query_as("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            .fetch_one(conn)
            .await
            .map_err(|e| Failure::new(format!("cannot ask whether the database is writable: {e}")))?;
    Ok(if in_recovery {
        Some("the database is a standby (in recovery): it takes no writes")
    } else if read_only == "on" {
        Some("sessions are read-only (default_transaction_read_only is on)")
    } else {
        None
    })
}

/// Tests each idle pooled connection and closes the read-only ones; how many it closed.
async fn close_read_only_idle(pool: &sqlx::PgPool) -> usize {
    let mut held = Vec::new();
    let mut closed = 0;
    // Held until the sweep ends, so each idle connection is tested once.
    while let Some(mut conn) = pool.try_acquire() {
        match read_only(&mut conn).await {
            Ok(None) => held.push(conn),
            _ => {
                let _ = conn.close().await;
                closed += 1;
            }
        }
    }
    closed
}
