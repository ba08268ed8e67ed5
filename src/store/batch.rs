//! What one store transaction writes: the batch the batch loop builds, and the trade awards the
//! engine reads and changes while it builds it (they are written as `ledger_fill` rows).

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use super::{FillRow, JournalChunk, StoreError};
use crate::dead_letter::DeadLetter;
use crate::lsn::Lsn;
use crate::points::{
    Award, AwardBook, EpochId, FastMap, FillRecord, HoldingCredit, LedgerEntry, StateDelta, Totals,
};

/// Everything one store transaction writes besides the checkpoint.
#[derive(Debug, Default)]
pub struct Batch {
    /// The inputs, for the journal (added by [`Batch::journal_push`], which counts them).
    journal: Vec<JournalChunk>,
    /// The events of `journal`, counted as they come: [`Batch::rows`] is asked after every
    /// transaction, and summing thousands of one-event chunks each time was 5 % of the
    /// walpoints process in the 1-row drain (perf).
    journal_rows: usize,
    /// Award changes, one compact ledger row each.
    pub fills: Vec<FillRow>,
    /// Holding and PnL entries with their transaction's commit LSN and commit time (trading
    /// and referral entries are stored as `fills`).
    pub entries: Vec<(Lsn, i64, LedgerEntry)>,
    /// Per (user, epoch) with entries in the batch: the increment of `user_epoch_points` and
    /// the commit LSNs of those entries (its `user_batch` posting). Hashed and looked up by
    /// `&str` (`UserEpoch`): a B-tree keyed by owned strings cost a key clone and a dozen
    /// string comparisons per entry, the largest item of the drain's profile (perf, 11 % of the
    /// walpoints process). Written in key order ([`Batch::sorted_totals`]).
    pub totals: FastMap<(String, EpochId), UserBatch>,
    /// Per (user, epoch): the holding points credited in the batch (added to
    /// `user_epoch_points` with `totals`). Kept apart because an hour boundary credits every
    /// open position's owner: a million of these need a key and a number each, not the six
    /// columns and the posting of a [`UserBatch`].
    pub credits: BTreeMap<(String, EpochId), Decimal>,
    /// Commit LSNs of the batch's first and last transactions (for `user_batch`).
    pub lsn_range: Option<(Lsn, Lsn)>,
    /// Changed engine state.
    pub state: StateDelta,
    /// Rows dead-lettered.
    pub dead: Vec<DeadLetter>,
}

impl Batch {
    /// Adds a transaction's entries (folded into the totals; holding and PnL entries kept as
    /// rows), its award changes and its holding credits (totals only: they have no row).
    pub fn add_entries(
        &mut self,
        commit_lsn: Lsn,
        commit_time: i64,
        entries: Vec<LedgerEntry>,
        fills: Vec<FillRecord>,
        credits: Vec<HoldingCredit>,
    ) -> Result<(), StoreError> {
        let range = self.lsn_range.get_or_insert((commit_lsn, commit_lsn));
        range.1 = commit_lsn;
        for e in entries {
            let key = UserEpoch(&e.user, e.epoch);
            let user = match self.totals.get_mut(&key) {
                Some(user) => user,
                None => self.totals.entry((e.user.clone(), e.epoch)).or_default(),
            };
            user.totals
                .add_entry(&e)
                .map_err(|source| StoreError::bad_value("user_epoch_points", source))?;
            if user.commit_lsns.last() != Some(&commit_lsn) {
                user.commit_lsns.push(commit_lsn);
            }
            if !(e.kind.is_trading() || e.kind.is_referral()) {
                self.entries.push((commit_lsn, commit_time, e));
            }
        }
        for c in credits {
            let sum = self.credits.entry((c.user, c.epoch)).or_default();
            *sum = sum.checked_add(c.points).ok_or_else(|| {
                StoreError::bad_value(
                    "user_epoch_points",
                    crate::points::EventError::Overflow("holding points"),
                )
            })?;
        }
        self.fills.extend(fills.into_iter().map(|fill| FillRow {
            commit_lsn,
            commit_time,
            fill,
        }));
        Ok(())
    }

    /// The per-user totals in key order: the order rows are locked in, so that concurrent
    /// sources sharing `user_epoch_points` never deadlock.
    pub fn sorted_totals(&self) -> Vec<(&(String, EpochId), &UserBatch)> {
        let mut sorted: Vec<_> = self.totals.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted
    }

    /// Adds a transaction's inputs to the journal.
    pub fn journal_push(&mut self, chunk: JournalChunk) {
        self.journal_rows += chunk.events.len();
        self.journal.push(chunk);
    }

    /// The inputs journaled so far.
    pub fn journal(&self) -> &[JournalChunk] {
        &self.journal
    }

