//! Why a store operation failed, split by what the caller must do.

use crate::lsn::Lsn;
use crate::pg::connect::{error_text, ConnectError};

/// A failed store operation. [`StoreError::is_transient`] says whether reconnecting and
/// retrying from the checkpoint may succeed; nothing of a failed transaction was committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connecting failed; the [`ConnectError`] says whether to retry, and
    /// [`StoreError::is_missing_database`] tells "not set up yet" apart.
    #[error("{}: {}", if .0.is_transient() { "store unavailable" } else { "store" }, .0)]
    Connect(#[from] ConnectError),
    /// The store went away or restarted mid-transaction, or the transaction hit a
    /// serialization failure or deadlock: reconnect and retry.
    #[error("store unavailable: {what}: {}", error_text(.source))]
    Unavailable {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The batch writer ended; its own error (if any) is the one to report.
    #[error("store unavailable: the store writer stopped")]
    WriterStopped,
    /// Another process moved this source's checkpoint: two instances are running.
    #[error(
        "the store's checkpoint for source {source_id:?} is at {found}, not at {expected} where \
         this process left it: another walpoints instance is writing the same source. Stop it \
         (only one `walpoints run` per source id may run at a time)"
    )]
    Fenced {
        /// The source.
        source_id: String,
        /// Where this process left it.
        expected: Lsn,
        /// Where it is.
        found: String,
    },
    /// A statement failed for good: a bad schema, a constraint violation, a permission.
    #[error("store: {what}: {}", error_text(.source))]
    Failed {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A stored value cannot be read back as what the rules wrote (a hand-edited store), or a
    /// value cannot be encoded for its column.
    #[error("store: {what}: {source}")]
    BadValue {
        /// Which value, where.
        what: String,
        /// Why it does not convert.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A number does not fit the store's column (an ordinal or epoch beyond `int4`).
    #[error("store: {0}")]
    OutOfRange(String),
    /// The store's schema is not the one this build's migrations make.
    #[error("store: {0}")]
    Schema(String),
}

impl StoreError {
    /// Whether reconnecting and retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect(e) => e.is_transient(),
            StoreError::Unavailable { .. } | StoreError::WriterStopped => true,
            StoreError::Fenced { .. }
            | StoreError::Failed { .. }
            | StoreError::BadValue { .. }
            | StoreError::OutOfRange(_)
            | StoreError::Schema(_) => false,
        }
    }

    /// Whether this is PostgreSQL's "current transaction is aborted" (25P02): the answer to
    /// every statement after one that failed, an echo of that failure rather than a cause.
    pub(crate) fn is_aborted_echo(&self) -> bool {
        match self {
            StoreError::Unavailable { source, .. } | StoreError::Failed { source, .. } => {
                source.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
            }
            _ => false,
        }
    }

    /// Whether the store's database does not exist: `setup` has never run (it creates it).
    pub fn is_missing_database(&self) -> bool {
        matches!(self, StoreError::Connect(ConnectError::NoDatabase { .. }))
    }

    /// Wraps a driver error with what we were doing, classified (transient or not), so that
    /// commands reading the store (`replay`) report their errors as the store does.
    pub(crate) fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
        move |source| {
            if crate::pg::connect::is_transient(&source) {
                StoreError::Unavailable { what, source }
            } else {
                StoreError::Failed { what, source }
            }
        }
    }

    /// A value that does not convert, with what it was.
    pub(crate) fn bad_value(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::BadValue {
            what: what.into(),
            source: source.into(),
        }
    }
}
