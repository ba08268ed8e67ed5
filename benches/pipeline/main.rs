//! `cargo bench --bench pipeline`: walpoints measured side by side with `pg_recvlogical`, the
//! physical limit of any logical-replication consumer (one walsender decoding pgoutput).
//!
//! A program that prints figures, not a timed test. It starts a throwaway PostgreSQL (the test
//! harness's settings plus `track_commit_timestamp = on`), with the store database on the same
//! server, and runs the parts named on the command line (all of them by default):
//!
//! - `drain`: per workload shape, creates walpoints' slot (`walpoints setup`) and a second slot
//!   for `pg_recvlogical` while nothing commits, commits a backlog of trades, then drains it once
//!   with `pg_recvlogical -f /dev/null` and once with `walpoints run` (until its checkpoint passes
//!   a WAL fence written after the workload, store commits included); prints rows/s of both and
//!   their ratio.
//! - `live`: `walpoints run` follows pgbench committing one-row trades at 1,000/s, a ladder of
//!   higher rates and then as fast as 4 clients can; prints commit-to-points-visible latency
//!   (the trade's commit timestamp to the store commit holding its ledger rows, both from the
//!   same server clock) and whether lag grows over the run.
//! - `memory`: walpoints' peak RSS with 1,000,000 open positions and 1,000,000 distinct users in
//!   its state.
//! - `season` (only when named): a store holding a season of earlier epochs (20,000,000
//!   journaled fills, generated with the engine and loaded by COPY), then `walpoints replay
//!   --verify` of it (wall time, fills/s) and the points API's p50/p99 against it while
//!   `walpoints run` serves ([`season`]).
//! - `settle` (only when named): what crossing an hour boundary costs with 1,000,000 open
//!   positions ([`settle`]).
//! - `soak` (only when named, and alone: it restarts the server): ten minutes at 1,000 trades/s
//!   with a fault every minute; prints RSS, lag, catch-up times and whether the faulted
//!   instance's ledger equals an undisturbed one's byte for byte ([`soak`]).
//!
//! `WALPOINTS_BENCH_SCALE` (default 1) multiplies every size, e.g. 0.02 for a quick run;
//! `WALPOINTS_BENCH_LIVE_SECS` sets the length of each live run (default 60 × scale, at least 5).
//! `WALPOINTS_BENCH_LIVE_RATES` (e.g. `4000,5000,max`) runs only those live rates;
//! `WALPOINTS_BENCH_DRAIN_SHAPES` (e.g. `1,100`; also `10000`, `big`) only those drain shapes.
//! walpoints' logs go to `target/tmp/bench-pipeline/`. `WALPOINTS_BENCH_WRAP` (e.g.
//! `"heaptrack -o /tmp/hp"`) runs every walpoints under that command, for profiling.

mod cpu;
mod drain;
mod lab;
mod live;
mod memory;
mod season;
mod settle;
mod soak;
mod workload;

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Multiplies every workload size.
    pub scale: f64,
    /// Length of each live run.
    pub live_for: Duration,
}

impl Plan {
    /// `n` scaled, at least `min`.
    pub fn sized(&self, n: u64, min: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(min)
    }
}

fn plan() -> Result<Plan> {
    let scale: f64 = match std::env::var("WALPOINTS_BENCH_SCALE") {
        Ok(s) => s
            .parse()
            .context("WALPOINTS_BENCH_SCALE must be a number")?,
        Err(_) => 1.0,
    };
    if !(scale > 0.0 && scale <= 10.0) {
        bail!("WALPOINTS_BENCH_SCALE must be in (0, 10]");
    }
    let live_secs = match std::env::var("WALPOINTS_BENCH_LIVE_SECS") {
        Ok(s) => s
            .parse()
            .context("WALPOINTS_BENCH_LIVE_SECS must be whole seconds")?,
        Err(_) => ((60.0 * scale).round() as u64).max(5),
    };
    Ok(Plan {
        scale,
        live_for: Duration::from_secs(live_secs),
    })
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; anything else that is not a flag names a part.
    let mut parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if parts.is_empty() {
        parts = vec!["drain".into(), "live".into(), "memory".into()];
    }
    for p in &parts {
        if !["drain", "live", "memory", "season", "settle", "soak"].contains(&p.as_str()) {
            bail!("unknown part {p:?}: expected drain, live, memory, season, settle or soak");
        }
    }
    let plan = plan()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let lab = lab::Lab::start().await?;
        println!("{}", lab.describe(&plan).await?);
        for part in &parts {
            match part.as_str() {
                "drain" => drain::run(&lab, &plan).await?,
                "live" => live::run(&lab, &plan).await?,
                "memory" => memory::run(&lab, &plan).await?,
                "season" => season::run(&lab, &plan).await?,
                "settle" => settle::run(&lab, &plan).await?,
                "soak" => soak::run(&lab, &plan).await?,
                _ => {}
            }
        }
        Ok(())
    })
}
