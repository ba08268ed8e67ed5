//! Evaluation: a transaction's row changes through the mapping and the rules engine, into the
//! open batch. This is where the pure core is driven; the batch loop decides only when.
//!
//! The engine's state runs ahead of the store while a batch is open, so after any failure the
//! evaluator must be thrown away and built again from the store.

use std::collections::HashMap;
use std::sync::Arc;

use super::open::{OpenBatch, Progress};
use super::BatchError;
use crate::changes::{Op, RowChange, TxBegin};
use crate::config::TruncatePolicy;
use crate::dead_letter::DeadLetter;
use crate::lsn::Lsn;
use crate::mapping::{row_json, Mapped, Mapper, RowRejected, TableKind};
use crate::pgoutput::Relation;
use crate::points::{Engine, EntryKind, State, TxCursor, TxEvents, TxOutcome};
use crate::store::{Batch, JournalChunk, StoreWriter};

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

/// A source transaction being applied a chunk of changes at a time, so that one of a million
/// rows is never held whole.
#[derive(Debug)]
pub(super) struct InTx {
    pub(super) begin: TxBegin,
    /// Changes not evaluated yet.
    pub(super) changes: Vec<RowChange>,
    /// Set once the engine has begun the transaction.
    cursor: Option<TxCursor>,
    /// The next dead letter's number within the transaction.
    dead: u32,
    /// Journal rows written for the transaction so far.
    journaled: u32,
}

impl InTx {
    pub(super) fn new(begin: TxBegin) -> InTx {
        InTx {
            begin,
            changes: Vec::new(),
            cursor: None,
            dead: 0,
            journaled: 0,
        }
    }
}

/// The rules, the mapping and the engine's state, applied to row changes.
pub struct Evaluator {
    engine: Engine,
    mapper: Mapper,
    truncate: TruncatePolicy,
    state: State,
    /// The rules the state's open holding segments were credited under, until the first
    /// transaction ends them (see [`Engine::begin_transaction_after`]).
    previous_rules: Option<Engine>,
    /// Relations already checked against the mapping, by oid, with the table they are.
    checked: HashMap<u32, (Arc<Relation>, Option<TableKind>)>,
    progress: Progress,
}

impl Evaluator {
    /// An evaluator with the state loaded from the store (or an empty one, for the snapshot).
    pub fn new(engine: Engine, mapper: Mapper, truncate: TruncatePolicy, state: State) -> Self {
        Evaluator {
            engine,
            mapper,
            truncate,
            state,
            previous_rules: None,
            checked: HashMap::new(),
            progress: Progress::default(),
        }
    }

