//! The `[sts]` settings (`CARACAL_STS__*` in the environment; the key-encryption file also as
//! `CARACAL_STS_KEY_ENCRYPTION_FILE`). Issuer and audience come from the shared `[tokens]`.

use std::path::PathBuf;
use std::time::Duration;

use caracal_core::ConfigError;
use serde::Deserialize;

/// The signature algorithm of new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519 (the default).
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl SigningAlgorithm {
    /// The JOSE name (`EdDSA`, `ES256`).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::ES256 => "ES256",
        }
    }
}

/// Settings of the token service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StsConfig {
    /// Algorithm of newly created keys; keys already made keep theirs.
    pub algorithm: SigningAlgorithm,
    /// Lifetime of an access token.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// The file holding the 32-byte key that seals private keys at rest (base64). Required in
    /// `rc` and `stable`; in `dev` an insecure built-in key stands in, with a warning.
    pub key_encryption_file: Option<PathBuf>,
    /// How long one key signs before the next takes over.
    #[serde(with = "humantime_serde")]
    pub rotation_period: Duration,
    /// How long a new key is published in the JWKS before it signs, so every verifier has it
    /// in time. Must exceed the verifiers' `tokens.jwks_refresh`.
    #[serde(with = "humantime_serde")]
    pub prepublish: Duration,
    /// How often a replica re-reads the keys and creates the next one when due.
    #[serde(with = "humantime_serde")]
    pub rotation_check: Duration,
    /// How often a replica re-reads the clients changed elsewhere.
    #[serde(with = "humantime_serde")]
    pub client_refresh: Duration,
    /// `outbox:oldest_pending_age` fails when the oldest undelivered revocation is older.
    #[serde(with = "humantime_serde")]
    pub outbox_max_age: Duration,
}

impl Default for StsConfig {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::EdDSA,
            token_lifetime: Duration::from_secs(600),
            key_encryption_file: None,
            rotation_period: Duration::from_secs(24 * 3600),
            prepublish: Duration::from_secs(3600),
            rotation_check: Duration::from_secs(30),
            client_refresh: Duration::from_secs(1),
            outbox_max_age: Duration::from_secs(60),
        }
    }
}

impl StsConfig {
    /// Checks the timing settings fit together.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting that does not fit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError {
            key: format!("sts.{key}"),
            origin: "configuration".into(),
            message: message.into(),
        };
        if self.token_lifetime < Duration::from_secs(1) {
            return Err(bad("token_lifetime", "expected at least 1s"));
        }
        if self.prepublish.is_zero() || self.rotation_period <= self.prepublish {
            return Err(bad("rotation_period", "expected a rotation period longer than the pre-publication window"));
        }
        if self.rotation_check.is_zero() || self.rotation_check >= self.prepublish {
            return Err(bad(
                "rotation_check",
                "expected a check interval above zero and shorter than `sts.prepublish`",
            ));
        }
        Ok(())
    }

    /// How long a key stays in the JWKS after it stops signing: every token it signed has
    /// expired by then, with a margin for clock skew.
    pub fn retire_margin(&self) -> Duration {
        self.token_lifetime + Duration::from_secs(60)
    }

    /// `max-age` of the JWKS answer: shorter than the pre-publication window (a quarter of it,
    /// at most five minutes), so a cached JWKS always holds a key before it signs.
    pub fn jwks_max_age(&self) -> u64 {
        (self.prepublish.as_secs() / 4).min(300)
    }
}
