//! TupleData: the positional column values of one row image in Insert, Update and Delete.

use bytes::Bytes;

use super::{DecodeError, Reader};

/// One row image as pgoutput sends it: values in the relation's column order, without names.
///
/// Names and types come from the [`Relation`](super::Relation) announced earlier for the same
/// oid; pair them with [`Relation::pair`](super::Relation::pair), which checks the counts agree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// The column values, in the relation's column order (generated columns excluded, as in
    /// the Relation message).
    pub columns: Vec<ColumnValue>,
}

/// One column of a [`TupleData`], as tagged on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `'n'`: the value is SQL NULL.
    Null,
    /// `'u'`: an unchanged TOASTed value. PostgreSQL does not resend large out-of-line values
    /// that an UPDATE left alone (under REPLICA IDENTITY DEFAULT), so the actual value is not
    /// known from this message; it is *not* NULL.
    UnchangedToast,
    /// `'t'`: the value in the type's text output format (as `SELECT col::text` prints it),
    /// as a zero-copy slice of the message payload.
    Text(Bytes),
    /// `'b'`: the value in the type's binary send format; only sent when the subscriber asked
    /// for `binary true`, which walpoints does not.
    Binary(Bytes),
}

impl ColumnValue {
    /// The text-format bytes, if this is a text value; the typical accessor for the events
    /// mapping, which treats NULL, unchanged TOAST and binary differently from a value.
    pub fn as_text(&self) -> Option<&Bytes> {
        match self {
            ColumnValue::Text(b) => Some(b),
            _ => None,
        }
    }

    /// Whether this is SQL NULL (an unchanged TOAST value is not NULL).
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }
}

impl TupleData {
    /// Number of columns, to compare against the relation's column count.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the tuple has no columns (a table with no replicated columns).
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The value at a column position, `None` past the end, so lookups by a cached index never
    /// panic.
    pub fn get(&self, index: usize) -> Option<&ColumnValue> {
        self.columns.get(index)
    }

    /// Iterates over the values in column order.
    pub fn iter(&self) -> std::slice::Iter<'_, ColumnValue> {
        self.columns.iter()
    }
}

impl<'a> IntoIterator for &'a TupleData {
    type Item = &'a ColumnValue;
    type IntoIter = std::slice::Iter<'a, ColumnValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.columns.iter()
    }
}

/// Decodes a TupleData: Int16 column count, then per column a kind byte and, for `t`/`b`, an
/// Int32 length and that many bytes.
pub(super) fn decode_tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = r.count16("tuple column count")?;
    // Each column takes at least one byte, so a lying count cannot make us over-allocate.
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for column in 0..count {
        let offset = r.offset();
        let value = match r.u8("tuple column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => {
                let len = r.count32("text column length")?;
                ColumnValue::Text(r.bytes(len, "text column value")?)
            }
            b'b' => {
                let len = r.count32("binary column length")?;
                ColumnValue::Binary(r.bytes(len, "binary column value")?)
            }
            kind => {
                return Err(DecodeError::UnknownColumnKind {
                    kind,
                    column,
                    offset,
                })
            }
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}
