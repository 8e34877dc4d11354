//! [`RedisConnection`]: the Redis handle every service holds. It reaches either one address
//! (`redis_url`) or whichever server the Sentinels name master (`redis_sentinel.*`), and after a
//! failover it follows the new master without a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tracing::Instrument;

/// How long a failed master lookup is reused before the Sentinels are asked again, so that a
/// burst of commands while no master is known costs one lookup, not one each.
const LOOKUP_BACKOFF: Duration = Duration::from_millis(200);
/// The longest a master lookup (Sentinels, then `ROLE` on the named master) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A cloneable Redis connection for commands, stream reads and pipelines. Clones share one
/// multiplexed connection; use [`crate::App::redis`] for a separate one (a blocking reader).
#[derive(Clone)]
pub struct RedisConnection(Route);

#[derive(Clone)]
enum Route {
    /// `redis_url`: one address; the manager reconnects to it by itself.
    Fixed(ConnectionManager),
    /// `redis_sentinel.*`: the master the Sentinels name, looked up again after a failure.
    Sentinel(Arc<Master>),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Route::Fixed(_) => f.write_str("RedisConnection(fixed)"),
            Route::Sentinel(master) => write!(f, "RedisConnection(sentinel master {:?})", master.name),
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(manager: ConnectionManager) -> Self {
        Self(Route::Fixed(manager))
    }
}

impl RedisConnection {
    /// A connection that asks `sentinels` for master `name` on first use, and again after any
    /// error that says the server it had is gone or no longer master (I/O, timeout,
    /// `READONLY`, `MASTERDOWN`).
    pub fn sentinel(sentinels: SentinelClient, name: String, config: AsyncConnectionConfig) -> Self {
        Self(Route::Sentinel(Arc::new(Master {
            name,
            sentinels: tokio::sync::Mutex::new(sentinels),
            config,
            state: Mutex::new(State::default()),
        })))
    }
}

/// The master of one Sentinel-monitored name, as last looked up.
struct Master {
    name: String,
    /// Held while looking up, so concurrent callers wait for one lookup.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The connection to the current master, and its generation (bumped on every lookup), so
    /// an error on an old connection does not throw away a newer one.
    current: Option<(u64, MultiplexedConnection)>,
    generation: u64,
    /// The last failed lookup, reused until its instant.
    failed: Option<(Instant, RedisError)>,
}

impl Master {
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.state.lock().ok()?.current.clone()
    }

    /// The connection to the master, looked up through the Sentinels when there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        let mut sentinels = self.sentinels.lock().await;
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        if let Some(error) = self.recent_failure() {
            return Err(error);
        }
        let lookup = async {
            let client = sentinels.async_get_client().await?;
            let address = client.get_connection_info().addr().to_string();
            let connection = client.get_multiplexed_async_connection_with_config(&self.config).await?;
            Ok::<_, RedisError>((address, connection))
        };
        let looked_up = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((ErrorKind::Io, "no answer from the Sentinels or the master in time"))),
        };
        let mut state = self.state.lock().map_err(|_| RedisError::from((ErrorKind::Client, "state poisoned")))?;
        match looked_up {
            Ok((address, connection)) => {
                state.generation += 1;
                state.current = Some((state.generation, connection.clone()));
                state.failed = None;
                tracing::info!(master = %self.name, %address, "connected to the Redis master the Sentinels name");
                Ok((state.generation, connection))
            }
            Err(error) => {
                tracing::warn!(master = %self.name, %error, "no Redis master from the Sentinels yet");
                state.failed = Some((Instant::now() + LOOKUP_BACKOFF, error.clone()));
                Err(error)
            }
        }
    }

    fn recent_failure(&self) -> Option<RedisError> {
        let state = self.state.lock().ok()?;
        state.failed.as_ref().filter(|(until, _)| Instant::now() < *until).map(|(_, error)| error.clone())
    }

    /// Forgets connection `generation` when `error` says its server is gone or demoted.
    fn after(&self, generation: u64, error: &RedisError) {
        if !lost_master(error) {
            return;
        }
        if let Ok(mut state) = self.state.lock()
            && state.current.as_ref().is_some_and(|(current, _)| *current == generation)
        {
            tracing::info!(master = %self.name, %error, "lost the Redis master; asking the Sentinels again");
            state.current = None;
        }
    }
}

/// Whether `error` means the server is unreachable or is no longer the master.
fn lost_master(error: &RedisError) -> bool {
    use redis::ServerErrorKind;
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown))
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let span = crate::telemetry::redis_span(Some(cmd), 1);
        if !span.is_none() {
            return Box::pin(self.command(cmd).instrument(span));
        }
        self.command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let span = crate::telemetry::redis_span(None, pipeline.len());
        if !span.is_none() {
            return Box::pin(self.commands(pipeline, offset, count).instrument(span));
        }
        self.commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Route::Fixed(manager) => manager.get_db(),
            Route::Sentinel(_) => 0,
        }
    }
}

impl RedisConnection {
    /// One command on the current route.
    fn command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Route::Fixed(manager) => manager.req_packed_command(cmd),
            Route::Sentinel(master) => Box::pin(async move {
                let (generation, mut connection) = master.connection().await?;
                let reply = connection.req_packed_command(cmd).await;
                if let Err(error) = &reply {
                    master.after(generation, error);
                }
                reply
            }),
        }
    }

    /// A pipeline on the current route.
    fn commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Route::Fixed(manager) => manager.req_packed_commands(pipeline, offset, count),
            Route::Sentinel(master) => Box::pin(async move {
                let (generation, mut connection) = master.connection().await?;
                let reply = connection.req_packed_commands(pipeline, offset, count).await;
                if let Err(error) = &reply {
                    master.after(generation, error);
                }
                reply
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lost_master;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn a_demoted_or_unreachable_master_is_looked_up_again_and_a_bad_command_is_not() {
        assert!(lost_master(&RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(lost_master(&RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY"))));
        assert!(lost_master(&RedisError::from((ErrorKind::Server(ServerErrorKind::MasterDown), "MASTERDOWN"))));
        assert!(!lost_master(&RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR syntax"))));
        assert!(!lost_master(&RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"))));
    }
}
