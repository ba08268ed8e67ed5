//! `WALPOINTS_<SECTION>_<KEY>` variables laid over the file: each names a key of the file (the
//! points rules' sections included) and is read as the type of that key's default, so a typo
//! in a name or a value stops walpoints at start.

use super::{Config, ConfigError};
use crate::points::RuleSet;

/// Environment variables with this prefix configure walpoints.
const ENV_PREFIX: &str = "WALPOINTS_";

/// `WALPOINTS_*` variables that are not configuration keys (test harness, logging, CLI).
const ENV_NOT_CONFIG: &[&str] = &["WALPOINTS_TEST_", "WALPOINTS_CONFIG", "WALPOINTS_LOG"];

/// The points rules' defaults as TOML, which also says which top-level keys are rules.
pub(super) fn rule_defaults() -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(RuleSet::default()).map_err(ConfigError::Defaults)
}

/// Applies each `WALPOINTS_<SECTION>_<KEY>` variable to `table`, typed like the key's default.
pub(super) fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut defaults = toml::Table::try_from(Config::default()).map_err(ConfigError::Defaults)?;
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
