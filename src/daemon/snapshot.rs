//! The initial copy of `setup`: rows read in the new slot's exported snapshot, mapped exactly as
//! the stream maps an insert, evaluated as pseudo-transactions `0/1`, `0/2`, … (below any real
//! commit LSN, so their ledger rows can never collide with a streamed transaction's), and
//! written into the store transaction that also records the checkpoint.

use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use super::batch::{Evaluator, OpenBatch, Origin, Progress};
use super::DaemonError;
use crate::cmd::progress::ProgressLine;
use crate::config::TruncatePolicy;
use crate::dead_letter::DeadLetter;
use crate::identifier::quote_ident;
use crate::lsn::Lsn;
use crate::mapping::{Columns, Mapper, TableKind, Tables};
use crate::pg::snapshot::SnapshotError;
use crate::points::{Engine, Event, PositionStatus, State, TxEvents};
use crate::store::StoreTx;
use crate::time::system_time;

/// Events per pseudo-transaction of the initial snapshot.
const SNAPSHOT_CHUNK: usize = 10_000;

/// The copy in progress: an evaluator with a fresh state, and the store transaction it writes.
pub(super) struct InitialCopy<'a, 'b> {
    evaluator: Evaluator,
    stx: &'a StoreTx<'b>,
    snapshot_time: i64,
    consistent_point: Lsn,
    /// The last pseudo-transaction's commit LSN.
    pseudo_lsn: u64,
}

impl<'a, 'b> InitialCopy<'a, 'b> {
    /// A copy at the snapshot's time, ending at the slot's consistent point.
    pub(super) fn new(
        engine: Engine,
        mapper: Mapper,
        truncate: TruncatePolicy,
        stx: &'a StoreTx<'b>,
        snapshot_time: i64,
        consistent_point: Lsn,
    ) -> Self {
        // Change tracking on: the snapshot's state reaches the store as deltas, like a batch's.
        let mut state = State::new();
        state.enable_change_tracking();
        InitialCopy {
            evaluator: Evaluator::new(engine, mapper, truncate, state),
            stx,
            snapshot_time,
            consistent_point,
            pseudo_lsn: 0,
        }
    }

    /// Every referral relation, by referee; returns how many were copied.
    pub(super) async fn referrals(
        &mut self,
        tx: &Transaction<'_>,
        tables: &Tables,
    ) -> Result<u64, DaemonError> {
        let c = self.evaluator.mapper().columns().referrals_referee.clone();
        self.copy(
            tx,
            tables,
            TableKind::Referrals,
            None,
            &quote_ident(&c),
            |_| true,
        )
        .await
    }

    /// The open positions, by id (holding starts at the snapshot's time); returns how many.
    pub(super) async fn open_positions(
        &mut self,
        tx: &Transaction<'_>,
        tables: &Tables,
    ) -> Result<u64, DaemonError> {
        let c = self.evaluator.mapper().columns().positions_id.clone();
        self.copy(
            tx,
            tables,
            TableKind::Positions,
            None,
            &quote_ident(&c),
            |e| matches!(e, Event::PositionInserted { new } if new.status == PositionStatus::Open),
        )
        .await
    }

    /// The trades at or after `since`, in (time, id) order, awarded as fills; returns how many.
    pub(super) async fn trades_since(
        &mut self,
        tx: &Transaction<'_>,
        tables: &Tables,
        columns: &Columns,
        since: i64,
    ) -> Result<u64, DaemonError> {
        let (time, id) = (
            quote_ident(&columns.trades_time),
            quote_ident(&columns.trades_id),
        );
        let filter = format!("WHERE {time} >= $1");
        self.copy(
            tx,
            tables,
            TableKind::Trades,
            Some((&filter, since)),
            &format!("{time}, {id}"),
            |_| true,
        )
        .await
    }

