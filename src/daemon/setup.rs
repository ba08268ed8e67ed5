//! `walpoints setup` and the initial snapshot.
//!
//! The slot is created with an exported snapshot; in that very snapshot the referral relations,
//! the open positions and (with `backfill.trades_since`) the trades since then are read, turned
//! into events and evaluated as pseudo-transactions `0/1`, `0/2`, ... (below any real commit
//! LSN), and written in the same store transaction that records the checkpoint at the slot's
//! consistent point, where the stream starts. Nothing committed around `setup` is missed or
//! counted twice.

use tokio_postgres::IsolationLevel;

use crate::config::{quote_ident, Config};
use crate::events::TableKind;
use crate::lsn::Lsn;
use crate::pgconn;
use crate::pipeline::{OpenBatch, Origin, Pipeline};
use crate::points::{Event, PositionStatus, TxEvents};
use crate::source::{quote_literal, AdminSession};
use crate::store::{Checkpoint, DeadLetter, Store};

use super::checks::{check_publication, check_slot, check_tables};
use super::{engine, mapper, DaemonError};

/// Events per pseudo-transaction of the initial snapshot.
const SNAPSHOT_CHUNK: usize = 10_000;

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
    let engine = engine(config)?;
    let mapper = mapper(config);
    if config.backfill_since().is_some() && config.columns.trades_time.trim().is_empty() {
        return Err(DaemonError::BackfillWithoutTime);
    }
    let mut store = Store::connect(&config.store_url(), &config.source.id, true).await?;
    store.migrate().await?;
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-setup").await?;
    let system_id = admin.system_id().await?;
    let mut source_db = pgconn::connect(&config.source.url, "walpoints-setup").await?;
    check_tables(&source_db, config, &mapper).await?;
    let existing = store.checkpoint().await?;
    if let Some(cp) = &existing {
        // Set up before: refuse (without creating anything) if the slot cannot continue.
        check_slot(&mut admin, config, cp, &system_id).await?;
    }
    admin
        .ensure_publication(&config.source.publication, &config.tables.all())
        .await?;
    check_publication(&source_db, config).await?;

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
    if admin.slot(&config.source.slot).await?.is_some() {
        // The store has no checkpoint, so nothing was ever committed from this slot: it is left
        // over from a setup that did not finish, and its exported snapshot is gone.
        tracing::warn!(slot = %config.source.slot, "the slot exists but the store has no checkpoint (an unfinished setup): dropping it and starting over");
        admin.drop_slot(&config.source.slot).await?;
    }
    let exported = admin.create_slot_exporting(&config.source.slot).await?;
    tracing::info!(slot = %config.source.slot, consistent_point = %exported.consistent_point, "slot created");

    let tx = source_db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(snapshot_err("begin the snapshot transaction"))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(&exported.snapshot)
    ))
    .await
    .map_err(snapshot_err("import the slot's snapshot"))?;
    // The snapshot is imported; the replication session may end.
    drop(admin);
    let now: std::time::SystemTime = tx
        .query_one("SELECT now()", &[])
        .await
        .map_err(snapshot_err("read the snapshot's time"))?
        .get(0);
    let snapshot_time = crate::store::micros_of(now);

    // Change tracking on: the snapshot's state reaches the store as deltas, like a batch's.
    let mut state = crate::points::State::new();
    state.enable_change_tracking();
    let mut pipeline = Pipeline::new(
        engine,
        mapper,
        config.truncate.policy,
        state,
        exported.consistent_point,
    );
    let mut report = SetupReport {
        already: false,
        consistent_point: exported.consistent_point,
        checkpoint: exported.consistent_point,
        positions: 0,
        referrals: 0,
        trades: 0,
        entries: 0,
        dead_letters: 0,
    };
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
        rules_version: pipeline.engine().version().to_owned(),
    })
    .await?;

    // Pseudo-transactions 0/1, 0/2, ...: below any real commit LSN, so their ledger rows can
    // never collide with a streamed transaction's.
    let mut pseudo_lsn = 0u64;
    let mut snapshot = Snapshot {
        pipeline: &mut pipeline,
        stx: &stx,
        snapshot_time,
        pseudo_lsn: &mut pseudo_lsn,
        consistent_point: exported.consistent_point,
    };
    let (referrals, _) = snapshot
        .copy(&tx, config, TableKind::Referrals, None, |_| true)
        .await?;
    let (positions, _) = snapshot
        .copy(
            &tx,
            config,
            TableKind::Positions,
            None,
            |e| matches!(e, Event::PositionInserted { new } if new.status == PositionStatus::Open),
        )
        .await?;
    let mut trades = 0;
    if let Some(since) = config.backfill_since() {
        trades = snapshot
            .copy(&tx, config, TableKind::Trades, Some(since), |_| true)
            .await?
            .0;
    }
    report.referrals = referrals;
    report.positions = positions;
    report.trades = trades;
    report.entries = pipeline.progress().entries;
    report.dead_letters = pipeline.progress().dead_letters;
    stx.advance_checkpoint(
        exported.consistent_point,
        exported.consistent_point,
        snapshot_time,
        pipeline.state().stream_time().or(Some(snapshot_time)),
        0,
        pipeline.engine().version(),
    )
    .await?;
    stx.commit().await?;
    tx.commit()
        .await
        .map_err(snapshot_err("end the snapshot transaction"))?;
    Ok(report)
}

