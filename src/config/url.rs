//! Connection URLs in libpq's `postgres://` form, with the password kept out of every printout.
//!
//! Both the source and the store are named by a [`ConnUrl`]; its password is a [`Secret`], so a
//! URL can go into a log line, an error or `Debug` output as it is: it prints as
//! `postgres://user:***@host:port/db?sslmode=…`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for handing to a connection; never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a connection uses TLS, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// TLS always, without verifying the certificate.
    Require,
    /// TLS, and the certificate must chain to the CA (`sslrootcert`).
    VerifyCa,
    /// TLS, the certificate must chain to the CA and name the host.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A parsed `postgres://user:password@host:port/db?sslmode=...` URL whose password is a
/// [`Secret`]: `Display` and `Debug` print it as `***`, so the URL can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnUrl {
    /// The role to log in as.
    pub user: String,
    /// The role's password, if the server asks for one.
    pub password: Option<Secret>,
    /// Host name or IP address (a path starting with `/` means a Unix socket directory).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The database to connect to.
    pub dbname: String,
    /// Whether and how to use TLS.
    pub sslmode: SslMode,
    /// CA certificate file for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<PathBuf>,
}

impl ConnUrl {
    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnUrl {
        ConnUrl {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// A tokio-postgres configuration for ordinary SQL connections to this URL.
    pub fn to_pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("walpoints")
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        c
    }
}

/// Why a text is not a usable `postgres://` URL; the message never quotes the URL, which may
/// hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(pub String);

impl FromStr for ConnUrl {
    type Err = BadUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map_err(BadUrl)
    }
}

/// The URL's parts; the error is what is wrong, never the URL itself.
fn parse(s: &str) -> Result<ConnUrl, String> {
    // Never echo `s` in an error: it may hold a password.
    let url = url::Url::parse(s).map_err(|e| format!("not a postgres:// URL ({e})"))?;
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        return Err(format!(
            "scheme {:?} is not postgres:// or postgresql://",
            url.scheme()
        ));
    }
    let decode = |part: &str| -> Result<String, String> {
        percent_decode(part).ok_or_else(|| "bad percent-encoding in URL".to_string())
    };
    let user = if url.username().is_empty() {
        "postgres".to_owned()
    } else {
        decode(url.username())?
    };
    let password = url.password().map(decode).transpose()?.map(Secret::new);
    let mut host = url
        .host_str()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_owned();
    let mut port = url.port().unwrap_or(5432);
    let mut dbname = decode(url.path().trim_start_matches('/'))?;
    let mut sslmode = SslMode::default();
    let mut sslrootcert = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "sslmode" => sslmode = v.parse()?,
            "sslrootcert" => sslrootcert = Some(PathBuf::from(&*v)),
            "host" => host = v.into_owned(),
            "port" => {
                port = v
                    .parse()
                    .map_err(|_| format!("port {v:?} is not a number"))?
            }
            "dbname" => dbname = v.into_owned(),
            "user" | "password" => {
                return Err(format!("put {k} in the URL's authority, not its query"))
            }
            other => return Err(format!("unsupported URL parameter {other:?}")),
        }
    }
    if host.is_empty() {
        host = "localhost".into();
    }
    if dbname.is_empty() {
        dbname = user.clone();
    }
    Ok(ConnUrl {
        user,
        password,
        host,
        port,
        dbname,
        sslmode,
        sslrootcert,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.user)?;
        if self.password.is_some() {
            f.write_str(":***")?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "@{host}:{}/{}?sslmode={}",
            self.port, self.dbname, self.sslmode
        )
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnUrl({self})")
    }
}

impl Serialize for ConnUrl {
    /// Serializes the redacted form: configuration is never written back with its secrets.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ConnUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn url_parses_libpq_forms_and_never_shows_the_password() {
        let u: ConnUrl = "postgres://walpoints:s%40cret@db.example:6543/exchange?sslmode=verify-full&sslrootcert=/ca.pem"
            .parse()
            .unwrap();
        assert_eq!(u.user, "walpoints");
        assert_eq!(u.password.as_ref().unwrap().expose(), "s@cret");
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, 6543);
        assert_eq!(u.dbname, "exchange");
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert.as_deref(), Some(Path::new("/ca.pem")));
        for shown in [u.to_string(), format!("{u:?}")] {
            assert!(
                !shown.contains("s@cret") && !shown.contains("s%40cret"),
                "{shown}"
            );
            assert!(shown.contains("***"), "{shown}");
        }
        let bad = "postgres://u:hunter2@h/d?sslmode=maybe"
            .parse::<ConnUrl>()
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("hunter2") && bad.contains("maybe"), "{bad}");
    }
}
