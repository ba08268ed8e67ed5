//! A primary failover on PostgreSQL 17, with a throwaway primary and a physical standby made
//! by `pg_basebackup` on this machine: walpoints follows the promotion through a multi-host
//! `source.url` and its failover slot, with nothing lost and nothing counted twice, whether the
//! old primary's connections close or are black-holed; and when the primary did not hold the
//! slot back for the standby (`synchronized_standby_slots` empty) and walpoints got ahead of it,
//! walpoints refuses to continue on the new timeline.
//!
//! The reference ledger is the pure engine's replay of the WAL the new primary has: a logical
//! slot made on the standby itself (PostgreSQL 16+ decodes on a standby) before the workload,
//! which the promotion keeps.
//!
//! These tests need PostgreSQL 17 from the cache `.ci/run` fills (`support::pg_build`); without
//! it they fail, saying how to fetch it.

use std::time::{Duration, Instant};

use tokio_postgres::types::PgLsn;
use walpoints::config::ConnUrl;
use walpoints::lsn::Lsn;
use walpoints::mapping::Tables;
use walpoints::pg::AdminSession;
use walpoints::points::RuleSet;
use walpoints::testing::{PgCluster, StopMode};

use crate::support::daemon::{assert_same_ledger, fence, reference_ledger, workload, Walpoints};
use crate::support::http::{get, get_json, http_addr};
use crate::support::proxy::Proxy;
use crate::support::workload::assert_each_trade_once;
use crate::support::{connect, eventually, pg_build, wait_failed, Running, TestDb};

/// The standby's physical slot on the primary.
const STANDBY_SLOT: &str = "standby1";

/// A PostgreSQL 17 primary holding the test database with the exchange schema, and its
/// standby (slot synchronisation on); with `hold_for_standby`, the primary's
/// `synchronized_standby_slots` names the standby's slot. The reference slot is on the standby.
async fn primary_and_standby(name: &str, hold_for_standby: bool) -> (TestDb, PgCluster) {
    let mut settings = vec![("wal_sender_timeout", "'5s'")];
    if hold_for_standby {
        settings.push(("synchronized_standby_slots", "'standby1'"));
    }
    let primary = PgCluster::start_with(pg_build(17), &settings)
        .unwrap_or_else(|e| panic!("start a PostgreSQL 17 primary: {e}"));
    let db = TestDb::on_cluster(primary, name).await;
    db.create_exchange_schema().await;
    let standby = PgCluster::standby_of(
        db.cluster(),
        STANDBY_SLOT,
        &[
            // Turned on by `wait_synced` once the slot exists: the worker naps up to 30 s
            // while there is nothing to synchronise, and would take that long to notice it.
            ("sync_replication_slots", "off"),
            ("hot_standby_feedback", "on"),
            ("wal_receiver_status_interval", "1s"),
            // pg_basebackup copied the primary's configuration: once promoted, the standby has
            // no standby of its own to wait for (a slot named here that does not exist holds
            // every failover slot's walsender back for good).
            ("synchronized_standby_slots", "''"),
        ],
    )
    .unwrap_or_else(|e| panic!("make a standby with pg_basebackup: {e}"));
    reference_slot_on_standby(&db, &db.on_standby(&standby)).await;
    (db, standby)
}

