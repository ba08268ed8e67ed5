//! TLS for ordinary SQL connections, with libpq's `sslmode` meanings over rustls.
//!
//! | sslmode       | TLS                      | certificate check                               |
//! |---------------|--------------------------|-------------------------------------------------|
//! | `disable`     | never                    | -                                               |
//! | `prefer`      | if the server offers it  | none (the chain, if `sslrootcert` is given)     |
//! | `require`     | always                   | none (the chain, if `sslrootcert` is given)     |
//! | `verify-ca`   | always                   | chains to `sslrootcert`                         |
//! | `verify-full` | always                   | chains to `sslrootcert` and names the host      |
//!
//! `verify-ca` and `verify-full` need `sslrootcert` (libpq would fall back to
//! `~/.postgresql/root.crt`; walpoints wants the file named). A host that is an IP address is
//! matched against the certificate's IP address SANs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ConnUrl, SslMode};

/// Why the TLS settings of a URL cannot be used; definite: the URL or the file must change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused its own default configuration (a build problem, not the operator's).
    #[error("TLS setup: {0}")]
    Setup(#[source] rustls::Error),
    /// `sslmode=verify-ca` or `verify-full` without `sslrootcert`.
    #[error(
        "sslmode={0} needs sslrootcert (the CA certificate file to verify the server against)"
    )]
    NeedsRootCert(SslMode),
    /// The `sslrootcert` file cannot be read as PEM.
    #[error("cannot read sslrootcert {}: {source}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// The `sslrootcert` file holds no certificate rustls can use.
    #[error("sslrootcert {} holds no usable PEM certificate", .0.display())]
    NoCertificate(PathBuf),
}

/// The rustls configuration `url.sslmode` asks for; `None` for `disable`.
pub(super) fn client_config(url: &ConnUrl) -> Result<Option<ClientConfig>, TlsError> {
    if url.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let roots = match &url.sslrootcert {
        Some(path) => Some(load_roots(path)?),
        None => None,
    };
    let config = match (url.sslmode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::NeedsRootCert(url.sslmode))
        }
        // Chain and host name: rustls' own WebPKI verifier.
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
        // verify-ca; prefer and require (disable returned above) verify the chain too when given
        // a root certificate, as libpq does.
        (_, roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                roots: roots.map(Arc::new),
                provider,
            })),
    };
    Ok(Some(config.with_no_client_auth()))
}

/// The certificates in the PEM file `path`; an unreadable file or one without a certificate is
/// an error.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(roots)
}

/// The server certificate checks rustls' WebPKI verifier cannot be told to make: with `roots`,
/// the certificate must chain to one of them but may name any host (`verify-ca`); without, it is
/// not checked at all (`prefer`/`require`: encryption against passive eavesdropping only).
/// Either way the handshake signatures are verified, so the server holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ConnUrl {
        s.parse().unwrap()
    }

    #[test]
    fn disable_needs_no_tls_config() {
        // A root certificate is not even read without TLS.
        let u = url("postgres://u@127.0.0.1:1/db?sslmode=disable&sslrootcert=/nonexistent.crt");
        assert!(client_config(&u).unwrap().is_none());
        let u = url("postgres://u@127.0.0.1:1/db?sslmode=require");
        assert!(client_config(&u).unwrap().is_some());
    }
}