fn snapshot_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> DaemonError {
    move |e| DaemonError::Snapshot(format!("{what}: {}", pgconn::error_text(&e)))
}

/// The initial copy: rows read in the slot's snapshot, evaluated as pseudo-transactions and
/// written into the store transaction that also records the checkpoint.
struct Snapshot<'a, 'b> {
    pipeline: &'a mut Pipeline,
    stx: &'a crate::store::StoreTx<'b>,
    snapshot_time: i64,
    pseudo_lsn: &'a mut u64,
    consistent_point: Lsn,
}

impl Snapshot<'_, '_> {
    /// Copies one table (trades: those at or after `since`, in time then id order); `keep`
    /// filters mapped events. Returns (events kept, rows rejected).
    async fn copy(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        config: &Config,
        kind: TableKind,
        since: Option<i64>,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(u64, u64), DaemonError> {
        let table = match kind {
            TableKind::Trades => &config.tables.trades,
            TableKind::Positions => &config.tables.positions,
            TableKind::Referrals => &config.tables.referral_relations,
        };
        let table_sql = table
            .parse::<crate::config::TableName>()
            .map_err(DaemonError::Config)?
            .to_string();
        let columns: Vec<String> = self
            .pipeline
            .mapper()
            .snapshot_columns(kind)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let c = &config.columns;
        let (filter, order) = match kind {
            TableKind::Trades => (
                format!("WHERE {} >= $1", quote_ident(&c.trades_time)),
                format!(
                    "{}, {}",
                    quote_ident(&c.trades_time),
                    quote_ident(&c.trades_id)
                ),
            ),
            TableKind::Positions => (String::new(), quote_ident(&c.positions_id)),
            TableKind::Referrals => (String::new(), quote_ident(&c.referrals_referee)),
        };
        let sql = format!(
            "SELECT {} FROM {table_sql} {filter} ORDER BY {order}",
            list.join(", ")
        );
        let since_time = since.map(crate::store::time_of);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &since_time {
            Some(t) => vec![t],
            None => vec![],
        };
        let rows = tx
            .query_raw(&sql, params)
            .await
            .map_err(snapshot_err("read the snapshot"))?;
        tokio::pin!(rows);
        let mut chunk = Vec::new();
        let mut dead = Vec::new();
        let (mut kept, mut rejected) = (0u64, 0u64);
        use futures_util::TryStreamExt;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(snapshot_err("read the snapshot"))?
        {
            let texts: Vec<Option<&str>> = (0..columns.len()).map(|i| row.get(i)).collect();
            match self.pipeline.mapper().map_snapshot_row(kind, &texts) {
                Ok(e) if keep(&e) => {
                    kept += 1;
                    chunk.push(e);
                }
                Ok(_) => {}
                Err(r) => {
                    rejected += 1;
                    dead.push(DeadLetter {
                        commit_lsn: Lsn(*self.pseudo_lsn + 1),
                        seq: 0,
                        lsn: self.consistent_point,
                        table: r.table.clone(),
                        op: "snapshot".into(),
                        reason: r.reason.to_owned(),
                        detail: r.detail.clone(),
                        row: r.row.clone(),
                        at: self.snapshot_time,
                    });
                }
            }
            if chunk.len() >= SNAPSHOT_CHUNK {
                self.flush(std::mem::take(&mut chunk), std::mem::take(&mut dead))
                    .await?;
            }
        }
        if !chunk.is_empty() || !dead.is_empty() {
            self.flush(chunk, dead).await?;
        }
        Ok((kept, rejected))
    }

    async fn flush(
        &mut self,
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    ) -> Result<(), DaemonError> {
        *self.pseudo_lsn += 1;
        let lsn = Lsn(*self.pseudo_lsn);
        let txe = TxEvents {
            commit_lsn: lsn.0,
            commit_time: self.snapshot_time,
            events,
        };
        let table_of = |e: &Event| match e {
            Event::TradeInserted { .. }
            | Event::TradeUpdated { .. }
            | Event::TradeDeleted { .. } => "trades",
            Event::PositionInserted { .. }
            | Event::PositionUpdated { .. }
            | Event::PositionDeleted { .. } => "positions",
            _ => "referral_relations",
        };
        let origin = |k: usize| {
            txe.events.get(k).map(|e| Origin {
                lsn: self.consistent_point,
                table: table_of(e).to_owned(),
                op: "snapshot",
                row: serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
            })
        };
        let mut open = OpenBatch::default();
        self.pipeline
            .evaluate(&mut open, &txe, self.consistent_point, dead, origin)?;
        let mut batch = self.pipeline.take_batch(&mut open);
        self.stx.write(&mut batch).await?;
        Ok(())
    }
}
