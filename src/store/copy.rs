//! PostgreSQL's binary COPY format, written straight into large buffers.
//!
//! The ledger is the store's biggest write (two to four rows per trade). Encoding its rows here,
//! with each value's binary form written in place, and handing the connection chunks of
//! `CHUNK_BYTES` instead of the driver's generic per-row writer (a boxed value per column, a
//! channel message every 4 kB) takes most of walpoints' own cost of a row off its CPU.

use bytes::{BufMut, Bytes, BytesMut};
use rust_decimal::Decimal;
use tokio_postgres::types::{ToSql, Type};

use super::StoreError;

/// Bytes of rows handed to the connection at a time.
pub(super) const CHUNK_BYTES: usize = 256 * 1024;

/// `PGCOPY\n\377\r\n\0`, no flags, no header extension.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Rows being encoded; the header goes before the first.
pub(super) struct Rows {
    buf: BytesMut,
}

impl Rows {
    pub(super) fn new() -> Rows {
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 4096);
        buf.put_slice(HEADER);
        Rows { buf }
    }

    /// Starts a row of `fields` values; write exactly that many.
    pub(super) fn row(&mut self, fields: i16) -> Row<'_> {
        self.buf.put_i16(fields);
        Row { buf: &mut self.buf }
    }

    /// Bytes encoded and not yet taken.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes so far, to send.
    pub(super) fn take(&mut self) -> Bytes {
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK_BYTES + 4096);
        chunk
    }

    /// The last bytes, with the trailer.
    pub(super) fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

/// Rows encoded into a list of chunks of about [`CHUNK_BYTES`], for one COPY.
pub(super) struct Chunks {
    rows: Rows,
    done: Vec<Bytes>,
}

impl Chunks {
    pub(super) fn new() -> Chunks {
        Chunks {
            rows: Rows::new(),
            done: Vec::new(),
        }
    }

    /// Starts a row of `fields` values; write exactly that many.
    pub(super) fn row(&mut self, fields: i16) -> Row<'_> {
        self.rows.row(fields)
    }

    /// Closes the current chunk once it is big enough; call after each row.
    pub(super) fn flush_if_full(&mut self) {
        if self.rows.len() >= CHUNK_BYTES {
            self.done.push(self.rows.take());
        }
    }

    /// Every chunk, the trailer in the last.
    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.done.push(self.rows.finish());
        self.done
    }
}

/// One row's values, in column order.
pub(super) struct Row<'a> {
    buf: &'a mut BytesMut,
}

impl Row<'_> {
    pub(super) fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    pub(super) fn text(&mut self, s: &str) {
        self.buf.put_i32(i32::try_from(s.len()).unwrap_or(i32::MAX));
        self.buf.put_slice(s.as_bytes());
    }

    pub(super) fn i16(&mut self, v: i16) {
        self.buf.put_i32(2);
        self.buf.put_i16(v);
    }

    pub(super) fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub(super) fn opt_numeric(&mut self, d: Option<&Decimal>) -> Result<(), StoreError> {
        match d {
            Some(d) => self.numeric(d),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    pub(super) fn opt_timestamp(&mut self, unix_micros: Option<i64>) {
        match unix_micros {
            Some(t) => self.timestamp(t),
            None => self.null(),
        }
    }

    pub(super) fn i32(&mut self, v: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
    }

    /// An `int8` or a `pg_lsn` (both 8 bytes, big-endian).
    pub(super) fn i64(&mut self, v: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    pub(super) fn bool(&mut self, v: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(u8::from(v));
    }

    /// A `timestamptz` from µs since 1970 (the wire counts from 2000).
    pub(super) fn timestamp(&mut self, unix_micros: i64) {
        self.i64(crate::time::to_pg_micros(unix_micros));
    }

    /// A `numeric`, in rust_decimal's own binary encoding, written in place.
    pub(super) fn numeric(&mut self, d: &Decimal) -> Result<(), StoreError> {
        let at = self.buf.len();
        self.buf.put_i32(0);
        d.to_sql(&Type::NUMERIC, self.buf)
            .map_err(|source| StoreError::bad_value(format!("encoding {d}"), source))?;
        let len = i32::try_from(self.buf.len() - at - 4).unwrap_or(i32::MAX);
        if let Some(slot) = self.buf.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }
}
