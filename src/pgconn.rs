//! Ordinary (non-replication) SQL connections, with libpq's `sslmode` meanings over rustls.
//!
//! The change stream has its own connection ([`crate::source`]); everything else walpoints says
//! to a server (the store, setup on the source, the heartbeat) goes through [`connect`], which
//! classifies failures into [`ConnectError::Transient`] (retry with backoff) and
//! [`ConnectError::Definite`] (stop and tell the operator).
//!
//! `sslmode` as libpq reads it:
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
//! matched against the certificate's IP address SANs. Over a Unix socket there is no TLS, as
//! with libpq. Passwords never appear in an error: messages are built from the redacted
//! [`ConnUrl`] display and the server's or library's own text, neither of which holds it.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::error::SqlState;

use crate::config::{ConnUrl, SslMode};

/// How long opening a connection (TCP, TLS, authentication) may take before it is a transient
/// failure; without it a black-holed host would hang for the kernel's two minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection failed, split by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Server unreachable / restarting / too many connections: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Bad password, TLS refused or certificate invalid, database missing, bad sslrootcert file:
    /// stop and tell the operator.
    #[error("{0}")]
    Definite(String),
    /// The database does not exist (SQLSTATE 3D000): definite, but callers may know why (the
    /// store before `setup`) and say something more useful.
    #[error("{0}")]
    NoDatabase(String),
}

impl ConnectError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Transient(_))
    }

    /// Wraps a tokio-postgres error (of a connection or a query) with `context`, classified by
    /// [`is_transient`].
    pub fn from_pg(context: impl std::fmt::Display, e: &tokio_postgres::Error) -> ConnectError {
        let message = format!("{context}: {}", error_text(e));
        if is_transient(e) {
            ConnectError::Transient(message)
        } else {
            ConnectError::Definite(message)
        }
    }
}

/// Connects to `url` as `application_name`, spawns the connection driver on the current tokio
/// runtime (logging its error at debug level when it ends), sets session `TimeZone=UTC`, and
/// returns the client.
///
/// Panics if called outside a tokio runtime.
pub async fn connect(
    url: &ConnUrl,
    application_name: &str,
) -> Result<tokio_postgres::Client, ConnectError> {
    let unix_socket = url.host.starts_with('/');
    let mut config = url.to_pg_config();
    config
        .application_name(application_name)
        .connect_timeout(CONNECT_TIMEOUT);
    let context = format!("cannot connect to {url} as {application_name}");
    // libpq does not use TLS over a Unix socket either.
    let tls = if unix_socket { None } else { tls_config(url)? };
    let client = match tls {
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, conn) = config
                .connect(tls)
                .await
                .map_err(|e| connect_error(&context, url, &e))?;
            spawn_driver(url, conn);
            client
        }
        None => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| connect_error(&context, url, &e))?;
            spawn_driver(url, conn);
            client
        }
    };
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .map_err(|e| ConnectError::from_pg(format!("{context}: setting TimeZone"), &e))?;
    Ok(client)
}

/// Classifies a tokio-postgres error (of a connection or of a query): transient when the
/// connection closed or failed on I/O, or the server said SQLSTATE class 08 (connection
/// exception), 57P01/57P02/57P03 (admin or crash shutdown, cannot connect now), 53300 (too many
/// connections), or 40001/40P01 (serialization failure, deadlock: retry the transaction).
/// Everything else (authentication, a refused or invalid certificate, a missing database, SQL
/// errors) is definite.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return is_transient_sqlstate(code);
    }
    if e.is_closed() {
        return true;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return is_transient_io(io);
        }
        source = s.source();
    }
    // `connect_timeout` elapsed: the error has no cause, only this text.
    e.to_string() == "timeout waiting for server"
}

/// The whole text of a tokio-postgres error: its own `Display` is only the kind ("db error"),
/// the server's message and the I/O or TLS cause are in its sources.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) {
            let _ = write!(text, ": {part}");
        }
        source = s.source();
    }
    text
}

fn is_transient_sqlstate(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(code)
}

