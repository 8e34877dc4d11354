//! How a target's TLS instances (`https://`, `grpcs://`) are verified, as the target declares
//! it (`"tls": {...}`), and the certificate facts every writer and the prober share.
//!
//! CA certificates are public and live in the registry; a client certificate and its key stay
//! files mounted where the coordinator runs, named here by path and never read into the store.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::target::Invalid;

/// Longest `ca_pem` accepted, in bytes: a bundle of a dozen or more CAs, and a whole target
/// document still fits the API's 64 KiB body limit.
pub const MAX_CA_PEM: usize = 48 * 1024;
/// A TLS server name: a DNS name or an IP address.
pub const SERVER_NAME_PATTERN: &str = "^[A-Za-z0-9.:_-]{1,253}$";

/// A target's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM CA certificates trusted in addition to the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 49_152)]
    pub ca_pem: Option<String>,
    /// The name the certificate must be valid for, when not the instance's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9.:_-]{1,253}$")]
    pub server_name: Option<String>,
    /// A PEM client certificate (chain) file, for servers that require one (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub client_cert_file: Option<String>,
    /// Its PEM private key file; never read into the registry or echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub client_key_file: Option<String>,
    /// Skip verifying the server's certificate (the handshake still happens; expiry is still
    /// recorded). Shown in `/v1/status` and on the status page, and counted.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl TlsSpec {
    /// Checks every field, naming the first bad one (`tls.ca_pem`). The client certificate and
    /// key must be readable PEM files where this runs (the API and control see the same
    /// mounts as the coordinator).
    ///
    /// # Errors
    /// [`Invalid`].
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(pem) = &self.ca_pem {
            if pem.len() > MAX_CA_PEM {
                return Err(Invalid::new("tls.ca_pem", format!("at most {MAX_CA_PEM} bytes")));
            }
            parse_certificates(pem.as_bytes()).map_err(|why| Invalid::new("tls.ca_pem", why))?;
        }
        if let Some(name) = &self.server_name
            && (name.is_empty()
                || name.len() > 253
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)))
        {
            return Err(Invalid::new("tls.server_name", "a DNS name or an IP address"));
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(Invalid::new("tls.client_key_file", "required with `client_cert_file`"));
            }
            (None, Some(_)) => {
                return Err(Invalid::new("tls.client_cert_file", "required with `client_key_file`"));
            }
            (Some(cert), Some(key)) => {
                let bytes = read_file(cert).map_err(|why| Invalid::new("tls.client_cert_file", why))?;
                parse_certificates(&bytes).map_err(|why| Invalid::new("tls.client_cert_file", why))?;
                let bytes = read_file(key).map_err(|why| Invalid::new("tls.client_key_file", why))?;
                parse_private_key(&bytes).map_err(|why| Invalid::new("tls.client_key_file", why))?;
            }
        }
        Ok(())
    }
}

/// `tls` as a JSON object (or null) only: serde's derive would also take a list for a struct
/// whose fields are all optional (`[null]`), which the schema does not allow.
pub(crate) fn object<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<TlsSpec>, D::Error> {
    struct Object;
    impl<'de> serde::de::Visitor<'de> for Object {
        type Value = Option<TlsSpec>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            TlsSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_option(Object)
}

/// Reads an absolute path, saying why not in words an operator can act on (no contents).
fn read_file(path: &str) -> Result<Vec<u8>, String> {
    if !path.starts_with('/') {
        return Err("an absolute path".into());
    }
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{path} does not exist"),
        std::io::ErrorKind::PermissionDenied => format!("{path} is not readable"),
        _ => format!("{path} cannot be read"),
    })
}

/// The X.509 certificates in PEM `bytes`: at least one, each a parseable certificate.
///
/// # Errors
/// Why not, in a sentence.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut certificates = Vec::new();
    for (i, item) in rustls_pki_types::CertificateDer::pem_slice_iter(bytes).enumerate() {
        let der = item.map_err(|_| format!("PEM block {} is malformed", i + 1))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|_| format!("PEM block {} is not an X.509 certificate", i + 1))?;
        certificates.push(der);
    }
    if certificates.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    Ok(certificates)
}

/// The private key in PEM `bytes` (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// Why not, without the key's contents.
pub fn parse_private_key(bytes: &[u8]) -> Result<rustls_pki_types::PrivateKeyDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(bytes).map_err(|_| "no PEM private key found".into())
}

/// A certificate's `notAfter`, in seconds since the Unix epoch; `None` when `der` does not parse.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_an_object_or_null() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[serde(default, deserialize_with = "object")]
            tls: Option<TlsSpec>,
        }
        let read = |v: serde_json::Value| serde_json::from_value::<Holder>(v).map(|h| h.tls);
        assert!(read(serde_json::json!({"tls": [null, null]})).is_err(), "a list is not an object");
        assert!(read(serde_json::json!({"tls": []})).is_err());
        assert_eq!(read(serde_json::json!({"tls": null})).ok(), Some(None));
        assert_eq!(read(serde_json::json!({})).ok(), Some(None));
        let set = read(serde_json::json!({"tls": {"insecure_skip_verify": true}})).expect("an object");
        assert_eq!(set.map(|t| t.insecure_skip_verify), Some(true));
    }

    #[test]
    fn bad_pem_and_half_a_client_pair_are_named() {
        let tls = TlsSpec { ca_pem: Some("not a certificate".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("no PEM").field, "tls.ca_pem");
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let tls = TlsSpec { ca_pem: Some(garbled.into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("not X.509").field, "tls.ca_pem");
        let tls = TlsSpec { client_cert_file: Some("/etc/hostname".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("no key").field, "tls.client_key_file");
        let tls = TlsSpec {
            client_cert_file: Some("/nonexistent/cert.pem".into()),
            client_key_file: Some("/nonexistent/key.pem".into()),
            ..TlsSpec::default()
        };
        let invalid = tls.validate().expect_err("missing file");
        assert_eq!(invalid.field, "tls.client_cert_file");
        assert!(invalid.message.contains("does not exist"), "{invalid}");
        let tls = TlsSpec { server_name: Some("a b".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("bad name").field, "tls.server_name");
        assert!(TlsSpec { insecure_skip_verify: true, ..TlsSpec::default() }.validate().is_ok());
    }
}
