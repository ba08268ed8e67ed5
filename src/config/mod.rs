//! `walpoints.toml`, overlaid by `WALPOINTS_*` environment variables, validated once at start.
//!
//! Every key has a default, so an empty (or missing) file is a working configuration for a local
//! database. An environment variable `WALPOINTS_<SECTION>_<KEY>` (for example
//! `WALPOINTS_SOURCE_URL`) overrides `<section>.<key>`; its text is read as the type the key has,
//! so a typo in a name or a value is an error at start, not a surprise at 3 a.m.
//! Passwords live in [`Secret`] and never reach `Debug`, `Display` or a log line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identifier::{is_identifier, BadTableName};
use crate::mapping::{Columns, TableKind, Tables};
use crate::points::{RuleSet, RulesError};

mod env;
mod url;

pub use url::{BadUrl, ConnUrl, Secret, SslMode, TargetSession};

use env::{overlay_env, rule_defaults};

/// Why the configuration cannot be used; each variant names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {}: {source}", .path.display())]
    Syntax {
        /// The file that was read.
        path: PathBuf,
        /// The TOML parser's explanation, with the line it points at.
        source: toml::de::Error,
    },
    /// The file (or a variable) names an unknown key, or has a value of the wrong type.
    #[error("config file {}: {}", .path.display(), .source.message())]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// The deserializer's explanation.
        source: toml::de::Error,
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
    Rules(#[source] RulesError),
    /// The built-in defaults do not serialize (a bug in this build, never the operator's).
    #[error("internal: the default configuration does not serialize: {0}")]
    Defaults(#[source] toml::ser::Error),
    /// `store.url` is not a usable URL.
    #[error("config key store.url: {0}")]
    StoreUrl(#[source] BadUrl),
    /// A `[tables]` name is not `schema.table`.
    #[error("config key tables.{key}: {source}")]
    TableName {
        /// The `[tables]` key.
        key: &'static str,
        /// What is wrong with the name.
        source: BadTableName,
    },
    /// A value parsed but is not acceptable (an empty column name, a duration, ...).
    #[error("config key {key}: {message}")]
    Invalid {
        /// The dotted key, as written in `walpoints.toml`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// The whole of walpoints' configuration; README.md, "Configuration", shows every key annotated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The exchange database walpoints reads its change stream from.
    pub source: SourceConfig,
    /// The business tables walpoints follows.
    pub tables: Tables,
    /// Which column of each business table holds what (mapped by name).
    pub columns: Columns,
    /// Where walpoints keeps its ledger, totals, rule state and checkpoint.
    pub store: StoreConfig,
    /// How many changes / how long a store transaction collects before it commits.
    pub batch: BatchConfig,
    /// The transactional heartbeat walpoints writes on the source.
    pub heartbeat: HeartbeatConfig,
    /// Awarding trades that were committed before `setup`.
    pub backfill: BackfillConfig,
    /// What a TRUNCATE of `trades` or `positions` does.
    pub truncate: TruncateConfig,
    /// The HTTP server of `run`: Prometheus metrics, health checks and the points API.
    pub http: HttpConfig,
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
    /// How long the replication stream may stay silent before walpoints presumes the connection
    /// dead and reconnects (e.g. "30s"; "0s" turns the watchdog off). A host that dies sends no
    /// FIN or RST, and the replication transport sets no TCP keepalive: without this the kernel
    /// takes about 15 minutes to give up, and a failover waits that long.
    pub silence_timeout: String,
    /// Create the slot as a failover slot (PostgreSQL 17+), synchronised to physical standbys
    /// that run with `sync_replication_slots = on`, so it survives a promotion; an existing slot
    /// is switched over. Refused on older servers.
    pub failover: bool,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: ConnUrl::from_str("postgres://postgres@127.0.0.1:5432/postgres")
                .unwrap_or_else(|_| unreachable!("the default source URL parses")),
            id: "default".into(),
            slot: "walpoints".into(),
            publication: "walpoints".into(),
            silence_timeout: "30s".into(),
            failover: false,
        }
    }
}

/// The store: a PostgreSQL database of walpoints' own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// URL of the store database; empty means a database named `walpoints` on the source
    /// server, with the source's credentials. Keep it out of the source database: the walsender
    /// must decode every WAL record of its own database, but skips other databases cheaply.
    pub url: String,
}

