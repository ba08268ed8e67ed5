//! Serde adapters for [`Decimal`] that never go through binary floating point
//! on the way out and accept both spellings on the way in.
//!
//! Why a module of our own instead of `rust_decimal`'s `serde` feature: cargo
//! unifies features across the whole build, so another module enabling
//! `serde-float` would silently turn persisted state and ledger entries into
//! lossy floats. These adapters always write the exact decimal text.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Converts a configuration float to the decimal its shortest text denotes,
/// so that `0.01` written as a TOML number means exactly 0.01.
fn from_f64(v: f64) -> Option<Decimal> {
    if !v.is_finite() {
        return None;
    }
    Decimal::from_str(&format!("{v}")).ok()
}

struct DecVisitor;

impl Visitor<'_> for DecVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal number, as a string (\"0.01\") or a number (0.01)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        Decimal::from_str(v.trim())
            .or_else(|_| Decimal::from_scientific(v.trim()))
            .map_err(|_| E::custom(format!("invalid decimal {v:?}")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        from_f64(v).ok_or_else(|| E::custom(format!("number {v} is not a representable decimal")))
    }
}

/// `#[serde(with = "dec")]` for a plain `Decimal` field.
pub(crate) mod dec {
    use super::*;

    /// Writes the exact decimal text, never a float.
    pub(crate) fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a string or a number (numbers through their shortest text).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_any(DecVisitor)
    }
}

/// `#[serde(with = "opt_dec")]` for an `Option<Decimal>` field.
pub(crate) mod opt_dec {
    use super::*;

    /// Writes `null` or the exact decimal text.
    pub(crate) fn serialize<S: Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.collect_str(d),
            None => s.serialize_none(),
        }
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Decimal>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null or a decimal number")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DecVisitor).map(Some)
        }
    }

    /// Reads `null`, a string or a number.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Decimal>, D::Error> {
        d.deserialize_option(OptVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct W {
        #[serde(with = "dec")]
        a: Decimal,
        #[serde(with = "opt_dec", default)]
        b: Option<Decimal>,
    }

    #[test]
    fn numbers_become_their_shortest_decimal_text() {
        let w: W = toml::from_str("a = 0.01\nb = 0.1").unwrap();
        assert_eq!(w.a.to_string(), "0.01");
        assert_eq!(w.b.unwrap().to_string(), "0.1");
        let w: W = toml::from_str("a = \"0.0100\"").unwrap();
        assert_eq!(w.a.to_string(), "0.0100");
        assert_eq!(w.b, None);
        let w: W = toml::from_str("a = 100000").unwrap();
        assert_eq!(w.a, Decimal::from(100_000));
    }

    #[test]
    fn json_round_trip_is_exact_text() {
        let w = W {
            a: Decimal::from_str("12345678901234567890.123456789").unwrap(),
            b: None,
        };
        let s = serde_json::to_string(&w).unwrap();
        assert_eq!(s, r#"{"a":"12345678901234567890.123456789","b":null}"#);
        assert_eq!(serde_json::from_str::<W>(&s).unwrap(), w);
    }
}
