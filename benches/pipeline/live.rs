//! Live following: pgbench commits one-row trades while `walpoints run` follows; the latency from
//! each trade's commit to the store commit that makes its points visible is read afterwards
//! from commit timestamps (`track_commit_timestamp`): the trade's `commit_time` column and
//! `pg_xact_commit_timestamp(xmin)` of its journal rows (committed with its ledger rows), both
//! from the same server clock.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::lab::{mib, Daemon, Lab};
use crate::workload::{pgbench_script, seed_referrals, USERS};
use crate::Plan;

/// One live run's figures.
struct Live {
    /// Trades per second pgbench committed.
    tps: f64,
    /// Commit-to-visible latencies, ms, in commit order.
    latencies: Vec<(f64, f64)>,
}

/// Target rates of the live runs (trades/s); `None` is pgbench unthrottled.
const RATES: [Option<u32>; 9] = [
    Some(1_000),
    Some(2_000),
    Some(3_000),
    Some(4_000),
    Some(5_000),
    Some(6_000),
    Some(8_000),
    Some(10_000),
    None,
];

/// [`RATES`], or those of `WALPOINTS_BENCH_LIVE_RATES` (e.g. "5000,6000,max") for a quicker
/// comparison.
fn rates() -> Result<Vec<Option<u32>>> {
    let Ok(list) = std::env::var("WALPOINTS_BENCH_LIVE_RATES") else {
        return Ok(RATES.to_vec());
    };
    list.split(',')
        .map(|r| match r.trim() {
            "max" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("WALPOINTS_BENCH_LIVE_RATES: {n:?} is no rate")),
        })
        .collect()
}

/// Runs pgbench at a ladder of rates, then unthrottled, while walpoints follows; a rate is
/// sustained when pgbench achieves it, p99 stays within 250 ms and the lag does not grow over
/// the run (the last full 10-second window's p99 is not above the first's by more than half
/// plus 50 ms).
pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    lab.reset("trades, positions, referral_relations").await?;
    seed_referrals(&lab.exchange, USERS).await?;
    lab.walpoints_once(&["setup"], "live-setup")?;
    let store = lab.store().await?;
    let mut daemon = Daemon::start(lab, "live-run")?;
    wait_streaming(lab, &mut daemon).await?;
    let script = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-pipeline")
        .join("trade.sql");
    std::fs::write(&script, pgbench_script(USERS))?;

    println!(
        "\n## Live: one-row trades committed by pgbench (4 clients) for {} s while walpoints follows\n\n\
         | target rate | achieved trades/s | p50 ms | p99 ms | max ms | p99 per 10 s window (ms) | sustained | walpoints peak RSS |\n\
         |---|---:|---:|---:|---:|---|---|---:|",
        plan.live_for.as_secs()
    );
    for rate in rates()? {
        let from = SystemTime::now();
        let live = pgbench(lab, &script, rate, plan.live_for)?;
        let fence = lab.fence().await?;
        daemon
            .wait_for(&store, fence, Duration::from_secs(600))
            .await?;
        let latencies = latencies(&store, from).await?;
        let live = Live { latencies, ..live };
        let mut sorted: Vec<f64> = live.latencies.iter().map(|l| l.1).collect();
        sorted.sort_by(f64::total_cmp);
        let windows = windows(&live.latencies, 10.0, plan.live_for.as_secs_f64());
        let p99 = percentile(&sorted, 0.99);
        let steady = p99 <= 250.0
            && match (windows.first(), windows.last()) {
                (Some(&first), Some(&last)) => last <= first * 1.5 + 50.0,
                _ => false,
            };
        let achieved = rate.is_none_or(|r| live.tps >= 0.95 * f64::from(r));
        let windows = windows
            .iter()
            .map(|w| format!("{w:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} MiB |",
            rate.map_or("max (unthrottled)".to_owned(), |r| format!("{r}/s")),
            live.tps,
            percentile(&sorted, 0.50),
            p99,
            sorted.last().copied().unwrap_or(0.0),
            windows,
            if steady && achieved { "yes" } else { "no" },
            mib(daemon.peak_rss_kib()),
        );
    }
    daemon.stop()?;
    Ok(())
}

/// Waits until walpoints streams from its slot.
async fn wait_streaming(lab: &Lab, daemon: &mut Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: bool = lab
            .exchange
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'walpoints'",
                &[],
            )
            .await?
            .is_some_and(|r| r.get(0));
        if active {
            return Ok(());
        }
        daemon.check_alive()?;
        if Instant::now() > deadline {
            bail!("walpoints did not start streaming");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs pgbench with the trade script; `rate` None = as fast as it goes.
fn pgbench(lab: &Lab, script: &std::path::Path, rate: Option<u32>, secs: Duration) -> Result<Live> {
    let mut cmd = Command::new(lab.program("pgbench"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-n",
        "-c",
        "4",
        "-j",
        "2",
    ])
    .args(["-p", &lab.port().to_string()])
    .args(["-T", &secs.as_secs().to_string()])
    .arg("-f")
    .arg(script)
    .arg("exchange")
    .stdin(Stdio::null());
    if let Some(r) = rate {
        cmd.args(["-R", &r.to_string()]);
    }
    let out = cmd.output().context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(Live {
        tps,
        latencies: Vec::new(),
    })
}

/// (seconds since `from`, commit-to-visible ms) of every trade committed since `from`: one
/// value per source transaction.
async fn latencies(store: &tokio_postgres::Client, from: SystemTime) -> Result<Vec<(f64, f64)>> {
    let rows = store
        .query(
            "SELECT extract(epoch FROM commit_time - $1)::float8, \
             extract(epoch FROM pg_xact_commit_timestamp(xmin) - commit_time)::float8 * 1000 \
             FROM (SELECT DISTINCT ON (commit_lsn) commit_time, xmin FROM walpoints.journal \
                   WHERE commit_time >= $1 ORDER BY commit_lsn) t ORDER BY 1",
            &[&from],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The p-quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p99 latency per full `width`-second window of commit time within the run's first `until`
/// seconds: growing values would mean growing lag.
fn windows(latencies: &[(f64, f64)], width: f64, until: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut bucket: Vec<f64> = Vec::new();
    let mut edge = width;
    let last_edge = (until / width).floor() * width;
    for &(t, ms) in latencies {
        if t >= last_edge {
            break;
        }
        while t >= edge {
            bucket.sort_by(f64::total_cmp);
            if !bucket.is_empty() {
                out.push(percentile(&bucket, 0.99));
            }
            bucket.clear();
            edge += width;
        }
        bucket.push(ms);
    }
    if !bucket.is_empty() && edge <= last_edge {
        bucket.sort_by(f64::total_cmp);
        out.push(percentile(&bucket, 0.99));
    }
    out
}
