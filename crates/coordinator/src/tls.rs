//! TLS for probes: a client per target (system roots plus the target's CA, its client
//! certificate when it has one), a fresh session per probe, the chain each server presents
//! (for its expiry), and handshake failures named in stable words.

use std::sync::{Arc, LazyLock, Mutex};

use caracal_store::tls::{ClientFiles, TlsSpec, not_after, parse_certificates, parse_private_key};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The certificate a server presented (the store's type, recorded on the status row).
pub use caracal_store::status::Certificate as Presented;

/// ring: the provider sqlx's rustls already builds.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    Arc::clone(&PROVIDER)
}

/// The system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the distribution's bundle), read once.
fn system_roots() -> RootCertStore {
    static ROOTS: LazyLock<RootCertStore> = LazyLock::new(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(error = %error, "reading a system CA certificate failed");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        roots
    });
    ROOTS.clone()
}

/// A target's TLS client, built once per probe task: its configuration, verifier and record of
/// what servers presented are shared by every probe of the instance (which run one at a time).
#[derive(Debug)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    /// The connection the last probe left for the next (see [`crate::protocols::https`]).
    kept: Mutex<Option<Box<crate::protocols::Kept>>>,
    recording: Arc<Recording>,
    server_name: Option<ServerName<'static>>,
    /// Whether verification is off (`insecure_skip_verify`).
    pub insecure: bool,
}

/// A chain the verifier accepted for a name, until the earliest `notAfter` in it. The same bytes
/// against the same roots and name give the same answer until then, so a probe presenting it
/// again skips the chain's signature check and parsing. The handshake's own signature (the
/// server holds the leaf's key) is still checked on every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    /// SHA-256 over the leaf and the intermediates, each length-prefixed.
    chain: [u8; 32],
    server_name: String,
    /// Seconds since the Unix epoch.
    until: i64,
}

impl TlsClient {
    /// A client for `spec` (none: the system roots only) speaking `alpn` (`http/1.1`, `h2`),
    /// its client certificate read from `files` (the operator's directory, nowhere else).
    ///
    /// # Errors
    /// A stable word and what is wrong, when the CA or the client certificate files are unusable.
    pub fn new(spec: Option<&TlsSpec>, alpn: &[u8], files: &ClientFiles) -> Result<Self, String> {
        let spec = spec.cloned().unwrap_or_default();
        let provider = provider();
        let mut roots = system_roots();
        if let Some(pem) = &spec.ca_pem {
            for certificate in parse_certificates(pem.as_bytes()).map_err(|e| format!("tls_config: ca_pem: {e}"))? {
                roots.add(certificate).map_err(|e| format!("tls_config: ca_pem: {e}"))?;
            }
        }
        let inner: Arc<dyn ServerCertVerifier> = if spec.insecure_skip_verify {
            Arc::new(Unverified { provider: Arc::clone(&provider) })
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("tls_config: {e}"))?
        };
        let recording = Arc::new(Recording {
            inner,
            seen: Mutex::default(),
            verified: (!spec.insecure_skip_verify).then(Mutex::default),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls_config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&recording) as Arc<dyn ServerCertVerifier>);
        let mut config = match (&spec.client_cert_file, &spec.client_key_file) {
            (Some(cert), Some(key)) => {
                // Read per task, never stored: a rotated key is picked up when the task restarts.
                // Only from the operator's directory, bounded (see `ClientFiles::read`).
                let chain = files
                    .read(cert)
                    .map_err(|why| format!("tls_client_certificate: {why}"))
                    .and_then(|b| parse_certificates(&b).map_err(|e| format!("tls_client_certificate: {e}")))?;
                let key = files
                    .read(key)
                    .map_err(|why| format!("tls_client_certificate: {why}"))
                    .and_then(|b| parse_private_key(&b).map_err(|e| format!("tls_client_certificate: {e}")))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("tls_client_certificate: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        // A fresh session per probe, as blackbox_exporter does: every probe sees (and verifies)
        // the certificate the server presents now.
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![alpn.to_vec()];
        let server_name = match &spec.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| "tls_config: server_name".to_string())?),
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            kept: Mutex::default(),
            recording,
            server_name,
            insecure: spec.insecure_skip_verify,
        })
    }

    /// The name to verify for an instance whose host is `host`.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|_| "tls_config: the host is not a valid server name".to_string()),
        }
    }

    /// The connector for a probe. It records the chain the server presents, even when
    /// verification then fails (an expired certificate's date is worth showing): see
    /// [`TlsClient::take_presented`].
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
    }

    /// What the server presented during the probe that just ended (`None`: no chain came, or
    /// no readable one), clearing it for the next.
    pub fn take_presented(&self) -> Option<Presented> {
        self.recording.seen.lock().ok().and_then(|mut seen| seen.current.take())
    }

    /// The connection the last probe kept, while it may serve ([`crate::protocols::Kept::fresh`]).
    pub(crate) fn take_kept(&self) -> Option<Box<crate::protocols::Kept>> {
        self.kept.lock().ok()?.take().filter(|kept| kept.fresh())
    }

    /// Keeps `kept` for the next probe.
    pub(crate) fn keep(&self, kept: Box<crate::protocols::Kept>) {
        if let Ok(mut slot) = self.kept.lock() {
            *slot = Some(kept);
        }
    }

    /// Starts from what the instance presented before (as recorded), which saves parsing its
    /// chain again on the first probe when the certificate is the same.
    pub fn remember(&self, presented: Option<Presented>) {
        if let Ok(mut seen) = self.recording.seen.lock() {
            seen.last = presented;
        }
    }
}

