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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};

use crate::config::{BadUrl, Config};
use crate::lsn::{Lsn, ParseLsnError};
use crate::pg::connect::ConnectError;
use crate::testing::{ClusterError, PgCluster, EXCHANGE_SCHEMA};

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

/// Prints the newest epoch's top 10 with the per-kind breakdown; returns the ledger's size.
async fn print_leaderboard(
    store: &tokio_postgres::Client,
    out: &mut impl Write,
) -> Result<i64, DemoError> {
    let entries: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger", &[])
        .await?
        .get(0);
    let rows = store
        .query(
            // Qualified names in ORDER BY: the bare `total_points` would be the text column.
            "SELECT u.epoch, rank() OVER (ORDER BY u.total_points DESC)::int, u.user_address,
                    u.total_points::text, u.trading_points::text, u.referral_points::text,
                    u.holding_points::text, u.pnl_points::text, u.trading_volume::text
             FROM walpoints.user_epoch_points u
             WHERE u.epoch = (SELECT max(epoch) FROM walpoints.user_epoch_points)
             ORDER BY u.total_points DESC, u.user_address LIMIT 10",
            &[],
        )
        .await?;
    let epoch: i32 = rows.first().map_or(0, |r| r.get(0));
    writeln!(out)?;
    writeln!(out, "epoch {epoch} leaderboard ({entries} ledger entries)")?;
    writeln!(
        out,
        "{:>4}  {:<42} {:>16} {:>16} {:>14} {:>12} {:>12} {:>20}",
        "rank", "user", "total", "trading", "referral", "holding", "pnl", "volume"
    )?;
    for r in &rows {
        let t = |i: usize| r.get::<_, String>(i);
        writeln!(
            out,
            "{:>4}  {:<42} {:>16} {:>16} {:>14} {:>12} {:>12} {:>20}",
            r.get::<_, i32>(1),
            t(2),
            t(3),
            t(4),
            t(5),
            t(6),
            t(7),
            t(8)
        )?;
    }
    if rows.is_empty() {
        writeln!(
            out,
            "      (nobody earned points: is the clock before the epoch genesis?)"
        )?;
    }
    Ok(entries)
}

/// Prints what the exchange did and what the store holds: points by kind, dead letters.
async fn print_totals(
    store: &tokio_postgres::Client,
    stats: &ExchangeStats,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    writeln!(out)?;
    writeln!(
        out,
        "exchange: {} trades ({} self-trades), {} positions opened, {} resized, {} closed \
         ({} in profit), {} referral links",
        n(&stats.trades),
        n(&stats.self_trades),
        n(&stats.opened),
        n(&stats.resized),
        n(&stats.closed),
        n(&stats.closed_in_profit),
        n(&stats.referrals)
    )?;
    let row = store
        .query_one(
            "SELECT count(*),
                    coalesce(sum(points) FILTER (WHERE kind LIKE 'trading%'), 0)::text,
                    coalesce(sum(points) FILTER (WHERE kind LIKE 'referral%'), 0)::text,
                    coalesce(sum(points) FILTER (WHERE kind = 'holding'), 0)::text,
                    coalesce(sum(points) FILTER (WHERE kind = 'pnl'), 0)::text,
                    coalesce(sum(points), 0)::text,
                    (SELECT count(*) FROM walpoints.dead_letter)
             FROM walpoints.ledger",
            &[],
        )
        .await?;
    writeln!(
        out,
        "ledger: {} entries; points trading {}, referral {}, holding {}, pnl {}, \
         total {}; {} dead letters",
        row.get::<_, i64>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3),
        row.get::<_, String>(4),
        row.get::<_, String>(5),
        row.get::<_, i64>(6)
    )?;
    Ok(())
}

