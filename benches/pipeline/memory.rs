//! Memory: walpoints' peak RSS with 1,000,000 open positions (each of a different user) taken
//! over by `setup`'s snapshot, loaded by `run`, which then follows trades among those users.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::{mib, Daemon, Lab};
use crate::workload::{commit_trades, open_positions};
use crate::Plan;

/// Opens the positions, runs setup and run, prints the peaks.
pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    let n = plan.sized(1_000_000, 1_000);
    let trades = plan.sized(100_000, 100);
    lab.reset("trades, positions, referral_relations").await?;
    open_positions(&lab.exchange, n, 1).await?;
    lab.checkpoint().await?;

    let started = Instant::now();
    let setup_kib = lab.walpoints_once(&["setup"], "memory-setup")?;
    let setup_took = started.elapsed();

    let store = lab.store().await?;
    let started = Instant::now();
    let mut daemon = Daemon::start(lab, "memory-run")?;
    // Trades among the position holders, 1,000 per transaction.
    commit_trades(
        &lab.exchange,
        n,
        (trades / 1_000).max(1),
        trades.min(1_000),
        0,
    )
    .await?;
    let fence = lab.fence().await?;
    daemon
        .wait_for(&store, fence, Duration::from_secs(3600))
        .await?;
    let run_took = started.elapsed();
    let run_kib = daemon.peak_rss_kib();
    daemon.stop()?;
    let counts = store
        .query_one(
            "SELECT (SELECT count(*) FROM walpoints.state_open_position), \
             (SELECT count(*) FROM (SELECT user_address FROM walpoints.state_open_position \
              UNION SELECT user_address FROM walpoints.state_volume) u), \
             (SELECT count(*) FROM walpoints.ledger WHERE kind = 'holding')",
            &[],
        )
        .await?;
    let (positions, users, holding): (i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2));
    println!(
        "\n## Memory\n\n\
         | state | walpoints run peak RSS | walpoints setup peak RSS |\n|---|---:|---:|\n\
         | {positions} open positions, {users} users; then {trades} trades | {:.0} MiB | {:.0} MiB |\n",
        mib(run_kib),
        mib(setup_kib),
    );
    eprintln!(
        "memory: setup (snapshot of {n} positions) {:.1} s; run (load + {trades} trades) {:.1} s; \
         {holding} holding entries settled during the run",
        setup_took.as_secs_f64(),
        run_took.as_secs_f64()
    );
    Ok(())
}
