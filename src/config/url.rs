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
    /// Further hosts of libpq's multi-host form (`postgres://a:5432,b:5433/db`, or
    /// `?host=a,b&port=5432,5433`), tried in order after `host`/`port`: a primary and its
    /// standbys, so walpoints follows a promotion.
    pub more_hosts: Vec<(String, u16)>,
    /// libpq's `target_session_attrs`: which of the hosts will do.
    pub target_session_attrs: TargetSession,
}

/// libpq's `target_session_attrs`, the kinds walpoints uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSession {
    /// Any host that answers (the default).
    #[default]
    Any,
    /// A host that accepts writes: the primary (`read-write`, or `primary`, which walpoints
    /// treats the same: a server not in recovery).
    ReadWrite,
}

impl fmt::Display for TargetSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetSession::Any => "any",
            TargetSession::ReadWrite => "read-write",
        })
    }
}

impl ConnUrl {
    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnUrl {
        ConnUrl {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// Every host with its port, in the order they are tried.
    pub fn hosts(&self) -> Vec<(String, u16)> {
        let mut all = vec![(self.host.clone(), self.port)];
        all.extend(self.more_hosts.iter().cloned());
        all
    }

    /// The same URL naming only `host`:`port` (one of [`ConnUrl::hosts`]), for a connection
    /// that takes a single host (the replication transport's).
    pub fn only_host(&self, host: &str, port: u16) -> ConnUrl {
        ConnUrl {
            host: host.to_owned(),
            port,
            more_hosts: Vec::new(),
            target_session_attrs: TargetSession::Any,
            ..self.clone()
        }
    }

    /// A tokio-postgres configuration for ordinary SQL connections to this URL (every host, in
    /// order, with `target_session_attrs`).
    pub fn to_pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user);
        for (host, port) in self.hosts() {
            c.host(&host).port(port);
        }
        c.target_session_attrs(match self.target_session_attrs {
            TargetSession::Any => tokio_postgres::config::TargetSessionAttrs::Any,
            TargetSession::ReadWrite => tokio_postgres::config::TargetSessionAttrs::ReadWrite,
        });
        c.dbname(&self.dbname)
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
    let (s, mut more_hosts) = split_hosts(s)?;
    let url = url::Url::parse(&s).map_err(|e| format!("not a postgres:// URL ({e})"))?;
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
    let mut target_session_attrs = TargetSession::Any;
    let mut query_hosts: Option<Vec<String>> = None;
    let mut query_ports: Option<Vec<u16>> = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "sslmode" => sslmode = v.parse()?,
            "sslrootcert" => sslrootcert = Some(PathBuf::from(&*v)),
            "host" => query_hosts = Some(v.split(',').map(str::to_owned).collect()),
            "port" => {
                query_ports = Some(
                    v.split(',')
                        .map(|p| {
                            p.trim()
                                .parse()
                                .map_err(|_| format!("port {p:?} is not a number"))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            "target_session_attrs" => {
                target_session_attrs = match &*v {
                    "any" => TargetSession::Any,
                    "read-write" | "primary" => TargetSession::ReadWrite,
                    other => {
                        return Err(format!(
                            "target_session_attrs {other:?} is not one of any, read-write, primary"
                        ))
                    }
                }
            }
            "dbname" => dbname = v.into_owned(),
            "user" | "password" => {
                return Err(format!("put {k} in the URL's authority, not its query"))
            }
            other => return Err(format!("unsupported URL parameter {other:?}")),
        }
    }
    if query_hosts.is_some() || query_ports.is_some() {
        // libpq: `host=a,b&port=1,2`, or one port for every host.
        let hosts = query_hosts.unwrap_or_else(|| vec![host.clone()]);
        let ports = query_ports.unwrap_or_else(|| vec![port]);
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(format!(
                "{} hosts but {} ports: give one port, or one per host",
                hosts.len(),
                ports.len()
            ));
        }
        let mut all = hosts
            .into_iter()
            .enumerate()
            .map(|(i, h)| (h, ports[if ports.len() == 1 { 0 } else { i }]));
        if let Some((h, p)) = all.next() {
            (host, port) = (h, p);
        }
        more_hosts = all.collect();
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
        more_hosts,
        target_session_attrs,
    })
}

/// Takes the hosts after the first out of a multi-host authority (`postgres://u@a:1,b:2/db`,
/// which the URL parser cannot read): the URL with only the first host, and the others.
fn split_hosts(s: &str) -> Result<(String, Vec<(String, u16)>), String> {
    let Some(scheme_end) = s.find("://") else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let rest = &s[scheme_end + 3..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let hosts_at = authority.rfind('@').map_or(0, |i| i + 1);
    let host_list = &authority[hosts_at..];
    if !host_list.contains(',') {
        return Ok((s.to_owned(), Vec::new()));
    }
    let mut parts = host_list.split(',');
    let first = parts.next().unwrap_or_default();
    let more = parts
        .map(|part| {
            let (host, port) = match part.strip_prefix('[') {
                // [v6] or [v6]:port
                Some(v6) => match v6.split_once(']') {
                    Some((h, tail)) => (h, tail.strip_prefix(':')),
                    None => return Err("an unclosed [ in the URL's host list".to_string()),
                },
                None => match part.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (part, None),
                },
            };
            let host = host.trim_matches(['[', ']']).to_owned();
            if host.is_empty() {
                return Err("an empty host in the URL's host list".to_string());
            }
            let port = match port {
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("port {p:?} in the host list is not a number"))?,
                None => 5432,
            };
            Ok((host, port))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let start = scheme_end + 3 + hosts_at;
    let rebuilt = format!(
        "{}{}{}",
        &s[..start],
        first,
        &s[scheme_end + 3 + authority_len..]
    );
    Ok((rebuilt, more))
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
        write!(f, "@{host}:{}", self.port)?;
        for (h, p) in &self.more_hosts {
            let h = if h.contains(':') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            write!(f, ",{h}:{p}")?;
        }
        write!(f, "/{}?sslmode={}", self.dbname, self.sslmode)?;
        if self.target_session_attrs != TargetSession::Any {
            write!(f, "&target_session_attrs={}", self.target_session_attrs)?;
        }
        Ok(())
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

    #[test]
    fn multi_host_urls_parse_in_both_libpq_forms_and_print_back() {
        let u: ConnUrl =
            "postgres://wp:hunter2@db1:5432,db2:5433,[::1]/ex?target_session_attrs=read-write"
                .parse()
                .unwrap();
        assert_eq!(
            u.hosts(),
            vec![
                ("db1".to_string(), 5432),
                ("db2".to_string(), 5433),
                ("::1".to_string(), 5432)
            ]
        );
        assert_eq!(u.target_session_attrs, TargetSession::ReadWrite);
        assert_eq!(u.dbname, "ex");
        assert_eq!(u.password.as_ref().unwrap().expose(), "hunter2");
        let shown = u.to_string();
        assert_eq!(
            shown,
            "postgres://wp:***@db1:5432,db2:5433,[::1]:5432/ex?sslmode=prefer&target_session_attrs=read-write"
        );
        let q: ConnUrl =
            "postgres://wp@localhost/ex?host=a,b&port=1,2&target_session_attrs=primary"
                .parse()
                .unwrap();
        assert_eq!(q.hosts(), vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        assert_eq!(q.target_session_attrs, TargetSession::ReadWrite);
        let one_port: ConnUrl = "postgres://wp@localhost/ex?host=a,b&port=7"
            .parse()
            .unwrap();
        assert_eq!(one_port.hosts()[1], ("b".to_string(), 7));
        let only = u.only_host("db2", 5433);
        assert_eq!(only.hosts(), vec![("db2".to_string(), 5433)]);
        assert_eq!(only.target_session_attrs, TargetSession::Any);
        for bad in [
            "postgres://u@a,b:x/d",
            "postgres://u@h/d?host=a,b,c&port=1,2",
            "postgres://u@a/d?target_session_attrs=standby",
        ] {
            assert!(bad.parse::<ConnUrl>().is_err(), "{bad}");
        }
    }
}
