//! How a target's TLS instances (`https://`, `grpcs://`) are verified, as the target declares
//! it (`"tls": {...}`), and the certificate facts every writer and the prober share.
//!
//! CA certificates are public and live in the registry; a client certificate and its key stay
//! files in a directory the operator mounts where the coordinator runs (`ClientFiles`), named
//! here and never read into the store. Nothing outside that directory is ever read.

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
    /// PEM CA certificates (one or more `-----BEGIN CERTIFICATE-----` blocks) trusted in
    /// addition to the system's roots. An empty (or blank) string is the same as none: a
    /// template that renders `ca_pem: ""` for "no CA of my own" means just that.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "blank_is_none")]
    #[schema(max_length = 49_152)]
    pub ca_pem: Option<String>,
    /// The name the certificate must be valid for, when not the instance's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9.:_-]{1,253}$")]
    pub server_name: Option<String>,
    /// A PEM client certificate (chain) file, for servers that require one (mTLS): a name in
    /// the operator's client directory (`coordinator.tls.client_dir`), or an absolute path
    /// inside it; refused when no directory is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096)]
    pub client_cert_file: Option<String>,
    /// Its PEM private key file, in the same directory; never read into the registry or echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096)]
    pub client_key_file: Option<String>,
    /// Skip verifying the server's certificate (the handshake still happens; expiry is still
    /// recorded). Shown in `/v1/status` and on the status page, and counted.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl TlsSpec {
    /// Checks every field's shape, naming the first bad one (`tls.ca_pem`); reads no file
    /// (see [`TlsSpec::check_client_files`]).
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
                for (field, value) in [("tls.client_cert_file", cert), ("tls.client_key_file", key)] {
                    if value.is_empty() || value.len() > 4096 || value.contains('\0') {
                        return Err(Invalid::new(field, "a file name of 1 to 4096 characters"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the client certificate and key name readable PEM files in the operator's client
    /// directory (see [`ClientFiles`]). This reads files: call it off the async workers
    /// (`spawn_blocking`), as the API does.
    ///
    /// # Errors
    /// [`Invalid`] naming the field; one text for a file outside the directory, missing or
    /// unreadable, so an answer tells nothing about the server's files.
    pub fn check_client_files(&self, files: &ClientFiles) -> Result<(), Invalid> {
        let (Some(cert), Some(key)) = (&self.client_cert_file, &self.client_key_file) else { return Ok(()) };
        let bytes = files.read(cert).map_err(|why| Invalid::new("tls.client_cert_file", why))?;
        parse_certificates(&bytes).map_err(|why| Invalid::new("tls.client_cert_file", why))?;
        let bytes = files.read(key).map_err(|why| Invalid::new("tls.client_key_file", why))?;
        parse_private_key(&bytes).map_err(|why| Invalid::new("tls.client_key_file", why))?;
        Ok(())
    }
}

/// Largest client certificate or key file read, in bytes.
pub const MAX_CLIENT_FILE: u64 = 64 * 1024;

/// The answer for a client file that is outside the directory, missing, unreadable, not a
/// regular file or too large: one text for all, so nothing about the server's files leaks.
pub const CLIENT_FILE_REFUSED: &str = "must name a readable regular file of at most 64 KiB inside the client certificate directory (coordinator.tls.client_dir)";

/// Where client certificates and keys may be read from: a directory the operator mounts
/// (`coordinator.tls.client_dir`). Unset, targets cannot name client certificates at all.
/// Every service that checks or uses them (the API, control, the coordinator) reads the same
/// setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ClientFiles {
    /// The directory; a target's `client_cert_file` and `client_key_file` are names inside it
    /// (or absolute paths that resolve inside it).
    pub client_dir: Option<std::path::PathBuf>,
}

impl ClientFiles {
    /// Reads the file `named` names: resolved inside the directory with every symlink followed
    /// (a link that leads out is refused), a regular file (not a FIFO or a device), at most
    /// [`MAX_CLIENT_FILE`] bytes.
    ///
    /// # Errors
    /// A sentence to answer with: [`CLIENT_FILE_REFUSED`], or that the directory is not set.
    pub fn read(&self, named: &str) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let Some(dir) = &self.client_dir else {
            return Err("client certificates are not enabled: an operator sets coordinator.tls.client_dir".into());
        };
        let refused = || CLIENT_FILE_REFUSED.to_string();
        let dir = std::fs::canonicalize(dir).map_err(|_| refused())?;
        let path = std::fs::canonicalize(dir.join(named)).map_err(|_| refused())?;
        if !path.starts_with(&dir) {
            return Err(refused());
        }
        let metadata = std::fs::metadata(&path).map_err(|_| refused())?;
        if !metadata.is_file() || metadata.len() > MAX_CLIENT_FILE {
            return Err(refused());
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_CLIENT_FILE + 1).read_to_end(&mut bytes))
            .map_err(|_| refused())?;
        if bytes.len() as u64 > MAX_CLIENT_FILE {
            return Err(refused());
        }
        Ok(bytes)
    }
}

