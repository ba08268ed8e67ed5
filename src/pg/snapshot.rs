//! Reading the source exactly as a new slot saw it.
//!
//! `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` names a snapshot that holds exactly the commits
//! before the slot's consistent point, where the slot's stream begins. Reading the business
//! tables in that snapshot is how `setup` copies the source without a gap or an overlap with
//! the stream, and how `verify` compares the tables with the store at one LSN; both open the
//! snapshot with [`read_in`].

use tokio_postgres::{Client, IsolationLevel, Transaction};

use crate::identifier::quote_literal;
use crate::lsn::Lsn;

/// A slot just created with its snapshot exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSlot {
    /// The first LSN whose commits the slot streams; the snapshot holds everything before.
    pub consistent_point: Lsn,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// Why the exported snapshot could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", crate::pg::connect::error_text(.source))]
pub struct SnapshotError {
    /// The step that failed.
    pub what: &'static str,
    /// The server's or the driver's error.
    pub source: tokio_postgres::Error,
}

/// Begins, on `client`, a read-only repeatable-read transaction in `exported`'s snapshot.
///
/// The snapshot can be imported only while the session that created the slot is open and has
/// run nothing since, so call this before that session does anything else; once it returns,
/// that session may end.
pub async fn read_in<'a>(
    client: &'a mut Client,
    exported: &ExportedSlot,
) -> Result<Transaction<'a>, SnapshotError> {
    let step = |what| move |source| SnapshotError { what, source };
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(step("begin the snapshot transaction"))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(&exported.snapshot)
    ))
    .await
    .map_err(step("import the slot's snapshot"))?;
    Ok(tx)
}
