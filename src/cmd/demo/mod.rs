//! `walpoints demo`: the points daemon on an embedded default, with nothing to set up.
//!
//! It starts a throwaway PostgreSQL from the machine's binaries (the test harness's
//! [`PgCluster`]), creates the exchange's seed schema, runs `setup` and the daemon (the real
//! source, decoder, rules and store: no shortcuts) while a synthetic exchange trades for a
//! while, waits until the store has everything the exchange committed, and prints the
//! leaderboard and the totals. Everything is removed at the end, or with `--keep` at Ctrl-C.
//!
//! The synthetic exchange is deterministic (a seeded generator; only the timing of commits
//! varies): a few hundred traders, some of them whales, trade five perpetuals whose prices
//! walk; traders refer each other, open, resize and close positions with gains and losses, and
//! now and then trade with themselves, which earns nothing.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{BadUrl, Config};
use crate::lsn::{Lsn, ParseLsnError};
use crate::pg::connect::ConnectError;
use crate::testing::{ClusterError, PgCluster, EXCHANGE_SCHEMA};

mod exchange;
mod progress;
mod report;

use exchange::{exchange, ExchangeStats};
use progress::Progress;
use report::{print_how_to_query, print_leaderboard, print_totals};

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The throwaway cluster could not start (e.g. no PostgreSQL binaries installed).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// SQL against the throwaway cluster failed.
    #[error("demo database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// A connection to the store failed.
    #[error("demo store: {0}")]
    Connect(#[from] ConnectError),
    /// Setup or the daemon failed.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// Writing the leaderboard failed.
    #[error("writing the demo's output: {0}")]
    Output(#[from] std::io::Error),
    /// Ctrl-C (or SIGTERM) before the leaderboard; everything was cleaned up.
    #[error("interrupted; the throwaway cluster is removed")]
    Interrupted,
    /// A task of the demo died.
    #[error("demo: {what}: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// How it died.
        source: tokio::task::JoinError,
    },
    /// The throwaway cluster's URL does not parse as a walpoints URL.
    #[error("demo: the cluster's URL: {0}")]
    Url(#[from] BadUrl),
    /// The server answered an LSN walpoints cannot read.
    #[error("demo: {0}")]
    Lsn(#[from] ParseLsnError),
    /// The daemon stopped before the demo asked it to.
    #[error("demo: the daemon stopped unexpectedly")]
    DaemonStopped,
    /// The daemon did not store what the exchange committed in time.
    #[error("demo: the daemon did not catch up within {0:?}")]
    Behind(Duration),
}

/// How the demo runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// How long the synthetic exchange trades.
    pub seconds: u64,
    /// Keep the cluster and the daemon (and its HTTP API) running after the leaderboard, until
    /// Ctrl-C.
    pub keep: bool,
}

/// What the demo ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Trades the synthetic exchange committed.
    pub trades: u64,
    /// Ledger entries in the store.
    pub entries: i64,
}

/// Runs the demo and prints the leaderboard and totals to `out` (progress goes to stderr).
pub async fn run(opts: &DemoOptions, out: &mut impl Write) -> Result<DemoSummary, DemoError> {
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(&[]))
        .await
        .map_err(|source| DemoError::Task {
            what: "starting the throwaway cluster",
            source,
        })??;
    eprintln!(
        "walpoints demo: throwaway PostgreSQL {} on 127.0.0.1:{} ({})",
        cluster.binaries().major,
        cluster.port(),
        cluster.data_dir().display()
    );
    let result = with_cluster(&cluster, opts, out).await;
    // Every client is dropped by now; a moment for their connection tasks to say goodbye, so
    // that no session is cut off by the server's shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(cluster);
    result
}