/// Network trouble is transient; a TLS failure (rustls' error inside the `io::Error`) or bad
/// data or input is not.
fn is_transient_io(e: &std::io::Error) -> bool {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return false;
    }
    !matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::Unsupported
            | std::io::ErrorKind::PermissionDenied
    )
}

/// True when the error (or its cause) comes from the TLS handshake's certificate checks.
fn is_tls_error(e: &tokio_postgres::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn connect_error(context: &str, url: &ConnUrl, e: &tokio_postgres::Error) -> ConnectError {
    if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
        return ConnectError::NoDatabase(format!("{context}: {}", error_text(e)));
    }
    let mut err = ConnectError::from_pg(context, e);
    if let (ConnectError::Definite(message), Some(ca)) = (&mut err, &url.sslrootcert) {
        if is_tls_error(e) {
            let _ = write!(message, " (sslrootcert {})", ca.display());
        }
    }
    err
}

fn spawn_driver<F>(url: &ConnUrl, conn: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let url = url.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%url, error = %error_text(&e), "SQL connection ended");
        }
    });
}

/// The rustls configuration `url.sslmode` asks for; `None` for `disable`.
fn tls_config(url: &ConnUrl) -> Result<Option<ClientConfig>, ConnectError> {
    if url.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let definite = |message: String| ConnectError::Definite(format!("{url}: {message}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| definite(format!("TLS setup: {e}")))?;
    let roots = match &url.sslrootcert {
        Some(path) => Some(load_roots(path).map_err(definite)?),
        None => None,
    };
    let config = match (url.sslmode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(definite(format!(
                "sslmode={} needs sslrootcert (the CA certificate file to verify the server \
                 against)",
                url.sslmode
            )))
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
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read sslrootcert {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {shown} holds no usable PEM certificate"
        ));
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
    fn sqlstates_are_classified() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::PROTOCOL_VIOLATION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ] {
            assert!(is_transient_sqlstate(&code), "{code:?}");
        }
        for code in [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::SYNTAX_ERROR,
            SqlState::UNIQUE_VIOLATION,
            SqlState::QUERY_CANCELED,
            SqlState::DISK_FULL,
        ] {
            assert!(!is_transient_sqlstate(&code), "{code:?}");
        }
    }

    #[test]
    fn io_errors_are_transient_but_tls_failures_are_not() {
        use std::io::{Error, ErrorKind};
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
        ] {
            assert!(is_transient_io(&Error::from(kind)), "{kind:?}");
        }
        let bad_cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(!is_transient_io(&Error::other(bad_cert)));
        assert!(!is_transient_io(&Error::new(
            ErrorKind::InvalidData,
            "garbage"
        )));
    }

    #[tokio::test]
    async fn verify_modes_need_sslrootcert() {
        for mode in ["verify-ca", "verify-full"] {
            let u = url(&format!(
                "postgres://u:hunter2@127.0.0.1:1/db?sslmode={mode}"
            ));
            let err = connect(&u, "test").await.unwrap_err();
            assert!(!err.is_transient());
            let text = err.to_string();
            assert!(text.contains("needs sslrootcert"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_bad_sslrootcert_file_is_definite_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, why) in [(&missing, "cannot read"), (&empty, "no usable PEM")] {
            let u = url(&format!(
                "postgres://u@127.0.0.1:1/db?sslmode=require&sslrootcert={}",
                path.display()
            ));
            let err = connect(&u, "test").await.unwrap_err();
            assert!(!err.is_transient());
            let text = err.to_string();
            assert!(
                text.contains(why) && text.contains(&path.display().to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn disable_needs_no_tls_config() {
        // A root certificate is not even read without TLS.
        let u = url("postgres://u@127.0.0.1:1/db?sslmode=disable&sslrootcert=/nonexistent.crt");
        assert!(tls_config(&u).unwrap().is_none());
        let u = url("postgres://u@127.0.0.1:1/db?sslmode=require");
        assert!(tls_config(&u).unwrap().is_some());
    }
}