/// With `--keep`: where everything is and how to look at it (`http_listen`: the address the
/// daemon's HTTP server is bound to).
fn print_how_to_query(
    cluster: &PgCluster,
    http_listen: Option<&str>,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let store = cluster.url("walpoints");
    let source = cluster.url("exchange");
    let psql = cluster.binaries().program("psql");
    let psql = if psql.is_file() {
        psql.display().to_string()
    } else {
        "psql".to_owned()
    };
    writeln!(out)?;
    writeln!(
        out,
        "The daemon keeps streaming (the synthetic exchange has stopped); Ctrl-C stops it and \
         removes the cluster."
    )?;
    writeln!(out, "  source: {source}")?;
    writeln!(out, "  store:  {store}")?;
    writeln!(out, "  data directory: {}", cluster.data_dir().display())?;
    writeln!(out, "Query the store:")?;
    writeln!(
        out,
        "  {psql} '{store}' -c 'SELECT user_address, epoch, total_points, trading_volume \
         FROM walpoints.user_epoch_points ORDER BY total_points DESC LIMIT 10'"
    )?;
    writeln!(
        out,
        "  {psql} '{store}' -c 'SELECT kind, count(*), sum(points) FROM walpoints.ledger \
         GROUP BY kind'"
    )?;
    writeln!(out, "Trade yourself and watch the points arrive:")?;
    writeln!(
        out,
        "  {psql} '{source}' -c \"INSERT INTO trades (symbol, price, amount, taker_address, \
         maker_address) VALUES ('BTC-PERP', 60000, 1, '0xyou', '0xthem')\""
    )?;
    writeln!(out, "Check the points against the business tables:")?;
    writeln!(out, "  walpoints --source-url '{source}' verify")?;
    if let Some(listen) = http_listen {
        writeln!(out, "Ask the HTTP API (read-only, on the store):")?;
        writeln!(out, "  curl http://{listen}/v1/leaderboard?limit=10")?;
        writeln!(out, "  curl http://{listen}/v1/users/0xyou")?;
        writeln!(out, "  curl http://{listen}/v1/users/0xyou/ledger?limit=5")?;
        writeln!(out, "  curl http://{listen}/v1/epochs")?;
        writeln!(out, "Watch it like an operator:")?;
        writeln!(out, "  curl http://{listen}/metrics")?;
        writeln!(out, "  curl http://{listen}/readyz")?;
        writeln!(out, "  walpoints --source-url '{source}' status")?;
    }
    Ok(())
}

/// What the synthetic exchange has done so far, shared with the progress line.
#[derive(Debug, Default)]
struct ExchangeStats {
    trades: AtomicU64,
    self_trades: AtomicU64,
    opened: AtomicU64,
    resized: AtomicU64,
    closed: AtomicU64,
    closed_in_profit: AtomicU64,
    referrals: AtomicU64,
}

/// The one refreshing progress line (stderr): trades/s, lag, points awarded so far. On a
/// terminal it is redrawn in place; otherwise a plain line every few seconds.
struct Progress<'a> {
    store: &'a tokio_postgres::Client,
    source: &'a tokio_postgres::Client,
    source_id: &'a str,
    stats: Arc<ExchangeStats>,
    tty: bool,
    last: Option<(Instant, u64)>,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl<'a> Progress<'a> {
    fn new(
        store: &'a tokio_postgres::Client,
        source: &'a tokio_postgres::Client,
        source_id: &'a str,
        stats: Arc<ExchangeStats>,
    ) -> Self {
        Progress {
            store,
            source,
            source_id,
            stats,
            tty: std::io::stderr().is_terminal(),
            last: None,
            last_plain: None,
            drawn: false,
        }
    }

    /// The store's checkpoint for the demo's source.
    async fn checkpoint(&self) -> Result<Lsn, DemoError> {
        let text: String = self
            .store
            .query_one(
                "SELECT lsn::text FROM walpoints.checkpoint WHERE source_id = $1",
                &[&self.source_id],
            )
            .await?
            .get(0);
        Ok(text.parse()?)
    }

    /// Redraws the line; a failed query only skips this refresh.
    async fn show(&mut self, started: Instant) {
        let now = Instant::now();
        if !self.tty
            && self
                .last_plain
                .is_some_and(|t| now - t < Duration::from_secs(5))
        {
            return;
        }
        let Ok(line) = self.line(started, now).await else {
            return;
        };
        if self.tty {
            eprint!("\r{line:<100}");
            self.drawn = true;
        } else {
            eprintln!("walpoints demo: {line}");
            self.last_plain = Some(now);
        }
    }

    async fn line(&mut self, started: Instant, now: Instant) -> Result<String, DemoError> {
        let current: String = self
            .source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let current: Lsn = current.parse().unwrap_or(Lsn::ZERO);
        let row = self
            .store
            .query_one(
                "SELECT c.lsn::text,
                        (extract(epoch FROM clock_timestamp() - c.commit_time) * 1000)::int8,
                        (SELECT coalesce(sum(total_points), 0) FROM walpoints.user_epoch_points)::text
                 FROM walpoints.checkpoint c WHERE c.source_id = $1",
                &[&self.source_id],
            )
            .await?;
        let checkpoint: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO);
        let behind = current.0.saturating_sub(checkpoint.0);
        // Behind by some bytes: the lag in time is how old the newest commit in the store is.
        let lag_ms = if behind == 0 {
            0
        } else {
            row.get::<_, i64>(1).max(0)
        };
        let points: Decimal = row.get::<_, String>(2).parse().unwrap_or_default();
        let points = points.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        let trades = self.stats.trades.load(Ordering::Relaxed);
        let rate = match self.last {
            Some((t, n)) if now > t => {
                let ms = u64::try_from((now - t).as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                trades.saturating_sub(n).saturating_mul(1000) / ms
            }
            _ => 0,
        };
        self.last = Some((now, trades));
        Ok(format!(
            "{:>3} s  {trades} trades ({rate}/s)  lag {} / {}.{:01} s  points awarded {points}",
            (now - started).as_secs(),
            bytes(behind),
            lag_ms / 1000,
            (lag_ms % 1000) / 100,
        ))
    }

    /// Ends the refreshing line so the next output starts on a line of its own.
    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{} kB", n / 1_024),
        _ => format!("{} MB", n / 1_048_576),
    }
}

