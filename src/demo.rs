//! `walpoints demo`: the points daemon on an embedded default, with nothing to set up.
//!
//! It starts a throwaway PostgreSQL from the machine's binaries, creates the exchange's seed
//! schema, runs `setup` and the daemon (the real source, decoder, rules and store: no shortcuts)
//! while a small synthetic exchange writes trades, positions and referrals, waits until the store
//! has everything the exchange committed, prints the leaderboard, and removes everything.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::pgcluster::{ClusterError, PgCluster};

/// The seed schema of the exchange's business tables.
pub const EXCHANGE_SCHEMA: &str = include_str!("../sql/exchange_schema.sql");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The throwaway cluster could not start (e.g. no PostgreSQL binaries installed).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// SQL against the throwaway cluster failed.
    #[error("demo database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// Setup or the daemon failed.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// The demo's own plumbing failed (a task died, a URL did not parse).
    #[error("demo: {0}")]
    Setup(String),
}

/// What the demo ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Trades the synthetic exchange committed.
    pub trades: u64,
    /// Ledger entries in the store.
    pub entries: i64,
}

/// Runs the demo for `seconds` of synthetic trading and prints the leaderboard to `out`.
pub async fn run(seconds: u64, out: &mut impl std::io::Write) -> Result<DemoSummary, DemoError> {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(&[]))
        .await
        .map_err(|e| DemoError::Setup(format!("starting the throwaway cluster: {e}")))??;
    eprintln!(
        "walpoints demo: throwaway PostgreSQL {} on 127.0.0.1:{}",
        cluster.binaries().major,
        cluster.port()
    );
    let admin = connect(&cluster.url("postgres")).await?;
    admin.batch_execute("CREATE DATABASE exchange").await?;
    let exchange_db = connect(&cluster.url("exchange")).await?;
    exchange_db.batch_execute(EXCHANGE_SCHEMA).await?;

    let mut config = Config::default();
    config.source.url = cluster
        .url("exchange")
        .parse()
        .map_err(|e: String| DemoError::Setup(format!("the cluster's URL: {e}")))?;
    config.heartbeat.interval = "1s".into();
    // The throwaway cluster is private to this run: so is its API (a free port, announced).
    config.http.listen = "127.0.0.1:0".into();
    let report = crate::daemon::setup(&config).await?;
    eprintln!("walpoints demo: {report}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let daemon = {
        let config = config.clone();
        tokio::spawn(async move { crate::daemon::run(&config, stop_rx).await })
    };
    let started = Instant::now();
    let trading = tokio::select! {
        r = exchange(&exchange_db, seconds) => Some(r),
        () = crate::signal::shutdown() => None,
    };
    let trades = match trading {
        Some(r) => r?,
        None => {
            let _ = stop_tx.send(true);
            let _ = daemon.await;
            return Err(DemoError::Setup("interrupted".into()));
        }
    };
    eprintln!(
        "walpoints demo: the exchange committed {trades} trades in {:.1} s; waiting for the store",
        started.elapsed().as_secs_f64()
    );
    // A fence in the WAL: once the checkpoint passes it, everything the exchange committed is in.
    let fence: String = exchange_db
        .query_one(
            "SELECT pg_logical_emit_message(true, 'walpoints.demo.fence', '')::text",
            &[],
        )
        .await?
        .get(0);
    let store = crate::pgconn::connect(&config.store_url(), "walpoints-demo")
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up: bool = store
            .query_one(
                "SELECT lsn >= $1::text::pg_lsn FROM walpoints.checkpoint WHERE source_id = $2",
                &[&fence, &config.source.id],
            )
            .await?
            .get(0);
        if caught_up {
            break;
        }
        if daemon.is_finished() || Instant::now() > deadline {
            let _ = stop_tx.send(true);
            return match daemon.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DemoError::Setup("the daemon did not catch up".into())),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    match daemon.await {
        Ok(r) => r?,
        Err(e) => return Err(DemoError::Setup(format!("the daemon task: {e}"))),
    }
    let entries = print_leaderboard(&store, out).await?;
    // Close the sessions before the server goes, so nothing logs a terminated connection.
    drop((store, exchange_db, admin));
    drop(cluster);
    Ok(DemoSummary { trades, entries })
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DemoError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Prints the newest epoch's top 10 with the per-kind breakdown; returns the ledger's size.
async fn print_leaderboard(
    store: &tokio_postgres::Client,
    out: &mut impl std::io::Write,
) -> Result<i64, DemoError> {
    let io = |e: std::io::Error| DemoError::Setup(format!("writing the leaderboard: {e}"));
    let entries: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger", &[])
        .await?
        .get(0);
    let rows = store
        .query(
            "SELECT epoch, rank() OVER (ORDER BY total_points DESC)::int, user_address,
                    total_points::text, trading_points::text, referral_points::text,
                    holding_points::text, pnl_points::text, trading_volume::text
             FROM walpoints.user_epoch_points
             WHERE epoch = (SELECT max(epoch) FROM walpoints.user_epoch_points)
             ORDER BY total_points DESC, user_address LIMIT 10",
            &[],
        )
        .await?;
    let epoch: i32 = rows.first().map_or(0, |r| r.get(0));
    writeln!(out, "epoch {epoch} leaderboard ({entries} ledger entries)").map_err(io)?;
    writeln!(
        out,
        "{:>4}  {:<42} {:>14} {:>14} {:>12} {:>10} {:>10} {:>16}",
        "rank", "user", "total", "trading", "referral", "holding", "pnl", "volume"
    )
    .map_err(io)?;
    for r in &rows {
        let t = |i: usize| r.get::<_, String>(i);
        writeln!(
            out,
            "{:>4}  {:<42} {:>14} {:>14} {:>12} {:>10} {:>10} {:>16}",
            r.get::<_, i32>(1),
            t(2),
            t(3),
            t(4),
            t(5),
            t(6),
            t(7),
            t(8)
        )
        .map_err(io)?;
    }
    Ok(entries)
}

/// A tiny deterministic exchange: referrals, positions opened and closed, and fills.
async fn exchange(client: &tokio_postgres::Client, seconds: u64) -> Result<u64, DemoError> {
    let user = |i: u64| format!("0x{:040x}", i * 2_654_435_761 % 1_000_003);
    for i in 2..20 {
        client
            .execute(
                "INSERT INTO referral_relations (referee_address, referrer_address) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&user(i), &user(i / 2)],
            )
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let taker = user(n % 20);
        let maker = user((n * 7 + 3) % 20);
        let price = format!("{}.{}", 60_000 + (n * 37) % 900, n % 100);
        let amount = format!("0.{:03}", 1 + n % 250);
        client
            .execute(
                "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) \
                 VALUES ('BTC-PERP', $1::text::numeric, $2::text::numeric, $3, $4)",
                &[&price, &amount, &taker, &maker],
            )
            .await?;
        if n.is_multiple_of(10) {
            client
                .execute(
                    "INSERT INTO positions (user_address, symbol, size, entry_price) \
                     VALUES ($1, 'BTC-PERP', $2::text::numeric, $3::text::numeric)",
                    &[&taker, &amount, &price],
                )
                .await?;
        }
        if n % 25 == 24 {
            client
                .execute(
                    "UPDATE positions SET status = 'closed', realized_pnl = 12.5, updated_at = now() \
                     WHERE id = (SELECT id FROM positions WHERE status = 'open' ORDER BY created_at LIMIT 1)",
                    &[],
                )
                .await?;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n)
}
