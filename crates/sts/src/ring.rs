//! The key ring: which keys the JWKS publishes and which one signs now, kept in step with
//! PostgreSQL, and rotation on a schedule.
//!
//! Rotation is decided in one transaction under an advisory lock, with PostgreSQL's clock, so
//! several replicas agree: when no key signs now, one is made that signs at once (the first
//! start, or after a long outage); when the key that signs last is within the pre-publication
//! window of its end, its successor is made, published at once and signing from that end. A
//! key stays in the JWKS until every token it signed has expired, and keys live in PostgreSQL,
//! so a restart never invalidates a token.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use caracal_tokens::Verifier;
use caracal_tokens::claims::now_unix;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey};
use tokio_util::sync::CancellationToken;

use crate::config::{SigningAlgorithm, StsConfig};
use crate::error::StsError;
use crate::keys::{self, Sealer};
use crate::metrics::Metrics;

/// One key that can sign, opened from its sealed row.
#[derive(Clone)]
pub struct Signer {
    /// Its `kid`.
    pub kid: String,
    /// Its algorithm.
    pub alg: Algorithm,
    /// The private key.
    pub key: EncodingKey,
    /// First second it signs (Unix).
    pub signs_from: i64,
    /// First second it no longer signs (Unix).
    pub signs_until: i64,
}

/// What the ring holds now.
pub struct RingState {
    /// Keys that sign now or next, oldest first.
    pub signers: Vec<Signer>,
    /// The JWKS as served.
    pub jwks: JwkSet,
    /// The JWKS, serialized once per change, so serving it costs no serialization.
    pub jwks_body: Arc<str>,
}

impl RingState {
    /// The key that signs at `now` (Unix seconds).
    pub fn signer_at(&self, now: i64) -> Option<&Signer> {
        self.signers.iter().rev().find(|s| s.signs_from <= now && now < s.signs_until)
    }

    /// Until when signing is covered without a new key: the end of the chain of loaded keys
    /// starting with the one that signs now.
    pub fn covered_until(&self, now: i64) -> Option<i64> {
        let mut until = self.signer_at(now)?.signs_until;
        while let Some(next) = self.signers.iter().find(|s| s.signs_from <= until && s.signs_until > until) {
            until = next.signs_until;
        }
        Some(until)
    }
}

/// The key ring of one replica.
pub struct KeyRing {
    pool: sqlx::PgPool,
    sealer: Sealer,
    config: StsConfig,
    state: ArcSwap<RingState>,
    verifier: Arc<Verifier>,
    metrics: Metrics,
}

/// A signing-key row: kid, alg, public JWK, sealed private key, signs from, signs until.
type KeyRow = (String, String, serde_json::Value, Vec<u8>, i64, i64);

impl KeyRing {
    /// An empty ring; [`KeyRing::run`] fills it.
    pub fn new(
        pool: sqlx::PgPool,
        sealer: Sealer,
        config: StsConfig,
        verifier: Arc<Verifier>,
        metrics: Metrics,
    ) -> Self {
        let empty = RingState { signers: Vec::new(), jwks: JwkSet::default(), jwks_body: Arc::from("{\"keys\":[]}") };
        Self { pool, sealer, config, state: ArcSwap::from_pointee(empty), verifier, metrics }
    }

    /// The current state.
    pub fn state(&self) -> arc_swap::Guard<Arc<RingState>> {
        self.state.load()
    }