/// A small deterministic generator (SplitMix64): the same demo every time, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }

    /// A trader index skewed towards low indices (cubed uniform): a few whales trade most.
    fn trader(&mut self) -> usize {
        let u = u128::from(self.below(1_000_000));
        let idx = (TRADERS as u128) * u * u * u / 1_000_000_000_000_000_000;
        usize::try_from(idx).unwrap_or(0).min(TRADERS - 1)
    }
}

/// How many traders the synthetic exchange has.
const TRADERS: usize = 300;

/// The perpetuals traded: symbol, and the starting price as (mantissa, decimals); prices keep
/// those decimals as they walk.
const MARKETS: [(&str, i64, u32); 5] = [
    ("BTC-PERP", 642_500, 1),
    ("ETH-PERP", 312_000, 2),
    ("SOL-PERP", 148_000, 3),
    ("ARB-PERP", 11_800, 4),
    ("DOGE-PERP", 15_000, 5),
];

fn address(i: usize) -> String {
    // A fixed pseudo-random 160-bit-looking address per trader.
    let mut r = Rng(i as u64 ^ 0xD1B5_4A32_D192_ED03);
    format!(
        "0x{:016x}{:016x}{:08x}",
        r.next(),
        r.next(),
        r.next() & 0xFFFF_FFFF
    )
}

/// An open position of the synthetic exchange, by (trader, market).
#[derive(Debug, Clone)]
struct OpenPosition {
    id: String,
    size: Decimal,
    entry: Decimal,
}

/// The synthetic exchange's state between ticks.
struct Market {
    rng: Rng,
    prices: Vec<Decimal>,
    positions: BTreeMap<(usize, usize), OpenPosition>,
    referred: Vec<bool>,
    trades: u64,
}

impl Market {
    fn new() -> Self {
        let prices = MARKETS
            .iter()
            .map(|(_, mantissa, decimals)| Decimal::new(*mantissa, *decimals))
            .collect();
        Market {
            rng: Rng(0x5EED_DE30),
            prices,
            positions: BTreeMap::new(),
            referred: vec![false; TRADERS],
            trades: 0,
        }
    }

    /// Moves market `m`'s price by up to ±0.2 %, at its tick size.
    fn walk(&mut self, m: usize) -> Decimal {
        let step = Decimal::new(i64::try_from(self.rng.below(41)).unwrap_or(20) - 20, 4);
        let p = self.prices[m] * (Decimal::ONE + step);
        let p = p.round_dp(MARKETS[m].2).max(Decimal::new(1, MARKETS[m].2));
        self.prices[m] = p;
        p
    }

