//! The batch loop: source transactions → events → points rules → one store transaction →
//! acknowledgement. It owns no business logic; it decides only *when* to commit and makes sure
//! the order of effects keeps the exactly-once invariants:
//!
//! - a transaction whose end LSN is at or below the checkpoint is skipped (it is in the store);
//! - a batch's ledger rows, totals, state, awards, dead letters and new checkpoint commit in one
//!   store transaction ([`crate::store::StoreTx`]);
//! - the slot is acknowledged with the batch's end LSN only after that commit returned.
//!
//! The engine's in-memory state runs ahead of the store while a batch is open, so after any
//! failure the caller must throw this `Pipeline` away and build a new one from the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::change::{Op, RowChange, Transaction};
use crate::config::TruncatePolicy;
use crate::events::{Mapped, Mapper, MappingError, TableKind};
use crate::lsn::Lsn;
use crate::pgoutput::Relation;
use crate::points::{Counters, Engine, EntryKind, EventError, State, StreamError, TxEvents};
use crate::source::{Item, ReplicationSource, SourceError};
use crate::store::{Batch, BatchAwards, DeadLetter, Store, StoreError};
use crate::telemetry::Telemetry;

/// Why the pipeline stopped, split by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the stream failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A followed table no longer has a mapped column.
    #[error("at {lsn}: {source}")]
    Mapping {
        /// Where the table's new shape appeared.
        lsn: Lsn,
        /// What is missing.
        source: MappingError,
    },
    /// A followed table was truncated under `truncate.policy = "stop"`.
    #[error(
        "{table} was TRUNCATEd at {lsn}. walpoints stopped so that points do not silently \
         diverge from an emptied table; nothing after it was processed. If the truncate was \
         intended, set truncate.policy = \"ignore\" (what was awarded stays awarded) and start \
         again; to recompute from scratch, run `walpoints teardown --yes --drop-store` and \
         `walpoints setup`"
    )]
    Truncated {
        /// The table.
        table: String,
        /// WAL position of the TRUNCATE.
        lsn: Lsn,
    },
    /// The rules refused a transaction as a whole.
    #[error("transaction committed at {lsn}: {source}")]
    Stream {
        /// Commit LSN of the transaction.
        lsn: Lsn,
        /// Why.
        source: StreamError,
    },
}

impl PipelineError {
    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Least time between two idle checkpoint moves the server did not ask for (see
/// [`Pipeline::stream`]); with the store on the source's server, each move writes WAL that the
/// walsender then reports as sent, so they must not chase each other.
const IDLE_ADVANCE_EVERY: Duration = Duration::from_secs(10);

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// After this many row changes.
    pub max_changes: u64,
    /// This long after its first transaction.
    pub max_delay: Duration,
}

/// Running totals for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Source transactions applied.
    pub transactions: u64,
    /// Row changes of followed tables seen.
    pub changes: u64,
    /// Ledger entries written.
    pub entries: u64,
    /// Rows dead-lettered.
    pub dead_letters: u64,
    /// Store commits.
    pub batches: u64,
    /// Net points written.
    pub points: Decimal,
    /// The rules' decision counts.
    pub counters: Counters,
}

/// What one batch has collected so far.
#[derive(Debug, Default)]
pub struct OpenBatch {
    batch: Batch,
    awards: BatchAwards,
    /// End LSN and commit time of the last transaction applied.
    end: Option<(Lsn, i64)>,
    transactions: u64,
    changes: u64,
    tally: Tally,
}

/// Counts of one batch for metrics, collected as it is built.
#[derive(Debug, Clone, Default)]
struct Tally {
    /// Row changes by (table, op), indexed by [`TableKind::ALL`] and [`OPS`].
    changes: [[u64; 4]; 3],
    /// (awarded, reversed) points by entry kind, indexed by [`ENTRY_KINDS`].
    points: [(Decimal, Decimal); 6],
    counters: Counters,
}

const OPS: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

const ENTRY_KINDS: [EntryKind; 6] = EntryKind::ALL;

