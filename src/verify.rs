//! `walpoints verify`: an independent check that the points have not drifted from the data.
//!
//! The daemon computes points from the change stream; this module recomputes, by plain SQL on
//! the business tables, everything that does not depend on the order of events, and compares
//! it with the store:
//!
//! - per (user, epoch), the eligible trading volume (against `user_epoch_points.trading_volume`)
//!   and the number of eligible fills (against the ledger's trading entries, net of reversals);
//! - per closed position, the PnL points (against the ledger's `pnl` entries).
//!
//! Tiers, referral shares and holding segments depend on the order of events and are not
//! recomputed. Both sides are read at one LSN: a temporary slot exports a snapshot of the
//! source whose consistent point says exactly which commits it holds, and the store is read
//! once its checkpoint has passed that point, counting only entries of commits before it. So a
//! live exchange and a running daemon give no false alarms.
//!
//! The eligibility rules are the ones in `points::trading` and `points::pnl`, spelled in SQL:
//! a fill counts when its time is at or after genesis, taker and maker differ
//! (case-insensitively), neither is excluded, and price × |amount| reaches
//! `trading.min_notional`; both sides get its notional as volume and one fill. A position
//! closed with realized PnL > 0 earns round(PnL × `pnl.rate`, 6).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio_postgres::IsolationLevel;

use crate::config::{quote_ident, Config, TableName};
use crate::lsn::Lsn;
use crate::pgconn::{self, ConnectError};
use crate::points::Engine;
use crate::source::{quote_literal, AdminSession, SourceError};

/// The trading entry kinds, as the store names them.
const TRADING_KINDS: &str = "'trading_taker', 'trading_maker'";

/// Why `verify` could not compare (as opposed to finding differences).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The configuration cannot be used (a table name, the points rules).
    #[error("configuration: {0}")]
    Config(String),
    /// The store has no checkpoint for this source.
    #[error(
        "source {source_id:?} is not set up in the store (no checkpoint): there is nothing to \
         verify yet; run `walpoints setup` and `walpoints run` first"
    )]
    NotSetUp {
        /// The source.
        source_id: String,
    },
    /// `source.url` points at another cluster than the one the store was set up against.
    #[error(
        "the source's system identifier is {found}, but source {source_id:?} was set up against \
         {recorded}: source.url points at a different cluster, whose LSNs mean nothing to this \
         store (a physical standby of the original has the same identifier and is fine)"
    )]
    OtherCluster {
        /// The source.
        source_id: String,
        /// At setup.
        recorded: String,
        /// Now.
        found: String,
    },
    /// The store did not reach the source's snapshot in time.
    #[error(
        "the store's checkpoint for source {source_id:?} is at {checkpoint}, still behind the \
         source snapshot's {cut} after {waited_secs} s: is `walpoints run` running and \
         keeping up (and, when verify reads a standby, is heartbeat.interval on)? See README, \
         \"Runbook\", \"Slot lag\""
    )]
    Behind {
        /// The source.
        source_id: String,
        /// The store's checkpoint when verify gave up.
        checkpoint: Lsn,
        /// The source snapshot's LSN.
        cut: Lsn,
        /// How long verify waited.
        waited_secs: u64,
    },
    /// An SQL connection failed.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The replication session (temporary slot, system identifier) failed.
    #[error("source: {0}")]
    Replication(#[from] SourceError),
    /// A query failed.
    #[error("{side}: {what}: {message}")]
    Sql {
        /// `source` or `store`.
        side: &'static str,
        /// What was being read.
        what: &'static str,
        /// The server's message.
        message: String,
    },
}

fn sql_err(
    side: &'static str,
    what: &'static str,
) -> impl Fn(tokio_postgres::Error) -> VerifyError {
    move |e| VerifyError::Sql {
        side,
        what,
        message: pgconn::error_text(&e),
    }
}

/// What to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Only this epoch (the trading checks read only its trades; PnL differences are reported
    /// for positions paid, or expected to be paid, in it).
    pub epoch: Option<u32>,
    /// How long to wait for the store's checkpoint to pass the source snapshot.
    pub wait: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            epoch: None,
            wait: Duration::from_secs(60),
        }
    }
}