/// Records the presented chain, then lets `inner` judge it (or remembers that it already did).
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Mutex<Seen>,
    /// The last chain `inner` accepted; `None` when verification is off.
    verified: Option<Mutex<Option<Verified>>>,
}

/// The chain of the probe in progress, and the last one parsed.
#[derive(Debug, Default)]
struct Seen {
    current: Option<Presented>,
    last: Option<Presented>,
}

impl Recording {
    /// Stores what the server presented; the chain is parsed only when its leaf is new.
    fn record(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let sha256 = hex(&Sha256::digest(end_entity.as_ref()));
        let Ok(mut seen) = self.seen.lock() else { return };
        let presented = match &seen.last {
            Some(last) if last.sha256 == sha256 => last.clone(),
            _ => {
                let earliest = std::iter::once(end_entity).chain(intermediates).filter_map(|c| not_after(c)).min();
                let Some(expires_at) = earliest else { return };
                Presented { expires_at, sha256 }
            }
        };
        seen.last = Some(presented.clone());
        seen.current = Some(presented);
    }
}

/// The cache key of a chain: its certificates' bytes, each length-prefixed.
fn chain_digest(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for certificate in std::iter::once(end_entity).chain(intermediates) {
        digest.update((certificate.len() as u64).to_be_bytes());
        digest.update(certificate.as_ref());
    }
    digest.finalize().into()
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.record(end_entity, intermediates);
        let Some(cache) = &self.verified else {
            return self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        };
        let chain = chain_digest(end_entity, intermediates);
        let name = server_name.to_str();
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let hit = cache.lock().is_ok_and(|cached| {
            cached.as_ref().is_some_and(|c| c.chain == chain && c.server_name == name && now_secs < c.until)
        });
        if hit {
            return Ok(ServerCertVerified::assertion());
        }
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        // The whole chain's earliest expiry, read afresh (not the recorded one, which is
        // reused while the leaf stays the same).
        let until = std::iter::once(end_entity).chain(intermediates).filter_map(|c| not_after(c)).min();
        if let Ok(mut cached) = cache.lock() {
            *cached = match (&verdict, until) {
                (Ok(_), Some(until)) => Some(Verified { chain, server_name: name.into_owned(), until }),
                _ => None,
            };
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked (the server must hold the key of the certificate it shows).
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The stable word for a TLS failure somewhere in `error`'s chain (see
/// [`caracal_core::tls::reason`]).
pub use caracal_core::tls::reason;

#[cfg(test)]
mod tests {
    use super::*;
    use caracal_testkit::pki::Pki;

    fn der(path: &std::path::Path) -> CertificateDer<'static> {
        let pem = std::fs::read(path).expect("read the certificate");
        parse_certificates(&pem).expect("a certificate").remove(0)
    }

    /// The cache answers only for the chain, name and time it was verified for: anything else
    /// goes to the real verifier, whose refusal is what the probe reports.
    #[test]
    fn a_verified_chain_is_remembered_only_for_the_same_chain_name_and_validity() {
        let mut trusted = Pki::new().expect("a CA");
        let mut other = Pki::new().expect("another CA");
        let leaf = trusted.server("DNS:localhost", 30, None).expect("a leaf");
        let stranger = other.server("DNS:localhost", 30, None).expect("a leaf from another CA");
        let spec = TlsSpec { ca_pem: Some(trusted.ca.pem().expect("CA PEM")), ..TlsSpec::default() };
        let client = TlsClient::new(Some(&spec), b"http/1.1", &ClientFiles::default()).expect("a client");
        let verifier = &client.recording;
        let localhost = ServerName::try_from("localhost").expect("a name");
        let now = UnixTime::now();
        let verify = |cert: &CertificateDer<'_>, name: &ServerName<'_>, at: UnixTime| {
            verifier.verify_server_cert(cert, &[], name, &[], at).map(|_| ()).map_err(|e| {
                let word = reason(&e).unwrap_or("other");
                word.to_string()
            })
        };
        let leaf = der(&leaf.cert);
        assert_eq!(verify(&leaf, &localhost, now), Ok(()));
        assert!(verifier.verified.as_ref().and_then(|v| v.lock().ok()?.clone()).is_some(), "remembered");
        assert_eq!(verify(&leaf, &localhost, now), Ok(()), "answered from the cache");
        let elsewhere = ServerName::try_from("shop.test").expect("a name");
        assert_eq!(verify(&leaf, &elsewhere, now), Err("hostname_mismatch".into()));
        assert_eq!(verify(&der(&stranger.cert), &localhost, now), Err("unknown_issuer".into()));
        let after_expiry = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 31 * 86_400));
        assert_eq!(verify(&leaf, &localhost, now), Ok(()));
        assert_eq!(verify(&leaf, &localhost, after_expiry), Err("certificate_expired".into()));
        assert_eq!(client.take_presented().map(|p| p.sha256), Some(hex(&Sha256::digest(leaf.as_ref()))));
        assert_eq!(client.take_presented(), None, "taken once");
    }
}
