//! A pure decoder for PostgreSQL's `pgoutput` logical replication protocol, version 1.
//!
//! The replication source hands us the payload of each `XLogData` message as [`Bytes`]; [`decode`]
//! turns it into one [`Message`] without any I/O, so the wire format can be tested exhaustively
//! (property tests feed it random, truncated and mutated input) apart from the network.
//!
//! The message shapes follow the "Logical Replication Message Formats" chapter of the PostgreSQL
//! protocol documentation field by field. Only protocol version 1 is understood: walpoints asks
//! for `proto_version '1'` and does not stream in-progress transactions, so the version-2+ xid
//! prefixes and the stream/prepare messages never appear and are rejected as unknown tags.
//!
//! Two properties matter for everything downstream:
//! - **No panics.** Every read is bounds-checked and malformed input becomes a [`DecodeError`]
//!   that names the field and the byte offset (from the start of the payload, tag byte = 0), so a
//!   corrupt message stops the stream with a precise diagnosis instead of aborting the process.
//! - **Zero-copy column values.** Text and binary column values are [`Bytes`] slices of the
//!   input, so a row costs one `Vec` allocation for its tuple and nothing per column.
//!
//! [`RelationCache`] keeps the schema that `Relation` messages announce, because row messages
//! carry only the relation oid and positional column values.

mod message;
mod relation;
mod tuple;

#[cfg(test)]
mod tests;

pub use message::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin, Relation,
    ReplicaIdentity, Truncate, Type, Update,
};
pub use relation::{RelationCache, RelationError};
pub use tuple::{ColumnValue, TupleData};

use bytes::Bytes;

/// Decodes one pgoutput message (the payload of one `XLogData`).
///
/// The whole input must be exactly one message: leftover bytes are an error, because they mean
/// the decoder and the server disagree about the format and later fields would be misread.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    message::decode_message(data)
}

impl TryFrom<&Bytes> for Message {
    type Error = DecodeError;

    /// Same as [`decode`]; offered so callers can write `Message::try_from(&payload)`.
    fn try_from(data: &Bytes) -> Result<Self, Self::Error> {
        decode(data)
    }
}

/// Why a pgoutput payload could not be decoded.
///
/// Every variant that concerns a position carries `offset`, the index in the payload (the tag
/// byte is 0) where the offending field starts, and names the field, so an operator can match the
/// error against a hex dump of the message. Any of these means the stream cannot be trusted past
/// this point: the replication source should stop rather than skip the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload had no bytes at all, so not even a tag.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a protocol-version-1 message tag.
    #[error("unknown pgoutput message tag {} at offset 0", show_byte(*.tag))]
    UnknownTag {
        /// The byte found where the tag should be.
        tag: u8,
    },
    /// The payload ended before a field was complete.
    #[error(
        "truncated pgoutput message: {field} at offset {offset} needs {needed} bytes, \
         only {available} left"
    )]
    Truncated {
        /// Which field was being read.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
        /// How many bytes the field needs.
        needed: usize,
        /// How many bytes were left.
        available: usize,
    },
    /// A NUL-terminated string ran to the end of the payload without its terminator.
    #[error("unterminated string: {field} at offset {offset} has no NUL terminator")]
    UnterminatedString {
        /// Which string field.
        field: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A name or prefix is not valid UTF-8 (walpoints requires a UTF8-encoded source database).
    #[error("invalid UTF-8 in {field} at offset {offset}")]
    InvalidUtf8 {
        /// Which string field.
        field: &'static str,
        /// The offset of the first invalid byte.
        offset: usize,
    },
    /// A count or length field holds a negative number.
    #[error("negative {field} {value} at offset {offset}")]
    NegativeLength {
        /// Which count or length.
        field: &'static str,
        /// The value read.
        value: i32,
        /// Where the field starts.
        offset: usize,
    },
    /// The replica identity byte of a Relation message is not `d`, `n`, `f` or `i`.
    #[error("bad replica identity {} at offset {offset}: expected d, n, f or i", show_byte(*.value))]
    BadReplicaIdentity {
        /// The byte found.
        value: u8,
        /// Where it is.
        offset: usize,
    },
    /// A tuple marker (`N`, `K`, `O`) is missing or not allowed at this point of the message.
    #[error("unexpected tuple marker {} in {message} at offset {offset}: expected {expected}", show_byte(*.found))]
    UnexpectedTupleMarker {
        /// Which message was being decoded.
        message: &'static str,
        /// The byte found.
        found: u8,
        /// The markers allowed here.
        expected: &'static str,
        /// Where the marker is.
        offset: usize,
    },
    /// A TupleData column kind is not `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind {} for column {column} at offset {offset}", show_byte(*.kind))]
    UnknownColumnKind {
        /// The byte found.
        kind: u8,
        /// The zero-based column index within the tuple.
        column: usize,
        /// Where the kind byte is.
        offset: usize,
    },
    /// The old and new tuples of an Update have different column counts, although PostgreSQL
    /// writes both from the same relation descriptor.
    #[error(
        "column count mismatch in Update at offset {offset}: old tuple has {old} columns, \
         new tuple has {new}"
    )]
    ColumnCountMismatch {
        /// Columns in the old (key or full) tuple.
        old: usize,
        /// Columns in the new tuple.
        new: usize,
        /// Where the new tuple starts.
        offset: usize,
    },
    /// Bytes remain after a complete message.
    #[error("{count} trailing bytes after a complete {message} message at offset {offset}")]
    TrailingBytes {
        /// Which message was decoded.
        message: &'static str,
        /// Where the unexpected bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// Shows a protocol byte the way the documentation names it ('B') when printable, else as hex.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("0x{b:02X}")
    }
}

/// A bounds-checked cursor over one payload; every read either succeeds or returns the
/// [`DecodeError`] for the field it was reading, and never panics.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    fn offset(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let truncated = || DecodeError::Truncated {
            field,
            offset: self.pos,
            needed: n,
            available: self.remaining(),
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let start = self.pos;
        let slice = self.take(N, field)?;
        slice.try_into().map_err(|_| DecodeError::Truncated {
            field,
            offset: start,
            needed: N,
            available: slice.len(),
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Oids and xids are unsigned 32-bit on the server and sent as Int32 bit patterns.
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<crate::lsn::Lsn, DecodeError> {
        Ok(crate::lsn::Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// Reads an Int16 count, rejecting negatives.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            field,
            value: i32::from(value),
            offset,
        })
    }

    /// Reads an Int32 count or length, rejecting negatives.
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            field,
            value,
            offset,
        })
    }

    /// Returns the next `n` bytes as a zero-copy slice of the payload.
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, field)?;
        // `take` has checked start..self.pos against the buffer, so `slice` cannot panic.
        Ok(self.buf.slice(start..self.pos))
    }

    /// Reads a NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { field, offset })?;
        let raw = self.take(len, field)?;
        let text = std::str::from_utf8(raw).map_err(|e| DecodeError::InvalidUtf8 {
            field,
            offset: offset.saturating_add(e.valid_up_to()),
        })?;
        self.take(1, field)?; // the NUL terminator
        Ok(text.to_owned())
    }

    /// Succeeds only if the whole payload has been consumed.
    fn finish(self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message,
                offset: self.pos,
                count,
            }),
        }
    }
}
