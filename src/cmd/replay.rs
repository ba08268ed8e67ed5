//! `walpoints replay --verify`: runs the journal through the same pure engine `run` uses and
//! compares what comes out with the stored ledger and totals, without the source.
//!
//! Everything is read in one snapshot of the store (the first connection exports it, the others
//! import it), so it may run while `run` streams: it compares up to the checkpoints it finds in
//! that snapshot. Every source of the store is replayed, since they share the totals. A
//! correction looks up the award the trade had just before it in the stored compact ledger, as
//! `run` does, instead of holding a season's awards in memory; a wrong stored award shows up
//! anyway, as a difference at the row that wrote it.
//!
//! Exit codes: 0 equal, 1 differences (the first ones listed), 2 cannot compare.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, StreamExt};
use rust_decimal::Decimal;
use tokio_postgres::types::PgLsn;

use super::progress::ProgressLine;
use crate::config::Config;
use crate::lsn::Lsn;
use crate::points::{Award, AwardBook};
use crate::points::{
    Engine, EpochId, EventError, HoldingCredit, LedgerEntry, RulesError, State, Totals,
};
use crate::store::{
    rank_bucket, BatchAwards, JournaledTx, Store, StoreError, StoredEntry, StoredFill, StoredItem,
};

/// How many differences the report lists (all are counted).
const LISTED: usize = 20;

/// What `replay` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Compare only this epoch's entries and totals (every epoch is still replayed: later
    /// epochs depend on earlier ones only through state, which replay rebuilds).
    pub epoch: Option<u32>,
}

/// Why `replay` could not compare.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store cannot be read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Recorded rules do not validate.
    #[error("recorded rules {id}: {source}")]
    Rules {
        /// The `rules_id`.
        id: i16,
        /// Why.
        source: RulesError,
    },
    /// No source is set up.
    #[error("the store has no source (no checkpoint): nothing to replay; run `walpoints setup`")]
    NothingToReplay,
    /// A source's journal begins after its setup (the store was upgraded from a release
    /// without the journal).
    #[error(
        "source {source_id:?}: the journal is complete only from checkpoint {from} (the store \
         was upgraded then); the ledger before it was written without its inputs, so the \
         store as a whole cannot be replayed. Its figures stay as they were; a store set up \
         on this release replays from its setup"
    )]
    JournalIncomplete {
        /// The source.
        source_id: String,
        /// Where its journal begins.
        from: Lsn,
    },
    /// A transaction names a rules version the store does not have.
    #[error("source {source_id:?}: journal transaction {lsn} names rules {id}, which walpoints.rules does not hold")]
    UnknownRules {
        /// The source.
        source_id: String,
        /// Its commit LSN.
        lsn: Lsn,
        /// The missing id.
        id: i16,
    },
    /// The engine refused a transaction as a whole (it refused it in `run` too, which then
    /// stopped: the store cannot hold what follows).
    #[error("source {source_id:?}: transaction {lsn}: {source}")]
    Stream {
        /// The source.
        source_id: String,
        /// Its commit LSN.
        lsn: Lsn,
        /// Why.
        source: crate::points::StreamError,
    },
}

/// One difference between the store and the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayDifference {
    /// Whose entry or total.
    pub user: String,
    /// Its epoch.
    pub epoch: i64,
    /// What differs (an entry's key and column, or a total's column).
    pub what: String,
    /// What the store holds.
    pub stored: String,
    /// What the replay gives.
    pub replayed: String,
}

/// What `replay --verify` found.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Sources replayed.
    pub sources: usize,
    /// Journaled transactions replayed.
    pub transactions: u64,
    /// Ledger entries compared.
    pub entries: u64,
    /// (user, epoch) totals compared.
    pub totals: u64,
    /// Differences found (all of them counted, the first 20 kept in `listed`).
    pub differences: u64,
    /// The first differences.
    pub listed: Vec<ReplayDifference>,
    /// How long it took.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// Whether the store equals the replay.
    pub fn is_clean(&self) -> bool {
        self.differences == 0
    }

    /// The report as printed on stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.listed {
            out.push_str(&format!(
                "difference: user {} epoch {} {}: stored {} replayed {}\n",
                d.user, d.epoch, d.what, d.stored, d.replayed
            ));
        }
        if self.differences > self.listed.len() as u64 {
            out.push_str(&format!(
                "... and {} more differences\n",
                self.differences - self.listed.len() as u64
            ));
        }
        out.push_str(&format!(
            "replay: {} source(s), {} transactions, {} entries and {} totals compared in {:.1} s: {}\n",
            self.sources,
            self.transactions,
            self.entries,
            self.totals,
            self.elapsed.as_secs_f64(),
            if self.is_clean() {
                "the store equals the replay".to_owned()
            } else {
                format!("{} differences", self.differences)
            }
        ));
        out
    }

    fn differ(&mut self, d: ReplayDifference) {
        self.differences += 1;
        if self.listed.len() < LISTED {
            self.listed.push(d);
        }
    }
}

