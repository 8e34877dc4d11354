//! TLS for probes: a client per target (system roots plus the target's CA, its client
//! certificate when it has one), a fresh session per probe, the chain each server presents
//! (for its expiry), and handshake failures named in stable words.

use std::sync::{Arc, LazyLock, Mutex};

use caracal_store::tls::{TlsSpec, not_after, parse_certificates, parse_private_key};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// The certificate a server presented: the earliest `notAfter` of its chain and the leaf's
/// SHA-256 (hex), which tells a renewal from the same certificate seen again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
    /// The leaf certificate's SHA-256, hex.
    pub sha256: String,
}

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

/// A target's TLS client: built once per probe task, cloned cheaply per probe.
#[derive(Debug)]
pub struct TlsClient {
    config: rustls::ClientConfig,
    verifier: Arc<dyn ServerCertVerifier>,
    server_name: Option<ServerName<'static>>,
    /// Whether verification is off (`insecure_skip_verify`).
    pub insecure: bool,
}

impl TlsClient {
    /// A client for `spec` (none: the system roots only) speaking `alpn` (`http/1.1`, `h2`).
    ///
    /// # Errors
    /// A stable word and what is wrong, when the CA or the client certificate files are unusable.
    pub fn new(spec: Option<&TlsSpec>, alpn: &[u8]) -> Result<Self, String> {
        let spec = spec.cloned().unwrap_or_default();
        let provider = provider();
        let mut roots = system_roots();
        if let Some(pem) = &spec.ca_pem {
            for certificate in parse_certificates(pem.as_bytes()).map_err(|e| format!("tls_config: ca_pem: {e}"))? {
                roots.add(certificate).map_err(|e| format!("tls_config: ca_pem: {e}"))?;
            }
        }
        let verifier: Arc<dyn ServerCertVerifier> = if spec.insecure_skip_verify {
            Arc::new(Unverified { provider: Arc::clone(&provider) })
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("tls_config: {e}"))?
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls_config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&verifier));
        let mut config = match (&spec.client_cert_file, &spec.client_key_file) {
            (Some(cert), Some(key)) => {
                // Read per task, never stored: a rotated key is picked up when the task restarts.
                let chain = std::fs::read(cert)
                    .map_err(|_| format!("tls_client_certificate: {cert} cannot be read"))
                    .and_then(|b| {
                    parse_certificates(&b).map_err(|e| format!("tls_client_certificate: {cert}: {e}"))
                })?;
                let key = std::fs::read(key)
                    .map_err(|_| format!("tls_client_certificate: {key} cannot be read"))
                    .and_then(|b| parse_private_key(&b).map_err(|e| format!("tls_client_certificate: {key}: {e}")))?;
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
        Ok(Self { config, verifier, server_name, insecure: spec.insecure_skip_verify })
    }

    /// The name to verify for an instance whose host is `host`.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|_| "tls_config: the host is not a valid server name".to_string()),
        }
    }

    /// A connector for one probe: it records the chain the server presents into `seen`, even
    /// when verification then fails (an expired certificate's date is worth showing).
    /// `previous` saves parsing the chain when the leaf is the one seen last time.
    pub fn connector(
        &self,
        seen: Arc<Mutex<Option<Presented>>>,
        previous: Option<Presented>,
    ) -> tokio_rustls::TlsConnector {
        let mut config = self.config.clone();
        config.dangerous().set_certificate_verifier(Arc::new(Recording {
            inner: Arc::clone(&self.verifier),
            seen,
            previous,
        }));
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Records the presented chain, then lets `inner` judge it.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Option<Presented>>>,
    previous: Option<Presented>,
}

impl Recording {
    fn record(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let sha256 = hex(&Sha256::digest(end_entity.as_ref()));
        let presented = match &self.previous {
            Some(previous) if previous.sha256 == sha256 => previous.clone(),
            _ => {
                let earliest = std::iter::once(end_entity).chain(intermediates).filter_map(|c| not_after(c)).min();
                let Some(expires_at) = earliest else { return };
                Presented { expires_at, sha256 }
            }
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(presented);
        }
    }
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
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// The stable word for a TLS failure somewhere in `error`'s chain, if it is one:
/// `certificate_expired`, `unknown_issuer`, `hostname_mismatch` or `tls_handshake`.
pub fn reason(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Some(match tls {
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => "certificate_expired",
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_issuer",
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ) => "hostname_mismatch",
                _ => "tls_handshake",
            });
        }
        next = e.source();
    }
    None
}