/// What one committed batch did: the daemon turns it into metrics and health.
#[derive(Debug, Clone)]
pub struct BatchReport {
    /// The new checkpoint (acknowledged to the slot).
    pub lsn: Lsn,
    /// Commit time of the batch's last source transaction, µs since 1970.
    pub commit_time: i64,
    /// Source transactions in the batch.
    pub transactions: u64,
    /// Row changes of followed tables in the batch.
    pub changes: u64,
    /// Row changes by (table, op), zero counts left out.
    pub changes_by: Vec<(&'static str, &'static str, u64)>,
    /// Points written by kind: (kind, sum of positive entries, |sum of negative entries|).
    pub points: Vec<(&'static str, Decimal, Decimal)>,
    /// Dead letters by reason code.
    pub dead_letters: Vec<(String, u64)>,
    /// The rules' decision counts.
    pub counters: Counters,
    /// Time spent writing and committing the store transaction.
    pub write: Duration,
}

impl Tally {
    fn change(&mut self, kind: TableKind, op: Op) {
        let t = TableKind::ALL.iter().position(|k| *k == kind);
        let o = OPS.iter().position(|x| *x == op);
        if let (Some(t), Some(o)) = (t, o) {
            self.changes[t][o] += 1;
        }
    }

    fn report(&self, lsn: Lsn, commit_time: i64, open: &OpenBatch, write: Duration) -> BatchReport {
        let mut changes_by = Vec::new();
        for (t, kind) in TableKind::ALL.iter().enumerate() {
            for (o, op) in OPS.iter().enumerate() {
                if self.changes[t][o] > 0 {
                    changes_by.push((kind.as_str(), op.as_str(), self.changes[t][o]));
                }
            }
        }
        let points = ENTRY_KINDS
            .iter()
            .zip(self.points)
            .map(|(k, (plus, minus))| (k.as_str(), plus, minus))
            .collect();
        let mut dead: Vec<(String, u64)> = Vec::new();
        for d in &open.batch.dead {
            match dead.iter_mut().find(|(r, _)| *r == d.reason) {
                Some((_, n)) => *n += 1,
                None => dead.push((d.reason.clone(), 1)),
            }
        }
        BatchReport {
            lsn,
            commit_time,
            transactions: open.transactions,
            changes: open.changes,
            changes_by,
            points,
            dead_letters: dead,
            counters: self.counters,
            write,
        }
    }
}

impl OpenBatch {
    /// Whether no transaction was applied.
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }
}

/// Where a dead-lettered event came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// WAL position of the change.
    pub lsn: Lsn,
    /// `schema.table`.
    pub table: String,
    /// The operation.
    pub op: &'static str,
    /// The row as JSON.
    pub row: serde_json::Value,
}

/// The stateful middle of the daemon for one session: rules, mapping and the engine's state.
pub struct Pipeline {
    engine: Engine,
    mapper: Mapper,
    truncate: TruncatePolicy,
    state: State,
    /// The committed checkpoint: everything at or below it is in the store.
    checkpoint: Lsn,
    /// Commit time of the checkpoint's transaction, once this pipeline has committed one.
    checkpoint_commit_time: Option<i64>,
    /// Relations already checked against the mapping, by oid, with the table they are.
    checked: HashMap<u32, (Arc<Relation>, Option<TableKind>)>,
    progress: Progress,
    telemetry: Option<Arc<Telemetry>>,
}

impl Pipeline {
    /// A pipeline resuming from a committed checkpoint with the state loaded from the store.
    pub fn new(
        engine: Engine,
        mapper: Mapper,
        truncate: TruncatePolicy,
        state: State,
        checkpoint: Lsn,
    ) -> Pipeline {
        Pipeline {
            engine,
            mapper,
            truncate,
            state,
            checkpoint,
            checkpoint_commit_time: None,
            checked: HashMap::new(),
            progress: Progress::default(),
            telemetry: None,
        }
    }