    /// Keeps the ring current until `stop`: rotates when due, reloads, and wakes at the next
    /// boundary so a successor takes over on time.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failing = false;
        while !stop.is_cancelled() {
            let wait = match self.tick().await {
                Ok(()) => {
                    failing = false;
                    let now = now_unix() as i64;
                    let next_boundary = self
                        .state()
                        .signers
                        .iter()
                        .flat_map(|s| [s.signs_from, s.signs_until])
                        .filter(|t| *t > now)
                        .min()
                        .map(|t| Duration::from_secs((t - now) as u64));
                    next_boundary.map_or(self.config.rotation_check, |b| b.min(self.config.rotation_check))
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "updating the signing keys failed; retrying");
                    }
                    failing = true;
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
                () = stop.cancelled() => break,
            }
        }
    }

    /// One round: rotate when due, then reload.
    ///
    /// # Errors
    /// When PostgreSQL fails or a key cannot be opened.
    pub async fn tick(&self) -> Result<(), StsError> {
        self.rotate_if_due().await?;
        self.reload().await
    }

    /// Creates the key that signs now, or the next one, when due (see the module docs).
    /// Returns whether it created one.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn rotate_if_due(&self) -> Result<bool, StsError> {
        let mut tx = self.pool.begin().await?;
        // Serializes replicas: the second one in sees the first one's key and does nothing.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('caracal.sts.signing_keys'))").execute(&mut *tx).await?;
        let last: Option<(f64,)> = sqlx::query_as(
            "SELECT extract(epoch FROM signs_until - now())::float8 FROM sts_signing_keys \
             WHERE signs_until > now() ORDER BY signs_until DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let (starts_in, why) = match last {
            None => (0.0, "no key signs now"),
            Some((left,)) if left <= self.config.prepublish.as_secs_f64() => (left, "the signing key ends soon"),
            Some(_) => return Ok(false),
        };
        let key = keys::generate(self.config.algorithm)?;
        let sealed = self.sealer.seal(&key.kid, &key.pkcs8)?;
        let jwk = serde_json::to_value(&key.jwk).map_err(|_| StsError::Crypto("encode a JWK"))?;
        sqlx::query(
            "INSERT INTO sts_signing_keys (kid, alg, public_jwk, private_sealed, signs_from, signs_until, published_until) \
             SELECT $1, $2, $3, $4, s, s + make_interval(secs => $6), s + make_interval(secs => $6 + $7) \
             FROM (SELECT now() + make_interval(secs => $5) AS s) AS start",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(jwk)
        .bind(sealed)
        .bind(starts_in)
        .bind(self.config.rotation_period.as_secs_f64())
        .bind(self.config.retire_margin().as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.metrics.rotations.inc();
        tracing::info!(kid = %key.kid, alg = key.alg.as_str(), starts_in_s = starts_in.round(), reason = why, "created a signing key");
        Ok(true)
    }

    /// Re-reads the published keys and opens the ones that sign now or next.
    ///
    /// # Errors
    /// When PostgreSQL fails or a key cannot be opened (the wrong key-encryption key).
    pub async fn reload(&self) -> Result<(), StsError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, alg, public_jwk, private_sealed, extract(epoch FROM signs_from)::bigint, \
                    extract(epoch FROM signs_until)::bigint \
             FROM sts_signing_keys WHERE published_until > now() ORDER BY signs_from",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = now_unix() as i64;
        let old = self.state();
        let mut jwks = JwkSet::default();
        let mut signers = Vec::new();
        for (kid, alg, jwk, sealed, signs_from, signs_until) in rows {
            match serde_json::from_value::<Jwk>(jwk) {
                Ok(jwk) => jwks.keys.push(jwk),
                Err(e) => tracing::error!(%kid, error = %e, "a signing key's public JWK is unreadable; not published"),
            }
            if signs_until <= now {
                continue;
            }
            if let Some(known) = old.signers.iter().find(|s| s.kid == kid) {
                signers.push(known.clone());
                continue;
            }
            let pkcs8 = self.sealer.open(&kid, &sealed)?;
            let (alg, key) = match alg.as_str() {
                "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_der(&pkcs8)),
                "ES256" => (Algorithm::ES256, EncodingKey::from_ec_der(&pkcs8)),
                _ => return Err(StsError::Crypto("load a key of an unknown algorithm")),
            };
            signers.push(Signer { kid, alg, key, signs_from, signs_until });
        }
        let body = serde_json::to_string(&jwks).map_err(|_| StsError::Crypto("encode the JWKS"))?;
        let state = RingState { signers, jwks, jwks_body: Arc::from(body) };
        self.verifier.set_keys(&state.jwks);
        if let Some(until) = state.covered_until(now) {
            self.metrics.active_key_expiry.set(until);
        }
        self.metrics.keys_published.set(state.jwks.keys.len() as i64);
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// Whether signing is covered for at least the pre-publication window: the check
    /// `sts:signing_key`. Returns the seconds covered.
    pub fn coverage(&self) -> Option<i64> {
        let now = now_unix() as i64;
        self.state().covered_until(now).map(|until| until - now)
    }

    /// The algorithm new keys get.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.config.algorithm
    }
}

/// How far signing is covered by the keys made so far: keys published now, and seconds until
/// the last of them stops signing (for `caracal doctor`, which reads the STS's table only
/// through here).
///
/// # Errors
/// When the query fails.
pub async fn coverage(pool: &sqlx::PgPool) -> Result<(i64, Option<f64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM max(signs_until) - now())::float8 \
         FROM sts_signing_keys WHERE published_until > now()",
    )
    .fetch_one(pool)
    .await
}
