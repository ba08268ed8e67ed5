//! Log sequence numbers: positions in PostgreSQL's write-ahead log.
//!
//! Every progress marker in walpoints (checkpoint, acknowledgement, entry identity) is an LSN, so
//! it gets its own type instead of a bare `u64` that could be confused with a count or an xid.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL, printed and parsed in PostgreSQL's `X/Y` form (hex high and low words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN `0/0`, which PostgreSQL uses for "no position".
    pub const ZERO: Lsn = Lsn(0);
}

/// Why a string is not an LSN; carries the offending text so the message can say what was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', such as 16/B374D848"
)]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let word = |part: &str| -> Result<u64, ParseLsnError> {
            if part.is_empty() || part.len() > 8 {
                return Err(bad());
            }
            u64::from_str_radix(part, 16).map_err(|_| bad())
        };
        Ok(Lsn((word(hi)? << 32) | word(lo)?))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

/// `#[serde(serialize_with = "lsn::serialize_opt")]`: an optional LSN in PostgreSQL's `X/Y`
/// form, or `null`, so JSON output reads like `pg_replication_slots`.
pub fn serialize_opt<S: serde::Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.collect_str(l),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_text_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "16", "/1", "1/", "G/1", "1/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }
}
