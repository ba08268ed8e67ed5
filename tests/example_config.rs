//! `walpoints.example.toml` (the annotated configuration the README points to) parses, writes
//! out every key walpoints reads, and sets each to its default: a key added to the
//! configuration without being documented there fails this test.

use std::collections::BTreeSet;
use std::path::PathBuf;

use walpoints::config::Config;
use walpoints::points::RuleSet;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("walpoints.example.toml")
}

/// Dotted paths of every key in `table`, descending into sub-tables (not into arrays).
fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = format!("{prefix}{k}");
        match v {
            toml::Value::Table(t) => keys(t, &format!("{path}."), out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn the_example_config_holds_every_key_at_its_default() {
    let loaded = Config::load(&example(), true, std::iter::empty())
        .unwrap_or_else(|e| panic!("walpoints.example.toml: {e}"));
    let as_toml = |c: &Config| toml::Table::try_from(c).expect("config serializes");
    assert_eq!(as_toml(&loaded), as_toml(&Config::default()));
    assert_eq!(loaded.rules, RuleSet::default());

    let mut defaults = toml::Table::try_from(Config::default()).unwrap();
    defaults.extend(toml::Table::try_from(RuleSet::default()).unwrap());
    let text = std::fs::read_to_string(example()).unwrap();
    let written: toml::Table = text.parse().unwrap();
    let (mut want, mut have) = (BTreeSet::new(), BTreeSet::new());
    keys(&defaults, "", &mut want);
    keys(&written, "", &mut have);
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "walpoints.example.toml lacks {missing:?}"
    );
    assert_eq!(want, have);
}
