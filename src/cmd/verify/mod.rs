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

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Transaction};

use crate::config::Config;
use crate::identifier::BadTableName;
use crate::lsn::Lsn;
use crate::pg::connect::{self, error_text, ConnectError};
use crate::pg::snapshot::{self, SnapshotError};
use crate::pg::{AdminSession, SourceError};
use crate::points::RulesError;

mod pnl;
mod report;
mod trading;

pub use report::{Difference, VerifyReport};

use trading::{ByUserEpoch, TradingQuery};

/// The trading entry kinds, as the store names them.
const TRADING_KINDS: &str = "'trading_taker', 'trading_maker'";

/// Why `verify` could not compare (as opposed to finding differences).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The points rules cannot be used.
    #[error("configuration: {0}")]
    Rules(#[from] RulesError),
    /// A configured table name does not parse.
    #[error("configuration: {0}")]
    TableName(#[from] BadTableName),
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
    /// The slot's snapshot could not be opened on the source.
    #[error("source: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A query failed.
    #[error("{side}: {what}: {}", error_text(.source))]
    Query {
        /// `source` or `store`.
        side: &'static str,
        /// What was being read.
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
}

fn sql_err(
    side: &'static str,
    what: &'static str,
) -> impl Fn(tokio_postgres::Error) -> VerifyError {
    move |source| VerifyError::Query { side, what, source }
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

/// Returned (through `main`) when the store and the business tables differ, so the process
/// exits 1 after the report has been printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("verify found {0} differences between the store and the business tables")]
pub struct Differences(pub usize);

/// `walpoints verify`: reads the business tables and the store at one LSN and compares, in
/// four phases: the store's record of the source; the source in a new slot's snapshot; the
/// recomputation from the business tables; the comparison with the store once its checkpoint
/// has passed the snapshot's cut.
pub async fn run(config: &Config, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let calendar = config.rules.calendar()?;
    let mut store = connect::connect(&config.store_url(), "walpoints-verify").await?;
    let cp = store_checkpoint(&store, &config.source.id).await?;
    let mut source = connect::connect(&config.source.url, "walpoints-verify").await?;
    let (cut, tx) = source_snapshot(config, &cp, &mut source).await?;

    // Recompute from the business tables.
    let trades_since = if config.columns.trades_time.trim().is_empty() {
        None
    } else {
        Some(config.backfill_since().unwrap_or(cp.snapshot_micros))
    };
    let excluded: Vec<String> = config
        .rules
        .excluded_addresses
        .iter()
        .map(|a| a.trim().to_lowercase())
        .collect();
    let source_fills = match trades_since {
        Some(since) => {
            let query = TradingQuery {
                genesis: calendar.genesis(),
                length: calendar.length(),
                since,
                epoch: opts.epoch,
                excluded: &excluded,
                min_notional: config.rules.trading.min_notional.to_string(),
            };
            trading::source_trading(&tx, config, &query).await?
        }
        None => ByUserEpoch::new(),
    };
    let source_pnl = pnl::source_pnl(&tx, config, &excluded).await?;

    // Compare with the store at the same cut.
    wait_for_store(&store, &config.source.id, cut, opts.wait).await?;
    let stx = store
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(sql_err("store", "begin"))?;
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
    if trades_since.is_some() {
        let store_fills =
            trading::store_trading(&stx, &config.source.id, cut, opts.epoch, cp.sources).await?;
        report
            .differences
            .extend(trading::compare_trading(&source_fills, &store_fills));
    }
    let store_pnl = pnl::store_pnl(&stx, &config.source.id, cut).await?;
    let pnl = pnl::compare_pnl(&tx, &stx, config, cut, &source_pnl, &store_pnl).await?;
    report.pnl_positions = pnl.compared;
    report.pnl_unseen = pnl.unseen;
    report.pnl_deleted = pnl.deleted;
    report.differences.extend(
        pnl.differences
            .into_iter()
            .filter(|d| opts.epoch.is_none_or(|e| d.epoch == e)),
    );
    report.differences.sort();
    Ok(report)
}

/// The source in the exported snapshot of a temporary slot: the snapshot holds exactly the
/// commits before the returned cut (the slot's consistent point). On a primary, a message
/// committed after the snapshot carries the daemon's checkpoint past the cut even when nothing
/// else commits (a standby relies on the daemon's heartbeat on the primary).
async fn source_snapshot<'c>(
    config: &Config,
    cp: &StoreCheckpoint,
    source: &'c mut Client,
) -> Result<(Lsn, Transaction<'c>), VerifyError> {
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-verify").await?;
    let system_id = admin.system_id().await?;
    if system_id != cp.system_id {
        return Err(VerifyError::OtherCluster {
            source_id: config.source.id.clone(),
            recorded: cp.system_id.clone(),
            found: system_id,
        });
    }
    let slot = format!("walpoints_verify_{}", std::process::id());
    let exported = admin.create_temporary_slot_exporting(&slot).await?;
    let tx = snapshot::read_in(source, &exported).await?;
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
    // Ending the session drops the temporary slot; the snapshot stays imported.
    drop(admin);
    Ok((exported.consistent_point, tx))
}

/// What the store's checkpoint row says about this source.
struct StoreCheckpoint {
    system_id: String,
    snapshot_micros: i64,
    /// How many sources share the store.
    sources: i64,
}

async fn store_checkpoint(store: &Client, source_id: &str) -> Result<StoreCheckpoint, VerifyError> {
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
    store: &Client,
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
