//! The batch loop: source transactions → events → points rules → one store transaction →
//! acknowledgement. It owns no business logic; it decides only *when* to commit and makes sure
//! the order of effects keeps the exactly-once invariants:
//!
//! - a transaction that commits below the checkpoint (whose end LSN is therefore at or below
//!   it) is skipped: it is in the store;
//! - a batch's ledger rows, totals, state, awards, dead letters and new checkpoint commit in one
//!   store transaction ([`crate::store::StoreTx`]);
//! - the slot is acknowledged with the batch's end LSN only after that commit returned.
//!
//! Writing is pipelined: a [`StoreWriter`] writes and commits one batch while the next is
//! decoded and evaluated. A batch closes when it holds `max_changes` row changes, or when the
//! store has committed everything before it and its first transaction is `max_delay` old: under
//! a light load each transaction is visible as soon as the store can commit it, under a backlog
//! batches grow while the store is busy, so its per-user writes (totals, volumes) are
//! amortised over more trades. A source transaction is evaluated 1,000 changes at a time as its
//! changes arrive (pgoutput's Begin already carries the commit LSN and time), and ledger rows
//! go to the writer in parts as they accumulate, so memory stays bounded whatever the size of
//! a batch or of a single source transaction. A batch still ends only at a transaction
//! boundary: on `stop` the transaction in progress is finished first.
//!
//! The engine's in-memory state runs ahead of the store while a batch is open, so after any
//! failure the caller must throw this `Pipeline` away and build a new one from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::change::{Op, RowChange, TxBegin};
use crate::config::TruncatePolicy;
use crate::events::{Mapped, Mapper, MappingError, TableKind};
use crate::lsn::Lsn;
use crate::pgoutput::Relation;
use rust_decimal::Decimal;

use crate::points::{
    Counters, Engine, EntryKind, EventError, State, StreamError, TxCursor, TxEvents, TxOutcome,
};
use crate::source::{ReplicationSource, SourceError, StreamEvent};
use crate::store::{
    write_batches, Batch, BatchAwards, DeadLetter, Seal, Store, StoreError, StoreWriter,
};
use crate::telemetry::Telemetry;

/// Ledger rows (plus changed awards) after which an open batch hands what it has to the store
/// writer, which adds them to the batch's still-open store transaction: a batch of any size
/// keeps only this much in memory.
const PART_ROWS: usize = 5_000;

/// Changes of a source transaction evaluated at a time.
const CHUNK: usize = 1_000;

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
    /// Once the store is idle and its first transaction is this old.
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
    /// When its first transaction was applied.
    opened: Option<Instant>,
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
    /// Dead letters by reason (they may have gone to the store in parts already).
    dead: std::collections::BTreeMap<String, u64>,
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
    /// From sealing the batch to its commit (writing its last part, moving the checkpoint,
    /// committing, and waiting for the batch before it).
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

    fn report(&self, lsn: Lsn, commit_time: i64, open: &OpenBatch) -> BatchReport {
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
        let dead = self.dead.iter().map(|(r, n)| (r.clone(), *n)).collect();
        BatchReport {
            lsn,
            commit_time,
            transactions: open.transactions,
            changes: open.changes,
            changes_by,
            points,
            dead_letters: dead,
            counters: self.counters,
            write: Duration::ZERO,
        }
    }
}