/// One disagreement between the store and the business tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// The user (lowercase address).
    pub user: String,
    /// The epoch the difference is in.
    pub epoch: u32,
    /// What differs, e.g. `trading volume` or `pnl points, position <id>`.
    pub what: String,
    /// The store's value.
    pub store: String,
    /// The value recomputed from the business tables.
    pub source: String,
}

/// What `verify` compared and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The source compared.
    pub source_id: String,
    /// The LSN both sides were read at: the source snapshot holds exactly the commits before it.
    pub cut: Lsn,
    /// The epoch verified, if only one.
    pub epoch: Option<u32>,
    /// Trades at or after this instant (µs) were checked; `None` when the trading checks were
    /// skipped because `columns.trades_time` is empty.
    pub trades_since: Option<i64>,
    /// Eligible fills recomputed from the source.
    pub fills: u64,
    /// (user, epoch) rows of trading activity compared.
    pub trading_rows: usize,
    /// Positions closed in profit that were compared.
    pub pnl_positions: usize,
    /// Positions closed in profit that walpoints never saw open (closed before `setup`, or
    /// below `holding.min_notional`) and has not paid: not checked.
    pub pnl_unseen: usize,
    /// Positions the store paid PnL for that the source no longer has: not checked.
    pub pnl_deleted: usize,
    /// Every difference found, sorted by user, epoch, what.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    /// Whether the store agrees with the business tables.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The report as the command prints it: what was compared, then the differences as a
    /// table (user, epoch, what, store, source), or a line saying there are none.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let scope = self
            .epoch
            .map_or_else(|| "all epochs".to_owned(), |e| format!("epoch {e}"));
        let _ = writeln!(
            s,
            "verify: source {:?}, {scope}, business tables and store both read at {}",
            self.source_id, self.cut
        );
        match self.trades_since {
            Some(since) => {
                let _ = writeln!(
                    s,
                    "trading: {} eligible fills since {} in {} (user, epoch) rows: volume and \
                     fill count compared",
                    self.fills,
                    rfc3339(since),
                    self.trading_rows
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "trading: NOT CHECKED: columns.trades_time is empty, so a fill's epoch is \
                     its commit time, which the trades table does not hold"
                );
            }
        }
        let _ = writeln!(
            s,
            "pnl: {} positions closed in profit compared; {} never seen open by walpoints \
             (closed before setup, or below holding.min_notional) and {} paid but since deleted \
             from the source were not checked",
            self.pnl_positions, self.pnl_unseen, self.pnl_deleted
        );
        if self.differences.is_empty() {
            let _ = writeln!(s, "OK: no differences");
            return s;
        }
        let _ = writeln!(
            s,
            "DIFFERENT: {} difference(s) between the store and the business tables",
            self.differences.len()
        );
        let w = |f: fn(&Difference) -> usize, title: &str| {
            self.differences
                .iter()
                .map(f)
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let uw = w(|d| d.user.len(), "user");
        let ww = w(|d| d.what.len(), "what");
        let sw = w(|d| d.store.len(), "store");
        let _ = writeln!(
            s,
            "{:<uw$}  {:>5}  {:<ww$}  {:>sw$}  source",
            "user", "epoch", "what", "store"
        );
        for d in &self.differences {
            let _ = writeln!(
                s,
                "{:<uw$}  {:>5}  {:<ww$}  {:>sw$}  {}",
                d.user, d.epoch, d.what, d.store, d.source
            );
        }
        s
    }
}

/// Returned (through `main`) when the store and the business tables differ, so the process
/// exits 1 after the report has been printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("verify found {0} differences between the store and the business tables")]
pub struct Differences(pub usize);