    /// The engine's stream time after the copy, what it wrote, and its rules version.
    pub(super) fn finish(self) -> (Option<i64>, Progress, String) {
        (
            self.evaluator.state().stream_time(),
            self.evaluator.progress().clone(),
            self.evaluator.engine().version().to_owned(),
        )
    }

    /// Copies one table, rows in `order`, filtered by `since` (a WHERE clause on `$1` and its
    /// instant); `keep` filters mapped events. Returns the events kept.
    async fn copy(
        &mut self,
        tx: &Transaction<'_>,
        tables: &Tables,
        table: TableKind,
        since: Option<(&str, i64)>,
        order: &str,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<u64, DaemonError> {
        let columns: Vec<String> = self
            .evaluator
            .mapper()
            .snapshot_columns(table)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} {} ORDER BY {order}",
            list.join(", "),
            tables.name_of(table)?,
            since.map_or("", |(filter, _)| filter)
        );
        let since_time = since.map(|(_, t)| system_time(t));
        let params: Vec<&(dyn ToSql + Sync)> = match &since_time {
            Some(t) => vec![t],
            None => vec![],
        };
        let read = |source| SnapshotError {
            what: "read the snapshot",
            source,
        };
        // The planner's row estimate as the total: a count would scan the business table.
        let estimate: i64 = tx
            .query_one(
                &format!(
                    "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = {}::regclass",
                    crate::identifier::quote_literal(&tables.name_of(table)?.to_string())
                ),
                &[],
            )
            .await
            .map_err(read)?
            .get(0);
        let mut progress = ProgressLine::new(
            format!("setup: snapshot of {}", table.as_str()),
            "rows",
            u64::try_from(estimate).unwrap_or(0),
        );
        let mut seen = 0u64;
        let rows = tx.query_raw(&sql, params).await.map_err(read)?;
        tokio::pin!(rows);
        let mut chunk = Vec::new();
        let mut dead = Vec::new();
        let mut kept = 0u64;
        while let Some(row) = rows.try_next().await.map_err(read)? {
            seen += 1;
            progress.tick(seen);
            let texts: Vec<Option<&str>> = (0..columns.len()).map(|i| row.get(i)).collect();
            match self.evaluator.mapper().map_snapshot_row(table, &texts) {
                Ok(e) if keep(&e) => {
                    kept += 1;
                    chunk.push(e);
                }
                Ok(_) => {}
                Err(r) => dead.push(DeadLetter {
                    commit_lsn: Lsn(self.pseudo_lsn + 1),
                    seq: 0,
                    lsn: self.consistent_point,
                    table: r.table,
                    op: "snapshot".into(),
                    reason: r.reason,
                    detail: r.detail,
                    row: r.row,
                    at: self.snapshot_time,
                }),
            }
            if chunk.len() >= SNAPSHOT_CHUNK {
                self.flush(table, std::mem::take(&mut chunk), std::mem::take(&mut dead))
                    .await?;
            }
        }
        if !chunk.is_empty() || !dead.is_empty() {
            self.flush(table, chunk, dead).await?;
        }
        progress.finish(seen);
        Ok(kept)
    }

    /// Evaluates `events` of `table` as the next pseudo-transaction and writes its outcome.
    async fn flush(
        &mut self,
        table: TableKind,
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    ) -> Result<(), DaemonError> {
        self.pseudo_lsn += 1;
        let txe = TxEvents {
            commit_lsn: self.pseudo_lsn,
            commit_time: self.snapshot_time,
            events,
        };
        let origin = |k: usize| {
            txe.events.get(k).map(|e| Origin {
                lsn: self.consistent_point,
                table: table.as_str().to_owned(),
                op: "snapshot",
                row: serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
            })
        };
        let mut open = OpenBatch::default();
        self.evaluator
            .evaluate(&mut open, &txe, self.consistent_point, dead, origin)?;
        let mut batch = self.evaluator.take_batch(&mut open);
        self.stx.write(&mut batch).await?;
        Ok(())
    }
}