impl OpenBatch {
    /// Whether no transaction was applied.
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }

    /// Rows held for the store that parts can hand over.
    fn rows(&self) -> usize {
        self.batch.entries.len() + self.batch.dead.len() + self.awards.changed()
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

    /// Streams until `stop` resolves: collects transactions into batches that the store writer
    /// commits (on `store`) while the next ones are collected, and acknowledges each batch once
    /// committed. On `stop` the open batch is committed and acknowledged first.
    ///
    /// When the stream is idle (nothing open or in flight) and the server says it has sent
    /// everything up to a later position, the checkpoint moves there too (a store write of
    /// that LSN alone) and the slot is acknowledged: at once when the server asks for a reply,
    /// else at most every [`IDLE_ADVANCE_EVERY`]. PostgreSQL's shutdown waits until every
    /// walsender's client has confirmed all it was sent; a consumer that only confirms its own
    /// transactions would hold a fast shutdown forever. If the store cannot be written (it may
    /// be shutting down on the same server), the session ends, which releases the walsender.
    pub async fn stream(
        &mut self,
        source: &mut ReplicationSource,
        store: &mut Store,
        limits: BatchLimits,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<(), PipelineError> {
        let (writer, jobs) = StoreWriter::channel();
        let (done, committed) = mpsc::unbounded_channel();
        let from = self.checkpoint;
        // One task, two futures: the writer waits on the store while the collector computes.
        let writing = async {
            write_batches(store, from, jobs, done)
                .await
                .map_err(PipelineError::from)
        };
        let collecting = self.collect(source, writer, committed, limits, stop);
        tokio::try_join!(collecting, writing)?;
        Ok(())
    }

    /// The collecting half of [`Pipeline::stream`]; returns once stopped and everything sealed
    /// is committed and acknowledged (dropping `writer` then ends the writer).
    async fn collect(
        &mut self,
        source: &mut ReplicationSource,
        writer: StoreWriter,
        mut committed: mpsc::UnboundedReceiver<Lsn>,
        limits: BatchLimits,
        stop: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<(), PipelineError> {
        let mut last_log = Instant::now();
        let mut open = OpenBatch::default();
        // The source transaction being applied; batches close only between transactions.
        let mut current: Option<InTx> = None;
        // Sealed batches (or idle advances) not committed yet, with when they were sealed.
        let mut in_flight: VecDeque<(Option<BatchReport>, Instant)> = VecDeque::new();
        let mut stopping = false;
        let mut last_idle_advance = Instant::now();
        loop {
            if let (Some(opened), None) = (open.opened, &current) {
                let idle = in_flight.is_empty();
                if stopping
                    || open.changes >= limits.max_changes
                    || (idle && opened.elapsed() >= limits.max_delay)
                {
                    let report = self.seal(&writer, &mut open).await?;
                    in_flight.push_back((report, Instant::now()));
                    continue;
                }
            }
            if stopping && in_flight.is_empty() && current.is_none() {
                self.log_progress();
                return Ok(());
            }
            let linger = open
                .opened
                .filter(|_| in_flight.is_empty() && current.is_none())
                .map(|t| tokio::time::Instant::from_std(t + limits.max_delay));
            tokio::select! {
                biased;
                lsn = committed.recv() => {
                    let lsn = lsn.ok_or_else(|| StoreError::Transient("the store writer stopped".into()))?;
                    // Only now is the batch durable: tell the slot.
                    source.ack(lsn);
                    self.checkpoint = lsn;
                    match in_flight.pop_front() {
                        Some((Some(mut report), sealed)) => {
                            self.progress.batches += 1;
                            self.checkpoint_commit_time = Some(report.commit_time);
                            report.write = sealed.elapsed();
                            tracing::debug!(changes = report.changes, commit_ms = report.write.as_millis() as u64, %lsn, "batch committed");
                            if let Some(t) = &self.telemetry {
                                t.batch_committed(&report);
                            }
                        }
                        Some((None, _)) => {
                            tracing::debug!(%lsn, "idle: checkpoint moved over WAL with nothing for walpoints");
                            if let Some(t) = &self.telemetry {
                                t.idle_advanced(lsn);
                            }
                        }
                        None => {}
                    }
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        last_log = Instant::now();
                        self.log_progress();
                    }
                }
                () = &mut *stop, if !stopping => stopping = true,
                () = sleep_until_some(linger), if linger.is_some() => {}
                // A transaction in progress is finished even when stopping: a batch can only
                // end at a transaction boundary.
                next = source.next_event(), if !stopping || current.is_some() => {
                    let Some(event) = next? else {
                        return Err(SourceError::Transient(
                            "the server ended the replication stream".into(),
                        )
                        .into());
                    };
                    match event {
                        StreamEvent::Begin(begin) => {
                            // Everything at or below the checkpoint is in the store.
                            let skip = begin.commit_lsn < self.checkpoint;
                            if skip {
                                tracing::debug!(commit_lsn = %begin.commit_lsn, checkpoint = %self.checkpoint, "already in the store: skipped");
                            }
                            current = Some(InTx::new(begin, skip));
                        }
                        StreamEvent::Change(change) => {
                            if let Some(t) = current.as_mut().filter(|t| !t.skip) {
                                t.changes.push(change);
                                if t.changes.len() >= CHUNK {
                                    self.apply_chunk(&writer, &mut open, t).await?;
                                }
                            }
                        }
                        StreamEvent::Commit(commit) => {
                            if let Some(mut t) = current.take().filter(|t| !t.skip) {
                                self.apply_chunk(&writer, &mut open, &mut t).await?;
                                self.finish(&mut open, &t, commit.end_lsn);
                            }
                        }
                        StreamEvent::Idle { wal_end, reply_requested } => {
                            if current.is_none()
                                && open.is_empty()
                                && in_flight.is_empty()
                                && wal_end > self.checkpoint
                                && (reply_requested
                                    || last_idle_advance.elapsed() >= IDLE_ADVANCE_EVERY)
                            {
                                writer.advance_idle(wal_end).await?;
                                in_flight.push_back((None, Instant::now()));
                                last_idle_advance = Instant::now();
                            }
                        }
                        StreamEvent::Message { .. } => {}
                    }
                    if open.rows() >= PART_ROWS {
                        writer.part(self.take_part(&mut open)).await?;
                    }
                }
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

    /// Maps and evaluates the changes `t` has collected so far and adds the outcome to the open
    /// batch; the first call also begins the transaction in the engine (stream time, hourly
    /// settlement).
    async fn apply_chunk(
        &mut self,
        writer: &StoreWriter,
        open: &mut OpenBatch,
        t: &mut InTx,
    ) -> Result<(), PipelineError> {
        let commit_lsn = t.begin.commit_lsn;
        let commit_time = t.begin.commit_time;
        let stream_err = |source| PipelineError::Stream {
            lsn: commit_lsn,
            source,
        };
        if t.cursor.is_none() {
            let (cursor, settled) = self
                .engine
                .begin_transaction(&mut self.state, commit_lsn.0, commit_time)
                .map_err(stream_err)?;
            t.cursor = Some(cursor);
            t.dead = self.absorb(
                open,
                commit_lsn,
                commit_time,
                settled,
                Vec::new(),
                t.dead,
                |_| None,
            )?;
        }
        let changes = std::mem::take(&mut t.changes);
        if changes.is_empty() {
            return Ok(());
        }
        let mut events = Vec::with_capacity(changes.len());
        let mut sources = Vec::with_capacity(changes.len());
        let mut dead = Vec::new();
        let mut followed = 0u64;
        for (i, change) in changes.iter().enumerate() {
            if let Some(kind) = self.check_relation(change)? {
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
                        commit_lsn,
                        seq: 0,
                        lsn: change.lsn,
                        table: rejected.table.clone(),
                        op: rejected.op.to_owned(),
                        reason: rejected.reason.to_owned(),
                        detail: rejected.detail.clone(),
                        row: rejected.row.clone(),
                        at: commit_time,
                    });
                }
            }
        }
        let txe = TxEvents {
            commit_lsn: commit_lsn.0,
            commit_time,
            events,
        };
        let missing = open.awards.missing(txe.trade_ids_to_look_up());
        if !missing.is_empty() {
            let found = writer.lookup(missing.clone()).await?;
            open.awards.record_fetched(missing, found);
        }
        let Some(cursor) = t.cursor.as_mut() else {
            return Ok(());
        };
        let outcome =
            self.engine
                .apply_events(cursor, &mut self.state, &mut open.awards, &txe.events);
        let origin = |k: usize| {
            let change = sources.get(k).and_then(|&i| changes.get(i));
            change.map(|c| Origin {
                lsn: c.lsn,
                table: format!("{}.{}", c.relation.schema(), c.relation.name),
                op: c.op.as_str(),
                row: crate::events::row_json(c),
            })
        };
        t.dead = self.absorb(open, commit_lsn, commit_time, outcome, dead, t.dead, origin)?;
        open.changes += followed;
        self.progress.changes += followed;
        Ok(())
    }

    /// Ends a transaction all of whose changes were applied: it now counts in the open batch.
    fn finish(&mut self, open: &mut OpenBatch, t: &InTx, end_lsn: Lsn) {
        open.end = Some((end_lsn, t.begin.commit_time));
        open.opened.get_or_insert_with(Instant::now);
        open.transactions += 1;
        self.progress.transactions += 1;
    }

    /// Runs the rules on one transaction's events and adds the outcome to the batch; `dead`
    /// holds rows already rejected by the mapping, `origin` says where event `k` came from.
    pub fn evaluate(
        &mut self,
        open: &mut OpenBatch,
        txe: &TxEvents,
        end_lsn: Lsn,
        dead: Vec<DeadLetter>,
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
        self.absorb(open, commit_lsn, txe.commit_time, outcome, dead, 0, origin)?;
        self.progress.transactions += 1;
        open.end = Some((end_lsn, txe.commit_time));
        open.opened.get_or_insert_with(Instant::now);
        open.transactions += 1;
        Ok(())
    }

    /// Adds an engine outcome to the open batch: its entries (and their totals), and as dead
    /// letters the rows the mapping rejected (`dead`) and the events the rules failed (`origin`
    /// says where event `k` came from), numbered on from `seq`; returns the next `seq`.
    #[allow(clippy::too_many_arguments)]
    fn absorb(
        &mut self,
        open: &mut OpenBatch,
        commit_lsn: Lsn,
        commit_time: i64,
        outcome: TxOutcome,
        mut dead: Vec<DeadLetter>,
        seq: u32,
        origin: impl Fn(usize) -> Option<Origin>,
    ) -> Result<u32, PipelineError> {
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
                at: commit_time,
            });
        }
        let mut next = seq;
        for d in dead.iter_mut() {
            d.seq = next;
            next = next.saturating_add(1);
            tracing::warn!(lsn = %d.lsn, table = %d.table, op = %d.op, reason = %d.reason, detail = %d.detail, "row dead-lettered");
        }
        self.progress.dead_letters += dead.len() as u64;
        self.progress.entries += outcome.entries.len() as u64;
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
        for d in &dead {
            *open.tally.dead.entry(d.reason.clone()).or_default() += 1;
        }
        open.batch.dead.extend(dead);
        open.batch
            .add_entries(commit_lsn, commit_time, outcome.entries)?;
        Ok(next)
    }

    /// Hands the open batch to the writer with the rule state it changed and what the
    /// checkpoint becomes, and starts a new one; returns what the batch holds, for metrics
    /// once it is committed.
    async fn seal(
        &mut self,
        writer: &StoreWriter,
        open: &mut OpenBatch,
    ) -> Result<Option<BatchReport>, PipelineError> {
        let mut done = std::mem::take(open);
        let Some((end_lsn, commit_time)) = done.end else {
            return Ok(None);
        };
        let report = done.tally.report(end_lsn, commit_time, &done);
        done.batch.state = self.state.drain_delta();
        done.batch.awards = done.awards.take_changes();
        writer
            .seal(Seal {
                batch: done.batch,
                end_lsn,
                commit_time,
                stream_time: self.state.stream_time(),
                transactions: done.transactions,
                rules_version: self.engine.version().to_owned(),
            })
            .await?;
        Ok(Some(report))
    }

    /// The open batch's ledger rows, awards and dead letters so far, for the writer to add to
    /// the batch's transaction; totals and rule state stay until the seal.
    fn take_part(&mut self, open: &mut OpenBatch) -> Batch {
        Batch {
            entries: std::mem::take(&mut open.batch.entries),
            dead: std::mem::take(&mut open.batch.dead),
            awards: open.awards.take_changes(),
            ..Batch::default()
        }
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

/// A source transaction being applied, `CHUNK` changes at a time, so that one of a million rows
/// is never held whole.
struct InTx {
    begin: TxBegin,
    /// Changes not evaluated yet.
    changes: Vec<RowChange>,
    /// Set once the engine has begun the transaction.
    cursor: Option<TxCursor>,
    /// The next dead letter's number within the transaction.
    dead: u32,
    /// The store has it already: its changes are dropped.
    skip: bool,
}

impl InTx {
    fn new(begin: TxBegin, skip: bool) -> InTx {
        InTx {
            begin,
            changes: Vec::new(),
            cursor: None,
            dead: 0,
            skip,
        }
    }
}

/// Sleeps until `at`; never resolves without one (the caller guards the branch).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
