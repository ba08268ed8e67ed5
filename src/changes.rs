//! Row changes and transactions: pgoutput messages joined with their relation, in commit order.
//!
//! This is the boundary between the wire format and the domain: everything downstream (the
//! events mapping, `tail`) sees a [`RowChange`] that knows its table and columns, and a
//! [`Transaction`] that knows its commit LSN and time, never a raw relation oid.

use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::Lsn;
use crate::pgoutput::{Relation, TupleData};

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// A new row (`new` is set).
    Insert,
    /// A changed row (`new` is set; `old` under REPLICA IDENTITY FULL, `key` when the key
    /// changed under DEFAULT or INDEX).
    Update,
    /// A removed row (`old` under FULL, else `key`).
    Delete,
    /// The whole table was emptied; no tuples.
    Truncate,
}

impl Op {
    /// Every operation, in the order per-operation counts are kept.
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// The position of this operation in [`Op::ALL`].
    pub fn index(self) -> usize {
        match self {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Truncate => 3,
        }
    }

    /// The lowercase name used in `tail` output and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// One row change with the shape of its table at the time it was written.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// WAL position of the change record.
    pub lsn: Lsn,
    /// The table, with its columns as of this change (shared with the relation cache).
    pub relation: Arc<Relation>,
    /// Insert, update, delete or truncate.
    pub op: Op,
    /// The row after the change.
    pub new: Option<TupleData>,
    /// The whole row before the change (REPLICA IDENTITY FULL only).
    pub old: Option<TupleData>,
    /// The replica-identity key of the row before the change (non-key columns are null).
    pub key: Option<TupleData>,
}

/// What is known when a transaction starts: pgoutput's Begin carries the commit LSN and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxBegin {
    /// The source transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub commit_time: i64,
}

/// What pgoutput's Commit adds: where the transaction ends in the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxCommit {
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to checkpoint and acknowledge.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub commit_time: i64,
}

/// A committed source transaction with all its changes, in the order they were made.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The source transaction id.
    pub xid: u32,
    /// LSN of the commit record; with an ordinal it identifies a ledger entry forever.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record; the checkpoint after this transaction.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (UTC): walpoints' only clock.
    pub commit_time: i64,
    /// The row changes of published tables.
    pub changes: Vec<RowChange>,
    /// Transactional logical messages (prefix, content), e.g. heartbeats.
    pub messages: Vec<(String, Bytes)>,
}

impl Transaction {
    /// An empty transaction as announced by Begin; the end LSN comes with Commit.
    pub fn new(begin: TxBegin) -> Transaction {
        Transaction {
            xid: begin.xid,
            commit_lsn: begin.commit_lsn,
            end_lsn: Lsn::ZERO,
            commit_time: begin.commit_time,
            changes: Vec::new(),
            messages: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_indexes_match_all() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{}", op.as_str());
        }
    }
}
