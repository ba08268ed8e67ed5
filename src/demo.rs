//! `walpoints demo`: the change stream on an embedded default, with nothing to set up.
//!
//! It starts a throwaway PostgreSQL from the machine's binaries, creates the exchange's seed
//! schema, follows it with `tail` (the real source and decoder, no shortcuts) while a small
//! synthetic exchange writes trades, positions and referrals, and removes everything at the end.
//! The points daemon grows into this demo once it exists.

use std::time::{Duration, Instant};

use crate::config::{ConnUrl, TableName};
use crate::lsn::Lsn;
use crate::pgcluster::{ClusterError, PgCluster};
use crate::tail::{self, TailError, TailOptions};

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
    /// The change stream failed.
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The demo's own plumbing failed (a task died, a URL did not parse).
    #[error("demo: {0}")]
    Setup(String),
}

/// Runs the demo for `seconds` of synthetic trading, printing the change stream to `out`.
pub async fn run(seconds: u64, out: &mut impl std::io::Write) -> Result<u64, DemoError> {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(&[]))
        .await
        .map_err(|e| DemoError::Setup(format!("starting the throwaway cluster: {e}")))??;
    eprintln!(
        "walpoints demo: throwaway PostgreSQL {} on 127.0.0.1:{}",
        cluster.binaries().major,
        cluster.port()
    );
    let url: ConnUrl = cluster
        .url("postgres")
        .parse()
        .map_err(|e: String| DemoError::Setup(format!("the cluster's URL: {e}")))?;
    let (client, conn) =
        tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.batch_execute(EXCHANGE_SCHEMA).await?;

    let opts = TailOptions {
        url,
        tables: [
            "public.trades",
            "public.positions",
            "public.referral_relations",
        ]
        .iter()
        .filter_map(|t| t.parse::<TableName>().ok())
        .collect(),
        slot: None,
        publication: String::new(),
        from: Lsn::ZERO,
        limit: None,
        until: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let workload = async move {
        // The exchange starts trading once tail's slot streams, so tail sees every trade.
        let result = match wait_for_tail(&client).await {
            Ok(()) => exchange(&client, seconds).await,
            Err(e) => Err(e),
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(());
        result
    };
    let stop = async move {
        tokio::select! {
            _ = stop_rx => {}
            () = crate::signal::shutdown() => {}
        }
    };
    let (summary, trades) = tokio::join!(tail::run(&opts, out, stop), workload);
    let summary = summary?;
    let trades = trades?;
    eprintln!(
        "walpoints demo: the exchange committed {trades} trades; tail printed {} changes",
        summary.changes
    );
    drop(cluster);
    Ok(summary.changes)
}

async fn wait_for_tail(client: &tokio_postgres::Client) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walpoints_tail%' AND active",
                &[],
            )
            .await?;
        if row.get::<_, i64>(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
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
