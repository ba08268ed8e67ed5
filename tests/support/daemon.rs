//! Driving the walpoints daemon in tests: one source id, slot, publication and store database per
//! instance, fences in the WAL, and a reference replay of the same
//! WAL through the pure library (decoder → mapping → engine in memory) to compare with the store.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;
use tokio_postgres::types::PgLsn;
use walpoints::config::ConnUrl;
use walpoints::lsn::Lsn;
use walpoints::mapping::{Columns, Tables};
use walpoints::mapping::{Mapped, Mapper};
use walpoints::pg::{AdminSession, ReplicationSource, SourceOptions};
use walpoints::points::{Engine, LedgerEntry, MemoryAwardBook, RuleSet, State, TxEvents};

use super::{connect, totals, with_db, Running, TestDb};

/// One walpoints source on the test database with a store database of its own.
pub struct Walpoints<'a> {
    /// The test database (the source).
    pub db: &'a TestDb,
    /// `source.id`; also names the slot, publication and store database.
    pub id: String,
    /// The store's URL.
    pub store_url: String,
    env: Vec<(String, String)>,
}

impl<'a> Walpoints<'a> {
    /// A source named `id`, heartbeat off (tests turn it on when they test it), 20 ms batches.
    pub fn new(db: &'a TestDb, id: &str) -> Walpoints<'a> {
        let store_url = with_db(&db.url, &format!("{}_store_{id}", db.name));
        Walpoints {
            db,
            id: id.to_owned(),
            store_url,
            env: vec![
                ("WALPOINTS_HEARTBEAT_INTERVAL".into(), "0s".into()),
                ("WALPOINTS_BATCH_MAX_DELAY".into(), "20ms".into()),
                // Tests run many daemons at once: no HTTP server unless a test asks for one.
                ("WALPOINTS_HTTP_LISTEN".into(), String::new()),
            ],
        }
    }

    /// A source named `id` on `db` as [`Walpoints::new`] makes it, with `walpoints setup` done.
    pub fn set_up(db: &'a TestDb, id: &str) -> Walpoints<'a> {
        let wp = Walpoints::new(db, id);
        wp.setup();
        wp
    }

    /// Writes into `other`'s store instead of a store of its own (several sources, one store).
    pub fn sharing_store_of(mut self, other: &Walpoints<'_>) -> Self {
        self.store_url = other.store_url.clone();
        self
    }

    /// Keeps the store on another server (`db`'s), in a database named after this source.
    pub fn store_on(mut self, db: &TestDb) -> Self {
        let name = format!("{}_store_{}", self.db.name, self.id);
        self.store_url = with_db(&db.url, &name);
        self
    }

    /// The slot's name: slots are the server's, not a database's, so it names the test database
    /// too (two scenarios on one shared server may use the same source id).
    pub fn slot(&self) -> String {
        format!("wp_{}_{}", self.id, self.db.name)
    }

    /// Sets (or overrides) an environment variable of every command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `walpoints ARGS` for this source.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.db.walpoints();
        cmd.env("WALPOINTS_SOURCE_ID", &self.id)
            .env("WALPOINTS_SOURCE_SLOT", self.slot())
            .env(
                "WALPOINTS_SOURCE_PUBLICATION",
                format!("wp_pub_{}", self.id),
            )
            .env("WALPOINTS_STORE_URL", &self.store_url)
            .env("RUST_LOG", "info")
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `walpoints ARGS` to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run walpoints")
    }

    /// `walpoints setup`, which must succeed; returns its stdout.
    pub fn setup(&self) -> String {
        let out = self.output(&["setup"]);
        assert!(
            out.status.success(),
            "setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `walpoints run`.
    pub fn start(&self) -> Running {
        Running::spawn(self.cmd(&["run"]))
    }

    /// A session on the store database.
    pub async fn store(&self) -> tokio_postgres::Client {
        connect(&self.store_url).await
    }

    /// The store's checkpoint (0/0 before setup).
    pub async fn checkpoint(&self) -> Lsn {
        let store = self.store().await;
        checkpoint_of(&store, &self.id).await
    }

    /// `setup`, then `run`, returned once it streams.
    pub async fn setup_and_stream(&self) -> Running {
        self.setup();
        let mut running = self.start();
        self.wait_streaming(&mut running).await;
        running
    }

    /// Waits until the daemon streams from its slot (its startup checks have passed); fails the
    /// test if it exits first.
    pub async fn wait_streaming(&self, running: &mut Running) {
        let client = self.db.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let active: Option<bool> = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot()],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            if active == Some(true) {
                return;
            }
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) before streaming; stderr:\n{}",
                    running.stderr()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not start streaming; stderr:\n{}",
                running.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the store's checkpoint reaches `lsn` (the daemon must be running).
    pub async fn wait_for(&self, lsn: Lsn, timeout: Duration, running: &Running) {
        let store = self.store().await;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if checkpoint_of(&store, &self.id).await >= lsn {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "checkpoint did not reach {lsn} within {timeout:?}; stderr:\n{}",
                running.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ledger in (commit LSN, ordinal) order, one comparable line per entry.
    pub async fn ledger(&self) -> Vec<String> {
        let store = self.store().await;
        store
            .query(
                "SELECT commit_lsn, ordinal, user_address, epoch, kind, reversal, points, basis, \
                 multiplier, rate, position_notional, trade_id, position_id, referee, \
                 segment_start, event_time FROM walpoints.ledger WHERE source_id = $1 \
                 ORDER BY commit_lsn, ordinal",
                &[&self.id],
            )
            .await
            .expect("read the ledger")
            .iter()
            .map(|r| {
                let lsn: PgLsn = r.get(0);
                let micros = |t: Option<SystemTime>| {
                    t.map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64)
                };
                Line {
                    commit_lsn: Lsn(u64::from(lsn)),
                    ordinal: r.get::<_, i32>(1) as u32,
                    user: r.get(2),
                    epoch: r.get::<_, i32>(3) as u32,
                    kind: r.get(4),
                    reversal: r.get(5),
                    points: r.get(6),
                    basis: r.get(7),
                    multiplier: r.get(8),
                    rate: r.get(9),
                    position_notional: r.get(10),
                    trade_id: r.get(11),
                    position_id: r.get(12),
                    referee: r.get(13),
                    segment_start: micros(r.get(14)),
                    event_time: micros(r.get(15)).unwrap_or_default(),
                }
                .to_string()
            })
            .collect()
    }

    /// Whether `user_epoch_points` equals the sums of the ledger per (user, epoch), by kind, plus
    /// the holding credits of the segments still open: the ledger of every source in the store
    /// (sources sharing a store share its totals), summed by [`totals`](super::totals) in the
    /// test, not by walpoints' code or SQL; a (user, epoch) on one side only is compared with
    /// zeros. Returns the number of `user_epoch_points` rows.
    pub async fn assert_totals_match_ledger(&self) -> usize {
        let mut store = self.store().await;
        // One snapshot for both reads: the daemon may be committing batches meanwhile.
        let tx = store
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .expect("begin a snapshot of the store");
        let open = totals::open_segment_credits(&tx).await;
        let ledger = totals::plus(totals::ledger_sums(&tx).await, &open);
        let stored = totals::stored_totals(&tx).await;
        tx.commit().await.expect("end the snapshot");
        totals::assert_same_totals(&stored, &ledger);
        stored.len()
    }
}

async fn checkpoint_of(store: &tokio_postgres::Client, id: &str) -> Lsn {
    match store
        .query_opt(
            "SELECT lsn FROM walpoints.checkpoint WHERE source_id = $1",
            &[&id],
        )
        .await
    {
        Ok(Some(r)) => Lsn(u64::from(r.get::<_, PgLsn>(0))),
        _ => Lsn::ZERO,
    }
}

/// Commits `trades` trades in transactions of `per_tx`, drawn from 1,000 addresses (a few
/// self-trades among them), with referrals and positions opened and closed along the way.
pub async fn workload(url: String, first: i64, trades: i64, per_tx: i64) {
    let ex = connect(&url).await;
    let mut next = first;
    let mut k = 0i64;
    while next < first + trades {
        let last = (next + per_tx - 1).min(first + trades - 1);
        ex.execute(
            "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             SELECT g, 'BTC-PERP', 100 + g % 7, 1 + g % 5,
                    '0x' || ((g * 7919) % 1000), '0x' || ((g * 104729 + 3) % 1000)
             FROM generate_series($1::bigint, $2::bigint) g",
            &[&next, &last],
        )
        .await
        .expect("insert trades");
        if k % 10 == 0 {
            ex.batch_execute(&format!(
                "INSERT INTO referral_relations VALUES ('0x{r}', '0x{p}') ON CONFLICT DO NOTHING;
                 INSERT INTO positions (user_address, symbol, size, entry_price)
                     VALUES ('0x{r}', 'BTC-PERP', {k} % 9 + 1, 1000);
                 UPDATE positions SET status = 'closed', realized_pnl = ({k} % 13) - 4
                     WHERE status = 'open' AND user_address = '0x{p}';",
                r = k % 1000,
                p = (k * 31 + 7) % 1000,
            ))
            .await
            .expect("referrals and positions");
        }
        next = last + 1;
        k += 1;
    }
}

/// Commits a transactional logical message and returns its LSN: once a checkpoint is at or past
/// it, every transaction committed before the fence is in the store.
pub async fn fence(client: &tokio_postgres::Client) -> Lsn {
    let lsn: PgLsn = client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'walpoints.test.fence', '')",
            &[],
        )
        .await
        .expect("write a fence")
        .get(0);
    Lsn(u64::from(lsn))
}

/// Fails the test at the first entry where `got` differs from `expected` (`of`: whose they are).
pub fn assert_same_ledger(got: &[String], expected: &[String], of: &str) {
    if let Some(i) = (0..got.len().min(expected.len())).find(|&i| got[i] != expected[i]) {
        panic!(
            "first difference at entry {i}:\n  store: {}\n  {of}: {}",
            got[i], expected[i]
        );
    }
    assert_eq!(got.len(), expected.len(), "entry count against {of}");
}

/// A ledger entry in a form both the store and the reference produce.
struct Line {
    commit_lsn: Lsn,
    ordinal: u32,
    user: String,
    epoch: u32,
    kind: String,
    reversal: bool,
    points: Decimal,
    basis: Decimal,
    multiplier: Decimal,
    rate: Decimal,
    position_notional: Option<Decimal>,
    trade_id: Option<String>,
    position_id: Option<String>,
    referee: Option<String>,
    segment_start: Option<i64>,
    event_time: i64,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |d: Decimal| d.normalize().to_string();
        write!(
            f,
            "{} #{} {} e{} {}{} pts={} basis={} x{} rate={} notional={:?} trade={:?} pos={:?} referee={:?} seg={:?} t={}",
            self.commit_lsn,
            self.ordinal,
            self.user,
            self.epoch,
            self.kind,
            if self.reversal { " REV" } else { "" },
            n(self.points),
            n(self.basis),
            n(self.multiplier),
            n(self.rate),
            self.position_notional.map(n),
            self.trade_id,
            self.position_id,
            self.referee,
            self.segment_start,
            self.event_time
        )
    }
}

