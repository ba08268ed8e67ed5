//! Soak: ten minutes of a steady 1,000 trades/s (plus positions opened and closed) while a fault
//! hits walpoints every minute, in turn: SIGKILL, its replication connection terminated, its
//! store sessions terminated, the PostgreSQL server (source and store) restarted fast, the
//! server crashed (immediate stop) and restarted, and walpoints frozen (SIGSTOP) for 15 s.
//!
//! A second instance ("steady", its own slot and store database) follows the same WAL and is
//! left alone, except that the server restarts hit it too. At the end both ledgers and both
//! total tables are read with `COPY ... TO STDOUT` in key order and compared byte for byte, and
//! the faulted store is checked for duplicate or missing trade awards. Prints walpoints' RSS,
//! the slot lag over the run, and how long walpoints took to catch up after each fault.
//!
//! Not part of the default parts: run it alone (`cargo bench --bench pipeline -- soak`); it
//! restarts the lab's server. Its length is 600 s × `WALPOINTS_BENCH_SCALE` (at least 60 s),
//! with a fault every tenth of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;
use walpoints::lsn::Lsn;
use walpoints::testing::StopMode;

use crate::lab::{connect, mib, Daemon, Lab};
use crate::workload::{seed_referrals, USERS};
use crate::Plan;

/// Trades per second the load commits.
const RATE: u64 = 1_000;
/// Concurrent trade writers (each commits RATE / WRITERS one-row transactions a second).
const WRITERS: u64 = 4;

/// The faults, applied in this order, one per period.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    DropReplication,
    DropStore,
    RestartFast,
    Crash,
    Freeze,
}

const FAULTS: [Fault; 6] = [
    Fault::Kill,
    Fault::DropReplication,
    Fault::DropStore,
    Fault::RestartFast,
    Fault::Crash,
    Fault::Freeze,
];

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL walpoints, start it again",
            Fault::DropReplication => "terminate its replication connection",
            Fault::DropStore => "terminate its store sessions",
            Fault::RestartFast => "restart PostgreSQL (fast)",
            Fault::Crash => "crash PostgreSQL (immediate), start it again",
            Fault::Freeze => "freeze walpoints 15 s (SIGSTOP, SIGCONT)",
        }
    }
}

/// One walpoints instance: its source id names the slot, publication and store database.
struct Instance<'a> {
    lab: &'a Lab,
    id: &'static str,
    daemon: Option<Daemon>,
    /// Runs of this instance (a SIGKILL starts a new one).
    runs: u32,
    /// Highest VmHWM of any of its processes, KiB.
    peak_rss: u64,
}

impl<'a> Instance<'a> {
    fn new(lab: &'a Lab, id: &'static str) -> Instance<'a> {
        Instance {
            lab,
            id,
            daemon: None,
            runs: 0,
            peak_rss: 0,
        }
    }

    fn store_url(&self) -> String {
        self.lab.url(&format!("store_{}", self.id))
    }

    fn slot(&self) -> String {
        format!("wp_{}", self.id)
    }

    fn command(&self, args: &[&str], log: &str) -> Result<std::process::Command> {
        let mut cmd = self.lab.walpoints(args, log)?;
        cmd.env("WALPOINTS_SOURCE_ID", self.id)
            .env("WALPOINTS_SOURCE_SLOT", self.slot())
            .env(
                "WALPOINTS_SOURCE_PUBLICATION",
                format!("wp_pub_{}", self.id),
            )
            .env("WALPOINTS_STORE_URL", self.store_url())
            .env("WALPOINTS_HTTP_LISTEN", "");
        Ok(cmd)
    }

    fn setup(&self) -> Result<()> {
        let log = format!("soak-{}-setup", self.id);
        let status = self.command(&["setup"], &log)?.status()?;
        if !status.success() {
            bail!(
                "setup of {} failed; see {}",
                self.id,
                self.lab.log_path(&log)
            );
        }
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        self.runs += 1;
        let log = format!("soak-{}-run{}", self.id, self.runs);
        let cmd = self.command(&["run"], &log)?;
        self.daemon = Some(Daemon::spawn(cmd, self.lab.log_path(&log))?);
        Ok(())
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("started")
    }

    fn note_rss(&mut self) {
        let peak = self.daemon().peak_rss_kib();
        self.peak_rss = self.peak_rss.max(peak);
    }

    /// SIGKILL and a fresh start.
    fn kill_and_restart(&mut self) -> Result<()> {
        self.note_rss();
        if let Some(d) = self.daemon.take() {
            d.signal(libc::SIGKILL);
            drop(d); // reaps it
        }
        self.start()
    }

    /// The store's checkpoint, or None while the store is unreachable.
    async fn checkpoint(&self) -> Option<Lsn> {
        let store = connect(&self.store_url()).await.ok()?;
        crate::lab::checkpoint_of(&store, self.id).await.ok()
    }

    /// Seconds since the source commit the store's checkpoint stands at (None while the store
    /// is unreachable).
    async fn lag_seconds(&self) -> Option<f64> {
        let store = connect(&self.store_url()).await.ok()?;
        store
            .query_one(
                "SELECT extract(epoch FROM now() - commit_time)::float8 \
                 FROM walpoints.checkpoint WHERE source_id = $1",
                &[&self.id],
            )
            .await
            .ok()?
            .try_get(0)
            .ok()
    }

    /// The rows of `query` as PostgreSQL's COPY text, in the query's order.
    async fn copy_out(&self, query: &str) -> Result<Vec<u8>> {
        use futures_util::TryStreamExt;
        let store = connect(&self.store_url()).await?;
        let stream = store.copy_out(&format!("COPY ({query}) TO STDOUT")).await?;
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
        Ok(chunks.concat())
    }
}

