//! What can stop a command, and what the operator should do about each.
//!
//! Every refusal ends with a link to its entry in the README's runbook ("The daemon refuses to
//! start"), where the longer story and the safe next steps are; keep the anchors in step.

use super::batch::BatchError;
use crate::http::HttpError;
use crate::identifier::BadTableName;
use crate::lsn::Lsn;
use crate::pg::connect::ConnectError;
use crate::pg::snapshot::SnapshotError;
use crate::pg::SourceError;
use crate::points::RulesError;
use crate::store::StoreError;

/// Why a command failed; the definite ones carry the operator's next step.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The points rules cannot be used.
    #[error("configuration: {0}. Runbook: README.md#a-configuration-error")]
    Rules(#[from] RulesError),
    /// A configured table name does not parse.
    #[error("configuration: {0}. Runbook: README.md#a-configuration-error")]
    TableName(#[from] BadTableName),
    /// The HTTP server cannot start (its address, its pool).
    #[error("configuration: {0}. Runbook: README.md#a-configuration-error")]
    Http(#[from] HttpError),
    /// `run` before `setup`.
    #[error(
        "source {source_id:?} is not set up in the store: run `walpoints setup` first (it \
         creates the publication, the slot and the initial snapshot). Runbook: \
         README.md#not-set-up"
    )]
    NotSetUp {
        /// The source.
        source_id: String,
    },
    /// The slot is gone but the store has a checkpoint.
    #[error(
        "the replication slot {slot:?} does not exist, but the store has a checkpoint at \
         {checkpoint} for source {source_id:?}: the slot was dropped, and the WAL since the \
         checkpoint is gone with it, so the points since then cannot be computed. To start over \
         from a fresh snapshot: `walpoints teardown --yes --drop-store`, then `walpoints setup` \
         (set backfill.trades_since to award the trades since the loss). Runbook: \
         README.md#the-slot-is-missing"
    )]
    SlotMissing {
        /// The slot.
        slot: String,
        /// The source.
        source_id: String,
        /// The store's checkpoint.
        checkpoint: Lsn,
    },
    /// The configuration names another slot than the one the store's checkpoint belongs to.
    #[error(
        "source {source_id:?} was set up with the slot {recorded:?}, but source.slot is now \
         {configured:?}: a checkpoint is a position in one slot only. Set source.slot back to \
         {recorded:?}, or give the new slot its own source.id (and run `walpoints setup`). \
         Runbook: README.md#the-slot-was-renamed"
    )]
    SlotRenamed {
        /// The source.
        source_id: String,
        /// The slot in the checkpoint.
        recorded: String,
        /// The slot in the configuration.
        configured: String,
    },
    /// The slot was acknowledged past the checkpoint.
    #[error(
        "the slot {slot:?} has confirmed_flush_lsn {confirmed}, ahead of the store's checkpoint \
         {checkpoint}: something other than this store's walpoints acknowledged the slot, or \
         the store was restored from an older backup. The transactions in between will never be \
         streamed again, so walpoints refuses to skip them silently. Restore the matching \
         store, or start over: `walpoints teardown --yes --drop-store`, then `walpoints setup`. \
         Runbook: README.md#the-slot-is-ahead-of-the-checkpoint"
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// Its confirmed position.
        confirmed: Lsn,
        /// The store's checkpoint.
        checkpoint: Lsn,
    },
    /// The server invalidated the slot.
    #[error(
        "the slot {slot:?} was invalidated (wal_status = lost): the server removed WAL it still \
         needed, because walpoints fell further behind than max_slot_wal_keep_size allows. \
         Start over from a fresh snapshot: `walpoints teardown --yes --drop-store`, then \
         `walpoints setup`. Runbook: README.md#the-slot-was-lost"
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// The slot exists but is not a pgoutput logical slot.
    #[error(
        "the slot {slot:?} is not a logical pgoutput slot (plugin {plugin:?}); choose another \
         source.slot. Runbook: README.md#the-slot-is-not-a-pgoutput-slot"
    )]
    WrongSlot {
        /// The slot.
        slot: String,
        /// Its plugin.
        plugin: String,
    },
    /// The source is a different cluster than at setup.
    #[error(
        "the source's system identifier is {found}, but the store was set up against {recorded}: \
         source.url now points at a different cluster (restored from a backup, rebuilt, or \
         another server), whose LSNs mean nothing to this store. Point source.url back at the \
         original cluster, or start over: `walpoints teardown --yes --drop-store`, then \
         `walpoints setup`. Runbook: README.md#the-source-is-a-different-cluster"
    )]
    SystemIdChanged {
        /// At setup.
        recorded: String,
        /// Now.
        found: String,
    },
    /// A configured table is missing on the source.
    #[error(
        "the table {table} (tables.{key} in walpoints.toml) does not exist in the source \
         database: create it, or set tables.{key} to the table's schema-qualified name. \
         Runbook: README.md#a-table-or-column-is-missing"
    )]
    TableMissing {
        /// The table.
        table: String,
        /// Its config key.
        key: &'static str,
    },
    /// Mapped columns are missing on the source.
    #[error(
        "the table {table} has no column {columns}: set the [columns] keys in walpoints.toml to \
         the table's column names, or restore the column. Runbook: \
         README.md#a-table-or-column-is-missing"
    )]
    ColumnMissing {
        /// The table.
        table: String,
        /// The missing columns.
        columns: String,
    },
    /// A mapped amount, price or time column has a type walpoints does not convert: every row
    /// would be dead-lettered, so nothing streams until the mapping or the column changes.
    #[error(
        "the column {table}.{column} (columns.{key}) is of type {found}, but walpoints reads it \
         as {} and converts only {}: change the column's type (for example \
         ALTER TABLE {table} ALTER COLUMN {column} TYPE numeric), or map columns.{key} to a \
         column of one of those types. Runbook: README.md#a-table-or-column-is-missing",
        .kind.as_str(),
        .kind.accepted().join(", ")
    )]
    ColumnType {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its config key.
        key: &'static str,
        /// Its type as `format_type` prints it, e.g. `money`.
        found: String,
        /// What walpoints reads it as, which says the types it converts.
        kind: crate::mapping::ColumnKind,
    },
    /// The publication does not cover a configured table.
    #[error(
        "the publication {publication:?} does not include {table}, so its changes would never \
         arrive: `ALTER PUBLICATION {publication} ADD TABLE {table};` on the source. \
         Runbook: README.md#the-publication-is-missing-or-incomplete"
    )]
    NotPublished {
        /// The publication.
        publication: String,
        /// The table.
        table: String,
    },
    /// The publication is gone.
    #[error(
        "the publication {publication:?} does not exist on the source: run `walpoints setup` \
         (or sql/publication.sql as the tables' owner) to create it. Runbook: \
         README.md#the-publication-is-missing-or-incomplete"
    )]
    NoPublication {
        /// The publication.
        publication: String,
    },
    /// Backfill needs a time column.
    #[error(
        "backfill.trades_since needs columns.trades_time (the trades' time column). Runbook: \
         README.md#a-configuration-error"
    )]
    BackfillWithoutTime,
    /// Another instance holds the source's lock and `run --no-standby` was asked not to wait.
    #[error(
        "another walpoints instance is already running source {source_id:?} against this store \
         ({holder}), and --no-standby says not to wait for it. Stop that instance first, or run \
         without --no-standby to wait as a standby that takes over when it stops. Runbook: \
         README.md#another-instance-is-running"
    )]
    AnotherInstance {
        /// The source.
        source_id: String,
        /// Who holds the lock, as the store shows it.
        holder: String,
    },
    /// After a promotion the store holds points of WAL the new primary's timeline lacks.
    #[error(
        "the store's checkpoint {checkpoint} lies beyond {fork}, where the source's timeline \
         {timeline} left timeline {parent} at a promotion, and the slot there is confirmed only \
         to {confirmed}: the store holds points of transactions in the WAL range {fork} to \
         {checkpoint} of the old primary that never reached the standby now primary, which the \
         cluster no longer has. walpoints stops rather than keep points of trades that do not \
         exist (and misread the new timeline's WAL at the same positions). Start over: \
         `walpoints teardown --yes --drop-store`, then `walpoints setup` (with \
         backfill.trades_since to award the trades since), or restore the store from a backup \
         taken at or before {fork}. To keep this from happening, list the standbys' physical \
         slots in the primary's synchronized_standby_slots. Runbook: README.md#failover"
    )]
    BeyondTimelineFork {
        /// The store's checkpoint.
        checkpoint: Lsn,
        /// Where the current timeline left its parent.
        fork: Lsn,
        /// The current timeline.
        timeline: u32,
        /// Its parent.
        parent: u32,
        /// The slot's confirmed_flush_lsn on the new primary.
        confirmed: Lsn,
    },
    /// `source.failover = true` on a server without failover slots.
    #[error(
        "source.failover = true needs PostgreSQL 17 or later (failover slots, synchronised to \
         standbys by sync_replication_slots), but the source runs PostgreSQL {version}. Set \
         source.failover = false (a failover then loses the slot: see the runbook), or upgrade \
         the source. Runbook: README.md#failover"
    )]
    FailoverUnsupported {
        /// The server's `server_version`.
        version: String,
    },
    /// The slot could not be switched to a failover slot because another session streams it.
    #[error(
        "cannot turn the replication slot {slot:?} into a failover slot while another session \
         streams it ({holder}): ALTER_REPLICATION_SLOT needs the slot idle. `walpoints run` \
         retries at each (re)connect; for `setup`, stop the instance that streams it and run \
         setup again, or just restart `walpoints run` with source.failover = true. Runbook: \
         README.md#failover"
    )]
    FailoverSlotBusy {
        /// The slot.
        slot: String,
        /// Who streams it.
        holder: String,
    },
    /// An SQL connection to the source failed.
    #[error("source: {0}. Runbook: README.md#the-source-cannot-be-reached")]
    Connect(#[from] ConnectError),
    /// The initial snapshot failed.
    #[error("initial snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Teardown without `--yes`.
    #[error(
        "teardown drops the slot {slot:?} and the publication {publication:?}; points can then \
         only start over from a new snapshot. Re-run with --yes to confirm"
    )]
    NotConfirmed {
        /// The slot.
        slot: String,
        /// The publication.
        publication: String,
    },
    /// Streaming or writing failed.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl From<SourceError> for DaemonError {
    fn from(e: SourceError) -> Self {
        DaemonError::Batch(e.into())
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        DaemonError::Batch(e.into())
    }
}