fn line_of(commit_lsn: Lsn, e: &LedgerEntry) -> String {
    Line {
        commit_lsn,
        ordinal: e.ordinal,
        user: e.user.clone(),
        epoch: e.epoch,
        kind: e.kind.as_str().to_owned(),
        reversal: e.reversal,
        points: e.points,
        basis: e.basis,
        multiplier: e.multiplier,
        rate: e.rate,
        position_notional: e.position_notional,
        trade_id: e.trade_id.clone(),
        position_id: e.position_id.clone(),
        referee: e.referee.clone(),
        segment_start: e.segment_start,
        event_time: e.event_time,
    }
    .to_string()
}

/// The server's name of `db`'s reference slot `name` (slots are the server's, not a database's).
fn reference_slot_name(db: &TestDb, name: &str) -> String {
    format!("{name}_{}", db.name)
}

/// A slot for [`reference_ledger`], created now (so it sees what commits from here on).
pub async fn reference_slot(db: &TestDb, name: &str) {
    let url: ConnUrl = db.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints-test-reference")
        .await
        .unwrap();
    let tables = Tables::default().all();
    admin
        .ensure_publication("wp_ref_pub", &tables)
        .await
        .unwrap();
    admin
        .create_slot(&reference_slot_name(db, name))
        .await
        .unwrap();
}

