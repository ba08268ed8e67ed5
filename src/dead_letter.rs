//! Dead letters: rows walpoints could not use, kept in the store with where they came from and
//! why, while the stream goes on without them.
//!
//! [`Reason`] is the one list of why: the mapping rejects rows for most of them, the rules for
//! [`Reason::Overflow`] and [`Reason::InvalidValue`]; the store writes the code, telemetry uses
//! it as the `reason` label of `walpoints_dead_letter_total`, and `tests/readme.rs` keeps the
//! README's list equal to [`Reason::ALL`].

use crate::lsn::Lsn;

/// Why a row went to the dead-letter table: a stable snake_case code (a metrics label, a
/// column value) and a human detail beside it in [`DeadLetter::detail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A required column is NULL.
    NullValue,
    /// A value does not parse (number, timestamp, UTF-8), is NaN or infinite, or arrived in
    /// binary format.
    BadValue,
    /// A trade price or position entry price below zero.
    NegativePrice,
    /// An id or address longer than the store can index.
    TooLong,
    /// A position status in neither `positions_open_values` nor `positions_closed_values`.
    UnknownStatus,
    /// A delete whose key and old row are absent or NULL in the key column.
    MissingKey,
    /// An update left a needed large value unsent and no full old row has it.
    UnchangedToast,
    /// A mapped column is not in the row (normally the stream stops before).
    MissingColumn,
    /// An insert or update without its new row (a malformed change).
    MissingTuple,
    /// The rules' decimal arithmetic overflowed on the row's values.
    Overflow,
    /// The rules cannot use a value (e.g. a negative price found by the engine).
    InvalidValue,
}

impl Reason {
    /// Every reason, in the order the README lists them.
    pub const ALL: [Reason; 11] = [
        Reason::NullValue,
        Reason::BadValue,
        Reason::NegativePrice,
        Reason::TooLong,
        Reason::UnknownStatus,
        Reason::MissingKey,
        Reason::UnchangedToast,
        Reason::MissingColumn,
        Reason::MissingTuple,
        Reason::Overflow,
        Reason::InvalidValue,
    ];

    /// The stable code: the store's `reason` column and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NullValue => "null_value",
            Reason::BadValue => "bad_value",
            Reason::NegativePrice => "negative_price",
            Reason::TooLong => "too_long",
            Reason::UnknownStatus => "unknown_status",
            Reason::MissingKey => "missing_key",
            Reason::UnchangedToast => "unchanged_toast",
            Reason::MissingColumn => "missing_column",
            Reason::MissingTuple => "missing_tuple",
            Reason::Overflow => "overflow",
            Reason::InvalidValue => "invalid_value",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row that could not be used, with its position and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Commit LSN of the source transaction.
    pub commit_lsn: Lsn,
    /// Position among the transaction's dead letters.
    pub seq: u32,
    /// WAL position of the change.
    pub lsn: Lsn,
    /// `schema.table`.
    pub table: String,
    /// insert / update / delete / truncate / snapshot / settle.
    pub op: String,
    /// Why.
    pub reason: Reason,
    /// What was wrong, for a human.
    pub detail: String,
    /// The row as JSON.
    pub row: serde_json::Value,
    /// Commit time of the transaction, µs since 1970.
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