impl DaemonError {
    /// Whether `run` should reconnect and try again.
    pub fn is_transient(&self) -> bool {
        match self {
            DaemonError::Batch(e) => e.is_transient(),
            DaemonError::Connect(e) => e.is_transient(),
            // At a (re)connect the holder is most likely this daemon's previous walsender,
            // which the server ends soon.
            DaemonError::FailoverSlotBusy { .. } => true,
            DaemonError::FailoverUnsupported { .. }
            | DaemonError::BeyondTimelineFork { .. }
            | DaemonError::Rules(_)
            | DaemonError::TableName(_)
            | DaemonError::Http(_)
            | DaemonError::NotSetUp { .. }
            | DaemonError::SlotMissing { .. }
            | DaemonError::SlotRenamed { .. }
            | DaemonError::SlotAhead { .. }
            | DaemonError::SlotLost { .. }
            | DaemonError::WrongSlot { .. }
            | DaemonError::SystemIdChanged { .. }
            | DaemonError::TableMissing { .. }
            | DaemonError::ColumnMissing { .. }
            | DaemonError::ColumnType { .. }
            | DaemonError::NotPublished { .. }
            | DaemonError::NoPublication { .. }
            | DaemonError::BackfillWithoutTime
            | DaemonError::AnotherInstance { .. }
            | DaemonError::Snapshot(_)
            | DaemonError::NotConfirmed { .. } => false,
        }
    }
}
