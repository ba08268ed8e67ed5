//! Backlog drain: the same committed backlog read once by `pg_recvlogical` into /dev/null and
//! once by walpoints into its store, per transaction shape.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cpu::{Role, Sample};
use crate::lab::{mib, reset_statements, statements, Daemon, Lab};
use crate::workload::{commit_trades, seed_referrals, USERS};
use crate::Plan;

/// A transaction shape of the backlog.
struct Shape {
    name: &'static str,
    /// Its name in `WALPOINTS_BENCH_DRAIN_SHAPES`.
    key: &'static str,
    transactions: u64,
    rows: u64,
}

/// Every shape, or those `WALPOINTS_BENCH_DRAIN_SHAPES` names by rows per transaction (e.g.
/// "1,100"; the one big transaction is "big"), for a quicker profile of one shape.
fn shapes(plan: &Plan) -> Vec<Shape> {
    let all = every_shape(plan);
    let Ok(list) = std::env::var("WALPOINTS_BENCH_DRAIN_SHAPES") else {
        return all;
    };
    let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
    all.into_iter()
        .filter(|s| wanted.contains(&s.key))
        .collect()
}

fn every_shape(plan: &Plan) -> Vec<Shape> {
    vec![
        Shape {
            name: "1-row tx",
            key: "1",
            transactions: plan.sized(100_000, 100),
            rows: 1,
        },
        Shape {
            name: "100-row tx",
            key: "100",
            transactions: plan.sized(10_000, 10),
            rows: 100,
        },
        Shape {
            name: "10,000-row tx",
            key: "10000",
            transactions: plan.sized(100, 1),
            rows: 10_000,
        },
        Shape {
            name: "one big tx",
            key: "big",
            transactions: 1,
            rows: plan.sized(1_000_000, 1_000),
        },
    ]
}

/// What one shape measured.
struct Figures {
    rows: u64,
    recv: Duration,
    walpoints: Duration,
    rss_kib: u64,
    entries: i64,
    /// The ledger rows alone, copied into an empty ledger-shaped table.
    ceiling: Duration,
    /// The walsender's CPU time while pg_recvlogical drained.
    recv_walsender: Duration,
    /// CPU time by role during walpoints' drain.
    cpu: BTreeMap<Role, Duration>,
}

fn rate(rows: u64, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

/// Runs every shape and prints the table. "ledger COPY alone" is the store's ceiling for the
/// shape: its ledger rows copied into an empty ledger-shaped table with nothing else running,
/// in trades per second; "ceiling ratio" compares that with pg_recvlogical.
pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    println!(
        "\n## Backlog drain ({USERS} users, 2 in 3 referred; rows = trades)\n\n\
         | shape | rows | pg_recvlogical s | pg_recvlogical rows/s | walpoints s | walpoints rows/s | ratio | ledger entries | walpoints peak RSS | ledger COPY alone, trades/s | ceiling ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut first = 0u64;
    let mut cpu_rows = Vec::new();
    for shape in shapes(plan) {
        let f = drain_one(lab, &shape, first).await?;
        cpu_rows.push(cpu_row(shape.name, &f));
        first += shape.transactions * shape.rows;
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.0} MiB | {:.0} | {:.2} |",
            shape.name,
            f.rows,
            f.recv.as_secs_f64(),
            rate(f.rows, f.recv),
            f.walpoints.as_secs_f64(),
            rate(f.rows, f.walpoints),
            f.recv.as_secs_f64() / f.walpoints.as_secs_f64(),
            f.entries,
            mib(f.rss_kib),
            rate(f.rows, f.ceiling),
            f.recv.as_secs_f64() / f.ceiling.as_secs_f64(),
        );
    }
    println!(
        "\n### CPU per trade during walpoints' drain (µs of CPU time, from /proc; wall µs per trade for comparison)\n\n\
         | shape | {} | {} | {} | {} | all | wall | walsender for pg_recvlogical |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        Role::Walpoints.name(),
        Role::Walsender.name(),
        Role::Store.name(),
        Role::Server.name()
    );
    for row in cpu_rows {
        println!("{row}");
    }
    Ok(())
}

/// One line of the CPU table.
fn cpu_row(name: &str, f: &Figures) -> String {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f.rows as f64;
    let of = |r: Role| per(f.cpu.get(&r).copied().unwrap_or_default());
    let all: Duration = f.cpu.values().sum();
    format!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        of(Role::Walpoints),
        of(Role::Walsender),
        of(Role::Store),
        of(Role::Server),
        per(all),
        per(f.walpoints),
        per(f.recv_walsender)
    )
}

async fn drain_one(lab: &Lab, shape: &Shape, first: u64) -> Result<Figures> {
    lab.reset("trades, positions, referral_relations").await?;
    seed_referrals(&lab.exchange, USERS).await?;
    // Both slots are created while nothing commits: they stream the same transactions.
    lab.walpoints_once(&["setup"], "drain-setup")?;
    lab.create_recv_slot().await?;
    let slots = lab.slot_positions().await?;
    let took = commit_trades(&lab.exchange, USERS, shape.transactions, shape.rows, first).await?;
    let rows = shape.transactions * shape.rows;
    let fence = lab.fence().await?;
    lab.checkpoint().await?;
    eprintln!(
        "{}: {} transactions of {} committed in {:.1} s ({:.0} rows/s); slots {:?}; fence {fence}",
        shape.name,
        shape.transactions,
        shape.rows,
        took.as_secs_f64(),
        rate(rows, took),
        slots
    );

    let (recv, recv_walsender) = lab.recvlogical(fence)?;

    let log = format!("drain-{}", shape.name.replace([' ', ','], ""));
    let store = lab.store().await?;
    reset_statements(&store).await?;
    let postmaster = lab.postmaster_pid();
    let before = Sample::take(0, postmaster, "walpoints");
    let started = Instant::now();
    let mut daemon = Daemon::start(lab, &log)?;
    daemon
        .wait_for(&store, fence, Duration::from_secs(3600))
        .await?;
    let walpoints = started.elapsed();
    let cpu = before.spent_until(&Sample::take(daemon.pid(), postmaster, "walpoints"));
    let rss_kib = daemon.stop()?;
    let entries: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger", &[])
        .await?
        .get(0);
    let kinds = store
        .query(
            "SELECT kind || ' x' || multiplier::float8::text, count(*) FROM walpoints.ledger \
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    eprint!(
        "{}: ledger {kinds:?}\n{}",
        shape.name,
        statements(&store).await?
    );
    let (copied, ceiling) = lab.ledger_copy_alone(&store).await?;
    eprintln!(
        "{}: the {copied} fills' ledger_fill and journal rows alone, COPY into empty tables: {:.2} s ({:.0} fills/s)",
        shape.name,
        ceiling.as_secs_f64(),
        rate(copied, ceiling)
    );
    Ok(Figures {
        rows,
        recv,
        walpoints,
        rss_kib,
        entries,
        ceiling,
        cpu,
        recv_walsender,
    })
}