    /// The appends so far (journal, ledger rows, dead letters) as a part that goes to the store
    /// ahead of the seal; the totals and rule state stay here.
    pub fn take_appends(&mut self) -> Batch {
        Batch {
            journal: std::mem::take(&mut self.journal),
            journal_rows: std::mem::take(&mut self.journal_rows),
            fills: std::mem::take(&mut self.fills),
            entries: std::mem::take(&mut self.entries),
            dead: std::mem::take(&mut self.dead),
            ..Batch::default()
        }
    }

    /// Rows held for the store.
    pub fn rows(&self) -> usize {
        self.journal_rows + self.fills.len() + self.entries.len() + self.dead.len()
    }
}

/// A (user, epoch) key of [`Batch::totals`] by reference: it hashes exactly as the owned
/// tuple does (a `str`, then the epoch), so a lookup needs no clone of the address.
#[derive(Hash)]
struct UserEpoch<'a>(&'a str, EpochId);

impl hashbrown::Equivalent<(String, EpochId)> for UserEpoch<'_> {
    fn equivalent(&self, key: &(String, EpochId)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// One (user, epoch) of a batch.
#[derive(Debug, Default)]
pub struct UserBatch {
    /// What the batch adds to the user's totals.
    pub totals: Totals,
    /// Commit LSNs of the user's entries, ascending: the API reads the user's entries at these.
    pub commit_lsns: Vec<Lsn>,
}

/// Awards for the engine during one batch: what the store has (fetched on demand before each
/// transaction) overlaid by what this batch changed, which is written with the batch.
#[derive(Debug, Default)]
pub struct BatchAwards {
    fetched: HashMap<String, Option<Award>>,
    changed: BTreeMap<String, Option<Award>>,
}

impl BatchAwards {
    /// The ids among `ids` whose award this batch has neither changed nor fetched yet: what
    /// must be read from the store before the engine call.
    pub fn missing<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut missing: Vec<String> = ids
            .filter(|id| !self.changed.contains_key(*id) && !self.fetched.contains_key(*id))
            .map(str::to_owned)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Records what the store answered for `missing` (ids it does not know have no award), so
    /// that [`AwardBook::get`] answers from memory during the engine call.
    pub fn record_fetched(&mut self, missing: Vec<String>, found: Vec<(String, Award)>) {
        for id in missing {
            self.fetched.insert(id, None);
        }
        for (id, award) in found {
            self.fetched.insert(id, Some(award));
        }
    }

    /// Forgets everything, once the rows that hold the changes have gone to the store (later
    /// lookups read them there).
    pub fn clear(&mut self) {
        self.fetched.clear();
        self.changed.clear();
    }
}

impl AwardBook for BatchAwards {
    fn get(&self, trade_id: &str) -> Option<Award> {
        match self.changed.get(trade_id) {
            Some(a) => a.clone(),
            None => self.fetched.get(trade_id).cloned().flatten(),
        }
    }

    fn put(&mut self, trade_id: &str, award: Award) {
        self.changed.insert(trade_id.to_owned(), Some(award));
    }

    fn remove(&mut self, trade_id: &str) {
        self.changed.insert(trade_id.to_owned(), None);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn chunk(ids: &[&str]) -> JournalChunk {
        JournalChunk {
            commit_lsn: Lsn(1),
            commit_time: 0,
            epoch: 0,
            first_ordinal: 0,
            events: ids
                .iter()
                .map(|id| crate::points::Event::TradeDeleted { id: id.to_string() })
                .collect(),
        }
    }

    #[test]
    fn journal_rows_are_counted_as_pushed_and_go_with_the_part() {
        let mut batch = Batch::default();
        batch.journal_push(chunk(&["1", "2"]));
        batch.journal_push(chunk(&[]));
        batch.journal_push(chunk(&["3"]));
        batch
            .totals
            .insert(("0xabc".to_owned(), 0), UserBatch::default());
        assert_eq!(batch.rows(), 3);
        let part = batch.take_appends();
        assert_eq!((part.rows(), part.journal().len()), (3, 3));
        assert_eq!((batch.rows(), batch.journal().len()), (0, 0));
        assert_eq!(batch.totals.len(), 1, "totals stay for the seal");
        batch.journal_push(chunk(&["4"]));
        assert_eq!(batch.rows(), 1);
    }

    #[test]
    fn a_borrowed_key_finds_the_owned_one() {
        let mut totals: FastMap<(String, EpochId), UserBatch> = FastMap::default();
        totals.insert(("0xabc".to_owned(), 7), UserBatch::default());
        let hasher = totals.hasher();
        assert_eq!(
            hasher.hash_one(UserEpoch("0xabc", 7)),
            hasher.hash_one(&("0xabc".to_owned(), 7u32))
        );
        assert!(totals.get_mut(&UserEpoch("0xabc", 7)).is_some());
        assert!(totals.get_mut(&UserEpoch("0xabc", 8)).is_none());
        assert!(totals.get_mut(&UserEpoch("0xab", 7)).is_none());
    }
}