/// The ledger the pure library computes from the WAL on `slot` (created before the workload,
/// with empty business tables), for every transaction committed at or before `until`.
pub async fn reference_ledger(db: &TestDb, slot: &str, rules: RuleSet, until: Lsn) -> Vec<String> {
    let url: ConnUrl = db.url.parse().unwrap();
    let mut source = ReplicationSource::start(&SourceOptions {
        url,
        slot: reference_slot_name(db, slot),
        publication: "wp_ref_pub".into(),
        start_lsn: Lsn::ZERO,
        durable_lsn: Lsn::ZERO,
        temporary_slot: false,
        application_name: "walpoints-test-reference".into(),
        silence: None,
    })
    .await
    .expect("start the reference stream");
    let mapper = Mapper::new(&Tables::default(), &Columns::default());
    let engine = Engine::new(rules).unwrap();
    let mut state = State::new();
    let mut book = MemoryAwardBook::new();
    let mut lines = Vec::new();
    loop {
        let tx = tokio::time::timeout(Duration::from_secs(60), source.next_transaction())
            .await
            .expect("the reference stream stalled")
            .expect("reference stream")
            .expect("reference stream ended");
        if tx.commit_lsn > until {
            break;
        }
        let events = tx
            .changes
            .iter()
            .flat_map(|c| match mapper.map(c) {
                Ok(Mapped::Event(e)) => vec![e],
                Ok(Mapped::KeyMoved(first, then)) => vec![first, then],
                _ => vec![],
            })
            .collect();
        let outcome = engine
            .apply_transaction(
                &mut state,
                &mut book,
                &TxEvents {
                    commit_lsn: tx.commit_lsn.0,
                    commit_time: tx.commit_time,
                    events,
                },
            )
            .expect("reference engine");
        lines.extend(outcome.entries.iter().map(|e| line_of(tx.commit_lsn, e)));
        if tx.end_lsn > until {
            break;
        }
    }
    lines
}
