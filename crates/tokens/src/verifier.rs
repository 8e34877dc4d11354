//! [`Verifier`]: an access token checked locally, with no call to the STS on a request's path.
//!
//! A token is accepted when its `typ` is `at+jwt`, its `kid` names a key of the cached JWKS
//! whose algorithm is the header's `alg` (so `none`, or HS256 signed with a public key, never
//! verifies), its signature holds, `iss` and `aud` are ours, `exp`/`nbf` hold within the
//! leeway, every claim is present with its type, and it is not revoked. A token accepted once
//! is remembered (by its SHA-256) until it expires, so presenting it again costs a hash and a
//! lookup; time and revocation are checked again every time, and the memory is cleared when
//! the key set changes.

use caracal_core::telemetry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::claims::{AccessClaims, is_access_token_type, now_unix};
use crate::config::TokensConfig;
use crate::metrics::{Metrics, ReasonLabels};
use crate::revocations::RevocationSet;

/// Longest token accepted for parsing; ours are well under 1 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. [`VerifyError::reason`] is the stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JWT, or too long, or its parts do not decode.
    #[error("the token is malformed")]
    Malformed,
    /// The `typ` header is not `at+jwt`.
    #[error("the token is not an access token (typ is not at+jwt)")]
    WrongType,
    /// No key of the JWKS has the token's `kid` (or the JWKS was never loaded).
    #[error("the token's key is unknown")]
    UnknownKey,
    /// The header's `alg` is not the key's algorithm.
    #[error("the token's algorithm does not match its key")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not our STS.
    #[error("the token has the wrong issuer")]
    WrongIssuer,
    /// `aud` is not ours.
    #[error("the token has the wrong audience")]
    WrongAudience,
    /// A claim is missing or of the wrong type.
    #[error("the token's claims are incomplete or malformed")]
    BadClaims,
    /// The token, or every token of its client, was revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The revocation set has not been loaded yet, so no token can be trusted (fail closed).
    #[error("revocations are not loaded yet")]
    RevocationsNotLoaded,
}

impl VerifyError {
    /// The `reason` label of `caracal_token_verification_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Malformed => "malformed",
            VerifyError::WrongType => "wrong_type",
            VerifyError::UnknownKey => "unknown_key",
            VerifyError::WrongAlgorithm => "wrong_algorithm",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::WrongIssuer => "wrong_issuer",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::BadClaims => "bad_claims",
            VerifyError::Revoked => "revoked",
            VerifyError::RevocationsNotLoaded => "revocations_not_loaded",
        }
    }
}

/// A verification key from the JWKS.
struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The shared verifier: keys, revocations and the memory of tokens already verified.
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway: u64,
    keys: ArcSwap<HashMap<String, VerifyKey>>,
    keys_loaded: AtomicBool,
    revocations: RevocationSet,
    verified: Mutex<HashMap<[u8; 32], AccessClaims>>,
    cache_size: usize,
    metrics: Metrics,
    /// Single-flight and floor for fetches triggered by an unknown `kid`.
    fetch: tokio::sync::Mutex<FetchState>,
}

struct FetchState {
    source: Option<(reqwest::Client, String)>,
    last: Option<Instant>,
    min_interval: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with no keys yet, for the issuer and audience of `config`.
    pub fn new(config: &TokensConfig, metrics: Metrics) -> Self {
        Self {
            issuer: config.expected_issuer().unwrap_or_default(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
            keys: ArcSwap::from_pointee(HashMap::new()),
            keys_loaded: AtomicBool::new(false),
            revocations: RevocationSet::default(),
            verified: Mutex::new(HashMap::new()),
            cache_size: config.cache_size.max(1),
            metrics,
            fetch: tokio::sync::Mutex::new(FetchState {
                source: None,
                last: None,
                min_interval: config.jwks_min_refresh,
            }),
        }
    }

    /// The issuer tokens must name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience tokens must name.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The revocations in force.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revocations
    }

    /// Whether a key set has been loaded (even an empty one counts as not loaded).
    pub fn keys_loaded(&self) -> bool {
        self.keys_loaded.load(Ordering::Relaxed)
    }

