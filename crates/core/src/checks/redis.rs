//! `redis:connectivity` and, over TLS, `redis:tls`.

use std::time::Instant;

use crate::RedisConnection;

use crate::{Check, Failure, Observed, Rung};

/// Sends `PING`; observes the round trip, in ms.
pub fn redis(connection: RedisConnection) -> Check {
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

/// `redis:tls` (storage rung, required), for a `rediss://` Redis: a fresh TLS session with the
/// server verifies, using the same client (CA, client certificate) as every other connection.
/// A failure names its reason first (`unknown_issuer`, `certificate_expired`,
/// `hostname_mismatch`, `tls_handshake`, or `unreachable` when no connection opened), so a
/// certificate problem at start-up or after a rotation is told apart from Redis being down.
/// Observes the time to connect, verify and `PING`, in ms.
pub fn redis_tls(client: redis::Client) -> Check {
    Check::new("redis:tls", Rung::Storage, move || {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
                .set_response_timeout(Some(std::time::Duration::from_secs(2)));
            let session = async {
                let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
                redis::cmd("PING").query_async::<String>(&mut connection).await
            };
            match session.await {
                Ok(_) => Ok(Observed::new(super::elapsed_ms(start), "ms")),
                Err(e) => {
                    let word = crate::tls::reason(&e).unwrap_or("unreachable");
                    Err(Failure::new(format!("{word}: no verified TLS session with Redis ({e})")))
                }
            }
        }
    })
    .component_type("datastore")
}