/// `tls` as a JSON object (or null) only: serde's derive would also take a list for a struct
/// whose fields are all optional (`[null]`), which the schema does not allow.
/// An optional string where a blank one means none.
fn blank_is_none<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.trim().is_empty()))
}

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
        for blank in ["", "  \n"] {
            let tls: TlsSpec = serde_json::from_value(serde_json::json!({ "ca_pem": blank })).expect("blank");
            assert_eq!(tls, TlsSpec::default(), "a blank ca_pem is none");
            assert_eq!(tls.validate(), Ok(()));
        }
        let tls = TlsSpec { ca_pem: Some("not a certificate".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("no PEM").field, "tls.ca_pem");
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let tls = TlsSpec { ca_pem: Some(garbled.into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("not X.509").field, "tls.ca_pem");
        let tls = TlsSpec { client_cert_file: Some("client.pem".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("no key").field, "tls.client_key_file");
        let tls = TlsSpec {
            client_cert_file: Some(String::new()),
            client_key_file: Some("key.pem".into()),
            ..TlsSpec::default()
        };
        assert_eq!(tls.validate().expect_err("empty").field, "tls.client_cert_file");
        let tls = TlsSpec { server_name: Some("a b".into()), ..TlsSpec::default() };
        assert_eq!(tls.validate().expect_err("bad name").field, "tls.server_name");
        assert!(TlsSpec { insecure_skip_verify: true, ..TlsSpec::default() }.validate().is_ok());
    }

    /// Outside the directory, missing, a device, a FIFO, too large, a link leading out: one
    /// answer for all; unset, nothing is read at all.
    #[test]
    fn client_files_come_only_from_the_directory() {
        let dir = tempfile::tempdir().expect("a directory");
        let outside = tempfile::tempdir().expect("another");
        std::fs::write(dir.path().join("ok.pem"), "inside").expect("write");
        std::fs::write(dir.path().join("big.pem"), vec![b'a'; 64 * 1024 + 1]).expect("write");
        std::fs::write(outside.path().join("secret.pem"), "outside").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret.pem"), dir.path().join("leak.pem")).expect("link");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.pem")).expect("link");
        std::os::unix::fs::symlink("ok.pem", dir.path().join("alias.pem")).expect("link");
        let fifo = dir.path().join("fifo.pem");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        let files = ClientFiles { client_dir: Some(dir.path().to_path_buf()) };
        assert_eq!(files.read("ok.pem").as_deref(), Ok(&b"inside"[..]));
        assert_eq!(files.read("alias.pem").as_deref(), Ok(&b"inside"[..]), "a link inside stays inside");
        let absolute = dir.path().join("ok.pem").display().to_string();
        assert_eq!(files.read(&absolute).as_deref(), Ok(&b"inside"[..]), "an absolute path inside");
        let secret = outside.path().join("secret.pem").display().to_string();
        for refused in [
            "/etc/passwd",
            "/nonexistent/x.pem",
            "missing.pem",
            "../x",
            "leak.pem",
            "zero.pem",
            "/dev/zero",
            "fifo.pem",
            "big.pem",
            &secret,
        ] {
            assert_eq!(files.read(refused), Err(CLIENT_FILE_REFUSED.to_string()), "{refused}");
        }
        let unset = ClientFiles::default().read("ok.pem").expect_err("not enabled");
        assert!(unset.contains("coordinator.tls.client_dir"), "{unset}");
    }
}
