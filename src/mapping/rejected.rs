//! A row the mapping rejects, in the form the dead-letter table keeps: the table, the
//! operation, the reason, a human detail, and the row's images as JSON with every value cut
//! short, so that one huge value cannot bloat the table.

use serde_json::{json, Map, Value as Json};

use super::row::Fault;
use crate::changes::RowChange;
use crate::dead_letter::Reason;
use crate::pgoutput::{ColumnValue, Relation, TupleData};

/// How many characters of each value the dead-letter `row` JSON keeps, so one huge value
/// cannot bloat the dead-letter table.
pub(super) const ROW_VALUE_CHARS: usize = 1_000;

/// A row that cannot be used: goes to the dead-letter table with its LSN, and the stream goes
/// on. Carries everything an operator needs to fix and replay the row; [`Reason`] lists why a
/// row can be rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{table} {op}: {detail}")]
pub struct RowRejected {
    /// The table, as `schema.name`.
    pub table: String,
    /// The operation ([`crate::changes::Op::as_str`]).
    pub op: &'static str,
    /// Why (see [`Reason`]).
    pub reason: Reason,
    /// Human detail naming the column and the offending value (values cut to ~200 chars).
    pub detail: String,
    /// The row as JSON: `{"new": {col: text|null}, "old": {...}, "key": {...}}` with only the
    /// parts present; text values cut to 1,000 chars. A value that is neither text nor NULL is
    /// shown as `{"unchanged_toast": true}` or `{"binary_bytes": n}`.
    pub row: Json,
}

pub(super) fn reject_change(change: &RowChange, fault: Fault) -> RowRejected {
    let rel = &*change.relation;
    RowRejected {
        table: format!("{}.{}", rel.schema(), rel.name),
        op: change.op.as_str(),
        reason: fault.reason,
        detail: fault.detail,
        row: row_json(change),
    }
}

/// A change's row images as `{"new": {col: text|null}, "old": {...}, "key": {...}}` (only the
/// parts present, values cut as in [`RowRejected::row`]), so a dead letter raised after mapping
/// (e.g. by the engine) shows the row the same way as one rejected here.
pub fn row_json(change: &RowChange) -> Json {
    let rel = &*change.relation;
    let mut row = Map::new();
    for (part, tuple) in [
        ("new", &change.new),
        ("old", &change.old),
        ("key", &change.key),
    ] {
        if let Some(t) = tuple {
            row.insert(part.to_owned(), tuple_json(rel, t));
        }
    }
    Json::Object(row)
}

/// A tuple as `{column: text|null}`; values past the relation's columns are named `$<index>`.
fn tuple_json(rel: &Relation, tuple: &TupleData) -> Json {
    let mut m = Map::new();
    for (i, v) in tuple.iter().enumerate() {
        let name = rel
            .columns
            .get(i)
            .map_or_else(|| format!("${i}"), |c| c.name.clone());
        let v = match v {
            ColumnValue::Null => Json::Null,
            ColumnValue::Text(b) => Json::String(clip_bytes(b, ROW_VALUE_CHARS)),
            ColumnValue::UnchangedToast => json!({ "unchanged_toast": true }),
            ColumnValue::Binary(b) => json!({ "binary_bytes": b.len() }),
        };
        m.insert(name, v);
    }
    Json::Object(m)
}

/// At most `max` characters of bytes that should be UTF-8, with `…` appended when cut; decodes
/// only a bounded prefix (at most 4 bytes per kept character, so a cut can only split a
/// character beyond the kept ones).
fn clip_bytes(b: &[u8], max: usize) -> String {
    let head = b.get(..max.saturating_mul(4)).unwrap_or(b);
    let lossy = String::from_utf8_lossy(head);
    match lossy.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &lossy[..end]),
        None if head.len() < b.len() => format!("{lossy}…"),
        None => lossy.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_cut_and_invalid_utf8_is_shown_lossily() {
        assert_eq!(clip_bytes(b"ab\xff", 10), "ab\u{fffd}");
        assert_eq!(clip_bytes(b"abcd", 4), "abcd");
        assert_eq!(clip_bytes(b"abcde", 4), "abcd…");
    }
}