/// `replay --verify` exits 1 with this error when the store differs.
#[derive(Debug, thiserror::Error)]
#[error("the store differs from the replay of its journal ({0} differences)")]
pub struct ReplayDiffers(pub u64);

/// Replays every source's journal and compares it with the store.
pub async fn verify(config: &Config, opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let url = config.store_url();
    let first = Store::connect(&url, &config.source.id, false).await?;
    let snapshot = export_snapshot(&first).await?;
    let sources = first
        .client()
        .query(
            "SELECT source_id, lsn, journal_from, transactions FROM walpoints.checkpoint \
             ORDER BY source_id",
            &[],
        )
        .await
        .map_err(StoreError::db("read the checkpoints"))?;
    if sources.is_empty() {
        return Err(ReplayError::NothingToReplay);
    }
    let mut engines = BTreeMap::new();
    for (id, rules) in first.recorded_rules().await? {
        let engine = Engine::new(rules).map_err(|source| ReplayError::Rules { id, source })?;
        engines.insert(id, engine);
    }
    let mut report = ReplayReport::default();
    let mut totals = ReplayedTotals::default();
    let total_tx: i64 = sources.iter().map(|r| r.get::<_, i64>(3)).sum();
    let mut progress = ProgressLine::new(
        "replay",
        "transactions",
        u64::try_from(total_tx).unwrap_or(0),
    );
    for row in &sources {
        let source_id: String = row.get(0);
        let until = Lsn(u64::from(row.get::<_, PgLsn>(1)));
        if let Some(from) = row.get::<_, Option<PgLsn>>(2) {
            return Err(ReplayError::JournalIncomplete {
                source_id,
                from: Lsn(u64::from(from)),
            });
        }
        let journal = joined(&url, &source_id, &snapshot).await?;
        let stored = joined(&url, &source_id, &snapshot).await?;
        let lookups = joined(&url, &source_id, &snapshot).await?;
        replay_source(
            &source_id,
            until,
            &engines,
            (journal, stored, &lookups),
            opts,
            &mut totals,
            &mut report,
            &mut progress,
        )
        .await?;
        report.sources += 1;
    }
    compare_totals(&first, totals, opts, &mut report).await?;
    report.elapsed = started.elapsed();
    progress.finish(report.transactions);
    Ok(report)
}

async fn export_snapshot(store: &Store) -> Result<String, ReplayError> {
    store
        .client()
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(StoreError::db("begin the snapshot"))?;
    Ok(store
        .client()
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(StoreError::db("export the snapshot"))?
        .get(0))
}

/// Another connection reading the same snapshot.
async fn joined(
    url: &crate::config::ConnUrl,
    source_id: &str,
    snapshot: &str,
) -> Result<Store, ReplayError> {
    let store = Store::connect(url, source_id, false).await?;
    store
        .client()
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::identifier::quote_literal(snapshot)
        ))
        .await
        .map_err(StoreError::db("join the snapshot"))?;
    Ok(store)
}

fn norm(d: Option<Decimal>) -> String {
    d.map_or_else(|| "NULL".into(), |d| d.normalize().to_string())
}

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "NULL".into(), str::to_owned)
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "NULL".into(), crate::time::format_rfc3339)
}

