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

/// The whole of walpoints' configuration; README.md, "Configuration", shows every key annotated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The exchange database walpoints reads its change stream from.
    pub source: SourceConfig,
    /// The business tables walpoints follows.
    pub tables: TablesConfig,
    /// Which column of each business table holds what (mapped by name).
    pub columns: ColumnsConfig,
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

/// Column names of the three business tables, flat so each has a `WALPOINTS_COLUMNS_<KEY>`
/// variable. Defaults match the seed schema in `sql/exchange_schema.sql`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnsConfig {
    /// `trades` primary key: it keys corrections and deletes.
    pub trades_id: String,
    /// `trades` market symbol.
    pub trades_symbol: String,
    /// `trades` fill price.
    pub trades_price: String,
    /// `trades` fill amount (base quantity).
    pub trades_amount: String,
    /// `trades` taker address.
    pub trades_taker: String,
    /// `trades` maker address.
    pub trades_maker: String,
    /// `trades` fill time; empty means "use the commit time of the inserting transaction".
    pub trades_time: String,
    /// `positions` primary key.
    pub positions_id: String,
    /// `positions` owner address.
    pub positions_user: String,
    /// `positions` market symbol.
    pub positions_symbol: String,
    /// `positions` signed size.
    pub positions_size: String,
    /// `positions` entry price.
    pub positions_entry_price: String,
    /// `positions` status.
    pub positions_status: String,
    /// `positions` realized PnL (NULL while open).
    pub positions_realized_pnl: String,
    /// Status values that mean "open" (compared case-insensitively).
    pub positions_open_values: Vec<String>,
    /// Status values that mean "closed" (liquidated counts as closed if listed here).
    pub positions_closed_values: Vec<String>,
    /// `referral_relations` referee address (its key).
    pub referrals_referee: String,
    /// `referral_relations` referrer address.
    pub referrals_referrer: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        let s = |v: &str| v.to_owned();
        ColumnsConfig {
            trades_id: s("id"),
            trades_symbol: s("symbol"),
            trades_price: s("price"),
            trades_amount: s("amount"),
            trades_taker: s("taker_address"),
            trades_maker: s("maker_address"),
            trades_time: s("created_at"),
            positions_id: s("id"),
            positions_user: s("user_address"),
            positions_symbol: s("symbol"),
            positions_size: s("size"),
            positions_entry_price: s("entry_price"),
            positions_status: s("status"),
            positions_realized_pnl: s("realized_pnl"),
            positions_open_values: vec![s("open")],
            positions_closed_values: vec![s("closed")],
            referrals_referee: s("referee_address"),
            referrals_referrer: s("referrer_address"),
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
            .then(|| crate::points::parse_rfc3339(s))
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
    let micros = crate::points::parse_duration(s)?;
    u64::try_from(micros)
        .ok()
        .map(std::time::Duration::from_micros)
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
        if !self.store.url.trim().is_empty() {
            self.store
                .url
                .parse::<ConnUrl>()
                .map_err(|message| invalid("store.url", message))?;
        }
        if self.batch.max_changes == 0 {
            return Err(invalid("batch.max_changes", "must be at least 1".into()));
        }
        for (key, value) in [
            ("batch.max_delay", &self.batch.max_delay),
            ("heartbeat.interval", &self.heartbeat.interval),
            ("http.poll_interval", &self.http.poll_interval),
        ] {
            if duration_key(value).is_none() {
                return Err(invalid(
                    key,
                    format!("{value:?} is not a duration like \"100ms\", \"10s\" or \"1m\""),
                ));
            }
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