/// When a batch (one store transaction) closes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Close the batch once it holds this many row changes (ledger rows go to the store in
    /// parts as they accumulate, so a big batch does not mean much memory).
    pub max_changes: u64,
    /// Close the batch once the store has committed the previous one and its first transaction
    /// arrived this long ago (e.g. "20ms"); "0ms" commits as soon as the store is free.
    pub max_delay: String,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_changes: 100_000,
            max_delay: "0ms".into(),
        }
    }
}

/// The heartbeat: a transactional `pg_logical_emit_message` on the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often (e.g. "10s"); "0s" turns it off.
    pub interval: String,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: "10s".into(),
        }
    }
}

/// Awarding trades committed before the initial snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillConfig {
    /// RFC 3339 instant; when set, `setup` awards every trade with a time at or after it, in
    /// (time, id) order. Empty: trades before `setup` earn nothing.
    pub trades_since: String,
}

/// The HTTP server inside `walpoints run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on; "" turns the server off. Loopback by default: the API and the
    /// metrics carry no secrets but are meant for the exchange's backend and Prometheus, not
    /// the internet. Port 0 picks a free port (logged at start).
    pub listen: String,
    /// How often the slot's lag is read from the source (`pg_replication_slots`).
    pub poll_interval: String,
    /// `/readyz` fails when the slot lags the server's WAL by more bytes than this; 0: unchecked.
    pub ready_max_lag_bytes: u64,
    /// `/readyz` fails when the last committed source transaction is older than this many
    /// seconds; 0: unchecked. Keep the heartbeat on, or an idle source looks lagging.
    pub ready_max_lag_seconds: u64,
    /// Connections of the API's own read pool to the store (never to the source).
    pub pool_size: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9187".into(),
            poll_interval: "5s".into(),
            ready_max_lag_bytes: 1 << 30,
            ready_max_lag_seconds: 300,
            pool_size: 4,
        }
    }
}

/// What a TRUNCATE of a followed table does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TruncateConfig {
    /// `stop` (default: the daemon stops and says why) or `ignore` (logged, nothing reversed).
    pub policy: TruncatePolicy,
}

impl Default for TruncateConfig {
    fn default() -> Self {
        TruncateConfig {
            policy: TruncatePolicy::Stop,
        }
    }
}

/// See [`TruncateConfig::policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncatePolicy {
    /// Stop with an error: points would silently diverge from a table that was emptied.
    Stop,
    /// Log and go on; what was awarded stays awarded.
    Ignore,
}

impl Config {
    /// The store URL: `store.url`, or the `walpoints` database on the source server.
    pub fn store_url(&self) -> ConnUrl {
        match self.store.url.trim() {
            "" => self.source.url.with_dbname("walpoints"),
            // validate() has parsed it already.
            text => text
                .parse()
                .unwrap_or_else(|_| self.source.url.with_dbname("walpoints")),
        }
    }

    /// `batch.max_delay` parsed.
    pub fn batch_delay(&self) -> std::time::Duration {
        duration_key(&self.batch.max_delay).unwrap_or(std::time::Duration::ZERO)
    }

    /// `heartbeat.interval` parsed; `None` when off.
    pub fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        duration_key(&self.heartbeat.interval).filter(|d| !d.is_zero())
    }

    /// `source.silence_timeout` parsed; `None` when the watchdog is off.
    pub fn silence_timeout(&self) -> Option<std::time::Duration> {
        duration_key(&self.source.silence_timeout).filter(|d| !d.is_zero())
    }

    /// `http.listen` parsed; `None` when the server is off.
    pub fn http_listen(&self) -> Option<std::net::SocketAddr> {
        let s = self.http.listen.trim();
        (!s.is_empty()).then(|| s.parse().ok()).flatten()
    }

    /// `http.poll_interval` parsed (at least 100 ms).
    pub fn http_poll_interval(&self) -> std::time::Duration {
        duration_key(&self.http.poll_interval)
            .unwrap_or(std::time::Duration::from_secs(5))
            .max(std::time::Duration::from_millis(100))
    }

    /// `backfill.trades_since` as Unix microseconds; `None` when unset.
    pub fn backfill_since(&self) -> Option<i64> {
        let s = self.backfill.trades_since.trim();
        (!s.is_empty())
            .then(|| crate::time::parse_rfc3339(s))
            .flatten()
    }
}

