//! Ordinary (non-replication) SQL connections: the store, the checks on the source, the
//! heartbeat, the API's pool.
//!
//! The change stream has its own connection (`replication.rs`); everything else walpoints
//! says to a server goes through [`connect`], with libpq's `sslmode` (`tls.rs`) and a
//! timeout, and every failure comes back as a [`ConnectError`] that says what the caller must
//! do: [`ConnectError::Unavailable`] retries with backoff, the others stop and tell the
//! operator. Over a Unix socket there is no TLS, as with libpq. Passwords never appear in an
//! error: messages are built from the redacted [`ConnUrl`] display and the server's or
//! library's own text, neither of which holds it.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::tls::{self, TlsError};
use crate::config::{ConnUrl, TargetSession};

/// How long opening a connection (TCP, TLS, authentication) may take before it is a transient
/// failure; without it a black-holed host would hang for the kernel's two minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection (or a statement on one) failed, split by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server is unreachable, restarting or full, or the connection broke: retry with
    /// backoff.
    #[error("{context}: {}", error_text(.source))]
    Unavailable {
        /// What was being done, naming the (redacted) URL.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The server refused: a bad password, a certificate that does not verify, a missing
    /// role, an SQL error. Stop and tell the operator.
    #[error("{context}: {}{hint}", error_text(.source))]
    Refused {
        /// What was being done, naming the (redacted) URL.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
        /// Appended to the message: which `sslrootcert` a certificate failed against.
        hint: String,
    },
    /// The database does not exist (SQLSTATE 3D000): definite, but callers may know why (the
    /// store before `setup`) and say something more useful.
    #[error("{context}: {}", error_text(.source))]
    NoDatabase {
        /// What was being done, naming the (redacted) URL.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// Something on a connection took longer than it may (a black-holed host answers nothing):
    /// transient.
    #[error("{context}: no answer within {after:?}")]
    TimedOut {
        /// What was being done, naming the (redacted) URL.
        context: String,
        /// How long it was given.
        after: Duration,
    },
    /// No host of a multi-host URL will do (none answers, or none is a primary where
    /// `target_session_attrs` asks for one): transient, a promotion may be under way.
    #[error("no host of {url} will do: {tried}")]
    NoHost {
        /// The (redacted) URL.
        url: String,
        /// What each host said.
        tried: String,
    },
    /// The URL's TLS settings cannot be used (no `sslrootcert` for `verify-*`, an unreadable
    /// file): definite.
    #[error("{url}: {source}")]
    Tls {
        /// The (redacted) URL.
        url: String,
        /// What is wrong with its TLS settings.
        source: TlsError,
    },
}

impl ConnectError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unavailable { .. }
            | ConnectError::TimedOut { .. }
            | ConnectError::NoHost { .. } => true,
            ConnectError::Refused { .. }
            | ConnectError::NoDatabase { .. }
            | ConnectError::Tls { .. } => false,
        }
    }

    /// Classifies a tokio-postgres error (of a connection or of a statement) met while doing
    /// `context`: [`ConnectError::Unavailable`] when [`is_transient`] says so, else
    /// [`ConnectError::Refused`].
    pub fn of(context: impl std::fmt::Display, source: tokio_postgres::Error) -> ConnectError {
        let context = context.to_string();
        if is_transient(&source) {
            ConnectError::Unavailable { context, source }
        } else {
            ConnectError::Refused {
                context,
                source,
                hint: String::new(),
            }
        }
    }
}

/// Connects to `url` as `application_name`, spawns the connection driver on the current tokio
/// runtime (logging its error at debug level when it ends), sets session `TimeZone=UTC`, and
/// returns the client.
///
/// Panics if called outside a tokio runtime.
///
/// A multi-host URL connects to the host [`pick_host`] picks.
pub async fn connect(
    url: &ConnUrl,
    application_name: &str,
) -> Result<tokio_postgres::Client, ConnectError> {
    if url.more_hosts.is_empty() {
        return connect_one(url, application_name).await;
    }
    connect_one(&pick_host(url).await?, application_name).await
}

/// [`connect`] to a URL's (first) host.
async fn connect_one(
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
    let tls = if unix_socket {
        None
    } else {
        tls::client_config(url).map_err(|source| ConnectError::Tls {
            url: url.to_string(),
            source,
        })?
    };
    let client = match tls {
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, conn) = config
                .connect(tls)
                .await
                .map_err(|e| connect_error(context.clone(), url, e))?;
            spawn_driver(url, conn);
            client
        }
        None => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| connect_error(context.clone(), url, e))?;
            spawn_driver(url, conn);
            client
        }
    };
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .map_err(|e| ConnectError::of(format!("{context}: setting TimeZone"), e))?;
    Ok(client)
}

/// The one host of `url` to connect to: `url` itself when it names one host; else, asking all
/// of its hosts at once (a dead one must not cost its connect timeout before the next is
/// tried), the first to answer that, with `target_session_attrs=read-write` (or `primary`), is
/// not in recovery. Asked again at every (re)connect, so walpoints follows a promotion to
/// whichever host is primary now.
pub async fn pick_host(url: &ConnUrl) -> Result<ConnUrl, ConnectError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if url.more_hosts.is_empty() {
        return Ok(url.clone());
    }
    let want_primary = url.target_session_attrs == TargetSession::ReadWrite;
    let mut asking: FuturesUnordered<_> = url
        .hosts()
        .into_iter()
        .map(|(host, port)| async move {
            let one = url.only_host(&host, port);
            let answer = async {
                let client = connect_one(&one, "walpoints-pick-host").await?;
                if !want_primary {
                    return Ok(true);
                }
                client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map(|row| !row.get::<_, bool>(0))
                    .map_err(|e| ConnectError::of("asking pg_is_in_recovery()", e))
            };
            let answer = answer.await;
            (one, answer)
        })
        .collect();
    let mut tried = Vec::new();
    let mut definite = None;
    while let Some((one, answer)) = asking.next().await {
        let at = format!("{}:{}", one.host, one.port);
        match answer {
            Ok(true) => {
                tracing::debug!(host = %at, "picked this host of the source URL");
                return Ok(one);
            }
            Ok(false) => tried.push(format!("{at}: in recovery (a standby)")),
            Err(e) => {
                tried.push(format!("{at}: {e}"));
                if !e.is_transient() {
                    definite.get_or_insert(e);
                }
            }
        }
    }
    // Every host refusing the same way (a wrong password) is the operator's to fix.
    if let (Some(e), true) = (definite, tried.iter().all(|t| !t.contains("in recovery"))) {
        return Err(e);
    }
    Err(ConnectError::NoHost {
        url: url.to_string(),
        tried: tried.join("; "),
    })
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

fn connect_error(context: String, url: &ConnUrl, e: tokio_postgres::Error) -> ConnectError {
    if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
        return ConnectError::NoDatabase { context, source: e };
    }
    match ConnectError::of(context, e) {
        ConnectError::Refused {
            context,
            source,
            mut hint,
        } => {
            if let (true, Some(ca)) = (is_tls_error(&source), &url.sslrootcert) {
                hint = format!(" (sslrootcert {})", ca.display());
            }
            ConnectError::Refused {
                context,
                source,
                hint,
            }
        }
        other => other,
    }
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
}
