//! `walpoints.toml`, overlaid by `WALPOINTS_*` environment variables, validated once at start.
//!
//! Every key has a default, so an empty (or missing) file is a working configuration for a local
//! database. An environment variable `WALPOINTS_<SECTION>_<KEY>` (for example
//! `WALPOINTS_SOURCE_URL`) overrides `<section>.<key>`; its text is read as the type the key has,
//! so a typo in a name or a value is an error at start, not a surprise at 3 a.m.
//! Passwords live in [`Secret`] and never reach `Debug`, `Display` or a log line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::points::RuleSet;

/// Environment variables with this prefix configure walpoints.
const ENV_PREFIX: &str = "WALPOINTS_";

/// `WALPOINTS_*` variables that are not configuration keys (test harness, logging, CLI).
const ENV_NOT_CONFIG: &[&str] = &["WALPOINTS_TEST_", "WALPOINTS_CONFIG", "WALPOINTS_LOG"];

/// Why the configuration cannot be used; each variant names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, names an unknown key, or has a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// The TOML parser's or deserializer's explanation.
        message: String,
    },
    /// A `WALPOINTS_*` variable names no key, or its value does not fit the key's type.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A points rule is invalid; the message names its key (e.g. `trading.taker_rate`).
    #[error("points rules: {0}")]
    Rules(String),
    /// A value parsed but is not acceptable (an invalid URL, an empty table name, ...).
    #[error("config key {key}: {message}")]
    Invalid {
        /// The dotted key, as written in `walpoints.toml`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The whole of walpoints' configuration; see `walpoints.toml.example` for every key annotated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The exchange database walpoints reads its change stream from.
    pub source: SourceConfig,
    /// The business tables walpoints follows.
    pub tables: TablesConfig,
    /// The points rules: the top-level sections `epoch`, `trading`, `tiers`, `referral`,
    /// `holding`, `pnl` and the key `excluded_addresses` (see README, "Points rules").
    #[serde(skip)]
    pub rules: RuleSet,
}

/// Where the change stream comes from and how walpoints names its objects there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL of the exchange database (needs a role with REPLICATION).
    pub url: ConnUrl,
    /// Identifies this source in a shared store, so several exchange shards can feed one store.
    pub id: String,
    /// The logical replication slot walpoints owns on the source.
    pub slot: String,
    /// The publication (FOR TABLE the business tables) the slot streams.
    pub publication: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: ConnUrl::from_str("postgres://postgres@127.0.0.1:5432/postgres")
                .unwrap_or_else(|_| unreachable!("the default source URL parses")),
            id: "default".into(),
            slot: "walpoints".into(),
            publication: "walpoints".into(),
        }
    }
}

/// The three business tables, schema-qualified; `tail` follows them unless told otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TablesConfig {
    /// One row per fill.
    pub trades: String,
    /// One row per position, updated in place as it changes.
    pub positions: String,
    /// One row per referee naming their referrer.
    pub referral_relations: String,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            trades: "public.trades".into(),
            positions: "public.positions".into(),
            referral_relations: "public.referral_relations".into(),
        }
    }
}

impl TablesConfig {
    /// The configured tables in a fixed order, for building a publication.
    pub fn all(&self) -> Vec<TableName> {
        [&self.trades, &self.positions, &self.referral_relations]
            .into_iter()
            .filter_map(|t| t.parse().ok())
            .collect()
    }
}

impl Config {
    /// Reads `path` (a missing file is fine unless `required`), overlays `WALPOINTS_*` variables
    /// from `env`, and validates the result.
    pub fn load(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match std::fs::read_to_string(path) {
            Ok(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => toml::Table::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        overlay_env(&mut table, env)?;
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        };
        // The rule sections belong to the points engine, which validates them itself; the rest
        // is walpoints' own and must not contain unknown keys.
        let rule_keys = rule_defaults()?;
        let mut rules = toml::Table::new();
        for key in rule_keys.keys() {
            if let Some(v) = table.remove(key) {
                rules.insert(key.clone(), v);
            }
        }
        let mut config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
        config.rules = toml::Value::Table(rules).try_into().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        self.rules
            .validate()
            .map_err(|e| ConfigError::Rules(e.to_string()))?;
        for (key, value) in [
            ("source.id", &self.source.id),
            ("source.slot", &self.source.slot),
            ("source.publication", &self.source.publication),
        ] {
            if !is_identifier(value) {
                return Err(invalid(
                    key,
                    format!("{value:?} must be 1-63 characters of a-z, 0-9 and _"),
                ));
            }
        }
        for (key, value) in [
            ("tables.trades", &self.tables.trades),
            ("tables.positions", &self.tables.positions),
            ("tables.referral_relations", &self.tables.referral_relations),
        ] {
            value
                .parse::<TableName>()
                .map_err(|message| invalid(key, message))?;
        }
        Ok(())
    }
}

/// True for names walpoints may splice into replication commands without quoting.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// The points rules' defaults as TOML, which also says which top-level keys are rules.
fn rule_defaults() -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(RuleSet::default())
        .map_err(|e| ConfigError::Rules(format!("internal: default rules do not serialize: {e}")))
}

