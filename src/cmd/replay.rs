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
use crate::points::{Engine, EpochId, LedgerEntry, RulesError, State, Totals};
use crate::store::{BatchAwards, Store, StoreError};
use crate::time::micros_of;

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
    let mut totals: BTreeMap<(String, EpochId), Totals> = BTreeMap::new();
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
            (&journal, &stored, &lookups),
            opts,
            &mut totals,
            &mut report,
            &mut progress,
        )
        .await?;
        report.sources += 1;
    }
    compare_totals(&first, &totals, opts, &mut report).await?;
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

/// One entry as compared: its key and every column, decimals normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    commit_lsn: u64,
    ordinal: u32,
    user: String,
    epoch: i64,
    columns: [(&'static str, String); 13],
}

const COLUMNS: [&str; 13] = [
    "kind",
    "reversal",
    "points",
    "basis",
    "multiplier",
    "rate",
    "position_notional",
    "trade_id",
    "position_id",
    "referee",
    "segment_start",
    "event_time",
    "rules_version",
];

fn norm(d: Option<Decimal>) -> String {
    d.map_or_else(|| "NULL".into(), |d| d.normalize().to_string())
}

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "NULL".into(), str::to_owned)
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "NULL".into(), crate::time::format_rfc3339)
}

fn line_of(commit_lsn: u64, e: &LedgerEntry) -> Line {
    let v = [
        e.kind.as_str().to_owned(),
        e.reversal.to_string(),
        norm(Some(e.points)),
        norm(Some(e.basis)),
        norm(Some(e.multiplier)),
        norm(Some(e.rate)),
        norm(e.position_notional),
        opt(e.trade_id.as_deref()),
        opt(e.position_id.as_deref()),
        opt(e.referee.as_deref()),
        time(e.segment_start),
        time(Some(e.event_time)),
        e.rules_version.to_string(),
    ];
    Line {
        commit_lsn,
        ordinal: e.ordinal,
        user: e.user.clone(),
        epoch: i64::from(e.epoch),
        columns: std::array::from_fn(|i| (COLUMNS[i], v[i].clone())),
    }
}

fn line_of_row(r: &tokio_postgres::Row) -> Line {
    let ts = |i: usize| r.get::<_, Option<std::time::SystemTime>>(i).map(micros_of);
    let v = [
        r.get::<_, String>(4),
        r.get::<_, bool>(5).to_string(),
        norm(r.get(6)),
        norm(r.get(7)),
        norm(r.get(8)),
        norm(r.get(9)),
        norm(r.get(10)),
        opt(r.get(11)),
        opt(r.get(12)),
        opt(r.get(13)),
        time(ts(14)),
        time(ts(15)),
        r.get::<_, String>(16),
    ];
    Line {
        commit_lsn: u64::from(r.get::<_, PgLsn>(0)),
        ordinal: u32::try_from(r.get::<_, i32>(1)).unwrap_or(u32::MAX),
        user: r.get(2),
        epoch: i64::from(r.get::<_, i32>(3)),
        columns: std::array::from_fn(|i| (COLUMNS[i], v[i].clone())),
    }
}