    /// Says which rules the last transaction before this session ran under, so that the first
    /// one ends the open holding segments under them when they differ from this engine's.
    pub fn after_rules(mut self, previous: Option<Engine>) -> Self {
        self.previous_rules = previous;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The column mapping.
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// The engine's state (ahead of the store while a batch is open).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Totals since this evaluator was built.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Maps and evaluates the changes `t` has collected so far and adds the outcome to the open
    /// batch; the first call also begins the transaction in the engine (stream time, hourly
    /// settlement). Awards the rules will look up are fetched through `writer` first.
    pub(super) async fn apply_chunk(
        &mut self,
        writer: &StoreWriter,
        open: &mut OpenBatch,
        t: &mut InTx,
    ) -> Result<(), BatchError> {
        let commit_lsn = t.begin.commit_lsn;
        let commit_time = t.begin.commit_time;
        if t.cursor.is_none() {
            let previous = self.previous_rules.take();
            let (cursor, settled) = self
                .engine
                .begin_transaction_after(
                    previous.as_ref(),
                    &mut self.state,
                    commit_lsn.0,
                    commit_time,
                )
                .map_err(|source| BatchError::Rules {
                    lsn: commit_lsn,
                    source,
                })?;
            t.cursor = Some(cursor);
            t.dead = self.absorb(open, &t.begin, settled, Vec::new(), t.dead, |_| None)?;
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
            let Some(table) = self.check_relation(change)? else {
                continue;
            };
            open.tally.change(table, change.op);
            followed += 1;
            match self.mapper.map(change) {
                Ok(Mapped::Ignored) => {}
                Ok(Mapped::Event(e)) => {
                    events.push(e);
                    sources.push(i);
                }
                Ok(Mapped::KeyMoved(first, then)) => {
                    events.extend([first, then]);
                    sources.extend([i, i]);
                }
                Ok(Mapped::Truncate(table)) => self.on_truncate(table, change)?,
                Err(rejected) => dead.push(dead_letter(&t.begin, change.lsn, rejected)),
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
        let epoch = self.stream_epoch(cursor.now());
        if !txe.events.is_empty() {
            let chunk = JournalChunk {
                commit_lsn,
                commit_time,
                epoch,
                first_ordinal: t.journaled,
                events: txe.events,
            };
            t.journaled = t.journaled.saturating_add(chunk.rows());
            open.batch.journal_push(chunk);
        }
        let origin = |k: usize| {
            let change = sources.get(k).and_then(|&i| changes.get(i));
            change.map(|c| Origin {
                lsn: c.lsn,
                table: format!("{}.{}", c.relation.schema(), c.relation.name),
                op: c.op.as_str(),
                row: row_json(c),
            })
        };
        t.dead = self.absorb(open, &t.begin, outcome, dead, t.dead, origin)?;
        open.changes += followed;
        self.progress.changes += followed;
        Ok(())
    }

    /// Runs the rules on one whole transaction's events (the snapshot's pseudo-transactions) and
    /// adds the outcome and the transaction to the batch; `dead` holds rows already rejected by
    /// the mapping, `origin` says where event `k` came from.
    pub fn evaluate(
        &mut self,
        open: &mut OpenBatch,
        txe: &TxEvents,
        end_lsn: Lsn,
        dead: Vec<DeadLetter>,
        origin: impl Fn(usize) -> Option<Origin>,
    ) -> Result<(), BatchError> {
        let begin = TxBegin {
            xid: 0,
            commit_lsn: Lsn(txe.commit_lsn),
            commit_time: txe.commit_time,
        };
        let previous = self.previous_rules.take();
        let outcome = self
            .engine
            .apply_transaction_after(previous.as_ref(), &mut self.state, &mut open.awards, txe)
            .map_err(|source| BatchError::Rules {
                lsn: begin.commit_lsn,
                source,
            })?;
        self.absorb(open, &begin, outcome, dead, 0, origin)?;
        let now = self.state.stream_time().unwrap_or(txe.commit_time);
        open.batch.journal_push(JournalChunk {
            commit_lsn: begin.commit_lsn,
            commit_time: txe.commit_time,
            epoch: self.stream_epoch(now),
            first_ordinal: 0,
            events: txe.events.clone(),
        });
        open.close_transaction(end_lsn, txe.commit_time);
        self.progress.transactions += 1;
        Ok(())
    }

    /// Ends a transaction all of whose changes were applied: it now counts in the open batch.
    /// One that brought no input is journaled as a tick: it still moved stream time.
    pub(super) fn finish(&mut self, open: &mut OpenBatch, t: &InTx, end_lsn: Lsn) {
        if t.journaled == 0 {
            if let Some(cursor) = &t.cursor {
                open.batch.journal_push(JournalChunk {
                    commit_lsn: t.begin.commit_lsn,
                    commit_time: t.begin.commit_time,
                    epoch: self.stream_epoch(cursor.now()),
                    first_ordinal: 0,
                    events: Vec::new(),
                });
            }
        }
        open.close_transaction(end_lsn, t.begin.commit_time);
        self.progress.transactions += 1;
    }

    /// The journal's partition key for a transaction at stream time `now`.
    fn stream_epoch(&self, now: i64) -> i32 {
        self.engine
            .epoch_of(now)
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or(-1)
    }

    /// Adds an engine outcome to the open batch: its entries (and their totals), and as dead
    /// letters the rows the mapping rejected (`dead`) and the events the rules failed (`origin`
    /// says where event `k` came from), numbered on from `seq`; returns the next `seq`.
    fn absorb(
        &mut self,
        open: &mut OpenBatch,
        tx: &TxBegin,
        outcome: TxOutcome,
        mut dead: Vec<DeadLetter>,
        seq: u32,
        origin: impl Fn(usize) -> Option<Origin>,
    ) -> Result<u32, BatchError> {
        for failure in &outcome.errors {
            let o = failure.index.and_then(&origin).unwrap_or(Origin {
                lsn: tx.commit_lsn,
                table: "(holding settlement)".into(),
                op: "settle",
                row: serde_json::Value::Null,
            });
            dead.push(DeadLetter {
                commit_lsn: tx.commit_lsn,
                seq: 0,
                lsn: o.lsn,
                table: o.table,
                op: o.op.to_owned(),
                reason: failure.error.reason(),
                detail: failure.error.to_string(),
                row: o.row,
                at: tx.commit_time,
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
        self.progress.points += outcome
            .entries
            .iter()
            .filter(|e| e.kind != EntryKind::Holding)
            .map(|e| e.points)
            .chain(outcome.credits.iter().map(|c| c.points))
            .sum::<rust_decimal::Decimal>();
        open.tally.counters.merge(&outcome.counters);
        open.add(
            tx.commit_lsn,
            tx.commit_time,
            outcome.entries,
            outcome.fills,
            outcome.credits,
            dead,
        )?;
        Ok(next)
    }

    /// The open batch's rows with the rule state and awards it changed: what the batch loop
    /// seals, and what the snapshot writes into its own store transaction.
    pub fn take_batch(&mut self, open: &mut OpenBatch) -> Batch {
        let mut batch = std::mem::take(&mut open.batch);
        batch.state = self.state.drain_delta();
        open.awards.clear();
        batch
    }

    /// Checks a relation against the mapping the first time it (or a new shape of it) is
    /// seen; returns which followed table it is, `None` for a table walpoints does not follow.
    fn check_relation(&mut self, change: &RowChange) -> Result<Option<TableKind>, BatchError> {
        let rel = &change.relation;
        if let Some((seen, table)) = self.checked.get(&rel.oid) {
            if Arc::ptr_eq(seen, rel) {
                return Ok(*table);
            }
        }
        let table = self.mapper.table_of(rel);
        if table.is_some() {
            self.mapper
                .check_relation(rel)
                .map_err(|source| BatchError::Mapping {
                    lsn: change.lsn,
                    source,
                })?;
        }
        self.checked.insert(rel.oid, (rel.clone(), table));
        Ok(table)
    }

    /// Every followed table obeys the policy (an emptied referral table would silently leave
    /// every binding in force, no better than an emptied trades table).
    fn on_truncate(&self, table: TableKind, change: &RowChange) -> Result<(), BatchError> {
        debug_assert_eq!(change.op, Op::Truncate);
        let name = format!("{}.{}", change.relation.schema(), change.relation.name);
        match self.truncate {
            TruncatePolicy::Ignore => {
                tracing::warn!(table = %name, kind = table.as_str(), lsn = %change.lsn, "TRUNCATE ignored: what was awarded stays awarded");
                Ok(())
            }
            TruncatePolicy::Stop => Err(BatchError::Truncated {
                table: name,
                lsn: change.lsn,
            }),
        }
    }
}

/// A row the mapping rejected, as the dead letter of its transaction.
fn dead_letter(tx: &TxBegin, lsn: Lsn, rejected: RowRejected) -> DeadLetter {
    DeadLetter {
        commit_lsn: tx.commit_lsn,
        seq: 0,
        lsn,
        table: rejected.table,
        op: rejected.op.to_owned(),
        reason: rejected.reason,
        detail: rejected.detail,
        row: rejected.row,
        at: tx.commit_time,
    }
}
