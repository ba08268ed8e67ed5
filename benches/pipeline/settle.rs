//! Settle: what an hour boundary costs with 1,000,000 open positions (each of a different
//! user). Stream time comes from commit times, so rather than wait for the clock the store's
//! stream time and the positions are moved back one hour while walpoints is stopped: the first
//! transaction after the restart settles that hour for every open position.
//!
//! Two restarts are timed, start to checkpoint past a fence after one trade: one where no hour
//! boundary is crossed and one where it is; the difference is the hour's settlement (engine and
//! store). Printed with the rows the settlement left in the ledger, the totals rows it touched,
//! and walpoints' peak RSS.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::{mib, reset_statements, statements, Daemon, Lab};
use crate::workload::{commit_trades, open_positions};
use crate::Plan;

const HOUR_MICROS: i64 = 3_600_000_000;

/// Opens the positions, runs setup, then the two timed restarts.
pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    let n = plan.sized(1_000_000, 1_000);
    lab.reset("trades, positions, referral_relations").await?;
    open_positions(&lab.exchange, n, 1).await?;
    lab.checkpoint().await?;
    lab.walpoints_once(&["setup"], "settle-setup")?;
    let store = lab.store().await?;

    let counts = || async {
        let r = store
            .query_one(
                "SELECT (SELECT count(*) FROM walpoints.ledger_position WHERE kind = 'holding'),
                        (SELECT count(*) FROM walpoints.user_epoch_points WHERE holding_points <> 0)",
                &[],
            )
            .await?;
        anyhow::Ok((r.get::<_, i64>(0), r.get::<_, i64>(1)))
    };
    let restart = |log: &'static str| async move {
        let started = Instant::now();
        let mut daemon = Daemon::start(lab, log)?;
        commit_trades(&lab.exchange, n, 1, 1, 0).await?;
        let fence = lab.fence().await?;
        daemon
            .wait_for(&lab.store().await?, fence, Duration::from_secs(3600))
            .await?;
        let took = started.elapsed();
        let peak = daemon.peak_rss_kib();
        daemon.stop()?;
        anyhow::Ok((took, peak))
    };

    let (plain, plain_kib) = restart("settle-plain").await?;
    let before = counts().await?;
    store
        .batch_execute(&format!(
            "UPDATE walpoints.checkpoint SET stream_time = stream_time - {HOUR_MICROS};
             UPDATE walpoints.state_open_position SET since = since - {HOUR_MICROS};"
        ))
        .await?;
    reset_statements(&store).await?;
    let (crossing, crossing_kib) = restart("settle-hour").await?;
    eprint!("{}", statements(&store).await?);
    let after = counts().await?;
    println!(
        "\n## Hourly settlement\n\n\
         | open positions | restart, no hour crossed | restart crossing an hour | the hour's settlement | holding ledger rows written | totals rows credited | peak RSS (no hour / hour) |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {n} | {:.1} s | {:.1} s | {:.1} s | {} | {} | {:.0} / {:.0} MiB |\n",
        plain.as_secs_f64(),
        crossing.as_secs_f64(),
        crossing.as_secs_f64() - plain.as_secs_f64(),
        after.0 - before.0,
        after.1 - before.1,
        mib(plain_kib),
        mib(crossing_kib),
    );
    Ok(())
}