/// `walpoints verify`: reads the business tables and the store at one LSN and compares.
pub async fn run(config: &Config, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let engine =
        Engine::new(config.rules.clone()).map_err(|e| VerifyError::Config(e.to_string()))?;
    let store = pgconn::connect(&config.store_url(), "walpoints-verify").await?;
    let cp = store_checkpoint(&store, &config.source.id).await?;

    // The source, in a snapshot whose consistent point says exactly which commits it holds.
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-verify").await?;
    let system_id = admin.system_id().await?;
    if system_id != cp.system_id {
        return Err(VerifyError::OtherCluster {
            source_id: config.source.id.clone(),
            recorded: cp.system_id,
            found: system_id,
        });
    }
    let slot = format!("walpoints_verify_{}", std::process::id());
    let exported = admin.create_temporary_slot_exporting(&slot).await?;
    let cut = exported.consistent_point;
    let mut source = pgconn::connect(&config.source.url, "walpoints-verify").await?;
    source
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .map_err(sql_err("source", "set the session's time zone"))?;
    let tx = source
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql_err("source", "begin the snapshot transaction"))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(&exported.snapshot)
    ))
    .await
    .map_err(sql_err("source", "import the slot's snapshot"))?;
    // The snapshot is imported; on a primary, a message committed now carries the daemon's
    // checkpoint past the cut even when nothing else commits (a standby relies on the
    // daemon's own heartbeat on the primary).
    let standby = admin
        .query("SELECT pg_is_in_recovery()::text")
        .await?
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .is_some_and(|v| v == "true");
    if !standby {
        admin
            .query("SELECT pg_logical_emit_message(true, 'walpoints.verify', '')")
            .await?;
    }
    // Ending the session drops the temporary slot.
    drop(admin);

    let trades_since = if config.columns.trades_time.trim().is_empty() {
        None
    } else {
        Some(config.backfill_since().unwrap_or(cp.snapshot_micros))
    };
    let calendar = engine.calendar();
    let excluded: Vec<String> = config
        .rules
        .excluded_addresses
        .iter()
        .map(|a| a.trim().to_lowercase())
        .collect();
    let source_fills = match trades_since {
        Some(since) => {
            source_trading(
                &tx,
                config,
                &TradingQuery {
                    genesis: calendar.genesis(),
                    length: calendar.length(),
                    since,
                    epoch: opts.epoch,
                    excluded: &excluded,
                    min_notional: config.rules.trading.min_notional.to_string(),
                },
            )
            .await?
        }
        None => BTreeMap::new(),
    };
    let source_pnl = source_pnl(&tx, config, &excluded).await?;

    wait_for_store(&store, &config.source.id, cut, opts.wait).await?;
    let mut report = VerifyReport {
        source_id: config.source.id.clone(),
        cut,
        epoch: opts.epoch,
        trades_since,
        fills: source_fills.values().map(|f| f.fills).sum::<u64>() / 2,
        trading_rows: source_fills.len(),
        pnl_positions: 0,
        pnl_unseen: 0,
        pnl_deleted: 0,
        differences: Vec::new(),
    };
    let mut store = store;
    let stx = store
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql_err("store", "begin"))?;
    if trades_since.is_some() {
        let store_trading =
            store_trading(&stx, &config.source.id, cut, opts.epoch, cp.sources).await?;
        report
            .differences
            .extend(compare_trading(&source_fills, &store_trading));
    }
    let store_pnl = store_pnl(&stx, &config.source.id, cut).await?;
    let pnl = compare_pnl(&tx, &stx, config, cut, &source_pnl, &store_pnl).await?;
    report.pnl_positions = pnl.compared;
    report.pnl_unseen = pnl.unseen;
    report.pnl_deleted = pnl.deleted;
    report.differences.extend(
        pnl.differences
            .into_iter()
            .filter(|d| opts.epoch.is_none_or(|e| d.epoch == e)),
    );
    report.differences.sort();
    drop(stx);
    drop(tx);
    Ok(report)
}

/// What the store's checkpoint row says about this source.
struct StoreCheckpoint {
    system_id: String,
    snapshot_micros: i64,
    /// How many sources share the store.
    sources: i64,
}