/// Compares one stored entry with the replayed entry of the same key, column by column
/// (decimals by value); a difference is rendered only when found.
fn compare(s: &StoredEntry, e: &LedgerEntry, report: &mut ReplayReport) {
    let key = || format!("entry {}/{}", Lsn(s.commit_lsn), s.ordinal);
    if s.user != e.user || s.epoch != i64::from(e.epoch) {
        report.differ(ReplayDifference {
            user: s.user.clone(),
            epoch: s.epoch,
            what: format!("{} user/epoch", key()),
            stored: format!("{} {}", s.user, s.epoch),
            replayed: format!("{} {}", e.user, e.epoch),
        });
        return;
    }
    let mut differ = |name: &str, stored: String, replayed: String| {
        report.differ(ReplayDifference {
            user: s.user.clone(),
            epoch: s.epoch,
            what: format!("{} {name}", key()),
            stored,
            replayed,
        });
    };
    if s.kind != e.kind.as_str() {
        differ("kind", s.kind.to_string(), e.kind.as_str().to_owned());
    }
    if s.reversal != e.reversal {
        differ("reversal", s.reversal.to_string(), e.reversal.to_string());
    }
    for (name, stored, replayed) in [
        ("points", Some(s.points), Some(e.points)),
        ("basis", s.basis, Some(e.basis)),
        ("multiplier", s.multiplier, Some(e.multiplier)),
        ("rate", s.rate, Some(e.rate)),
        (
            "position_notional",
            s.position_notional,
            e.position_notional,
        ),
    ] {
        if stored != replayed {
            differ(name, norm(stored), norm(replayed));
        }
    }
    for (name, stored, replayed) in [
        ("trade_id", s.trade_id.as_deref(), e.trade_id.as_deref()),
        (
            "position_id",
            s.position_id.as_deref(),
            e.position_id.as_deref(),
        ),
        ("referee", s.referee.as_deref(), e.referee.as_deref()),
    ] {
        if stored != replayed {
            differ(name, opt(stored), opt(replayed));
        }
    }
    if s.segment_start != e.segment_start {
        differ(
            "segment_start",
            time(s.segment_start),
            time(e.segment_start),
        );
    }
    if s.event_time != e.event_time {
        differ(
            "event_time",
            time(Some(s.event_time)),
            time(Some(e.event_time)),
        );
    }
    if *s.rules_version != *e.rules_version {
        differ(
            "rules_version",
            s.rules_version.to_string(),
            e.rules_version.to_string(),
        );
    }
}

/// Journaled transactions handed from the reading task to the engine per message.
const TX_PER_MESSAGE: usize = 512;
/// Stored entries handed from the reading task to the comparison per message.
const ENTRIES_PER_MESSAGE: usize = 8_192;

/// Reads the journal on its own connection and task, so that decoding it overlaps the engine.
fn spawn_journal(
    journal: Store,
    until: Lsn,
) -> tokio::sync::mpsc::Receiver<Result<Vec<JournaledTx>, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let read = async {
            let mut reader = journal.read_journal(None, until).await?;
            loop {
                let mut batch = Vec::with_capacity(TX_PER_MESSAGE);
                while batch.len() < TX_PER_MESSAGE {
                    match reader.next_tx().await? {
                        Some(t) => batch.push(t),
                        None => break,
                    }
                }
                let last = batch.len() < TX_PER_MESSAGE;
                if tx.send(Ok(batch)).await.is_err() || last {
                    return Ok(());
                }
            }
        };
        if let Err(e) = read.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// Reads the stored ledger (its partitions merged in commit order) on its own connection and
/// task, so that decoding and expanding it overlaps the engine.
fn spawn_stored(
    stored: Store,
    until: Lsn,
    epoch: Option<i32>,
) -> tokio::sync::mpsc::Receiver<Result<Vec<StoredItem>, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let read = async {
            let mut ledger = stored.stored_ledger(until, epoch).await?;
            loop {
                let mut batch = Vec::with_capacity(ENTRIES_PER_MESSAGE);
                while batch.len() < ENTRIES_PER_MESSAGE {
                    match ledger.next().await? {
                        Some(e) => batch.push(e),
                        None => break,
                    }
                }
                let last = batch.len() < ENTRIES_PER_MESSAGE;
                if tx.send(Ok(batch)).await.is_err() || last {
                    return Ok::<_, StoreError>(());
                }
            }
        };
        if let Err(e) = read.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// The stored items, one at a time, from the reading task's messages; a fill row is
/// expanded into its entries only when the comparison must go entry by entry.
struct StoredStream {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<StoredItem>, StoreError>>,
    batch: std::vec::IntoIter<StoredItem>,
    /// The next item, looked at but not taken.
    head: Option<StoredItem>,
    /// Entries of an expanded item, before `head`.
    expanded: std::collections::VecDeque<StoredEntry>,
}

impl StoredStream {
    /// The next item, when no expanded entry comes first.
    async fn item(&mut self) -> Result<Option<&StoredItem>, StoreError> {
        if !self.expanded.is_empty() {
            return Ok(None);
        }
        if self.head.is_none() {
            self.head = loop {
                if let Some(e) = self.batch.next() {
                    break Some(e);
                }
                match self.rx.recv().await {
                    Some(Ok(b)) => self.batch = b.into_iter(),
                    Some(Err(e)) => return Err(e),
                    None => break None,
                }
            };
        }
        Ok(self.head.as_ref())
    }

