//! The clients registry: rows in PostgreSQL, and a full copy in each replica's memory so that
//! authenticating a client never waits on the database and takes the same time whether the
//! client exists or not.
//!
//! A replica re-reads the rows changed since its last read every `sts.client_refresh` (and
//! the whole table every 30 reads), so a client created or disabled on another replica is
//! known here within about a second; a replica's own changes apply at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::error::StsError;

/// What a replica keeps of a client.
#[derive(Debug, Clone)]
pub struct ClientEntry {
    /// The client id.
    pub id: String,
    /// SHA-256 of its secret.
    pub digest: [u8; 32],
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
    /// Whether it was disabled.
    pub disabled: bool,
}

/// The in-memory registry.
#[derive(Debug, Default)]
pub struct Clients {
    table: ArcSwap<HashMap<String, ClientEntry>>,
    /// `updated_at` (Unix seconds, fractional) of the newest row read.
    watermark: std::sync::Mutex<Option<f64>>,
}

/// A client row: id, secret digest, scopes, disabled, updated at (Unix seconds).
type ClientRow = (String, Vec<u8>, Vec<String>, bool, f64);

/// The digest a secret is stored and compared as.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Clients {
    /// Authenticates `id` with `secret` in constant time: the same work for an unknown client,
    /// a wrong secret and a disabled (or client-revoked) one, and one answer for all three.
    pub fn authenticate(&self, id: &str, secret: &str, revoked: impl Fn(&str) -> bool) -> Option<ClientEntry> {
        // Compared even for an unknown id, against a digest no secret has, so the work done
        // does not tell whether the id exists.
        const NO_CLIENT: [u8; 32] = [0u8; 32];
        let presented = digest(secret);
        let table = self.table.load();
        let entry = table.get(id);
        let expected = entry.map_or(&NO_CLIENT, |e| &e.digest);
        let secret_ok: bool = presented.ct_eq(expected).into();
        let usable = entry.is_some_and(|e| !e.disabled) & !revoked(id);
        (secret_ok & usable).then(|| entry.cloned()).flatten()
    }

    /// Adds or replaces one entry (this replica's own change).
    pub fn upsert(&self, entry: ClientEntry) {
        let mut table = HashMap::clone(&self.table.load());
        table.insert(entry.id.clone(), entry);
        self.table.store(Arc::new(table));
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the rows changed since the last read (all of them when `full`).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn refresh(&self, pool: &sqlx::PgPool, full: bool) -> Result<usize, StsError> {
        let since = if full { None } else { self.watermark.lock().ok().and_then(|w| *w) };
        // Rows committed late with an earlier `updated_at` are caught by the overlap.
        let rows: Vec<ClientRow> = sqlx::query_as(
            "SELECT id, secret_sha256, scopes, disabled_at IS NOT NULL, extract(epoch FROM updated_at)::float8 \
             FROM sts_clients WHERE $1::float8 IS NULL OR updated_at >= to_timestamp($1::float8 - 10)",
        )
        .bind(since)
        .fetch_all(pool)
        .await?;
        let newest = rows.iter().map(|r| r.4).fold(since.unwrap_or(0.0), f64::max);
        let mut table = if full { HashMap::new() } else { HashMap::clone(&self.table.load()) };
        let read = rows.len();
        for (id, secret, scopes, disabled, _) in rows {
            let Ok(digest) = <[u8; 32]>::try_from(secret.as_slice()) else { continue };
            table.insert(id.clone(), ClientEntry { id, digest, scopes, disabled });
        }
        self.table.store(Arc::new(table));
        if let Ok(mut w) = self.watermark.lock() {
            *w = Some(newest);
        }
        Ok(read)
    }

    /// Keeps the copy current until `stop`.
    pub async fn run(self: Arc<Self>, pool: sqlx::PgPool, every: Duration, stop: CancellationToken) {
        let mut round: u64 = 0;
        let mut failing = false;
        while !stop.is_cancelled() {
            match self.refresh(&pool, round.is_multiple_of(30)).await {
                Ok(_) => {
                    failing = false;
                    round += 1;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "reading the clients failed; retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(entries: &[(&str, &str, bool)]) -> Clients {
        let clients = Clients::default();
        for (id, secret, disabled) in entries {
            clients.upsert(ClientEntry {
                id: (*id).into(),
                digest: digest(secret),
                scopes: vec![],
                disabled: *disabled,
            });
        }
        clients
    }

    #[test]
    fn one_answer_for_unknown_wrong_and_disabled() {
        let clients = with(&[("a", "secret-a", false), ("off", "secret-off", true)]);
        let never = |_: &str| false;
        assert!(clients.authenticate("a", "secret-a", never).is_some());
        assert!(clients.authenticate("a", "wrong", never).is_none());
        assert!(clients.authenticate("nobody", "secret-a", never).is_none());
        assert!(clients.authenticate("off", "secret-off", never).is_none());
        assert!(clients.authenticate("a", "secret-a", |id| id == "a").is_none(), "a client-wide revocation");
    }
}
