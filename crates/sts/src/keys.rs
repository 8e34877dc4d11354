//! Signing-key material: generating a key pair, its public JWK, and sealing the private half
//! at rest with the key-encryption key (AES-256-GCM, a fresh nonce per key, the `kid` as
//! associated data so a sealed key cannot be swapped onto another row).

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, Jwk, KeyAlgorithm,
    OctetKeyPairParameters, PublicKeyUse,
};

use crate::config::SigningAlgorithm;
use crate::error::StsError;

/// A key pair fresh from the generator: its id, algorithm, PKCS#8 private key and public JWK.
pub struct NewKey {
    /// The key id (`kid`): 128 random bits, base64url.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlgorithm,
    /// The private key, PKCS#8 DER (what the signer loads); never logged.
    pub pkcs8: Vec<u8>,
    /// The public key as published.
    pub jwk: Jwk,
}

/// Generates a key pair for `alg`.
///
/// # Errors
/// [`StsError::Crypto`] when the system's random source fails.
pub fn generate(alg: SigningAlgorithm) -> Result<NewKey, StsError> {
    let rng = SystemRandom::new();
    let kid = URL_SAFE_NO_PAD.encode(random::<16>()?);
    let (pkcs8, params) = match alg {
        SigningAlgorithm::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| StsError::Crypto("generate an Ed25519 key"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| StsError::Crypto("load an Ed25519 key"))?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let params = AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                curve: EllipticCurve::Ed25519,
                x,
                ..Default::default()
            });
            (doc.as_ref().to_vec(), params)
        }
        SigningAlgorithm::ES256 => {
            let signing = &ECDSA_P256_SHA256_FIXED_SIGNING;
            let doc =
                EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|_| StsError::Crypto("generate a P-256 key"))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(signing, doc.as_ref()).map_err(|_| StsError::Crypto("load a P-256 key"))?;
            // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err(StsError::Crypto("read a P-256 public key"));
            }
            let params = AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                y: URL_SAFE_NO_PAD.encode(&point[33..65]),
                ..Default::default()
            });
            (doc.as_ref().to_vec(), params)
        }
    };
    let key_algorithm = match alg {
        SigningAlgorithm::EdDSA => KeyAlgorithm::EdDSA,
        SigningAlgorithm::ES256 => KeyAlgorithm::ES256,
    };
    let common = CommonParameters {
        public_key_use: Some(PublicKeyUse::Signature),
        key_algorithm: Some(key_algorithm),
        key_id: Some(kid.clone()),
        ..Default::default()
    };
    Ok(NewKey { kid, alg, pkcs8, jwk: Jwk { common, algorithm: params } })
}

/// `N` bytes from the system's random source.
///
/// # Errors
/// [`StsError::Crypto`] when it fails.
pub fn random<const N: usize>() -> Result<[u8; N], StsError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| StsError::Crypto("read the random source"))?;
    Ok(bytes)
}

/// The key that seals private keys at rest.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

/// The stand-in key-encryption key of `dev` mode when none is configured: not a secret.
const DEV_KEY: [u8; 32] = *b"caracal-dev-insecure-kek-32bytes";

impl Sealer {
    /// The sealer of a 32-byte key.
    ///
    /// # Errors
    /// [`StsError::Crypto`] when the key is refused.
    pub fn new(key: &[u8; 32]) -> Result<Self, StsError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| StsError::Crypto("load the key-encryption key"))?;
        Ok(Self { key: LessSafeKey::new(unbound) })
    }

    /// The insecure stand-in for `dev` mode.
    ///
    /// # Errors
    /// As [`Sealer::new`].
    pub fn dev() -> Result<Self, StsError> {
        Self::new(&DEV_KEY)
    }

    /// Reads the key from `path`: 32 bytes, base64 (surrounding whitespace ignored).
    ///
    /// # Errors
    /// A message saying what is wrong with the file (for a start-up error naming the key).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let bytes = STANDARD.decode(text.trim()).map_err(|_| {
            format!("{shown} is not base64; expected 32 random bytes in base64 (`openssl rand -base64 32`)")
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("{shown} holds {} bytes; expected 32 (`openssl rand -base64 32`)", b.len())
        })?;
        Self::new(&key).map_err(|e| e.to_string())
    }

    /// Seals `plain` for row `kid`: nonce || ciphertext || tag.
    ///
    /// # Errors
    /// [`StsError::Crypto`] when sealing fails.
    pub fn seal(&self, kid: &str, plain: &[u8]) -> Result<Vec<u8>, StsError> {
        let nonce_bytes = random::<NONCE_LEN>()?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(kid.as_bytes()), &mut sealed)
            .map_err(|_| StsError::Crypto("seal a private key"))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] sealed for `kid`.
    ///
    /// # Errors
    /// [`StsError::Crypto`] when the key-encryption key is not the one that sealed it, or the
    /// sealed bytes were altered.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, StsError> {
        if sealed.len() < NONCE_LEN {
            return Err(StsError::Crypto("open a private key (too short)"));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StsError::Crypto("open a private key"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut body)
            .map_err(|_| StsError::Crypto("open a private key (wrong key-encryption key?)"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_kid() {
        let sealer = Sealer::new(&[7u8; 32]).expect("sealer");
        let sealed = sealer.seal("kid-1", b"private").expect("seal");
        assert_eq!(sealer.open("kid-1", &sealed).expect("open"), b"private");
        assert!(sealer.open("kid-2", &sealed).is_err(), "bound to its kid");
        assert!(Sealer::new(&[8u8; 32]).expect("sealer").open("kid-1", &sealed).is_err(), "bound to its kek");
    }

    #[test]
    fn generated_keys_have_their_public_jwk() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let key = generate(alg).expect("key");
            assert_eq!(key.jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
            assert!(jsonwebtoken::DecodingKey::from_jwk(&key.jwk).is_ok());
        }
    }
}