    fn take_item(&mut self) {
        self.head = None;
    }

    /// The next entry (expanding a fill row if one comes next).
    async fn entry(&mut self) -> Result<Option<&StoredEntry>, StoreError> {
        if self.expanded.is_empty() {
            self.item().await?;
            match self.head.take() {
                Some(StoredItem::Fill(f)) => self.expanded.extend(f.entries()),
                Some(StoredItem::Entry(e)) => self.expanded.push_back(*e),
                None => {}
            }
        }
        Ok(self.expanded.front())
    }

    fn take_entry(&mut self) {
        self.expanded.pop_front();
    }
}

/// Whether a stored fill row equals the replayed entries it must stand for (every compared
/// column of each): then they are counted as compared without expanding the row. `None`
/// sends the comparison entry by entry, which names the difference.
fn fill_equals(f: &StoredFill, lsn: u64, replayed: &[LedgerEntry]) -> Option<usize> {
    let mut n = 0;
    for s in f.slots() {
        let e = replayed.get(n)?;
        let same = f.commit_lsn == lsn
            && s.ordinal == i64::from(e.ordinal)
            && s.user == e.user
            && f.epoch == i64::from(e.epoch)
            && s.kind == e.kind.as_str()
            && f.reversal == e.reversal
            && s.points == e.points
            && s.basis == Some(e.basis)
            && s.multiplier == Some(e.multiplier)
            && s.rate == Some(e.rate)
            && e.position_notional.is_none()
            && e.trade_id.as_deref() == Some(f.trade_id.as_str())
            && e.position_id.is_none()
            && s.referee == e.referee.as_deref()
            && e.segment_start.is_none()
            && f.event_time == e.event_time
            && *f.rules_version == *e.rules_version;
        if !same {
            return None;
        }
        n += 1;
    }
    Some(n)
}

/// The award book of one replayed transaction: what the store held before it (fetched for the
/// ids the engine will look up) overlaid by what the transaction itself changed of those ids.
/// Awards of other trades are not kept: nothing in the transaction reads them again, and the
/// next transaction reads the stored rows.
struct ReplayBook {
    inner: BatchAwards,
    /// The ids the engine looks up in this transaction, sorted.
    looked_up: Vec<String>,
}

impl AwardBook for ReplayBook {
    fn get(&self, trade_id: &str) -> Option<Award> {
        self.inner.get(trade_id)
    }

    fn put(&mut self, trade_id: &str, award: Award) {
        if self
            .looked_up
            .binary_search_by(|id| id.as_str().cmp(trade_id))
            .is_ok()
        {
            self.inner.put(trade_id, award);
        }
    }

    fn remove(&mut self, trade_id: &str) {
        if self
            .looked_up
            .binary_search_by(|id| id.as_str().cmp(trade_id))
            .is_ok()
        {
            self.inner.remove(trade_id);
        }
    }
}

/// Replayed totals per user, then per epoch (a user has entries in few epochs): looked up by
/// the entry's `&str`, so an entry costs no key allocation once its user is known.
type ReplayedTotals = crate::points::FastMap<String, Vec<(EpochId, Totals)>>;

fn add_total(totals: &mut ReplayedTotals, e: &LedgerEntry) -> Result<(), StoreError> {
    with_total(totals, &e.user, e.epoch, |t| t.add_entry(e))
}

fn add_credit(totals: &mut ReplayedTotals, c: &HoldingCredit) -> Result<(), StoreError> {
    with_total(totals, &c.user, c.epoch, |t| t.add_credit(c))
}

/// Applies `add` to the replayed totals of (`user`, `epoch`), looked up by `&str`: no key
/// allocation once the user is known.
fn with_total(
    totals: &mut ReplayedTotals,
    user: &str,
    epoch: EpochId,
    add: impl FnOnce(&mut Totals) -> Result<(), EventError>,
) -> Result<(), StoreError> {
    let epochs = match totals.get_mut(user) {
        Some(v) => v,
        None => totals.entry(user.to_owned()).or_default(),
    };
    let i = match epochs.iter().position(|(e, _)| *e == epoch) {
        Some(i) => i,
        None => {
            epochs.push((epoch, Totals::default()));
            epochs.len() - 1
        }
    };
    add(&mut epochs[i].1).map_err(|source| StoreError::bad_value("replayed totals", source))
}

