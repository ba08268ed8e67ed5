//! The open batch: what the batch loop has collected since the last seal, and the counts the
//! observer hears once it is committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::changes::Op;
use crate::dead_letter::{DeadLetter, Reason};
use crate::lsn::Lsn;
use crate::mapping::TableKind;
use crate::points::{Counters, EntryKind, FillRecord, HoldingCredit, LedgerEntry};
use crate::store::{Batch, BatchAwards, StoreError};

/// What one batch has collected so far.
#[derive(Debug, Default)]
pub struct OpenBatch {
    pub(super) batch: Batch,
    pub(super) awards: BatchAwards,
    /// End LSN and commit time of the last transaction applied.
    pub(super) end: Option<(Lsn, i64)>,
    pub(super) transactions: u64,
    pub(super) changes: u64,
    /// When its first transaction was applied.
    pub(super) opened: Option<Instant>,
    pub(super) tally: Tally,
}

impl OpenBatch {
    /// Whether no transaction was applied.
    pub fn is_empty(&self) -> bool {
        self.end.is_none()
    }

    /// Rows held for the store that parts can hand over.
    pub(super) fn rows(&self) -> usize {
        self.batch.rows()
    }

    /// Counts a transaction all of whose changes were applied: it now belongs to the batch.
    pub(super) fn close_transaction(&mut self, end_lsn: Lsn, commit_time: i64) {
        self.end = Some((end_lsn, commit_time));
        self.opened.get_or_insert_with(Instant::now);
        self.transactions += 1;
    }

    /// Adds a transaction's entries (with their totals), award changes and dead letters.
    pub(super) fn add(
        &mut self,
        commit_lsn: Lsn,
        commit_time: i64,
        entries: Vec<LedgerEntry>,
        fills: Vec<FillRecord>,
        credits: Vec<HoldingCredit>,
        dead: Vec<DeadLetter>,
    ) -> Result<(), StoreError> {
        // A holding entry records hours its credits already counted.
        for e in entries.iter().filter(|e| e.kind != EntryKind::Holding) {
            self.tally.points(e.kind, e.points);
        }
        for c in &credits {
            self.tally.points(EntryKind::Holding, c.points);
        }
        for d in &dead {
            *self.tally.dead.entry(d.reason).or_default() += 1;
        }
        self.batch.dead.extend(dead);
        self.batch
            .add_entries(commit_lsn, commit_time, entries, fills, credits)
    }

    /// The journal, ledger rows and dead letters so far, for the writer to add to the batch's
    /// still-open store transaction; totals and rule state stay until the seal.
    pub(super) fn take_part(&mut self) -> Batch {
        // The awards changed so far are in the fill rows that go now: from here on lookups
        // read them in the store.
        self.awards.clear();
        self.batch.take_appends()
    }
}

/// Counts of one batch for the observer, collected as it is built.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    /// Row changes by [`TableKind::index`] and [`Op::index`].
    changes: [[u64; Op::ALL.len()]; TableKind::ALL.len()],
    /// (awarded, reversed) points by [`EntryKind::index`].
    points: [(Decimal, Decimal); EntryKind::ALL.len()],
    pub(super) counters: Counters,
    /// Dead letters by reason (they may have gone to the store in parts already).
    dead: BTreeMap<Reason, u64>,
}

impl Tally {
    pub(super) fn change(&mut self, table: TableKind, op: Op) {
        self.changes[table.index()][op.index()] += 1;
    }

    fn points(&mut self, kind: EntryKind, points: Decimal) {
        let (plus, minus) = &mut self.points[kind.index()];
        if points.is_sign_negative() {
            *minus -= points;
        } else {
            *plus += points;
        }
    }

    /// What the batch did, once sealed at `lsn`.
    pub(super) fn report(&self, lsn: Lsn, commit_time: i64, open: &OpenBatch) -> BatchReport {
        BatchReport {
            lsn,
            commit_time,
            transactions: open.transactions,
            changes: open.changes,
            changes_by: TableKind::ALL
                .into_iter()
                .flat_map(|t| Op::ALL.into_iter().map(move |op| (t, op)))
                .map(|(t, op)| (t, op, self.changes[t.index()][op.index()]))
                .filter(|&(_, _, n)| n > 0)
                .collect(),
            // Every kind, zeros too, so each kind's series exists from the first batch on.
            points: EntryKind::ALL
                .into_iter()
                .map(|k| {
                    let (plus, minus) = self.points[k.index()];
                    (k, plus, minus)
                })
                .collect(),
            dead_letters: self.dead.iter().map(|(&r, &n)| (r, n)).collect(),
            counters: self.counters,
            write: Duration::ZERO,
        }
    }
}

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
    /// Row changes by (table, op); zero counts left out.
    pub changes_by: Vec<(TableKind, Op, u64)>,
    /// Points written by kind: (kind, sum of positive entries, |sum of negative entries|).
    pub points: Vec<(EntryKind, Decimal, Decimal)>,
    /// Dead letters by reason.
    pub dead_letters: Vec<(Reason, u64)>,
    /// The rules' decision counts.
    pub counters: Counters,
    /// From sealing the batch to its commit (writing its last part, moving the checkpoint,
    /// committing, and waiting for the batch before it).
    pub write: Duration,
}

/// Running totals since the loop started, for the progress log line and `setup`'s report.
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
    /// Net points written.
    pub points: Decimal,
}