/// The reference publication on the primary, and the reference slot (`wp_ref`) on the standby:
/// it decodes exactly the WAL the standby has, and survives its promotion.
async fn reference_slot_on_standby(db: &TestDb, on_standby: &TestDb) {
    let url: ConnUrl = db.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints-test-reference")
        .await
        .unwrap();
    admin
        .ensure_publication("wp_ref_pub", &Tables::default().all())
        .await
        .unwrap();
    drop(admin);
    let standby = connect(&on_standby.url).await;
    eventually(
        "the reference publication on the standby",
        Duration::from_secs(30),
        || async {
            standby
                .query_opt(
                    "SELECT 1 FROM pg_publication WHERE pubname = 'wp_ref_pub'",
                    &[],
                )
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    // A slot on a standby waits for a running-transactions record from the primary.
    let primary = db.client().await;
    let nudge = tokio::spawn(async move {
        loop {
            let _ = primary
                .simple_query("SELECT pg_log_standby_snapshot()")
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let url: ConnUrl = on_standby.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints-test-reference")
        .await
        .unwrap();
    admin
        .create_slot(&format!("wp_ref_{}", db.name))
        .await
        .expect("create the reference slot on the standby");
    nudge.abort();
}

/// `postgres://` naming the primary (through `primary_port`) and then the standby, for the
/// primary only.
fn multi_host_url(db: &TestDb, primary_port: u16, standby: &PgCluster) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{primary_port},127.0.0.1:{}/{}?sslmode=disable&target_session_attrs=read-write",
        standby.port(),
        db.name
    )
}

/// A walpoints source on `db` with a failover slot, its store on another server, following
/// `url`.
fn failover_source<'a>(db: &'a TestDb, store: &TestDb, url: &str) -> Walpoints<'a> {
    Walpoints::new(db, "fo")
        .store_on(store)
        .env("WALPOINTS_SOURCE_URL", url)
        .env("WALPOINTS_SOURCE_FAILOVER", "true")
        .env("WALPOINTS_SOURCE_SILENCE_TIMEOUT", "5s")
}

/// Synchronises the failover slots to the standby now (`pg_sync_replication_slots`) until it
/// holds a persistent copy of `slot` confirmed at least to `at`, then turns on the standby's
/// slot sync worker (`sync_replication_slots`) to keep it so.
async fn wait_synced(standby: &TestDb, slot: &str, at: Lsn) {
    let client = connect(&standby.url).await;
    eventually(
        "the failover slot synchronised to the standby",
        Duration::from_secs(90),
        || async {
            if let Err(e) = client
                .simple_query("SELECT pg_sync_replication_slots()")
                .await
            {
                eprintln!("pg_sync_replication_slots: {e:?}");
            }
            let row = client
                .query_opt(
                    "SELECT synced AND NOT temporary, confirmed_flush_lsn \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap();
            row.is_some_and(|r| {
                let confirmed: Option<PgLsn> = r.get(1);
                r.get::<_, bool>(0) && confirmed.is_some_and(|c| u64::from(c) >= at.0)
            })
        },
    )
    .await;
    for sql in [
        "ALTER SYSTEM SET sync_replication_slots = on",
        "SELECT pg_reload_conf()",
    ] {
        client
            .simple_query(sql)
            .await
            .expect("turn on the slot sync worker");
    }
}

/// Waits until the standby has replayed everything the primary has written.
async fn wait_replayed(primary: &TestDb, standby: &TestDb) {
    let at: PgLsn = primary
        .client()
        .await
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .unwrap()
        .get(0);
    let client = connect(&standby.url).await;
    eventually(
        "the standby to replay the primary's WAL",
        Duration::from_secs(60),
        || async {
            let replayed: PgLsn = client
                .query_one("SELECT pg_last_wal_replay_lsn()", &[])
                .await
                .unwrap()
                .get(0);
            replayed >= at
        },
    )
    .await;
}

/// Waits until a walsender streams `slot` on `db`'s server; fails if walpoints exits first.
async fn wait_streaming_on(db: &TestDb, slot: &str, running: &mut Running, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            let active = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.get::<_, bool>(0));
            if active {
                return;
            }
        }
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("walpoints exited ({status}); stderr:\n{}", running.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "walpoints did not stream from the new primary within {timeout:?}; stderr:\n{}",
            running.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The primary dies (`-m immediate`, and with `black_hole` its connections go silent first,
/// as when its host vanishes) mid-stream, the standby is promoted, and walpoints continues on
/// it through the multi-host URL and the synchronised failover slot: the ledger is the pure
/// engine's over the WAL the new primary has, each trade awarded once.
async fn failover_run(name: &str, black_hole: bool) {
    let (db, standby) = primary_and_standby(name, true).await;
    let on_standby = db.on_standby(&standby);
    let store = TestDb::new(&format!("{name}_store")).await;
    let proxy = Proxy::start(db.cluster().port()).await;
    let primary_port = if black_hole {
        proxy.port
    } else {
        db.cluster().port()
    };
    let url = multi_host_url(&db, primary_port, &standby);
    let wp = failover_source(&db, &store, &url)
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .env("WALPOINTS_HTTP_POLL_INTERVAL", "200ms");
    let mut running = wp.setup_and_stream().await;
    // status, /metrics and /readyz show a failover slot the primary holds back for its standby.
    let status = String::from_utf8_lossy(&wp.output(&["status"]).stdout).into_owned();
    assert!(
        status.contains("yes (synchronized_standby_slots = standby1)")
            && !status.contains("WARNING"),
        "{status}"
    );
    let addr = http_addr(&running).await;
    eventually(
        "walpoints_slot_failover 1",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = get(&addr, "/metrics").await;
            metrics.contains("walpoints_slot_failover 1")
                && metrics.contains("walpoints_slot_failover_unprotected 0")
        },
    )
    .await;
    let (code, ready) = get_json(&addr, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["detail"]["failover"], true, "{ready}");
    assert_eq!(
        ready["detail"]["warnings"],
        serde_json::json!([]),
        "{ready}"
    );
    let failover: bool = db
        .client()
        .await
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&wp.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failover, "setup made no failover slot");

    workload(db.url.clone(), 1, 1_000, 100).await;
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;
    wait_synced(&on_standby, &wp.slot(), Lsn(1)).await;
    // More trades, streaming while the primary dies; all of them reach the standby first.
    workload(db.url.clone(), 1_001, 1_000, 100).await;
    wait_replayed(&db, &on_standby).await;
    let died = Instant::now();
    if black_hole {
        proxy.black_hole_all();
        proxy.stall(true);
    }
    db.cluster().stop(StopMode::Immediate).unwrap();
    standby.promote().unwrap();
    let promoted = died.elapsed();
    wait_streaming_on(
        &on_standby,
        &wp.slot(),
        &mut running,
        Duration::from_secs(120),
    )
    .await;
    let streaming = died.elapsed();
    eprintln!(
        "failover ({}): promoted after {promoted:?}, walpoints streaming from the new primary \
         after {streaming:?} from the primary's death",
        if black_hole { "black-holed" } else { "closed" }
    );

    workload(on_standby.url.clone(), 2_001, 500, 100).await;
    let until = fence(&on_standby.client().await).await;
    wp.wait_for(until, Duration::from_secs(120), &running).await;
    let expected = reference_ledger(&on_standby, "wp_ref", RuleSet::default(), until).await;
    assert!(expected.len() > 2_000, "{} entries", expected.len());
    assert_same_ledger(
        &wp.ledger().await,
        &expected,
        "the pure engine on the new primary",
    );
    assert_each_trade_once(&wp, 2_500).await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_primary_dies_walpoints_continues_on_the_promoted_standby_losing_nothing() {
    failover_run("fo_closed", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_primary_is_left_within_the_silence_timeout_for_the_promoted_standby() {
    failover_run("fo_blackhole", true).await;
}

/// Without `synchronized_standby_slots` the primary lets walpoints get ahead of its standby:
/// trades the standby never received are in the store when the primary dies. After the
/// promotion walpoints refuses to continue, naming the LSN range the new timeline lacks.
#[tokio::test(flavor = "multi_thread")]
async fn ahead_of_the_standby_at_a_failover_walpoints_refuses_to_continue() {
    let (db, standby) = primary_and_standby("fo_ahead", false).await;
    let on_standby = db.on_standby(&standby);
    let store = TestDb::new("fo_ahead_store").await;
    let url = multi_host_url(&db, db.cluster().port(), &standby);
    let wp = failover_source(&db, &store, &url).env("RUST_LOG", "warn");
    let mut running = wp.setup_and_stream().await;
    workload(db.url.clone(), 1, 500, 100).await;
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;
    wait_synced(&on_standby, &wp.slot(), Lsn(1)).await;
    let status = wp.output(&["status"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("synchronized_standby_slots is empty"),
        "status does not warn:\n{shown}"
    );

    // The standby goes away; walpoints streams on past what it has.
    standby.stop(StopMode::Fast).unwrap();
    workload(db.url.clone(), 501, 500, 100).await;
    let ahead = fence(&db.client().await).await;
    wp.wait_for(ahead, Duration::from_secs(60), &running).await;

    db.cluster().stop(StopMode::Immediate).unwrap();
    standby.start_again().unwrap();
    standby.promote().unwrap();
    let stderr = wait_failed(&mut running);
    for needle in [
        "lies beyond",
        "left timeline 1",
        "the store holds points of transactions in the WAL range",
        "synchronized_standby_slots",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    eprintln!("refusal: {}", crate::support::error_line(&stderr));
}

/// `source.failover = true` on the machine's PostgreSQL 15: `setup` refuses, naming the version
/// and what to do, and creates no slot.
#[tokio::test(flavor = "multi_thread")]
async fn failover_slots_are_refused_before_postgres_17() {
    let db = TestDb::exchange("fo_old").await;
    let version: i32 = db
        .client()
        .await
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        version < 170_000,
        "this test needs a server older than 17 (WALPOINTS_TEST_PG_BIN or the machine's own); got {version}"
    );
    let wp = Walpoints::new(&db, "fo_old").env("WALPOINTS_SOURCE_FAILOVER", "true");
    let out = wp.output(&["setup"]);
    assert!(
        !out.status.success(),
        "setup accepted source.failover on PostgreSQL {version}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "source.failover = true needs PostgreSQL 17 or later",
        "Set source.failover = false",
        "README.md#failover",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    eprintln!("refusal: {}", crate::support::error_line(&stderr));
    let slots: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&wp.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was created anyway");
}

/// Decoding on a physical standby (PostgreSQL 16+, here 17): `setup`, `run`, `status` and
/// `verify` pointed at the standby give the same ledger as decoding on the primary for the same
/// workload; the heartbeat is off there, with the reason in the log.
#[tokio::test(flavor = "multi_thread")]
async fn decoding_on_the_standby_gives_the_ledger_of_decoding_on_the_primary() {
    let (db, standby) = primary_and_standby("fo_decode", false).await;
    let on_standby = db.on_standby(&standby);
    let store = TestDb::new("fo_decode_store").await;
    let on_primary = Walpoints::new(&db, "prim").store_on(&store);
    let on_stby = Walpoints::new(&db, "stby")
        .store_on(&store)
        .env("WALPOINTS_SOURCE_URL", &on_standby.url)
        .env("WALPOINTS_HEARTBEAT_INTERVAL", "10s");
    // A standby cannot create the publication: it comes from the primary.
    let url: ConnUrl = db.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints-test").await.unwrap();
    admin
        .ensure_publication("wp_pub_stby", &Tables::default().all())
        .await
        .unwrap();
    drop(admin);
    wait_replayed(&db, &on_standby).await;

    let primary_run = on_primary.setup_and_stream().await;
    // A slot on a standby waits for the primary's next running-transactions record.
    let primary = db.client().await;
    let nudge = tokio::spawn(async move {
        loop {
            let _ = primary
                .simple_query("SELECT pg_log_standby_snapshot()")
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let setup = {
        let cmd = on_stby.cmd(&["setup"]);
        tokio::task::spawn_blocking(move || {
            let mut cmd = cmd;
            cmd.output().expect("run walpoints setup")
        })
        .await
        .unwrap()
    };
    nudge.abort();
    assert!(
        setup.status.success(),
        "setup on the standby failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut standby_run = on_stby.start();
    wait_streaming_on(
        &on_standby,
        &on_stby.slot(),
        &mut standby_run,
        Duration::from_secs(60),
    )
    .await;

    workload(db.url.clone(), 1, 1_000, 100).await;
    let until = fence(&db.client().await).await;
    on_primary
        .wait_for(until, Duration::from_secs(60), &primary_run)
        .await;
    on_stby
        .wait_for(until, Duration::from_secs(60), &standby_run)
        .await;
    let expected = on_primary.ledger().await;
    assert!(expected.len() > 1_000, "{} entries", expected.len());
    assert_same_ledger(
        &on_stby.ledger().await,
        &expected,
        "decoding on the primary",
    );
    assert_each_trade_once(&on_stby, 1_000).await;
    assert!(
        standby_run
            .stderr()
            .contains("walpoints sends no heartbeat"),
        "{}",
        standby_run.stderr()
    );

    let status = on_stby.output(&["status"]);
    assert!(
        status.status.success(),
        "status against the standby: {}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    let verify = on_stby.output(&["verify"]);
    let verified = String::from_utf8_lossy(&verify.stdout);
    assert!(verified.contains("OK: no differences"), "{verified}");
    assert!(
        verify.status.success(),
        "verify against the standby: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    primary_run.signal(libc::SIGTERM);
    standby_run.signal(libc::SIGTERM);
}
