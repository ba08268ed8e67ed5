//! The bench's laboratory: one throwaway PostgreSQL holding the exchange database and walpoints'
//! store database, the walpoints binary and `pg_recvlogical` as child processes, and the WAL
//! fences that say when a consumer has caught up.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;
use walpoints::lsn::Lsn;
use walpoints::testing::PgCluster;

use crate::Plan;

/// The publication `walpoints setup` creates; `pg_recvlogical` reads the same one.
pub const PUBLICATION: &str = "walpoints";
/// The second slot, for `pg_recvlogical`.
pub const RECV_SLOT: &str = "bench_recvlogical";

/// The running cluster with a session on the exchange database.
pub struct Lab {
    cluster: PgCluster,
    /// A session on the exchange (source) database.
    pub exchange: Client,
    logs: PathBuf,
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Lab {
    /// Starts the cluster (the test harness's settings, plus commit timestamps for the latency
    /// measurement) and creates the exchange's tables.
    pub async fn start() -> Result<Lab> {
        let mut settings = vec![
            ("track_commit_timestamp", "on"),
            // Keep checkpoints out of the measured windows as far as the disk allows.
            ("max_wal_size", "'8GB'"),
            ("checkpoint_timeout", "'30min'"),
        ];
        if statements_wanted() {
            settings.push(("shared_preload_libraries", "'pg_stat_statements'"));
        }
        let cluster = PgCluster::start(&settings)?;
        let admin = connect(&cluster.url("postgres")).await?;
        admin.batch_execute("CREATE DATABASE exchange").await?;
        let exchange = connect(&cluster.url("exchange")).await?;
        exchange
            .batch_execute(walpoints::testing::EXCHANGE_SCHEMA)
            .await?;
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-pipeline");
        std::fs::create_dir_all(&logs)?;
        Ok(Lab {
            cluster,
            exchange,
            logs,
        })
    }

    /// One paragraph on where the figures come from.
    pub async fn describe(&self, plan: &Plan) -> Result<String> {
        let version: String = self
            .exchange
            .query_one("SELECT version()", &[])
            .await?
            .get(0);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map_or(0.0, |k| k as f64 / 1024.0 / 1024.0);
        Ok(format!(
            "walpoints pipeline bench: {cores} cores ({cpu}), {mem_gib:.0} GiB; {}\n\
             store on the same server; fsync off, synchronous_commit on; scale {}; logs in {}",
            version.split(" on ").next().unwrap_or(&version),
            plan.scale,
            self.logs.display()
        ))
    }

    /// The exchange database's URL.
    pub fn exchange_url(&self) -> String {
        self.cluster.url("exchange")
    }

    /// The URL of database `db` on the lab's server.
    pub fn url(&self, db: &str) -> String {
        self.cluster.url(db)
    }

    /// Stops the server (`Fast`: clean; `Immediate`: crash recovery at the next start) and
    /// starts it again. Every session of the lab's, `exchange` included, is gone afterwards.
    pub fn restart(&self, mode: walpoints::testing::StopMode) -> Result<()> {
        self.cluster.stop(mode)?;
        self.cluster.start_again()?;
        Ok(())
    }

    /// A session on walpoints' store database (created by `walpoints setup`).
    pub async fn store(&self) -> Result<Client> {
        connect(&self.cluster.url("walpoints")).await
    }

    /// `walpoints ARGS` configured by environment only: the exchange database as the source,
    /// the default store (database `walpoints` on the same server), no heartbeat; its stderr
    /// goes to `<logs>/<log>.log`.
    pub fn walpoints(&self, args: &[&str], log: &str) -> Result<Command> {
        let bin = env!("CARGO_BIN_EXE_walpoints");
        // For profiling: WALPOINTS_BENCH_WRAP="heaptrack -o /tmp/hp" runs each walpoints under
        // that command (peak RSS figures are then the wrapper's).
        let wrap = std::env::var("WALPOINTS_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let file = File::create(self.logs.join(format!("{log}.log")))?;
        // walpoints refuses unknown WALPOINTS_* variables (the bench's own among them).
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("WALPOINTS_")) {
            cmd.env_remove(k);
        }
        cmd.env("WALPOINTS_SOURCE_URL", self.exchange_url())
            .env("WALPOINTS_CONFIG", "/dev/null")
            .env("WALPOINTS_HEARTBEAT_INTERVAL", "0s")
            // Any free port: another walpoints on this machine may hold the default one.
            .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("WALPOINTS_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        Ok(cmd)
    }

    /// Runs `walpoints ARGS` to completion; returns its peak RSS in KiB.
    pub fn walpoints_once(&self, args: &[&str], log: &str) -> Result<u64> {
        let child = self.walpoints(args, log)?.spawn()?;
        let (ok, rss) = reap(child)?;
        if !ok {
            bail!("walpoints {args:?} failed; see {}", self.log_path(log));
        }
        Ok(rss)
    }

    /// Where a run's log went.
    pub fn log_path(&self, log: &str) -> String {
        self.logs.join(format!("{log}.log")).display().to_string()
    }

    /// Drops walpoints' slot, publication and store, and the recvlogical slot, and empties the
    /// business tables: every part starts from nothing.
    pub async fn reset(&self, tables: &str) -> Result<()> {
        let _ = self.walpoints_once(&["teardown", "--yes", "--drop-store"], "teardown");
        self.exchange
            .batch_execute(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = '{RECV_SLOT}'; TRUNCATE {tables}; CHECKPOINT"
            ))
            .await?;
        Ok(())
    }

    /// Creates the slot `pg_recvlogical` reads; call right after `walpoints setup` while nothing
    /// commits, so both slots stream exactly the same transactions.
    pub async fn create_recv_slot(&self) -> Result<()> {
        self.exchange
            .batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{RECV_SLOT}', 'pgoutput')"
            ))
            .await?;
        Ok(())
    }

    /// Both slots' confirmed positions, to show they start together.
    pub async fn slot_positions(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .exchange
            .query(
                "SELECT slot_name::text, confirmed_flush_lsn::text FROM pg_replication_slots \
                 ORDER BY slot_name",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Commits a transactional logical message and returns its LSN: a consumer whose position
    /// passed it has seen every transaction committed before it.
    pub async fn fence(&self) -> Result<Lsn> {
        let lsn: PgLsn = self
            .exchange
            .query_one(
                "SELECT pg_logical_emit_message(true, 'walpoints.bench.fence', '')",
                &[],
            )
            .await?
            .get(0);
        Ok(Lsn(u64::from(lsn)))
    }

    /// A checkpoint now, so that none of the workload's dirty pages are written during a timed
    /// drain.
    pub async fn checkpoint(&self) -> Result<()> {
        self.exchange.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    /// Drains the recvlogical slot up to `endpos` into /dev/null; returns the wall time.
    pub fn recvlogical(&self, endpos: Lsn) -> Result<(Duration, Duration)> {
        let bins = self.cluster.binaries();
        let postmaster = self.postmaster_pid();
        let reaped = crate::cpu::reaped_children(postmaster);
        let started = Instant::now();
        let out = Command::new(bins.program("pg_recvlogical"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "exchange"])
            .args(["-p", &self.cluster.port().to_string()])
            .args(["-S", RECV_SLOT, "--start", "--no-loop", "-f", "/dev/null"])
            .args(["-o", "proto_version=1"])
            .args(["-o", &format!("publication_names={PUBLICATION}")])
            // The fence is a logical message: with messages on, its commit ends the run.
            .args(["-o", "messages=true"])
            .arg(format!("--endpos={endpos}"))
            .stdin(Stdio::null())
            .output()
            .context("running pg_recvlogical")?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "pg_recvlogical failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The walsender exits just after its client: then its CPU is among the postmaster's
        // reaped children.
        let mut walsender = Duration::ZERO;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            walsender = crate::cpu::reaped_children(postmaster).saturating_sub(reaped);
            if !walsender.is_zero() {
                break;
            }
        }

        Ok((took, walsender))
    }

    /// The postmaster's pid, from `postmaster.pid` (0 when unreadable).
    pub fn postmaster_pid(&self) -> i32 {
        std::fs::read_to_string(self.cluster.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// The store's physical ceiling: the journal and compact ledger rows walpoints just wrote,
    /// copied (binary COPY, server side) into empty tables shaped like them (same keys and
    /// indexes), alone: how fast this server can store one fill's rows at all, before any
    /// totals, postings or state.
    pub async fn ledger_copy_alone(&self, store: &Client) -> Result<(u64, Duration)> {
        let file = self.cluster.data_dir().join("bench-ledger.bin");
        let file = file.display();
        let journal = self.cluster.data_dir().join("bench-journal.bin");
        let journal = journal.display();
        let rows = store
            .execute(
                &format!("COPY (SELECT * FROM walpoints.ledger_fill) TO '{file}' (FORMAT binary)"),
                &[],
            )
            .await?;
        store
            .execute(
                &format!("COPY (SELECT * FROM walpoints.journal) TO '{journal}' (FORMAT binary)"),
                &[],
            )
            .await?;
        store
            .batch_execute(
                "DROP TABLE IF EXISTS walpoints.ceiling, walpoints.ceiling_journal; \
                 CREATE TABLE walpoints.ceiling (LIKE walpoints.ledger_fill INCLUDING DEFAULTS, \
                   PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)); \
                 CREATE INDEX ON walpoints.ceiling (trade_id); \
                 CREATE TABLE walpoints.ceiling_journal (LIKE walpoints.journal INCLUDING DEFAULTS, \
                   PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)); CHECKPOINT",
            )
            .await?;
        let started = Instant::now();
        store
            .execute(
                &format!("COPY walpoints.ceiling FROM '{file}' (FORMAT binary)"),
                &[],
            )
            .await?;
        store
            .execute(
                &format!("COPY walpoints.ceiling_journal FROM '{journal}' (FORMAT binary)"),
                &[],
            )
            .await?;
        let took = started.elapsed();
        store
            .batch_execute("DROP TABLE walpoints.ceiling, walpoints.ceiling_journal")
            .await?;
        let _ = std::fs::remove_file(self.cluster.data_dir().join("bench-ledger.bin"));
        let _ = std::fs::remove_file(self.cluster.data_dir().join("bench-journal.bin"));
        Ok((rows, took))
    }

    /// The server binaries (pgbench).
    pub fn program(&self, name: &str) -> PathBuf {
        self.cluster.binaries().program(name)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }
}

/// Whether `WALPOINTS_BENCH_STATEMENTS` asks for the store's statement statistics per drain.
pub fn statements_wanted() -> bool {
    std::env::var_os("WALPOINTS_BENCH_STATEMENTS").is_some()
}

/// With [`statements_wanted`]: resets pg_stat_statements in the store database.
pub async fn reset_statements(store: &Client) -> Result<()> {
    if statements_wanted() {
        store
            .batch_execute(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                 SELECT pg_stat_statements_reset()",
            )
            .await?;
    }
    Ok(())
}

/// With [`statements_wanted`]: the store's statements by total time, for stderr.
pub async fn statements(store: &Client) -> Result<String> {
    if !statements_wanted() {
        return Ok(String::new());
    }
    let rows = store
        .query(
            "SELECT total_exec_time::float8, calls, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
             FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database \
             WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT 12",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "  {:>9.0} ms {:>6} calls {:>9} rows  {}\n",
                r.get::<_, f64>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect())
}

/// A running `walpoints run`.
pub struct Daemon {
    child: Option<Child>,
    log: String,
}

impl Daemon {
    /// Starts `walpoints run`.
    pub fn start(lab: &Lab, log: &str) -> Result<Daemon> {
        Daemon::spawn(lab.walpoints(&["run"], log)?, lab.log_path(log))
    }

    /// Starts `cmd` (a `walpoints run` the caller configured), logging to `log`.
    pub fn spawn(mut cmd: Command, log: String) -> Result<Daemon> {
        Ok(Daemon {
            child: Some(cmd.spawn()?),
            log,
        })
    }

    /// Sends `signal` to the process (SIGKILL, SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with plain integers on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Current resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:")
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Peak resident memory so far (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("walpoints run exited ({status}); see {}", self.log);
            }
        }
        Ok(())
    }

    /// Waits until the store's checkpoint is at or past `lsn`; returns when that was seen.
    pub async fn wait_for(&mut self, store: &Client, lsn: Lsn, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if checkpoint(store).await? >= lsn {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "walpoints did not reach {lsn} within {timeout:?}; see {}",
                    self.log
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the peak RSS over the whole run, KiB.
    pub fn stop(mut self) -> Result<u64> {
        let Some(child) = self.child.take() else {
            return Ok(0);
        };
        // SAFETY: kill(2) with plain integers on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let (ok, rss) = reap(child)?;
        if !ok {
            bail!("walpoints run did not stop cleanly; see {}", self.log);
        }
        Ok(rss)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The store's checkpoint LSN of the default source (0/0 before setup).
pub async fn checkpoint(store: &Client) -> Result<Lsn> {
    checkpoint_of(store, "default").await
}

/// The store's checkpoint LSN of source `id` (0/0 before setup).
pub async fn checkpoint_of(store: &Client, id: &str) -> Result<Lsn> {
    let row = store
        .query_opt(
            "SELECT lsn FROM walpoints.checkpoint WHERE source_id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map_or(Lsn::ZERO, |r| Lsn(u64::from(r.get::<_, PgLsn>(0)))))
}

/// Waits for a child and returns (exited successfully, its peak RSS in KiB).
///
/// The peak is the highest `VmHWM` read while waiting, not wait4's `ru_maxrss`: Linux carries
/// the high-water mark of the forking process across `exec`, so `ru_maxrss` reports the bench's
/// own RSS whenever that is the larger (after the season build, 1.9 GiB for a walpoints that
/// never held 100 MiB). `VmHWM` belongs to the exec'd image alone and only grows, so the last
/// reading before exit misses at most what the final few milliseconds allocated.
fn reap(child: Child) -> Result<(bool, u64)> {
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = status_kib(pid, "VmHWM:").max(peak);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer; `child` is not waited elsewhere.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    std::mem::forget(child);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap_or(0);
    if r != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, peak))
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// KiB as MiB for printing.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
