//! `walpoints setup`, in its phases:
//!
//! 1. **prepare**: the store (created if need be) and its schema, the source's system id, the
//!    configured tables and columns;
//! 2. **already set up?** then only re-check the slot and ensure the publication;
//! 3. **slot**: create the slot with an exported snapshot (dropping one left by a setup that
//!    never finished) and open that snapshot on the source;
//! 4. **snapshot**: copy the source in that snapshot into the store transaction that records
//!    the checkpoint at the slot's consistent point ([`super::snapshot`]), and commit both.
//!
//! Nothing committed around `setup` is missed or counted twice, and re-running it is safe.

use super::checks;
use super::snapshot::InitialCopy;
use super::DaemonError;
use crate::config::Config;
use crate::lsn::Lsn;
use crate::mapping::Mapper;
use crate::pg::snapshot::{self, SnapshotError};
use crate::pg::{connect, AdminSession};
use crate::points::Engine;
use crate::store::{Checkpoint, Store};
use crate::time::micros_of;

/// What `setup` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// The source was set up already; nothing was copied.
    pub already: bool,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// The checkpoint now.
    pub checkpoint: Lsn,
    /// Open positions copied.
    pub positions: u64,
    /// Referral relations copied.
    pub referrals: u64,
    /// Trades backfilled.
    pub trades: u64,
    /// Ledger entries written by the snapshot.
    pub entries: u64,
    /// Snapshot rows dead-lettered.
    pub dead_letters: u64,
}

impl std::fmt::Display for SetupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already {
            write!(
                f,
                "already set up: slot consistent point {}, checkpoint {}",
                self.consistent_point, self.checkpoint
            )
        } else {
            write!(
                f,
                "set up: slot consistent point {}; snapshot copied {} open positions, {} referral \
                 relations and {} backfilled trades ({} ledger entries, {} dead letters)",
                self.consistent_point,
                self.positions,
                self.referrals,
                self.trades,
                self.entries,
                self.dead_letters
            )
        }
    }
}

/// `walpoints setup`: store schema, publication, slot and initial snapshot; safe to re-run.
pub async fn setup(config: &Config) -> Result<SetupReport, DaemonError> {
    // 1. prepare
    let engine = Engine::new(config.rules.clone())?;
    let mapper = Mapper::new(&config.tables, &config.columns);
    if config.backfill_since().is_some() && config.columns.trades_time.trim().is_empty() {
        return Err(DaemonError::BackfillWithoutTime);
    }
    let mut store = Store::connect(&config.store_url(), &config.source.id, true).await?;
    store.migrate().await?;
    store.use_rules(&config.rules).await?;
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-setup").await?;
    let system_id = admin.system_id().await?;
    let mut source_db = connect::connect(&config.source.url, "walpoints-setup").await?;
    checks::tables(&source_db, &config.tables, &mapper).await?;

    // 2. already set up?
    let existing = store.checkpoint().await?;
    if let Some(cp) = &existing {
        // Refuse (without creating anything) if the slot cannot continue.
        checks::slot(&mut admin, &config.source, cp, &system_id).await?;
        checks::failover(&mut admin, &config.source).await?;
    } else {
        checks::failover_supported(&mut admin, &config.source).await?;
    }
    admin
        .ensure_publication(&config.source.publication, &config.tables.all())
        .await?;
    checks::publication(&source_db, &config.source.publication, &config.tables).await?;
    if let Some(cp) = existing {
        return Ok(SetupReport {
            already: true,
            consistent_point: cp.consistent_point,
            checkpoint: cp.lsn,
            positions: 0,
            referrals: 0,
            trades: 0,
            entries: 0,
            dead_letters: 0,
        });
    }

    // 3. slot
    if admin.slot(&config.source.slot).await?.exists() {
        // The store has no checkpoint, so nothing was ever committed from this slot: it is left
        // over from a setup that did not finish, and its exported snapshot is gone.
        tracing::warn!(slot = %config.source.slot, "the slot exists but the store has no checkpoint (an unfinished setup): dropping it and starting over");
        admin.drop_slot(&config.source.slot).await?;
    }
    let exported = admin
        .create_slot_exporting(&config.source.slot, config.source.failover)
        .await?;
    tracing::info!(slot = %config.source.slot, consistent_point = %exported.consistent_point, "slot created");
    let source_tx = snapshot::read_in(&mut source_db, &exported).await?;
    // The snapshot is imported; the replication session may end.
    drop(admin);
    let now: std::time::SystemTime = source_tx
        .query_one("SELECT now()", &[])
        .await
        .map_err(|source| SnapshotError {
            what: "read the snapshot's time",
            source,
        })?
        .get(0);
    let snapshot_time = micros_of(now);

    // 4. snapshot
    let stx = store.begin().await?;
    stx.insert_checkpoint(&Checkpoint {
        source_id: config.source.id.clone(),
        slot_name: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        system_id,
        consistent_point: exported.consistent_point,
        snapshot_time,
        lsn: exported.consistent_point,
        commit_time: snapshot_time,
        stream_time: None,
        transactions: 0,
        rules_version: engine.version().to_owned(),
    })
    .await?;
    let mut copy = InitialCopy::new(
        engine,
        mapper,
        config.truncate.policy,
        &stx,
        snapshot_time,
        exported.consistent_point,
    );
    let referrals = copy.referrals(&source_tx, &config.tables).await?;
    let positions = copy.open_positions(&source_tx, &config.tables).await?;
    let trades = match config.backfill_since() {
        Some(since) => {
            copy.trades_since(&source_tx, &config.tables, &config.columns, since)
                .await?
        }
        None => 0,
    };
    let (stream_time, progress, rules_version) = copy.finish();
    stx.advance_checkpoint(
        exported.consistent_point,
        exported.consistent_point,
        snapshot_time,
        stream_time.or(Some(snapshot_time)),
        0,
        &rules_version,
    )
    .await?;
    stx.commit().await?;
    source_tx.commit().await.map_err(|source| SnapshotError {
        what: "end the snapshot transaction",
        source,
    })?;
    Ok(SetupReport {
        already: false,
        consistent_point: exported.consistent_point,
        checkpoint: exported.consistent_point,
        positions,
        referrals,
        trades,
        entries: progress.entries,
        dead_letters: progress.dead_letters,
    })
}