/// Everything after the cluster started; the caller removes the cluster whatever happens.
async fn with_cluster(
    cluster: &PgCluster,
    opts: &DemoOptions,
    out: &mut impl Write,
) -> Result<DemoSummary, DemoError> {
    let admin = connect(&cluster.url("postgres")).await?;
    admin.batch_execute("CREATE DATABASE exchange").await?;
    drop(admin);
    let mut exchange_db = connect(&cluster.url("exchange")).await?;
    exchange_db.batch_execute(EXCHANGE_SCHEMA).await?;

    let mut config = Config::default();
    config.source.url = cluster.url("exchange").parse()?;
    config.heartbeat.interval = "1s".into();
    // The throwaway cluster is private to this run: so is its API (a free port, announced).
    config.http.listen = "127.0.0.1:0".into();
    let report = crate::daemon::setup(&config).await?;
    eprintln!("walpoints demo: {report}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let telemetry = crate::daemon::telemetry(&config);
    let mut daemon = {
        let config = config.clone();
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            crate::daemon::run_reporting(&config, crate::daemon::Standby::Wait, stop_rx, telemetry)
                .await
        })
    };
    let result = drive(
        cluster,
        &config,
        &mut exchange_db,
        opts,
        out,
        &mut daemon,
        &telemetry,
    )
    .await;
    let _ = stop_tx.send(true);
    let stopped = if daemon.is_finished() {
        None
    } else {
        tokio::time::timeout(Duration::from_secs(30), &mut daemon)
            .await
            .ok()
    };
    match stopped {
        // A daemon that fails while stopping fails the demo too; an earlier error stands.
        Some(Ok(Err(e))) if result.is_ok() => Err(e.into()),
        _ => result,
    }
}

/// Trades, waits for the store, prints, and with `--keep` waits for Ctrl-C.
async fn drive(
    cluster: &PgCluster,
    config: &Config,
    exchange_db: &mut tokio_postgres::Client,
    opts: &DemoOptions,
    out: &mut impl Write,
    daemon: &mut tokio::task::JoinHandle<Result<(), crate::daemon::DaemonError>>,
    telemetry: &crate::telemetry::Telemetry,
) -> Result<DemoSummary, DemoError> {
    let store = crate::pg::connect::connect(&config.store_url(), "walpoints-demo").await?;
    let watcher = connect(&cluster.url("exchange")).await?;
    let stats = Arc::new(ExchangeStats::default());
    let mut progress = Progress::new(&store, &watcher, &config.source.id, stats.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(opts.seconds);
    {
        let trading = exchange(exchange_db, deadline, &stats);
        tokio::pin!(trading);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut trading => { r?; break; }
                _ = tick.tick() => progress.show(started).await,
                () = crate::signal::shutdown() => {
                    progress.finish();
                    return Err(DemoError::Interrupted);
                }
                r = &mut *daemon => return Err(daemon_stopped(r)),
            }
        }
    }
    progress.show(started).await;
    progress.finish();
    let trades = stats.trades.load(Ordering::Relaxed);
    eprintln!(
        "walpoints demo: the exchange committed {trades} trades in {} ms; waiting for the store",
        started.elapsed().as_millis()
    );
    // A fence in the WAL: once the checkpoint passes it, everything the exchange committed is in.
    let fence: String = exchange_db
        .query_one(
            "SELECT pg_logical_emit_message(true, 'walpoints.demo.fence', '')::text",
            &[],
        )
        .await?
        .get(0);
    let fence: Lsn = fence.parse()?;
    let patience = Duration::from_secs(120);
    let give_up = Instant::now() + patience;
    while progress.checkpoint().await? < fence {
        if Instant::now() > give_up {
            return Err(DemoError::Behind(patience));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = crate::signal::shutdown() => return Err(DemoError::Interrupted),
            r = &mut *daemon => return Err(daemon_stopped(r)),
        }
    }
    let entries = print_leaderboard(&store, out).await?;
    print_totals(&store, &stats, out).await?;
    if opts.keep {
        let api = telemetry.http_addr().map(|a| a.to_string());
        print_how_to_query(cluster, api.as_deref(), out)?;
        out.flush()?;
        tokio::select! {
            () = crate::signal::shutdown() => {
                eprintln!("walpoints demo: stopping the daemon and removing the cluster");
            }
            r = &mut *daemon => return Err(daemon_stopped(r)),
        }
    }
    Ok(DemoSummary { trades, entries })
}

fn daemon_stopped(
    r: Result<Result<(), crate::daemon::DaemonError>, tokio::task::JoinError>,
) -> DemoError {
    match r {
        Ok(Err(e)) => e.into(),
        Ok(Ok(())) => DemoError::DaemonStopped,
        Err(source) => DemoError::Task {
            what: "the daemon task",
            source,
        },
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DemoError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
