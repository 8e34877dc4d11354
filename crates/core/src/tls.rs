//! Stable words for TLS failures, shared by the prober (HTTPS and gRPC targets) and the
//! `redis:tls` check: `certificate_expired`, `unknown_issuer`, `hostname_mismatch`, or
//! `tls_handshake` for any other.

use rustls::CertificateError;

/// The word for a TLS failure somewhere in `error`'s chain, if it is one.
///
/// Libraries wrap rustls's error differently (an `io::Error` around it, an `Arc` around that),
/// so the chain is searched for it by type first, and by rustls's own wording second.
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
        if let Some(word) = reason_in_text(&e.to_string()) {
            return Some(word);
        }
        next = e.source();
    }
    None
}

/// rustls's `Display` of a certificate or handshake error, for chains that hide its type.
fn reason_in_text(text: &str) -> Option<&'static str> {
    if !text.contains("invalid peer certificate")
        && !text.contains("received fatal alert")
        && !text.contains("peer is incompatible")
    {
        return None;
    }
    Some(if text.contains("Expired") {
        "certificate_expired"
    } else if text.contains("UnknownIssuer") {
        "unknown_issuer"
    } else if text.contains("NotValidForName") {
        "hostname_mismatch"
    } else {
        "tls_handshake"
    })
}
