//! PostgreSQL names and literals as walpoints writes them into SQL and replication commands.
//!
//! Every name that reaches a statement comes from configuration, so it is checked once when the
//! configuration is read ([`TableName`], [`is_identifier`]) and quoted where it is spliced in
//! ([`quote_ident`], [`quote_literal`]); nothing else builds SQL text from outside input.

use std::fmt;
use std::str::FromStr;

/// A schema-qualified table name, `schema.table` (unqualified means `public`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// The namespace, as PostgreSQL reports it in a Relation message.
    pub schema: String,
    /// The table's own name.
    pub name: String,
}

/// A table name that is not `schema.table` of letters, digits and `_` (at most 63 each).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a table name: expected schema.table of letters, digits and _")]
pub struct BadTableName(pub String);

impl FromStr for TableName {
    type Err = BadTableName;

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
            Err(BadTableName(s.to_owned()))
        }
    }
}

impl fmt::Display for TableName {
    /// The quoted form, ready to splice into SQL: `"public"."trades"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// True for names walpoints may splice into replication commands without quoting: slot,
/// publication and source names.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Double-quotes an identifier for SQL, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string as an SQL literal, doubling embedded single quotes.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_default_to_public() {
        let t: TableName = "trades".parse().unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "trades"));
        assert_eq!(t.to_string(), "\"public\".\"trades\"");
        assert!("a.b;drop".parse::<TableName>().is_err());
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(is_identifier("wp_1"));
        assert!(!is_identifier("1wp") && !is_identifier("Wp") && !is_identifier(""));
    }
}