#[allow(clippy::too_many_arguments)]
async fn replay_source(
    source_id: &str,
    until: Lsn,
    engines: &BTreeMap<i16, Engine>,
    (journal, stored, lookups): (Store, Store, &Store),
    opts: &ReplayOptions,
    totals: &mut ReplayedTotals,
    report: &mut ReplayReport,
    progress: &mut ProgressLine,
) -> Result<(), ReplayError> {
    let mut txs = spawn_journal(journal, until);
    let mut rows = StoredStream {
        rx: spawn_stored(
            stored,
            until,
            opts.epoch.map(|e| i32::try_from(e).unwrap_or(i32::MAX)),
        ),
        batch: Vec::new().into_iter(),
        head: None,
        expanded: std::collections::VecDeque::new(),
    };
    let mut state = State::new();
    let mut previous: Option<&Engine> = None;
    let wanted = |epoch: i64| opts.epoch.is_none_or(|e| i64::from(e) == epoch);
    while let Some(batch) = txs.recv().await {
        for tx in batch? {
            let engine = engines
                .get(&tx.rules_id)
                .ok_or_else(|| ReplayError::UnknownRules {
                    source_id: source_id.to_owned(),
                    lsn: Lsn(tx.events.commit_lsn),
                    id: tx.rules_id,
                })?;
            let mut book = ReplayBook {
                inner: BatchAwards::default(),
                looked_up: Vec::new(),
            };
            let ids = book.inner.missing(tx.events.trade_ids_to_look_up());
            if !ids.is_empty() {
                let found = lookups
                    .awards_before(&ids, Lsn(tx.events.commit_lsn))
                    .await?;
                book.looked_up = ids.clone();
                book.inner.record_fetched(ids, found);
            }
            let outcome = engine
                .apply_transaction_after(previous, &mut state, &mut book, &tx.events)
                .map_err(|source| ReplayError::Stream {
                    source_id: source_id.to_owned(),
                    lsn: Lsn(tx.events.commit_lsn),
                    source,
                })?;
            previous = Some(engine);
            let lsn = tx.events.commit_lsn;
            let entries = &outcome.entries;
            for e in entries {
                add_total(totals, e)?;
            }
            for c in &outcome.credits {
                add_credit(totals, c)?;
            }
            let mut i = 0;
            while let Some(e) = entries.get(i) {
                if !wanted(i64::from(e.epoch)) {
                    i += 1;
                    continue;
                }
                // A whole fill row at once when it equals what the engine wrote.
                if let Some(StoredItem::Fill(f)) = rows.item().await? {
                    if (f.commit_lsn, f.first_entry) == (lsn, i64::from(e.ordinal)) {
                        if let Some(n) = fill_equals(f, lsn, &entries[i..]) {
                            report.entries += n as u64;
                            rows.take_item();
                            i += n;
                            continue;
                        }
                    }
                }
                report.entries += 1;
                let key = (lsn, i64::from(e.ordinal));
                loop {
                    match rows.entry().await? {
                        Some(s) if (s.commit_lsn, s.ordinal) < key => {
                            report.differ(not_replayed(s));
                            rows.take_entry();
                        }
                        Some(s) if (s.commit_lsn, s.ordinal) == key => {
                            compare(s, e, report);
                            rows.take_entry();
                            break;
                        }
                        _ => {
                            report.differ(ReplayDifference {
                                user: e.user.clone(),
                                epoch: i64::from(e.epoch),
                                what: format!("entry {}/{}", Lsn(lsn), e.ordinal),
                                stored: "no such entry".into(),
                                replayed: format!("{} {}", e.kind.as_str(), norm(Some(e.points))),
                            });
                            break;
                        }
                    }
                }
                i += 1;
            }
            report.transactions += 1;
            progress.tick(report.transactions);
        }
    }
    // Stored entries the replay never reached.
    while let Some(s) = rows.entry().await? {
        report.differ(not_replayed(s));
        rows.take_entry();
    }
    Ok(())
}

/// A stored entry the replay did not produce.
fn not_replayed(s: &StoredEntry) -> ReplayDifference {
    ReplayDifference {
        user: s.user.clone(),
        epoch: s.epoch,
        what: format!("entry {}/{}", Lsn(s.commit_lsn), s.ordinal),
        stored: format!("{} {}", s.kind, norm(Some(s.points))),
        replayed: "no such entry".into(),
    }
}