    /// A notional between 1 and 900,000 (log-uniform-ish; a few below the 10 minimum).
    fn notional(&mut self) -> Decimal {
        let exponent = if self.rng.chance(30) {
            0
        } else {
            1 + self.rng.below(5)
        };
        Decimal::from(1 + self.rng.below(9)) * Decimal::from(10u64.pow(exponent as u32))
    }

    fn amount(&mut self, m: usize) -> Decimal {
        let a = (self.notional() / self.prices[m]).round_dp(4);
        a.max(Decimal::new(1, 4))
    }
}

/// Trades until `deadline`, one transaction every few tens of milliseconds; returns the number
/// of trades committed.
async fn exchange(
    client: &mut tokio_postgres::Client,
    deadline: Instant,
    stats: &ExchangeStats,
) -> Result<u64, DemoError> {
    let mut market = Market::new();
    // Half of the traders were referred by someone who joined before them.
    let (mut referees, mut referrers) = (Vec::new(), Vec::new());
    for i in 1..TRADERS {
        if market.rng.chance(500) {
            let by = market.rng.trader().min(i - 1);
            referees.push(address(i));
            referrers.push(address(by));
            market.referred[i] = true;
        }
    }
    client
        .execute(
            "INSERT INTO referral_relations (referee_address, referrer_address)
             SELECT * FROM unnest($1::text[], $2::text[])",
            &[&referees, &referrers],
        )
        .await?;
    stats
        .referrals
        .fetch_add(referees.len() as u64, Ordering::Relaxed);
    while Instant::now() < deadline {
        tick(client, &mut market, stats).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(market.trades)
}

/// One exchange transaction: a few fills, maybe a position opened, resized or closed, maybe a
/// new referral link.
async fn tick(
    client: &mut tokio_postgres::Client,
    market: &mut Market,
    stats: &ExchangeStats,
) -> Result<(), DemoError> {
    let tx = client.transaction().await?;
    let fills = 1 + market.rng.below(7);
    let (mut symbols, mut prices, mut amounts, mut takers, mut makers) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut self_trades = 0;
    for _ in 0..fills {
        let m = usize::try_from(market.rng.below(MARKETS.len() as u64)).unwrap_or(0);
        let price = market.walk(m);
        let amount = market.amount(m);
        let taker = market.rng.trader();
        // A self-trade now and then (always the 42nd fill): it earns nothing.
        let maker = if market.trades == 41 || market.rng.chance(2) {
            self_trades += 1;
            taker
        } else {
            let mut maker = market.rng.trader();
            while maker == taker {
                maker = usize::try_from(market.rng.below(TRADERS as u64)).unwrap_or(0);
            }
            maker
        };
        symbols.push(MARKETS[m].0.to_owned());
        prices.push(price.to_string());
        amounts.push(amount.to_string());
        takers.push(address(taker));
        makers.push(address(maker));
        market.trades += 1;
    }
    tx.execute(
        "INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
         SELECT * FROM unnest($1::text[], $2::text[]::numeric[], $3::text[]::numeric[],
                              $4::text[], $5::text[])",
        &[&symbols, &prices, &amounts, &takers, &makers],
    )
    .await?;

    let mut opened = 0;
    if market.rng.chance(300) {
        let key = (
            market.rng.trader(),
            usize::try_from(market.rng.below(MARKETS.len() as u64)).unwrap_or(0),
        );
        if !market.positions.contains_key(&key) {
            let entry = market.prices[key.1];
            let mut size = market.amount(key.1);
            if market.rng.chance(500) {
                size = -size;
            }
            let id: String = tx
                .query_one(
                    "INSERT INTO positions (user_address, symbol, size, entry_price)
                     VALUES ($1, $2, $3::text::numeric, $4::text::numeric) RETURNING id::text",
                    &[
                        &address(key.0),
                        &MARKETS[key.1].0,
                        &size.to_string(),
                        &entry.to_string(),
                    ],
                )
                .await?
                .get(0);
            market
                .positions
                .insert(key, OpenPosition { id, size, entry });
            opened = 1;
        }
    }
    let mut resized = 0;
    if !market.positions.is_empty() && market.rng.chance(200) {
        let n = market.rng.below(market.positions.len() as u64);
        if let Some((&key, _)) = market.positions.iter().nth(n as usize) {
            let price = market.prices[key.1];
            // 50 % to 150 % of the size; a bigger position's entry is the average price.
            let factor = Decimal::new(50 + i64::try_from(market.rng.below(101)).unwrap_or(50), 2);
            if let Some(p) = market.positions.get_mut(&key) {
                let new_size = (p.size * factor).round_dp(4);
                if new_size.abs() > p.size.abs() {
                    let added = new_size - p.size;
                    p.entry = ((p.entry * p.size + price * added) / new_size)
                        .round_dp(MARKETS[key.1].2 + 2);
                }
                if !new_size.is_zero() {
                    p.size = new_size;
                    tx.execute(
                        "UPDATE positions SET size = $2::text::numeric,
                                entry_price = $3::text::numeric, updated_at = now()
                         WHERE id = $1::text::uuid",
                        &[&p.id, &p.size.to_string(), &p.entry.to_string()],
                    )
                    .await?;
                    resized = 1;
                }
            }
        }
    }
    let (mut closed, mut in_profit) = (0, 0);
    if !market.positions.is_empty() && market.rng.chance(200) {
        let n = market.rng.below(market.positions.len() as u64);
        let key = market.positions.keys().nth(n as usize).copied();
        if let Some(p) = key.and_then(|k| market.positions.remove(&k).map(|p| (k, p))) {
            let (key, p) = p;
            let pnl = ((market.prices[key.1] - p.entry) * p.size).round_dp(6);
            tx.execute(
                "UPDATE positions SET status = 'closed', realized_pnl = $2::text::numeric,
                        updated_at = now()
                 WHERE id = $1::text::uuid",
                &[&p.id, &pnl.to_string()],
            )
            .await?;
            closed = 1;
            in_profit = u64::from(pnl > Decimal::ZERO);
        }
    }
    let mut referrals = 0;
    if market.rng.chance(20) {
        let referee = 1 + market.rng.below(TRADERS as u64 - 1) as usize;
        if !market.referred[referee] {
            let referrer = market.rng.trader();
            if referrer != referee {
                tx.execute(
                    "INSERT INTO referral_relations (referee_address, referrer_address)
                     VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&address(referee), &address(referrer)],
                )
                .await?;
                market.referred[referee] = true;
                referrals = 1;
            }
        }
    }
    tx.commit().await?;
    stats.trades.fetch_add(fills, Ordering::Relaxed);
    stats.self_trades.fetch_add(self_trades, Ordering::Relaxed);
    stats.opened.fetch_add(opened, Ordering::Relaxed);
    stats.resized.fetch_add(resized, Ordering::Relaxed);
    stats.closed.fetch_add(closed, Ordering::Relaxed);
    stats
        .closed_in_profit
        .fetch_add(in_profit, Ordering::Relaxed);
    stats.referrals.fetch_add(referrals, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_exchange_is_deterministic() {
        let run = || {
            let mut m = Market::new();
            (0..200)
                .map(|i| {
                    let k = i % MARKETS.len();
                    (m.walk(k), m.amount(k), m.rng.trader())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert_ne!(address(1), address(2));
        assert_eq!(address(7).len(), 42);
    }

    #[test]
    fn traders_are_skewed_but_all_can_trade() {
        let mut rng = Rng(1);
        let mut counts = vec![0u32; TRADERS];
        for _ in 0..100_000 {
            counts[rng.trader()] += 1;
        }
        assert!(counts[0] > counts[TRADERS / 2], "whales trade more");
        assert!(counts.iter().filter(|c| **c > 0).count() > TRADERS / 2);
    }

    #[test]
    fn prices_stay_positive_at_their_tick() {
        let mut m = Market::new();
        for _ in 0..10_000 {
            for (k, (_, _, decimals)) in MARKETS.iter().enumerate() {
                let p = m.walk(k);
                assert!(p > Decimal::ZERO);
                assert!(p.scale() <= *decimals);
            }
        }
    }
}