async fn store_checkpoint(
    store: &tokio_postgres::Client,
    source_id: &str,
) -> Result<StoreCheckpoint, VerifyError> {
    let has_schema: bool = store
        .query_one(
            "SELECT to_regclass('walpoints.checkpoint') IS NOT NULL",
            &[],
        )
        .await
        .map_err(sql_err("store", "look for the schema"))?
        .get(0);
    let not_set_up = || VerifyError::NotSetUp {
        source_id: source_id.to_owned(),
    };
    if !has_schema {
        return Err(not_set_up());
    }
    let row = store
        .query_opt(
            "SELECT system_id, (extract(epoch FROM snapshot_time) * 1000000)::int8,
                    (SELECT count(*) FROM walpoints.checkpoint)
             FROM walpoints.checkpoint WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(sql_err("store", "read the checkpoint"))?
        .ok_or_else(not_set_up)?;
    Ok(StoreCheckpoint {
        system_id: row.get(0),
        snapshot_micros: row.get(1),
        sources: row.get(2),
    })
}

/// Waits until the store holds every commit before `cut`.
async fn wait_for_store(
    store: &tokio_postgres::Client,
    source_id: &str,
    cut: Lsn,
    wait: Duration,
) -> Result<(), VerifyError> {
    let started = Instant::now();
    loop {
        let text: String = store
            .query_one(
                "SELECT lsn::text FROM walpoints.checkpoint WHERE source_id = $1",
                &[&source_id],
            )
            .await
            .map_err(sql_err("store", "read the checkpoint"))?
            .get(0);
        let checkpoint: Lsn = text.parse().unwrap_or(Lsn::ZERO);
        if checkpoint >= cut {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(VerifyError::Behind {
                source_id: source_id.to_owned(),
                checkpoint,
                cut,
                waited_secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Trading activity of one (user, epoch): volume as exact decimal text, and fills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Activity {
    volume: String,
    fills: u64,
}

type ByUserEpoch = BTreeMap<(String, u32), Activity>;

/// The parameters of the source's trading query.
struct TradingQuery<'a> {
    genesis: i64,
    length: i64,
    since: i64,
    epoch: Option<u32>,
    excluded: &'a [String],
    min_notional: String,
}

/// Per (user, epoch): eligible volume and fills, recomputed from the trades table.
async fn source_trading(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    q: &TradingQuery<'_>,
) -> Result<ByUserEpoch, VerifyError> {
    let c = &config.columns;
    let table = table_sql(&config.tables.trades, "tables.trades")?;
    let (id, price, amount, taker, maker, time) = (
        quote_ident(&c.trades_id),
        quote_ident(&c.trades_price),
        quote_ident(&c.trades_amount),
        quote_ident(&c.trades_taker),
        quote_ident(&c.trades_maker),
        quote_ident(&c.trades_time),
    );
    // Rows the daemon dead-letters (NULLs, NaN, a negative price) earn nothing: left out.
    let sql = format!(
        "WITH fills AS (
           SELECT lower({taker}::text) AS taker, lower({maker}::text) AS maker,
                  {price}::numeric * abs({amount}::numeric) AS notional,
                  floor((extract(epoch FROM {time}) * 1000000 - $1::int8) / $2::int8)::int8 AS epoch
           FROM {table}
           WHERE {time} >= 'epoch'::timestamptz + $3::int8 * interval '1 microsecond'
             AND {id} IS NOT NULL AND {price} IS NOT NULL AND {amount} IS NOT NULL
             AND {taker} IS NOT NULL AND {maker} IS NOT NULL
             AND {price}::numeric >= 0 AND {price}::numeric <> 'NaN'
             AND {amount}::numeric <> 'NaN')
         SELECT side.user_address, f.epoch, trim_scale(sum(f.notional))::text, count(*)
         FROM fills f CROSS JOIN LATERAL (VALUES (f.taker), (f.maker)) AS side(user_address)
         WHERE f.epoch >= 0 AND ($4::int8 IS NULL OR f.epoch = $4::int8)
           AND f.taker <> f.maker
           AND NOT (f.taker = ANY($5::text[])) AND NOT (f.maker = ANY($5::text[]))
           AND f.notional >= $6::text::numeric
         GROUP BY 1, 2"
    );
    let epoch = q.epoch.map(i64::from);
    let rows = tx
        .query(
            &sql,
            &[
                &q.genesis,
                &q.length,
                &q.since,
                &epoch,
                &q.excluded,
                &q.min_notional,
            ],
        )
        .await
        .map_err(sql_err(
            "source",
            "recompute trading volume from the trades table",
        ))?;
    let mut out = ByUserEpoch::new();
    for r in rows {
        let Ok(epoch) = u32::try_from(r.get::<_, i64>(1)) else {
            continue;
        };
        out.insert(
            (r.get(0), epoch),
            Activity {
                volume: r.get(2),
                fills: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Per (user, epoch): the store's volume (its `user_epoch_points`, less what other sources and
/// this source's commits after the cut added) and fills (this source's trading entries before
/// the cut, net of reversals).
async fn store_trading(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
    epoch: Option<u32>,
    sources: i64,
) -> Result<ByUserEpoch, VerifyError> {
    let cut_text = cut.to_string();
    let epoch = epoch.and_then(|e| i32::try_from(e).ok());
    let others = sources > 1;
    let volumes = stx
        .query(
            &format!(
                "WITH adj AS (
                   SELECT user_address, epoch, sum(basis) AS basis FROM (
                     SELECT user_address, epoch, basis FROM walpoints.ledger
                     WHERE source_id = $1 AND commit_lsn >= $2::text::pg_lsn
                       AND kind IN ({TRADING_KINDS})
                     UNION ALL
                     SELECT user_address, epoch, basis FROM walpoints.ledger
                     WHERE $4::bool AND source_id <> $1 AND kind IN ({TRADING_KINDS})
                   ) l
                   WHERE $3::int4 IS NULL OR epoch = $3::int4
                   GROUP BY 1, 2),
                 u AS (
                   SELECT user_address, epoch, trading_volume FROM walpoints.user_epoch_points
                   WHERE $3::int4 IS NULL OR epoch = $3::int4)
                 SELECT coalesce(u.user_address, adj.user_address)::text,
                        coalesce(u.epoch, adj.epoch),
                        trim_scale(coalesce(u.trading_volume, 0) - coalesce(adj.basis, 0))::text
                 FROM u FULL JOIN adj
                   ON adj.user_address = u.user_address AND adj.epoch = u.epoch"
            ),
            &[&source_id, &cut_text, &epoch, &others],
        )
        .await
        .map_err(sql_err("store", "read user_epoch_points"))?;
    let fills = stx
        .query(
            &format!(
                "SELECT user_address::text, epoch,
                        sum(CASE WHEN reversal THEN -1 ELSE 1 END)::int8
                 FROM walpoints.ledger
                 WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn
                   AND kind IN ({TRADING_KINDS}) AND ($3::int4 IS NULL OR epoch = $3::int4)
                 GROUP BY 1, 2"
            ),
            &[&source_id, &cut_text, &epoch],
        )
        .await
        .map_err(sql_err("store", "count the ledger's trading entries"))?;
    let mut out = ByUserEpoch::new();
    for r in volumes {
        let Ok(epoch) = u32::try_from(r.get::<_, i32>(1)) else {
            continue;
        };
        out.entry((r.get(0), epoch)).or_default().volume = r.get(2);
    }
    for r in fills {
        let Ok(epoch) = u32::try_from(r.get::<_, i32>(1)) else {
            continue;
        };
        // A negative net count cannot be a u64: it is a difference all the same.
        let net: i64 = r.get(2);
        let a = out.entry((r.get(0), epoch)).or_default();
        a.fills = u64::try_from(net).unwrap_or(u64::MAX);
    }
    Ok(out)
}

/// Both sides' trading activity, row by row; a row missing on one side counts as zero.
fn compare_trading(source: &ByUserEpoch, store: &ByUserEpoch) -> Vec<Difference> {
    let zero = Activity {
        volume: "0".into(),
        fills: 0,
    };
    let keys: BTreeSet<&(String, u32)> = source.keys().chain(store.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let src = source.get(key).unwrap_or(&zero);
        let st = store.get(key).unwrap_or(&zero);
        let volume = |a: &Activity| {
            if a.volume.is_empty() {
                "0".to_owned()
            } else {
                a.volume.clone()
            }
        };
        let (sv, tv) = (volume(src), volume(st));
        if sv != tv {
            out.push(Difference {
                user: key.0.clone(),
                epoch: key.1,
                what: "trading volume".into(),
                store: tv,
                source: sv,
            });
        }
        if src.fills != st.fills {
            let show = |n: u64| {
                if n == u64::MAX {
                    "negative".to_owned()
                } else {
                    n.to_string()
                }
            };
            out.push(Difference {
                user: key.0.clone(),
                epoch: key.1,
                what: "eligible fills".into(),
                store: show(st.fills),
                source: show(src.fills),
            });
        }
    }
    out
}

/// Positions closed in profit: (position id, user) → the PnL points they must earn.
type PnlByPosition = BTreeMap<(String, String), String>;

async fn source_pnl(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    excluded: &[String],
) -> Result<PnlByPosition, VerifyError> {
    let c = &config.columns;
    let table = table_sql(&config.tables.positions, "tables.positions")?;
    let (id, user, status, pnl) = (
        quote_ident(&c.positions_id),
        quote_ident(&c.positions_user),
        quote_ident(&c.positions_status),
        quote_ident(&c.positions_realized_pnl),
    );
    let closed: Vec<String> = c
        .positions_closed_values
        .iter()
        .map(|v| v.trim().to_lowercase())
        .collect();
    let rate = config.rules.pnl.rate.to_string();
    // round(numeric, 6) rounds half away from zero, as the rules do.
    let sql = format!(
        "SELECT {id}::text, lower({user}::text),
                trim_scale(round({pnl}::numeric * $1::text::numeric, 6))::text
         FROM {table}
         WHERE lower(btrim({status}::text)) = ANY($2::text[])
           AND {id} IS NOT NULL AND {user} IS NOT NULL AND {pnl} IS NOT NULL
           AND {pnl}::numeric <> 'NaN' AND {pnl}::numeric > 0
           AND NOT (lower({user}::text) = ANY($3::text[]))"
    );
    let rows = tx
        .query(&sql, &[&rate, &closed, &excluded])
        .await
        .map_err(sql_err(
            "source",
            "recompute PnL points from the positions table",
        ))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The store's PnL entries before the cut: (position id, user) → (epoch, points).
type StorePnl = BTreeMap<(String, String), (u32, String)>;

async fn store_pnl(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
) -> Result<StorePnl, VerifyError> {
    let rows = stx
        .query(
            "SELECT position_id, user_address::text, max(epoch), trim_scale(sum(points))::text
             FROM walpoints.ledger
             WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn AND kind = 'pnl'
               AND position_id IS NOT NULL
             GROUP BY 1, 2",
            &[&source_id, &cut.to_string()],
        )
        .await
        .map_err(sql_err("store", "read the ledger's PnL entries"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let epoch = u32::try_from(r.get::<_, i32>(2)).ok()?;
            Some(((r.get(0), r.get(1)), (epoch, r.get(3))))
        })
        .collect())
}

/// The outcome of the PnL comparison.
struct PnlComparison {
    compared: usize,
    unseen: usize,
    deleted: usize,
    differences: Vec<Difference>,
}

/// Compares PnL per (position, user). A position closed in profit that the store has not paid
/// is a difference only if walpoints saw it open (it has holding entries): one closed before
/// `setup` never earns. A payment for a position the source no longer has cannot be checked.
async fn compare_pnl(
    tx: &tokio_postgres::Transaction<'_>,
    stx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    cut: Lsn,
    source: &PnlByPosition,
    store: &StorePnl,
) -> Result<PnlComparison, VerifyError> {
    let mut out = PnlComparison {
        compared: 0,
        unseen: 0,
        deleted: 0,
        differences: Vec::new(),
    };
    let what = |id: &str| format!("pnl points, position {id}");
    // Paid by the store: the source must say the same.
    let paid_only: Vec<&(String, String)> =
        store.keys().filter(|k| !source.contains_key(*k)).collect();
    let existing = positions_present(tx, config, &paid_only).await?;
    for (key, (epoch, points)) in store {
        match source.get(key) {
            Some(expected) => {
                out.compared += 1;
                if expected != points {
                    out.differences.push(Difference {
                        user: key.1.clone(),
                        epoch: *epoch,
                        what: what(&key.0),
                        store: points.clone(),
                        source: expected.clone(),
                    });
                }
            }
            None if existing.contains(&key.0) => out.differences.push(Difference {
                user: key.1.clone(),
                epoch: *epoch,
                what: what(&key.0),
                store: points.clone(),
                source: "0 (not closed in profit, or another owner)".into(),
            }),
            None => out.deleted += 1,
        }
    }
    // Expected by the source but not paid: a difference when walpoints saw the position open.
    let unpaid: Vec<&(String, String)> =
        source.keys().filter(|k| !store.contains_key(*k)).collect();
    let seen = positions_seen(stx, &config.source.id, cut, &unpaid).await?;
    for key in unpaid {
        match seen.get(&key.0) {
            Some(epoch) => {
                out.compared += 1;
                out.differences.push(Difference {
                    user: key.1.clone(),
                    epoch: *epoch,
                    what: what(&key.0),
                    store: "0 (not paid)".into(),
                    source: source.get(key).cloned().unwrap_or_default(),
                });
            }
            None => out.unseen += 1,
        }
    }
    Ok(out)
}

/// Which of these positions the source still has (in any state).
async fn positions_present(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    keys: &[&(String, String)],
) -> Result<BTreeSet<String>, VerifyError> {
    if keys.is_empty() {
        return Ok(BTreeSet::new());
    }
    let table = table_sql(&config.tables.positions, "tables.positions")?;
    let id = quote_ident(&config.columns.positions_id);
    let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let rows = tx
        .query(
            &format!("SELECT {id}::text FROM {table} WHERE {id}::text = ANY($1::text[])"),
            &[&ids],
        )
        .await
        .map_err(sql_err("source", "look up positions the store paid"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Of these positions, those walpoints saw open (holding entries before the cut), with the
/// epoch of their last segment, which ends at the close and so is the PnL's epoch.
async fn positions_seen(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
    keys: &[&(String, String)],
) -> Result<BTreeMap<String, u32>, VerifyError> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let users: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let rows = stx
        .query(
            "SELECT position_id, max(epoch) FROM walpoints.ledger
             WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn AND kind = 'holding'
               AND user_address = ANY($3::text[]) AND position_id = ANY($4::text[])
             GROUP BY 1",
            &[&source_id, &cut.to_string(), &users, &ids],
        )
        .await
        .map_err(sql_err("store", "look for holding entries"))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), u32::try_from(r.get::<_, i32>(1)).ok()?)))
        .collect())
}

fn table_sql(name: &str, key: &str) -> Result<String, VerifyError> {
    name.parse::<TableName>()
        .map(|t| t.to_string())
        .map_err(|e| VerifyError::Config(format!("{key}: {e}")))
}

/// µs since 1970 as RFC 3339 (UTC, microseconds), for the report.
fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || format!("{micros} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(volume: &str, fills: u64) -> Activity {
        Activity {
            volume: volume.into(),
            fills,
        }
    }

    #[test]
    fn trading_rows_missing_on_one_side_count_as_zero() {
        let mut source = ByUserEpoch::new();
        source.insert(("0xa".into(), 3), act("150.5", 2));
        source.insert(("0xb".into(), 3), act("100", 1));
        let mut store = ByUserEpoch::new();
        store.insert(("0xa".into(), 3), act("150.5", 2));
        // Another shard's user: zero after taking the other sources out.
        store.insert(("0xc".into(), 3), act("0", 0));
        let diffs = compare_trading(&source, &store);
        assert_eq!(
            diffs,
            vec![
                Difference {
                    user: "0xb".into(),
                    epoch: 3,
                    what: "trading volume".into(),
                    store: "0".into(),
                    source: "100".into(),
                },
                Difference {
                    user: "0xb".into(),
                    epoch: 3,
                    what: "eligible fills".into(),
                    store: "0".into(),
                    source: "1".into(),
                },
            ]
        );
    }

    #[test]
    fn the_report_names_user_epoch_and_both_values() {
        let report = VerifyReport {
            source_id: "default".into(),
            cut: Lsn(0x1_0000_0010),
            epoch: None,
            trades_since: Some(0),
            fills: 3,
            trading_rows: 2,
            pnl_positions: 1,
            pnl_unseen: 0,
            pnl_deleted: 0,
            differences: vec![Difference {
                user: "0xalice".into(),
                epoch: 46,
                what: "trading volume".into(),
                store: "101".into(),
                source: "100".into(),
            }],
        };
        let text = report.render();
        assert!(text.contains("1/10"), "{text}");
        assert!(text.contains("since 1970-01-01T00:00:00.000000Z"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("0xalice"))
            .unwrap_or_else(|| panic!("no row for 0xalice in:\n{text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, ["0xalice", "46", "trading", "volume", "101", "100"]);
        assert!(!report.is_clean());
    }
}
