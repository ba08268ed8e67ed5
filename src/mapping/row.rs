//! Reading the mapped columns of one row image, by name, as the rules' types: a tuple of the
//! stream (with the full old row for unchanged TOAST values) or a snapshot row of texts. Every
//! value that cannot be used becomes a [`Fault`] with its [`Reason`].

use std::borrow::Cow;

use rust_decimal::Decimal;

use crate::changes::RowChange;
use crate::dead_letter::Reason;
use crate::pgoutput::{ColumnValue, Relation, TupleData};
use crate::value;

/// How many characters of an offending value a rejection's `detail` quotes.
pub(super) const DETAIL_VALUE_CHARS: usize = 200;
/// The longest id or address (in bytes) a row may carry. Ids and addresses are keys of the
/// store's B-tree indexes, and PostgreSQL refuses an index row above ~2,700 bytes: a longer
/// value would fail the whole store transaction on every retry and wedge the stream. The
/// referrer index holds two addresses, hence half that, rounded down. Real ids and addresses
/// are under 100 bytes.
pub const MAX_KEY_BYTES: usize = 1_024;

/// Why a row was rejected, before the table, op and row JSON are attached (those are only
/// rendered when a row actually fails).
pub(super) struct Fault {
    pub(super) reason: Reason,
    pub(super) detail: String,
}

impl Fault {
    pub(super) fn new(reason: Reason, detail: String) -> Fault {
        Fault { reason, detail }
    }
}

pub(super) fn bad_value(col: &str, e: value::ValueError) -> Fault {
    // ValueError already quotes a bounded prefix of the value.
    Fault::new(Reason::BadValue, format!("column {col:?}: {e}"))
}

/// One row image to read mapped columns from, by name.
pub(super) enum Row<'a> {
    /// A pgoutput tuple; `fallback` (the full old row) supplies unchanged TOAST values.
    Tuple {
        rel: &'a Relation,
        tuple: &'a TupleData,
        fallback: Option<&'a TupleData>,
    },
    /// A snapshot row: `texts[i]` is the value of column `names[i]`.
    Texts {
        names: &'a [&'a str],
        texts: &'a [Option<&'a str>],
    },
}

impl<'a> Row<'a> {
    /// The text bytes of `col`, `None` for NULL; anything unreadable is a fault.
    pub(super) fn get(&self, col: &str) -> Result<Option<&'a [u8]>, Fault> {
        let missing = || {
            Fault::new(
                Reason::MissingColumn,
                format!("column {col:?} is not in the row"),
            )
        };
        match *self {
            Row::Tuple {
                rel,
                tuple,
                fallback,
            } => {
                let i = rel.column_index(col).ok_or_else(missing)?;
                let mut v = tuple.get(i).ok_or_else(missing)?;
                if let (ColumnValue::UnchangedToast, Some(old)) =
                    (v, fallback.and_then(|f| f.get(i)))
                {
                    v = old;
                }
                match v {
                    ColumnValue::Text(b) => Ok(Some(b)),
                    ColumnValue::Null => Ok(None),
                    ColumnValue::UnchangedToast => Err(Fault::new(
                        Reason::UnchangedToast,
                        format!(
                            "column {col:?} is an unchanged TOAST value and no full old row \
                             carries it (set REPLICA IDENTITY FULL on the table)"
                        ),
                    )),
                    ColumnValue::Binary(_) => Err(Fault::new(
                        Reason::BadValue,
                        format!("column {col:?} arrived in binary format; walpoints reads text"),
                    )),
                }
            }
            Row::Texts { names, texts } => {
                let i = names.iter().position(|n| *n == col).ok_or_else(missing)?;
                Ok(texts.get(i).ok_or_else(missing)?.map(str::as_bytes))
            }
        }
    }

    pub(super) fn required(&self, col: &str) -> Result<&'a [u8], Fault> {
        self.get(col)?
            .ok_or_else(|| Fault::new(Reason::NullValue, format!("column {col:?} is NULL")))
    }

    pub(super) fn opt_string(&self, col: &str) -> Result<Option<String>, Fault> {
        self.get(col)?
            .map(|b| {
                value::text(b)
                    .map(str::to_owned)
                    .map_err(|e| bad_value(col, e))
            })
            .transpose()
    }

    pub(super) fn string(&self, col: &str) -> Result<String, Fault> {
        let b = self.required(col)?;
        value::text(b)
            .map(str::to_owned)
            .map_err(|e| bad_value(col, e))
    }

    /// An id or address: a required string of at most [`MAX_KEY_BYTES`].
    pub(super) fn key_string(&self, col: &str) -> Result<String, Fault> {
        check_key_len(col, self.string(col)?)
    }

    pub(super) fn opt_decimal(&self, col: &str) -> Result<Option<Decimal>, Fault> {
        self.get(col)?
            .map(|b| value::decimal(b).map_err(|e| bad_value(col, e)))
            .transpose()
    }

    pub(super) fn decimal(&self, col: &str) -> Result<Decimal, Fault> {
        value::decimal(self.required(col)?).map_err(|e| bad_value(col, e))
    }

    pub(super) fn timestamp(&self, col: &str) -> Result<i64, Fault> {
        value::timestamp_micros(self.required(col)?).map_err(|e| bad_value(col, e))
    }

    /// A decimal that must not be negative.
    pub(super) fn price(&self, col: &str) -> Result<Decimal, Fault> {
        let p = self.decimal(col)?;
        if p.is_sign_negative() && !p.is_zero() {
            return Err(Fault::new(
                Reason::NegativePrice,
                format!("column {col:?}: negative price {p}"),
            ));
        }
        Ok(p)
    }
}

/// The key of a deleted row: from the replica-identity key, else the full old row.
pub(super) fn key(change: &RowChange, col: &str) -> Result<String, Fault> {
    let rel = &*change.relation;
    for tuple in [change.key.as_ref(), change.old.as_ref()]
        .into_iter()
        .flatten()
    {
        let row = Row::Tuple {
            rel,
            tuple,
            fallback: None,
        };
        if let Some(id) = row.opt_string(col)? {
            return check_key_len(col, id);
        }
    }
    Err(Fault::new(
        Reason::MissingKey,
        format!(
            "delete carries no value for key column {col:?} (the table's replica identity \
             must include it, or be FULL)"
        ),
    ))
}

/// `value` unless it is longer than [`MAX_KEY_BYTES`].
fn check_key_len(col: &str, value: String) -> Result<String, Fault> {
    if value.len() <= MAX_KEY_BYTES {
        return Ok(value);
    }
    Err(Fault::new(
        Reason::TooLong,
        format!(
            "column {col:?}: {} bytes, more than the {MAX_KEY_BYTES} an id or address may have: \
             {:?}",
            value.len(),
            clip(&value, DETAIL_VALUE_CHARS)
        ),
    ))
}

/// At most `max` characters of `s`, with `…` appended when cut.
pub(super) fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
        None => Cow::Borrowed(s),
    }
}