    /// How many keys are held.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Replaces the key set with the usable keys of `jwks` (EdDSA on Ed25519, ES256 on P-256;
    /// anything else is ignored). Returns how many were kept.
    pub fn set_keys(&self, jwks: &JwkSet) -> usize {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let (Some(kid), Some(alg)) = (&jwk.common.key_id, jwk.common.key_algorithm) else { continue };
            let alg = match (alg, &jwk.algorithm) {
                (KeyAlgorithm::EdDSA, AlgorithmParameters::OctetKeyPair(p)) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                (KeyAlgorithm::ES256, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), VerifyKey { alg, key });
            }
        }
        let kept = keys.len();
        let old = self.keys.swap(std::sync::Arc::new(keys));
        let changed = old.len() != kept || old.keys().any(|k| !self.keys.load().contains_key(k));
        if changed && let Ok(mut verified) = self.verified.lock() {
            // A key that left the set must not keep vouching for tokens through the memory.
            verified.clear();
        }
        self.keys_loaded.store(kept > 0, Ordering::Relaxed);
        self.metrics.keys_loaded.set(kept as i64);
        kept
    }

    /// Records the revocation set's size and freshness in the metrics.
    pub fn note_revocations(&self) {
        self.metrics.revocations_in_force.set(self.revocations.len() as i64);
        self.metrics.revocations_lag.set(self.revocations.lag().map_or(-1.0, |d| d.as_secs_f64()));
    }

    /// Verifies `token`, counting the outcome in the metrics.
    ///
    /// # Errors
    /// [`VerifyError`] saying why it is refused.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let result = self.check(token).await;
        match &result {
            Ok(_) => self.metrics.verified.inc(),
            Err(e) => self.metrics.failures.get_or_create(&ReasonLabels { reason: e.reason() }).inc(),
        };
        result
    }

    async fn check(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES || token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(VerifyError::Malformed);
        }
        if self.revocations.lag().is_none() {
            return Err(VerifyError::RevocationsNotLoaded);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let remembered = self.verified.lock().ok().and_then(|v| v.get(&digest).cloned());
        let claims = match remembered {
            Some(claims) => claims,
            None => {
                let claims = self.check_signed(token).await?;
                self.remember(digest, &claims);
                claims
            }
        };
        let now = now_unix();
        if claims.exp.saturating_add(self.leeway) < now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now.saturating_add(self.leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if self.revocations.is_revoked(&claims.jti, &claims.client_id, claims.iat) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    /// The full check of a token not seen before: header, key, signature, claims.
    async fn check_signed(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !is_access_token_type(header.typ.as_deref()) {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        if !self.keys.load().contains_key(&kid) {
            self.refresh_for_unknown_kid().await;
        }
        let keys = self.keys.load();
        let key = keys.get(&kid).ok_or(VerifyError::UnknownKey)?;
        if header.alg != key.alg {
            return Err(VerifyError::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
                ErrorKind::InvalidAudience => VerifyError::WrongAudience,
                ErrorKind::InvalidAlgorithm => VerifyError::WrongAlgorithm,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
                    VerifyError::BadClaims
                }
                _ => VerifyError::Malformed,
            }
        })?;
        Ok(data.claims)
    }

    fn remember(&self, digest: [u8; 32], claims: &AccessClaims) {
        let Ok(mut verified) = self.verified.lock() else { return };
        if verified.len() >= self.cache_size {
            let now = now_unix();
            verified.retain(|_, c| c.exp.saturating_add(self.leeway) >= now);
            if verified.len() >= self.cache_size {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
    }

    /// Fetches the JWKS again for an unknown `kid`, at most once per `jwks_min_refresh` and
    /// one fetch at a time, so a flood of made-up `kid`s costs the STS one request per floor.
    async fn refresh_for_unknown_kid(&self) {
        let mut fetch = self.fetch.lock().await;
        if fetch.last.is_some_and(|t| t.elapsed() < fetch.min_interval) {
            return;
        }
        if let Err(e) = self.fetch_locked(&mut fetch).await {
            tracing::warn!(error = %e, "fetching the JWKS for an unknown kid failed");
        }
    }

    /// Fetches the JWKS now (the periodic refresh), unless a fetch happened within the floor.
    ///
    /// # Errors
    /// When the STS cannot be reached or answers something else than a JWKS.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut fetch = self.fetch.lock().await;
        if fetch.last.is_some_and(|t| t.elapsed() < fetch.min_interval) && self.keys_loaded() {
            return Ok(());
        }
        self.fetch_locked(&mut fetch).await
    }

    async fn fetch_locked(&self, fetch: &mut FetchState) -> Result<(), String> {
        let Some((client, url)) = fetch.source.clone() else { return Ok(()) };
        fetch.last = Some(Instant::now());
        let span = telemetry::http_client_span("GET", &url);
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_span_context(&span, &mut headers);
        let response = match client.get(&url).headers(headers).send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(e) => {
                telemetry::record_client_error(&span, if e.is_timeout() { "timeout" } else { "connection_refused" });
                return Err(format!("GET {url}: {e}"));
            }
        };
        telemetry::record_client_status(&span, response.status().as_u16());
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let body = read_capped(response, MAX_JWKS_BYTES).await.map_err(|e| format!("GET {url}: {e}"))?;
        let jwks: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not a JWKS: {e}"))?;
        let kept = self.set_keys(&jwks);
        tracing::debug!(keys = kept, "JWKS loaded");
        Ok(())
    }
}

/// The most of a JWKS answer read (a few keys take a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// `response`'s body, or an error once it passes `cap` bytes (read no further).
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer failed: {e}"))? {
        if body.len() + chunk.len() > cap {
            return Err(format!("the answer is larger than {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The worker that fetches the JWKS on start and every `jwks_refresh` (every second until
/// the first success), so keys the STS pre-publishes are known before they sign.
pub struct JwksFetcher {
    verifier: std::sync::Arc<Verifier>,
    every: Duration,
}

impl JwksFetcher {
    /// A fetcher of `url` for `verifier`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(verifier: std::sync::Arc<Verifier>, url: String, config: &TokensConfig) -> Result<Self, reqwest::Error> {
        // A redirect could point the key fetch anywhere: none is followed.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        if let Ok(mut fetch) = verifier.fetch.try_lock() {
            fetch.source = Some((client, url));
        }
        Ok(Self { verifier, every: config.jwks_refresh })
    }

    /// Fetches until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut failing = false;
        while !stop.is_cancelled() {
            match self.verifier.refresh().await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "fetching the JWKS failed; retrying every second");
                    }
                    failing = true;
                }
            }
            let wait = if self.verifier.keys_loaded() && !failing { self.every } else { Duration::from_secs(1) };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