/// Compares one stored entry with one replayed entry of the same key.
fn compare(stored: &Line, replayed: &Line, report: &mut ReplayReport) {
    let key = format!("entry {}/{}", Lsn(stored.commit_lsn), stored.ordinal);
    if stored.user != replayed.user || stored.epoch != replayed.epoch {
        report.differ(ReplayDifference {
            user: stored.user.clone(),
            epoch: stored.epoch,
            what: format!("{key} user/epoch"),
            stored: format!("{} {}", stored.user, stored.epoch),
            replayed: format!("{} {}", replayed.user, replayed.epoch),
        });
        return;
    }
    for ((name, s), (_, r)) in stored.columns.iter().zip(&replayed.columns) {
        if s != r {
            report.differ(ReplayDifference {
                user: stored.user.clone(),
                epoch: stored.epoch,
                what: format!("{key} {name}"),
                stored: s.clone(),
                replayed: r.clone(),
            });
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn replay_source(
    source_id: &str,
    until: Lsn,
    engines: &BTreeMap<i16, Engine>,
    (journal, stored, lookups): (&Store, &Store, &Store),
    opts: &ReplayOptions,
    totals: &mut BTreeMap<(String, EpochId), Totals>,
    report: &mut ReplayReport,
    progress: &mut ProgressLine,
) -> Result<(), ReplayError> {
    let mut reader = journal.read_journal(None, until).await?;
    let until_lsn = PgLsn::from(until.0);
    let rows = stored
        .client()
        .query_raw(
            "SELECT commit_lsn, ordinal, user_address, epoch, kind, reversal, points, basis, \
             multiplier, rate, position_notional, trade_id, position_id, referee, segment_start, \
             event_time, rules_version FROM walpoints.ledger \
             WHERE source_id = $1 AND commit_lsn <= $2 AND ($3::int IS NULL OR epoch = $3) \
             ORDER BY commit_lsn, ordinal",
            [
                &source_id as &(dyn tokio_postgres::types::ToSql + Sync),
                &until_lsn,
                &opts.epoch.map(|e| i32::try_from(e).unwrap_or(i32::MAX)),
            ],
        )
        .await
        .map_err(StoreError::db("read the ledger"))?;
    pin_mut!(rows);
    let mut next_stored: Option<Line> = None;
    let mut state = State::new();
    let wanted = |epoch: i64| opts.epoch.is_none_or(|e| i64::from(e) == epoch);
    while let Some(tx) = reader.next_tx().await? {
        let engine = engines
            .get(&tx.rules_id)
            .ok_or_else(|| ReplayError::UnknownRules {
                source_id: source_id.to_owned(),
                lsn: Lsn(tx.events.commit_lsn),
                id: tx.rules_id,
            })?;
        let mut book = BatchAwards::default();
        let ids = book.missing(tx.events.trade_ids_to_look_up());
        if !ids.is_empty() {
            let found = lookups
                .awards_before(&ids, Lsn(tx.events.commit_lsn))
                .await?;
            book.record_fetched(ids, found);
        }
        let outcome = engine
            .apply_transaction(&mut state, &mut book, &tx.events)
            .map_err(|source| ReplayError::Stream {
                source_id: source_id.to_owned(),
                lsn: Lsn(tx.events.commit_lsn),
                source,
            })?;
        for e in &outcome.entries {
            totals
                .entry((e.user.clone(), e.epoch))
                .or_default()
                .add_entry(e)
                .map_err(|source| StoreError::bad_value("replayed totals", source))?;
            let replayed = line_of(tx.events.commit_lsn, e);
            if !wanted(replayed.epoch) {
                continue;
            }
            report.entries += 1;
            loop {
                if next_stored.is_none() {
                    next_stored = match rows.next().await {
                        Some(r) => {
                            Some(line_of_row(&r.map_err(StoreError::db("read the ledger"))?))
                        }
                        None => None,
                    };
                }
                match &next_stored {
                    Some(s)
                        if (s.commit_lsn, s.ordinal) < (replayed.commit_lsn, replayed.ordinal) =>
                    {
                        report.differ(not_replayed(s));
                        next_stored = None;
                    }
                    Some(s)
                        if (s.commit_lsn, s.ordinal) == (replayed.commit_lsn, replayed.ordinal) =>
                    {
                        compare(s, &replayed, report);
                        next_stored = None;
                        break;
                    }
                    _ => {
                        report.differ(ReplayDifference {
                            user: replayed.user.clone(),
                            epoch: replayed.epoch,
                            what: format!(
                                "entry {}/{}",
                                Lsn(replayed.commit_lsn),
                                replayed.ordinal
                            ),
                            stored: "no such entry".into(),
                            replayed: format!(
                                "{} {}",
                                replayed.columns[0].1, replayed.columns[2].1
                            ),
                        });
                        break;
                    }
                }
            }
        }
        report.transactions += 1;
        progress.tick(report.transactions);
    }
    // Stored entries the replay never reached.
    loop {
        let s = match next_stored.take() {
            Some(s) => s,
            None => match rows.next().await {
                Some(r) => line_of_row(&r.map_err(StoreError::db("read the ledger"))?),
                None => break,
            },
        };
        report.differ(not_replayed(&s));
    }
    Ok(())
}

/// A stored entry the replay did not produce.
fn not_replayed(s: &Line) -> ReplayDifference {
    ReplayDifference {
        user: s.user.clone(),
        epoch: s.epoch,
        what: format!("entry {}/{}", Lsn(s.commit_lsn), s.ordinal),
        stored: format!("{} {}", s.columns[0].1, s.columns[2].1),
        replayed: "no such entry".into(),
    }
}

async fn compare_totals(
    store: &Store,
    replayed: &BTreeMap<(String, EpochId), Totals>,
    opts: &ReplayOptions,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    let rows = store
        .client()
        .query(
            "SELECT user_address, epoch, trading_points, referral_points, holding_points, \
             pnl_points, total_points, trading_volume FROM walpoints.user_epoch_points",
            &[],
        )
        .await
        .map_err(StoreError::db("read user_epoch_points"))?;
    let mut stored: BTreeMap<(String, i64), [Decimal; 6]> = BTreeMap::new();
    for r in &rows {
        let epoch = i64::from(r.get::<_, i32>(1));
        stored.insert(
            (r.get(0), epoch),
            std::array::from_fn(|i| r.get::<_, Decimal>(i + 2)),
        );
    }
    let mut all: BTreeMap<(String, i64), ([Decimal; 6], [Decimal; 6])> = BTreeMap::new();
    for (k, v) in stored {
        all.entry(k).or_default().0 = v;
    }
    for ((user, epoch), t) in replayed {
        all.entry((user.clone(), i64::from(*epoch))).or_default().1 = [
            t.trading_points,
            t.referral_points,
            t.holding_points,
            t.pnl_points,
            t.total_points,
            t.trading_volume,
        ];
    }
    const NAMES: [&str; 6] = [
        "trading_points",
        "referral_points",
        "holding_points",
        "pnl_points",
        "total_points",
        "trading_volume",
    ];
    for ((user, epoch), (s, r)) in all {
        if opts.epoch.is_some_and(|e| i64::from(e) != epoch) {
            continue;
        }
        report.totals += 1;
        for i in 0..6 {
            if s[i] != r[i] {
                report.differ(ReplayDifference {
                    user: user.clone(),
                    epoch,
                    what: format!("total {}", NAMES[i]),
                    stored: s[i].normalize().to_string(),
                    replayed: r[i].normalize().to_string(),
                });
            }
        }
    }
    Ok(())
}
