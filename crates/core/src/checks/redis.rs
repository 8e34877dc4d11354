//! `redis:connectivity`.

use std::time::Instant;

use redis::aio::ConnectionManager;

use crate::{Check, Failure, Observed, Rung};

/// Sends `PING`; observes the round trip, in ms.
pub fn redis(connection: ConnectionManager) -> Check {
    Check::new("redis:connectivity", Rung::Storage, move || {
        let mut connection = connection.clone();
        async move {
            let start = Instant::now();
            let reply: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .map_err(|e| Failure::new(format!("PING failed: {e}")))?;
            if reply != "PONG" {
                return Err(Failure::new(format!("PING answered {reply:?}")));
            }
            Ok(Observed::new(super::elapsed_ms(start), "ms"))
        }
    })
    .component_type("datastore")
}