/// Applies each `WALPOINTS_<SECTION>_<KEY>` variable to `table`, typed like the key's default.
fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Env {
        var: ENV_PREFIX.into(),
        message: format!("internal: defaults do not serialize: {e}"),
    })?;
    defaults.extend(rule_defaults()?);
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .filter(|(k, _)| !ENV_NOT_CONFIG.iter().any(|p| k.starts_with(p)))
        .collect();
    vars.sort();
    for (var, text) in vars {
        let err = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let (section, key) = rest
            .split_once('_')
            .ok_or_else(|| err("expected WALPOINTS_<SECTION>_<KEY>".into()))?;
        let default = defaults
            .get(section)
            .and_then(|s| s.get(key))
            .ok_or_else(|| err(format!("no config key {section}.{key}")))?;
        let value = typed_like(default, &text).map_err(err)?;
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| err(format!("[{section}] in the file is not a table")))?;
        section_table.insert(key.to_owned(), value);
    }
    Ok(())
}

/// Reads `text` as a value of the same TOML type as `like`.
fn typed_like(like: &toml::Value, text: &str) -> Result<toml::Value, String> {
    Ok(match like {
        toml::Value::String(_) => toml::Value::String(text.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("{text:?} is not an integer"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            text.trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            text.trim()
                .parse()
                .map_err(|_| format!("{text:?} is not true or false"))?,
        ),
        _ => {
            let wrapped = format!("v = {text}");
            let mut parsed: toml::Table = wrapped
                .parse()
                .map_err(|e| format!("{text:?} is not a TOML value: {e}"))?;
            parsed
                .remove("v")
                .ok_or_else(|| format!("{text:?} is not a TOML value"))?
        }
    })
}

/// A schema-qualified table name, `schema.table` (unqualified means `public`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// The namespace, as PostgreSQL reports it in a Relation message.
    pub schema: String,
    /// The table's own name.
    pub name: String,
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (schema, name) = s.split_once('.').unwrap_or(("public", s));
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        if ok(schema) && ok(name) {
            Ok(TableName {
                schema: schema.into(),
                name: name.into(),
            })
        } else {
            Err(format!(
                "{s:?} is not a table name: expected schema.table of letters, digits and _"
            ))
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// Double-quotes an identifier for SQL, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

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

impl FromStr for ConnUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
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
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walpoints.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(
            &path,
            true,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.source.slot, "walpoints");
        assert_eq!(c.tables.trades, "public.trades");
        assert_eq!(c.source.url.port, 5432);
    }

    #[test]
    fn missing_optional_file_gives_defaults() {
        let c = Config::load(Path::new("/nonexistent/walpoints.toml"), false, []).unwrap();
        assert_eq!(c.source.id, "default");
        assert!(Config::load(Path::new("/nonexistent/walpoints.toml"), true, []).is_err());
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[source]\nurl = \"postgres://a@h1:1/d1\"\nslot = \"s1\"\n",
            &[
                ("WALPOINTS_SOURCE_URL", "postgres://b:pw@h2:2/d2"),
                ("WALPOINTS_TEST_PG_URL", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.source.url.host, "h2");
        assert_eq!(c.source.url.password.as_ref().unwrap().expose(), "pw");
        assert_eq!(c.source.slot, "s1");
    }

    #[test]
    fn unknown_keys_and_env_vars_are_errors_naming_them() {
        let e = load("[source]\nsloot = \"x\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("sloot"), "{e}");
        let e = load("", &[("WALPOINTS_SOURCE_SLOOT", "x")]).unwrap_err();
        assert!(e.to_string().contains("WALPOINTS_SOURCE_SLOOT"), "{e}");
        let e = load("[source]\nslot = \"Bad-Name\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("source.slot"), "{e}");
    }

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
        let c = load("[source]\nurl = \"postgres://u:hunter2@h/d\"\n", &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let bad = "postgres://u:hunter2@h/d?sslmode=maybe"
            .parse::<ConnUrl>()
            .unwrap_err();
        assert!(!bad.contains("hunter2") && bad.contains("maybe"), "{bad}");
    }

    #[test]
    fn points_rules_live_in_the_same_file_and_env() {
        let c = load(
            "excluded_addresses = [\"0xLIQ\"]\n[trading]\ntaker_rate = 0.02\n[epoch]\nlength = \"1d\"\n",
            &[("WALPOINTS_TRADING_MIN_NOTIONAL", "25.5")],
        )
        .unwrap();
        assert_eq!(c.rules.trading.taker_rate.to_string(), "0.02");
        assert_eq!(c.rules.trading.min_notional.to_string(), "25.5");
        assert_eq!(c.rules.epoch.length, "1d");
        assert_eq!(c.rules.excluded_addresses, vec!["0xLIQ".to_string()]);
        let e = load("[trading]\ntaker_rate = -1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("trading.taker_rate"), "{e}");
        let e = load("[trading]\ntaker_rat = 1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("taker_rat"), "{e}");
    }

    #[test]
    fn table_names_default_to_public() {
        let t: TableName = "trades".parse().unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "trades"));
        assert_eq!(t.to_string(), "\"public\".\"trades\"");
        assert!("a.b;drop".parse::<TableName>().is_err());
    }
}