async fn compare_totals(
    store: &Store,
    mut replayed: ReplayedTotals,
    opts: &ReplayOptions,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    const NAMES: [&str; 6] = [
        "trading_points",
        "referral_points",
        "holding_points",
        "pnl_points",
        "total_points",
        "trading_volume",
    ];
    let rows = store
        .client()
        .query_raw(
            "SELECT user_address, epoch, trading_points, referral_points, holding_points, \
             pnl_points, total_points, trading_volume FROM walpoints.user_epoch_points \
             WHERE $1::int IS NULL OR epoch = $1",
            [&opts.epoch.map(|e| i32::try_from(e).unwrap_or(i32::MAX))],
        )
        .await
        .map_err(StoreError::db("read user_epoch_points"))?;
    pin_mut!(rows);
    // Differences are collected and listed in (user, epoch) order, as they always were.
    let mut found: Vec<(String, i64, usize, Decimal, Decimal)> = Vec::new();
    let mut buckets = ReplayedBuckets::default();
    let wanted = |epoch: i64| opts.epoch.is_none_or(|e| i64::from(e) == epoch);
    while let Some(r) = rows.next().await {
        let r = r.map_err(StoreError::db("read user_epoch_points"))?;
        let user: &str = r.get(0);
        let epoch = i64::from(r.get::<_, i32>(1));
        if !wanted(epoch) {
            continue;
        }
        report.totals += 1;
        let stored: [Decimal; 6] = std::array::from_fn(|i| r.get::<_, Decimal>(i + 2));
        let mine = replayed.get_mut(user).and_then(|v| {
            v.iter()
                .position(|(e, _)| i64::from(*e) == epoch)
                .map(|i| v.swap_remove(i).1)
        });
        let mine = mine.as_ref().map(Totals::columns).unwrap_or_default();
        buckets.count(epoch, mine[4]);
        for i in 0..6 {
            if stored[i] != mine[i] {
                found.push((user.to_owned(), epoch, i, stored[i], mine[i]));
            }
        }
    }
    // Replayed totals the store does not hold.
    for (user, epochs) in replayed {
        for (epoch, t) in epochs {
            let epoch = i64::from(epoch);
            if !wanted(epoch) {
                continue;
            }
            report.totals += 1;
            buckets.count(epoch, t.total_points);
            for (i, r) in t.columns().into_iter().enumerate() {
                if r != Decimal::ZERO {
                    found.push((user.clone(), epoch, i, Decimal::ZERO, r));
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    for (user, epoch, i, s, r) in found {
        report.differ(ReplayDifference {
            user,
            epoch,
            what: format!("total {}", NAMES[i]),
            stored: s.normalize().to_string(),
            replayed: r.normalize().to_string(),
        });
    }
    let epoch = opts.epoch.map(|e| i32::try_from(e).unwrap_or(i32::MAX));
    let stored = store.rank_buckets(epoch).await?;
    for (epoch, bucket, stored, replayed) in buckets.differences(&stored) {
        report.differ(ReplayDifference {
            user: "(all)".into(),
            epoch: i64::from(epoch),
            what: format!("rank bucket {bucket} users"),
            stored: stored.to_string(),
            replayed: replayed.to_string(),
        });
    }
    Ok(())
}

/// How many users of the replayed totals fall in each rank bucket (see
/// [`crate::store::rank_bucket`]): what `walpoints.rank_bucket` must hold for the API's ranks
/// to be right.
#[derive(Default)]
struct ReplayedBuckets(BTreeMap<(i32, i32), i64>);

impl ReplayedBuckets {
    fn count(&mut self, epoch: i64, total: Decimal) {
        if let (Some(bucket), Ok(epoch)) = (rank_bucket(total), i32::try_from(epoch)) {
            *self.0.entry((epoch, bucket)).or_default() += 1;
        }
    }

    /// (epoch, bucket, stored, replayed) where the two differ, in key order.
    fn differences(&self, stored: &BTreeMap<(i32, i32), i64>) -> Vec<(i32, i32, i64, i64)> {
        let mut keys: Vec<&(i32, i32)> = self.0.keys().chain(stored.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let get = |m: &BTreeMap<(i32, i32), i64>| m.get(k).copied().unwrap_or(0);
                (k.0, k.1, get(stored), get(&self.0))
            })
            .filter(|(_, _, s, r)| s != r)
            .collect()
    }
}