/// Reads "250ms", "10s", "0s", "2m" (and the points rules' "1d"/"1h" forms).
fn duration_key(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.trim().parse().ok().map(std::time::Duration::from_millis);
    }
    if s == "0" || s == "0s" {
        return Some(std::time::Duration::ZERO);
    }
    let micros = crate::time::parse_duration(s)?;
    u64::try_from(micros)
        .ok()
        .map(std::time::Duration::from_micros)
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
                .map_err(|source| ConfigError::Syntax {
                    path: path.to_owned(),
                    source,
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
        let parse_error = |source: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            source,
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
        self.rules.validate().map_err(ConfigError::Rules)?;
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
        for table in TableKind::ALL {
            self.tables
                .name_of(table)
                .map_err(|source| ConfigError::TableName {
                    key: table.as_str(),
                    source,
                })?;
        }
        if !self.store.url.trim().is_empty() {
            self.store
                .url
                .parse::<ConnUrl>()
                .map_err(ConfigError::StoreUrl)?;
        }
        if self.batch.max_changes == 0 {
            return Err(invalid("batch.max_changes", "must be at least 1".into()));
        }
        for (key, value) in [
            ("batch.max_delay", &self.batch.max_delay),
            ("heartbeat.interval", &self.heartbeat.interval),
            ("http.poll_interval", &self.http.poll_interval),
            ("source.silence_timeout", &self.source.silence_timeout),
        ] {
            if duration_key(value).is_none() {
                return Err(invalid(
                    key,
                    format!("{value:?} is not a duration like \"100ms\", \"10s\" or \"1m\""),
                ));
            }
        }
        if self
            .silence_timeout()
            .is_some_and(|t| t < std::time::Duration::from_secs(2))
        {
            return Err(invalid(
                "source.silence_timeout",
                "must be at least \"2s\" (or \"0s\" to turn the watchdog off): shorter would \
                 reconnect a healthy stream on a loaded machine"
                    .into(),
            ));
        }
        let listen = self.http.listen.trim();
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("{listen:?} is not host:port like \"127.0.0.1:9187\" (\"\" turns it off)"),
            ));
        }
        if self.http.pool_size == 0 {
            return Err(invalid("http.pool_size", "must be at least 1".into()));
        }
        if !self.backfill.trades_since.trim().is_empty() && self.backfill_since().is_none() {
            return Err(invalid(
                "backfill.trades_since",
                format!(
                    "{:?} is not an RFC 3339 instant like \"2026-01-05T00:00:00Z\"",
                    self.backfill.trades_since
                ),
            ));
        }
        let c = &self.columns;
        for (key, value) in [
            ("columns.trades_id", &c.trades_id),
            ("columns.trades_symbol", &c.trades_symbol),
            ("columns.trades_price", &c.trades_price),
            ("columns.trades_amount", &c.trades_amount),
            ("columns.trades_taker", &c.trades_taker),
            ("columns.trades_maker", &c.trades_maker),
            ("columns.positions_id", &c.positions_id),
            ("columns.positions_user", &c.positions_user),
            ("columns.positions_symbol", &c.positions_symbol),
            ("columns.positions_size", &c.positions_size),
            ("columns.positions_entry_price", &c.positions_entry_price),
            ("columns.positions_status", &c.positions_status),
            ("columns.positions_realized_pnl", &c.positions_realized_pnl),
            ("columns.referrals_referee", &c.referrals_referee),
            ("columns.referrals_referrer", &c.referrals_referrer),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must name a column".into()));
            }
        }
        if c.positions_open_values.is_empty() || c.positions_closed_values.is_empty() {
            return Err(invalid(
                "columns.positions_open_values",
                "positions_open_values and positions_closed_values must each list a value".into(),
            ));
        }
        Ok(())
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
    fn the_silence_timeout_defaults_to_30s_and_can_be_turned_off_but_not_made_tiny() {
        let c = load("", &[]).unwrap();
        assert_eq!(
            c.silence_timeout(),
            Some(std::time::Duration::from_secs(30))
        );
        assert!(!c.source.failover);
        let c = load("", &[("WALPOINTS_SOURCE_SILENCE_TIMEOUT", "0s")]).unwrap();
        assert_eq!(c.silence_timeout(), None);
        let c = load("[source]\nsilence_timeout = \"5s\"\nfailover = true\n", &[]).unwrap();
        assert_eq!(c.silence_timeout(), Some(std::time::Duration::from_secs(5)));
        assert!(c.source.failover);
        for bad in ["500ms", "soon"] {
            let e = load("", &[("WALPOINTS_SOURCE_SILENCE_TIMEOUT", bad)]).unwrap_err();
            assert!(e.to_string().contains("source.silence_timeout"), "{e}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let c = load("[source]\nurl = \"postgres://u:hunter2@h/d\"\n", &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
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
}
