//! Token revocations: a row and its outbox event in one transaction, and the set still in
//! force, for every service that verifies tokens.
//!
//! The event (`token.revoked`) travels like any other: the relay sends it to `caracal.events`
//! (so the ledger records it) and also to `caracal.revocations`, which verifiers follow.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::{Error, NewEvent, outbox};

/// The outbox event type of a revocation.
pub const EVENT_TYPE: &str = "token.revoked";

/// One revocation: either a single token (`jti`) or every token a client was issued at or
/// before `revoked_at`. Times are Unix seconds, as in JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked token's `jti`, for a single-token revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The client whose every token is revoked, for a client-wide revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// When it was revoked.
    pub revoked_at: i64,
    /// When every token it covers has expired; it can be forgotten after.
    pub expires_at: i64,
}

impl Revocation {
    /// The outbox event announcing it.
    pub fn to_event(&self) -> NewEvent {
        NewEvent {
            event_type: EVENT_TYPE.into(),
            target: None,
            instance: None,
            payload: serde_json::to_value(self).unwrap_or_default(),
        }
    }

    /// Reads a revocation from an event's payload; `None` when it is not one.
    pub fn from_payload(payload: &serde_json::value::RawValue) -> Option<Self> {
        serde_json::from_str::<Self>(payload.get()).ok().filter(|r| r.jti.is_some() != r.client_id.is_some())
    }
}

/// Records `revocation` and its outbox event in the caller's transaction.
///
/// # Errors
/// When an insert fails (the caller's transaction is then doomed).
pub async fn record(tx: &mut PgConnection, revocation: &Revocation) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO token_revocations (jti, client_id, revoked_at, expires_at) \
         VALUES ($1, $2, to_timestamp($3), to_timestamp($4))",
    )
    .bind(&revocation.jti)
    .bind(&revocation.client_id)
    .bind(revocation.revoked_at as f64)
    .bind(revocation.expires_at as f64)
    .execute(&mut *tx)
    .await?;
    outbox::enqueue(tx, &revocation.to_event()).await?;
    Ok(())
}

/// Every revocation still in force (not yet expired).
///
/// # Errors
/// When the query fails.
pub async fn active(pool: &sqlx::PgPool) -> Result<Vec<Revocation>, Error> {
    let rows: Vec<(Option<String>, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT jti, client_id, extract(epoch FROM revoked_at)::bigint, extract(epoch FROM expires_at)::bigint \
         FROM token_revocations WHERE expires_at > now()",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(jti, client_id, revoked_at, expires_at)| Revocation { jti, client_id, revoked_at, expires_at })
        .collect())
}