    /// Reports every committed batch to `telemetry` (metrics, readiness).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Pipeline {
        self.telemetry = Some(telemetry);
        self
    }

    /// The committed checkpoint.
    pub fn checkpoint(&self) -> Lsn {
        self.checkpoint
    }

    /// Totals since this pipeline started.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The engine's state (ahead of the store while a batch is open).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The column mapping.
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// Streams until `stop` resolves: collects transactions into batches, commits each, then
    /// acknowledges it. On `stop` the open batch is committed and acknowledged first.
    ///
    /// When the stream is idle (nothing open) and the server says it has sent everything up to
    /// a later position, the checkpoint moves there too (a store write of that LSN alone) and
    /// the slot is acknowledged: at once when the server asks for a reply, else at most every
    /// [`IDLE_ADVANCE_EVERY`]. PostgreSQL's shutdown waits until every walsender's client has
    /// confirmed all it was sent; a consumer that only confirms its own transactions would
    /// hold a fast shutdown forever. If the store cannot be written (it may be shutting down on
    /// the same server), the session ends, which releases the walsender as well.
    pub async fn stream(
        &mut self,
        source: &mut ReplicationSource,
        store: &mut Store,
        limits: BatchLimits,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<(), PipelineError> {
        let mut last_log = Instant::now();
        let mut last_idle_advance = Instant::now();
        loop {
            let mut open = OpenBatch::default();
            let batch_started = Instant::now();
            let mut deadline: Option<tokio::time::Instant> = None;
            let mut stopping = false;
            loop {
                let wait = deadline.unwrap_or_else(|| {
                    tokio::time::Instant::now() + Duration::from_secs(24 * 3600)
                });
                tokio::select! {
                    biased;
                    () = &mut *stop => {
                        stopping = true;
                        break;
                    }
                    () = tokio::time::sleep_until(wait), if deadline.is_some() => break,
                    next = source.next_item() => {
                        let tx = match next? {
                            Some(Item::Transaction(tx)) => tx,
                            Some(Item::Idle { wal_end, reply_requested }) => {
                                if open.is_empty()
                                    && wal_end > self.checkpoint
                                    && (reply_requested
                                        || last_idle_advance.elapsed() >= IDLE_ADVANCE_EVERY)
                                {
                                    self.advance_idle(store, wal_end).await?;
                                    source.ack(wal_end);
                                    last_idle_advance = Instant::now();
                                }
                                continue;
                            }
                            None => {
                                return Err(SourceError::Transient(
                                    "the server ended the replication stream".into(),
                                )
                                .into())
                            }
                        };
                        self.apply(store, &mut open, tx).await?;
                        if deadline.is_none() && !open.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + limits.max_delay);
                        }
                        if open.changes >= limits.max_changes {
                            break;
                        }
                    }
                }
            }
            let collected = batch_started.elapsed();
            if let Some(report) = self.commit(store, open).await? {
                // Only now is the batch durable: tell the slot.
                source.ack(report.lsn);
                tracing::debug!(
                    changes = report.changes,
                    collect_ms = collected.as_millis() as u64,
                    commit_ms = report.write.as_millis() as u64,
                    lsn = %report.lsn,
                    "batch committed"
                );
                if let Some(t) = &self.telemetry {
                    t.batch_committed(&report);
                }
            }
            if last_log.elapsed() >= Duration::from_secs(5) || stopping {
                last_log = Instant::now();
                self.log_progress();
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// The info line operators read: totals since start, points, and how far behind the
    /// source's commits the store is (by commit time; wall clock, for humans only).
    fn log_progress(&self) {
        let p = &self.progress;
        let lag_seconds = self.checkpoint_commit_time.map(|t| {
            let now = crate::telemetry::now_micros();
            (now.saturating_sub(t)).max(0) as f64 / 1e6
        });
        tracing::info!(
            checkpoint = %self.checkpoint,
            transactions = p.transactions,
            changes = p.changes,
            entries = p.entries,
            points = %p.points,
            dead_letters = p.dead_letters,
            batches = p.batches,
            lag_seconds = lag_seconds.map(|s| format!("{s:.1}")).unwrap_or_default(),
            "progress"
        );
    }

    /// Maps, evaluates and adds one source transaction to the open batch (skipping it when the
    /// store already has it).
    pub async fn apply(
        &mut self,
        store: &Store,
        open: &mut OpenBatch,
        tx: Transaction,
    ) -> Result<(), PipelineError> {
        if tx.end_lsn <= self.checkpoint {
            tracing::debug!(end_lsn = %tx.end_lsn, checkpoint = %self.checkpoint, "already in the store: skipped");
            return Ok(());
        }
        let mut events = Vec::with_capacity(tx.changes.len());
        let mut sources = Vec::with_capacity(tx.changes.len());
        let mut dead = Vec::new();
        let mut followed = 0u64;
        for (i, change) in tx.changes.iter().enumerate() {
            let kind = self.check_relation(change)?;
            if let Some(kind) = kind {
                open.tally.change(kind, change.op);
            }
            match self.mapper.map(change) {
                Ok(Mapped::Ignored) => {}
                Ok(Mapped::Event(e)) => {
                    followed += 1;
                    events.push(e);
                    sources.push(i);
                }
                Ok(Mapped::KeyMoved(first, then)) => {
                    followed += 1;
                    events.extend([first, then]);
                    sources.extend([i, i]);
                }
                Ok(Mapped::Truncate(kind)) => {
                    followed += 1;
                    self.on_truncate(kind, change)?;
                }
                Err(rejected) => {
                    followed += 1;
                    dead.push(DeadLetter {
                        commit_lsn: tx.commit_lsn,
                        seq: 0,
                        lsn: change.lsn,
                        table: rejected.table.clone(),
                        op: rejected.op.to_owned(),
                        reason: rejected.reason.to_owned(),
                        detail: rejected.detail.clone(),
                        row: rejected.row.clone(),
                        at: tx.commit_time,
                    });
                }
            }
        }
        let txe = TxEvents {
            commit_lsn: tx.commit_lsn.0,
            commit_time: tx.commit_time,
            events,
        };
        open.awards
            .prefetch(store, txe.trade_ids_to_look_up())
            .await?;
        let origin = |k: usize| {
            let change = sources.get(k).and_then(|&i| tx.changes.get(i));
            change.map(|c| Origin {
                lsn: c.lsn,
                table: format!("{}.{}", c.relation.schema(), c.relation.name),
                op: c.op.as_str(),
                row: crate::events::row_json(c),
            })
        };
        self.evaluate(open, &txe, tx.end_lsn, dead, origin)?;
        open.changes += followed;
        self.progress.changes += followed;
        Ok(())
    }

    /// Runs the rules on one transaction's events and adds the outcome to the batch; `dead`
    /// holds rows already rejected by the mapping, `origin` says where event `k` came from.
    pub fn evaluate(
        &mut self,
        open: &mut OpenBatch,
        txe: &TxEvents,
        end_lsn: Lsn,
        mut dead: Vec<DeadLetter>,
        origin: impl Fn(usize) -> Option<Origin>,
    ) -> Result<(), PipelineError> {
        let commit_lsn = Lsn(txe.commit_lsn);
        let outcome = self
            .engine
            .apply_transaction(&mut self.state, &mut open.awards, txe)
            .map_err(|source| PipelineError::Stream {
                lsn: commit_lsn,
                source,
            })?;
        for failure in &outcome.errors {
            let reason = match failure.error {
                EventError::Overflow(_) => "overflow",
                EventError::Invalid(_) => "invalid_value",
            };
            let o = failure.index.and_then(&origin).unwrap_or(Origin {
                lsn: commit_lsn,
                table: "(holding settlement)".into(),
                op: "settle",
                row: serde_json::Value::Null,
            });
            dead.push(DeadLetter {
                commit_lsn,
                seq: 0,
                lsn: o.lsn,
                table: o.table,
                op: o.op.to_owned(),
                reason: reason.to_owned(),
                detail: failure.error.to_string(),
                row: o.row,
                at: txe.commit_time,
            });
        }
        for (seq, d) in dead.iter_mut().enumerate() {
            d.seq = u32::try_from(seq).unwrap_or(u32::MAX);
            tracing::warn!(lsn = %d.lsn, table = %d.table, op = %d.op, reason = %d.reason, detail = %d.detail, "row dead-lettered");
        }
        self.progress.dead_letters += dead.len() as u64;
        self.progress.entries += outcome.entries.len() as u64;
        self.progress.transactions += 1;
        self.progress.counters.merge(&outcome.counters);
        open.tally.counters.merge(&outcome.counters);
        for e in &outcome.entries {
            if let Some(k) = ENTRY_KINDS.iter().position(|k| *k == e.kind) {
                let (plus, minus) = &mut open.tally.points[k];
                if e.points.is_sign_negative() {
                    *minus -= e.points;
                } else {
                    *plus += e.points;
                }
            }
            self.progress.points += e.points;
        }
        open.batch.dead.extend(dead);
        open.batch
            .add_entries(commit_lsn, txe.commit_time, outcome.entries)?;
        open.end = Some((end_lsn, txe.commit_time));
        open.transactions += 1;
        Ok(())
    }

    /// Writes the batch and the new checkpoint in one store transaction; returns what it did,
    /// with the LSN that may now be acknowledged (`None` when the batch was empty).
    pub async fn commit(
        &mut self,
        store: &mut Store,
        mut open: OpenBatch,
    ) -> Result<Option<BatchReport>, PipelineError> {
        let Some((end_lsn, commit_time)) = open.end else {
            return Ok(None);
        };
        let started = Instant::now();
        open.batch.state = self.state.drain_delta();
        open.batch.awards = open.awards.take_changes();
        let tx = store.begin().await?;
        tx.advance_checkpoint(
            self.checkpoint,
            end_lsn,
            commit_time,
            self.state.stream_time(),
            open.transactions,
            self.engine.version(),
        )
        .await?;
        tx.write(&mut open.batch).await?;
        tx.commit().await?;
        self.checkpoint = end_lsn;
        self.checkpoint_commit_time = Some(commit_time);
        self.progress.batches += 1;
        let tally = std::mem::take(&mut open.tally);
        Ok(Some(tally.report(
            end_lsn,
            commit_time,
            &open,
            started.elapsed(),
        )))
    }

    /// Moves the checkpoint over WAL that held nothing for walpoints; see [`Self::stream`].
    async fn advance_idle(&mut self, store: &mut Store, to: Lsn) -> Result<(), PipelineError> {
        let tx = store.begin().await?;
        tx.advance_idle(self.checkpoint, to).await?;
        tx.commit().await?;
        tracing::debug!(from = %self.checkpoint, %to, "idle: checkpoint moved over WAL with nothing for walpoints");
        self.checkpoint = to;
        if let Some(t) = &self.telemetry {
            t.idle_advanced(to);
        }
        Ok(())
    }

    /// The engine, for the snapshot.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Moves an open batch's collected rows out (for the snapshot, which writes them into its
    /// own store transaction).
    pub fn take_batch(&mut self, open: &mut OpenBatch) -> Batch {
        let mut batch = std::mem::take(&mut open.batch);
        batch.state = self.state.drain_delta();
        batch.awards = open.awards.take_changes();
        batch
    }

    /// Checks a relation against the mapping the first time it (or a new shape of it) is
    /// seen; returns which followed table it is.
    fn check_relation(&mut self, change: &RowChange) -> Result<Option<TableKind>, PipelineError> {
        let rel = &change.relation;
        if let Some((seen, kind)) = self.checked.get(&rel.oid) {
            if Arc::ptr_eq(seen, rel) {
                return Ok(*kind);
            }
        }
        let kind = self.mapper.table_of(rel);
        if kind.is_some() {
            self.mapper
                .check_relation(rel)
                .map_err(|source| PipelineError::Mapping {
                    lsn: change.lsn,
                    source,
                })?;
        }
        self.checked.insert(rel.oid, (rel.clone(), kind));
        Ok(kind)
    }

    /// Every followed table obeys the policy (the issue names trades and positions; an emptied
    /// referral table would silently leave every binding in force, which is no better).
    fn on_truncate(&self, kind: TableKind, change: &RowChange) -> Result<(), PipelineError> {
        debug_assert_eq!(change.op, Op::Truncate);
        let table = format!("{}.{}", change.relation.schema(), change.relation.name);
        match self.truncate {
            TruncatePolicy::Ignore => {
                tracing::warn!(%table, kind = kind.as_str(), lsn = %change.lsn, "TRUNCATE ignored: what was awarded stays awarded");
                Ok(())
            }
            TruncatePolicy::Stop => Err(PipelineError::Truncated {
                table,
                lsn: change.lsn,
            }),
        }
    }
}