/// A session that comes back after the server restarts.
struct Session {
    url: String,
    client: Option<Client>,
}

impl Session {
    fn new(url: String) -> Session {
        Session { url, client: None }
    }

    async fn get(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = connect(&self.url).await.ok();
        }
        self.client.as_ref()
    }

    /// Runs a one-row, one-value query; None on any error (the server may be restarting).
    async fn value<T: for<'r> tokio_postgres::types::FromSql<'r>>(
        &mut self,
        sql: &str,
    ) -> Option<T> {
        let client = self.get().await?;
        match client.query_one(sql, &[]).await {
            Ok(row) => row.try_get(0).ok(),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }

    /// Writes a WAL fence, retrying until the server answers.
    async fn fence(&mut self) -> Lsn {
        loop {
            let lsn: Option<tokio_postgres::types::PgLsn> = self
                .value("SELECT pg_logical_emit_message(true, 'walpoints.soak.fence', '')")
                .await;
            if let Some(lsn) = lsn {
                return Lsn(u64::from(lsn));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Commits one-row trades at `RATE / WRITERS` a second until `stop`, reconnecting after
/// errors; counts what committed.
async fn trade_writer(url: String, n: u64, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) {
    let mut session = Session::new(url);
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 * WRITERS / RATE));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut g = n;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        g += WRITERS;
        let (t, m) = (1 + (g * 7919) % USERS, 1 + (g * 104_729 + 3) % USERS);
        let sql = format!(
            "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES \
             ('BTC-PERP', {}, {}, '0x{t:040x}', '0x{m:040x}')",
            1000.25 + (g % 4000) as f64,
            0.1 * (1 + g % 50) as f64,
        );
        let Some(client) = session.get().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match client.batch_execute(&sql).await {
            Ok(()) => {
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => session.client = None,
        }
    }
}

/// Opens a position and closes the oldest open one, 20 times a second each, until `stop`.
async fn position_writer(url: String, stop: Arc<AtomicBool>) {
    let mut session = Session::new(url);
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        k += 1;
        let user = 1 + (k * 31) % USERS;
        let sql = format!(
            "INSERT INTO positions (user_address, symbol, size, entry_price) \
             VALUES ('0x{user:040x}', 'BTC-PERP', {}, 2000); \
             UPDATE positions SET status = 'closed', realized_pnl = {}, updated_at = now() \
             WHERE id = (SELECT id FROM positions WHERE status = 'open' \
                         ORDER BY created_at, id LIMIT 1)",
            0.5 * (1 + k % 20) as f64,
            (k % 13) as i64 - 4,
        );
        if let Some(client) = session.get().await {
            if client.batch_execute(&sql).await.is_err() {
                session.client = None;
            }
        }
    }
}

/// What one fault cost.
struct FaultReport {
    at: Duration,
    what: &'static str,
    /// From the fault until the faulted instance's checkpoint passed a fence written right
    /// after it.
    caught_up_in: Option<Duration>,
}

pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    let length = Duration::from_secs(((600.0 * plan.scale).round() as u64).max(60));
    let period = length / 10;
    lab.reset("trades, positions, referral_relations").await?;
    seed_referrals(&lab.exchange, USERS).await?;
    let mut steady = Instance::new(lab, "steady");
    let mut soak = Instance::new(lab, "soak");
    steady.setup()?;
    soak.setup()?;
    steady.start()?;
    soak.start()?;
    let mut source = Session::new(lab.exchange_url());
    for instance in [&steady, &soak] {
        wait_active(&mut source, &instance.slot()).await?;
    }
    println!(
        "\n## Soak: {} s at {RATE} trades/s (+ 20 position opens and closes /s), a fault every {} s\n",
        length.as_secs(),
        period.as_secs()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for n in 0..WRITERS {
        load.push(tokio::spawn(trade_writer(
            lab.exchange_url(),
            n,
            stop.clone(),
            committed.clone(),
        )));
    }
    load.push(tokio::spawn(position_writer(
        lab.exchange_url(),
        stop.clone(),
    )));

    let started = Instant::now();
    let mut faults: Vec<FaultReport> = Vec::new();
    let mut pending: Option<(usize, Lsn, Instant)> = None;
    let mut next_fault = period;
    let (mut max_lag, mut max_lag_secs, mut rss_first, mut rss_last) = (0i64, 0f64, 0u64, 0u64);
    let lag_sql = format!(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots \
         WHERE slot_name = '{}'",
        soak.slot()
    );
    while started.elapsed() < length {
        tokio::time::sleep(Duration::from_secs(1)).await;
        steady
            .daemon()
            .check_alive()
            .context("the steady instance stopped")?;
        soak.daemon()
            .check_alive()
            .context("the soak instance stopped")?;
        let rss = soak.daemon().rss_kib();
        if rss_first == 0 {
            rss_first = rss;
        }
        rss_last = rss;
        if let Some(lag) = source.value::<i64>(&lag_sql).await {
            max_lag = max_lag.max(lag);
        }
        if let Some(secs) = soak.lag_seconds().await {
            max_lag_secs = max_lag_secs.max(secs);
        }
        if let Some((i, fence, at)) = pending {
            if soak.checkpoint().await.is_some_and(|cp| cp >= fence) {
                faults[i].caught_up_in = Some(at.elapsed());
                pending = None;
            }
        }
        if started.elapsed() >= next_fault {
            let fault = FAULTS[faults.len() % FAULTS.len()];
            let what = fault.describe();
            let at = Instant::now();
            inject(fault, lab, &mut soak, &mut source).await?;
            let fence = source.fence().await;
            println!(
                "- {:>4} s: {what} ({} trades committed so far)",
                started.elapsed().as_secs(),
                committed.load(Ordering::Relaxed)
            );
            faults.push(FaultReport {
                at: started.elapsed(),
                what,
                caught_up_in: None,
            });
            pending = Some((faults.len() - 1, fence, at));
            // A period from the end of this fault (a freeze lasts 15 s), so faults never pile up.
            next_fault = started.elapsed() + period;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let trades = committed.load(Ordering::Relaxed);
    let loaded_for = started.elapsed();

    let fence = source.fence().await;
    let drained = Instant::now();
    for instance in [&mut steady, &mut soak] {
        loop {
            if instance.checkpoint().await.is_some_and(|cp| cp >= fence) {
                break;
            }
            instance.daemon().check_alive()?;
            if drained.elapsed() > Duration::from_secs(600) {
                bail!("{} did not catch up within 10 minutes", instance.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Some((i, _, at)) = pending {
        faults[i].caught_up_in = Some(at.elapsed());
    }
    // Idle, walpoints confirms the store's own WAL (which follows the last trade) within 10 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let lag_end = source.value::<i64>(&lag_sql).await.unwrap_or(-1);
    soak.note_rss();
    steady.note_rss();

    // Byte-for-byte comparison of ledgers and totals, every column but the source id.
    let ledger_sql = "SELECT commit_lsn, ordinal, user_address, epoch, kind, reversal, points, \
                      basis, multiplier, rate, position_notional, trade_id, position_id, referee, \
                      segment_start, event_time, commit_time, rules_version \
                      FROM walpoints.ledger ORDER BY commit_lsn, ordinal";
    let totals_sql = "SELECT user_address, epoch, trading_points, referral_points, \
                      holding_points, pnl_points, total_points, trading_volume \
                      FROM walpoints.user_epoch_points ORDER BY user_address, epoch";
    let (ledger_a, ledger_b) = (
        steady.copy_out(ledger_sql).await?,
        soak.copy_out(ledger_sql).await?,
    );
    let (totals_a, totals_b) = (
        steady.copy_out(totals_sql).await?,
        soak.copy_out(totals_sql).await?,
    );
    let rows = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
    let ledger_equal = ledger_a == ledger_b;
    let totals_equal = totals_a == totals_b;
    let store = connect(&soak.store_url()).await?;
    let (taker_awards, distinct_trades): (i64, i64) = {
        let r = store
            .query_one(
                "SELECT count(*), count(DISTINCT trade_id) FROM walpoints.ledger \
                 WHERE kind = 'trading_taker' AND NOT reversal",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    let exchange = connect(&lab.exchange_url()).await?;
    let (all_trades, non_self): (i64, i64) = {
        let r = exchange
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE taker_address <> maker_address) FROM trades",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };

    println!("\n| fault | at | walpoints caught up after |\n|---|---:|---:|");
    for f in &faults {
        println!(
            "| {} | {} s | {} |",
            f.what,
            f.at.as_secs(),
            f.caught_up_in
                .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
    println!(
        "\n| figure | value |\n|---|---:|\n\
         | load | {trades} trades committed in {:.0} s ({:.0}/s; writes fail while the server is down) |\n\
         | trades in the exchange (not self-trades) | {all_trades} ({non_self}) |\n\
         | taker awards in the faulted store (distinct trades) | {taker_awards} ({distinct_trades}) |\n\
         | ledger rows, steady / faulted | {} / {} |\n\
         | ledgers byte-for-byte equal | {} |\n\
         | user totals ({} rows) byte-for-byte equal | {} |\n\
         | faulted walpoints RSS, first sample / last sample | {:.0} / {:.0} MiB |\n\
         | faulted walpoints peak RSS over its {} runs | {:.0} MiB |\n\
         | steady walpoints peak RSS | {:.0} MiB |\n\
         | slot lag of the faulted instance, max / after draining | {} / {} bytes |\n\
         | lag behind the last source commit, max (1 s samples) | {:.1} s |\n\
         | drain after the load stopped | {:.1} s |",
        loaded_for.as_secs_f64(),
        trades as f64 / loaded_for.as_secs_f64(),
        rows(&ledger_a),
        rows(&ledger_b),
        if ledger_equal { "yes" } else { "NO" },
        rows(&totals_a),
        if totals_equal { "yes" } else { "NO" },
        mib(rss_first),
        mib(rss_last),
        soak.runs,
        mib(soak.peak_rss),
        mib(steady.peak_rss),
        max_lag,
        lag_end,
        max_lag_secs,
        drained.elapsed().as_secs_f64(),
    );
    let no_gap = taker_awards == distinct_trades && taker_awards == non_self;
    let verdict = ledger_equal && totals_equal && no_gap;
    println!(
        "\nsoak verdict: {}",
        if verdict {
            "PASS (identical ledgers and totals, one taker award per trade)"
        } else {
            "FAIL"
        }
    );
    for mut instance in [steady, soak] {
        if let Some(d) = instance.daemon.take() {
            d.stop()?;
        }
    }
    if !verdict {
        bail!(
            "the soak found a difference; logs in {}",
            lab.log_path("soak-*")
        );
    }
    Ok(())
}

async fn inject(
    fault: Fault,
    lab: &Lab,
    soak: &mut Instance<'_>,
    source: &mut Session,
) -> Result<()> {
    match fault {
        Fault::Kill => soak.kill_and_restart()?,
        Fault::DropReplication => {
            let sql = format!(
                "SELECT count(pg_terminate_backend(active_pid))::int FROM pg_replication_slots \
                 WHERE slot_name = '{}' AND active_pid IS NOT NULL",
                soak.slot()
            );
            source.value::<i32>(&sql).await;
        }
        Fault::DropStore => {
            let sql = format!(
                "SELECT count(pg_terminate_backend(pid))::int FROM pg_stat_activity \
                 WHERE datname = 'store_{}' AND pid <> pg_backend_pid()",
                soak.id
            );
            source.value::<i32>(&sql).await;
        }
        Fault::RestartFast => lab.restart(StopMode::Fast)?,
        Fault::Crash => lab.restart(StopMode::Immediate)?,
        Fault::Freeze => {
            soak.daemon().signal(libc::SIGSTOP);
            tokio::time::sleep(Duration::from_secs(15)).await;
            soak.daemon().signal(libc::SIGCONT);
        }
    }
    Ok(())
}

/// Waits until `slot` is streamed by someone.
async fn wait_active(source: &mut Session, slot: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
    while source.value::<bool>(&sql).await != Some(true) {
        if Instant::now() > deadline {
            bail!("{slot} is not streamed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
