//! Connection and process faults: a TCP proxy between walpoints and its source, or its store,
//! drops, resets and black-holes connections at random (seeded) moments of a workload;
//! walpoints is killed between a store commit and the slot's acknowledgement, and during the
//! initial snapshot. Every run ends with the ledger of an undisturbed run: no gap, no
//! duplicate. While the store is away, the replication session stays open (same walsender,
//! no `wal_sender_timeout`) and acknowledges nothing the store does not have.

use std::time::{Duration, Instant};

use tokio_postgres::types::PgLsn;
use walpoints::lsn::Lsn;
use walpoints::points::RuleSet;
use walpoints::testing::PgCluster;

use crate::support::daemon::{
    assert_same_ledger, fence, reference_ledger, reference_slot, workload, Walpoints,
};
use crate::support::http::{get_json, http_addr};
use crate::support::proxy::Proxy;
use crate::support::rng::Lcg;
use crate::support::workload::{assert_each_trade_once, assert_same_as_undisturbed};
use crate::support::{connect, eventually, Running, TestDb};

/// Short enough that a fault test sees the server give up on a silent client, long enough that
/// a loaded machine does not trip it on a healthy one.
const WAL_SENDER_TIMEOUT: &str = "5s";

/// What the server logs when a walsender's client went silent for `wal_sender_timeout`.
const REPLICATION_TIMEOUT: &str = "terminating walsender process due to replication timeout";

/// Runs [`workload`] in chunks of 500 trades (5 transactions) with a pause between them until
/// `done` turns true; returns how many trades it committed.
async fn paced_workload(url: String, done: tokio::sync::watch::Receiver<bool>) -> i64 {
    let mut next = 1;
    while !*done.borrow() {
        workload(url.clone(), next, 500, 100).await;
        next += 500;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    next - 1
}

/// `n` faults at random moments: a drop, a reset or a stall (black hole) of 0.5 to 8 s, past
/// [`WAL_SENDER_TIMEOUT`] at times.
async fn inject_faults(proxy: &Proxy, rng: &mut Lcg, n: u32) {
    let started = Instant::now();
    for i in 1..=n {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1500))).await;
        let what = match rng.below(3) {
            0 => {
                proxy.drop_all();
                "drop".to_owned()
            }
            1 => {
                proxy.reset_all();
                "reset".to_owned()
            }
            _ => {
                let ms = 500 + rng.below(7_500);
                proxy.stall(true);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxy.stall(false);
                format!("stall of {ms} ms")
            }
        };
        eprintln!("fault {i} at {:?}: {what}", started.elapsed());
    }
}

/// The slot's walsender pid and confirmed position.
async fn slot_state(source: &tokio_postgres::Client, slot: &str) -> (Option<i32>, Lsn) {
    let row = source
        .query_one(
            "SELECT active_pid, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("read the slot");
    let lsn: Option<PgLsn> = row.get(1);
    (row.get(0), Lsn(lsn.map_or(0, u64::from)))
}

/// The whole server log of `cluster`.
fn server_log(cluster: &PgCluster) -> String {
    let dir = cluster.data_dir();
    let root = dir.parent().expect("the cluster's directory");
    std::fs::read_to_string(root.join("server.log")).unwrap_or_default()
}

/// Fences the source, waits for `wp` to store everything before the fence, and checks the
/// ledger against the pure engine's replay of `reference` and every trade of `trades` once.
async fn assert_complete(
    db: &TestDb,
    wp: &Walpoints<'_>,
    running: &Running,
    reference: &str,
    trades: i64,
) {
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(240), running).await;
    let expected = reference_ledger(db, reference, RuleSet::default(), until).await;
    assert!(expected.len() > 1_000, "{} entries", expected.len());
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");
    assert_each_trade_once(wp, trades).await;
}

/// Streams a paced workload through `wp` while `proxy` (in front of its `side`) faults six times
/// at random, then checks the ledger and that walpoints did reconnect through the proxy.
async fn faulted_run(db: &TestDb, wp: &Walpoints<'_>, proxy: &Proxy, side: &str) {
    let running = wp.setup_and_stream().await;
    let connections = proxy.accepted();
    let mut rng = Lcg::seeded(&format!("{side} faults"));
    let (done, until_done) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(paced_workload(db.url.clone(), until_done));
    inject_faults(proxy, &mut rng, 6).await;
    done.send_replace(true);
    let trades = writer.await.unwrap();

    assert_complete(db, wp, &running, "wp_ref", trades).await;
    assert!(
        proxy.accepted() > connections,
        "the daemon never reconnected to the {side} through the proxy; stderr:\n{}",
        running.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn source_connection_faults_at_random_moments_lose_and_double_nothing() {
    let db = TestDb::own_exchange(
        "fault_source",
        &[("wal_sender_timeout", WAL_SENDER_TIMEOUT)],
    )
    .await;
    reference_slot(&db, "wp_ref").await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let wp = Walpoints::new(&db, "src_faults").env("WALPOINTS_SOURCE_URL", &url);
    faulted_run(&db, &wp, &proxy, "source").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn store_connection_faults_at_random_moments_lose_and_double_nothing() {
    let db =
        TestDb::own_exchange("fault_store", &[("wal_sender_timeout", WAL_SENDER_TIMEOUT)]).await;
    let store_db = TestDb::new("fault_store_server").await;
    reference_slot(&db, "wp_ref").await;
    let direct = Walpoints::new(&db, "store_faults").store_on(&store_db);
    let (proxy, url) = Proxy::in_front_of(&direct.store_url).await;
    let wp = direct.env("WALPOINTS_STORE_URL", &url);
    faulted_run(&db, &wp, &proxy, "store").await;
}

/// The store is away for several `wal_sender_timeout`s while trades keep coming: `outage`
/// starts it on `proxy`, `restore` ends it. Throughout, the slot keeps its walsender (no
/// reconnect, no replication timeout) and is never confirmed past the store's checkpoint;
/// afterwards the ledger is complete.
async fn store_outage_holds_the_slot(
    name: &str,
    outage: impl Fn(&Proxy),
    restore: impl Fn(&Proxy),
    expect_in_log: &str,
) {
    let db = TestDb::own_exchange(name, &[("wal_sender_timeout", WAL_SENDER_TIMEOUT)]).await;
    let store_db = TestDb::new(&format!("{name}_store")).await;
    reference_slot(&db, "wp_ref").await;
    let direct = Walpoints::new(&db, "held").store_on(&store_db);
    let (proxy, url) = Proxy::in_front_of(&direct.store_url).await;
    let wp = direct
        .env("WALPOINTS_STORE_URL", &url)
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .env("WALPOINTS_HTTP_POLL_INTERVAL", "200ms");
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    workload(db.url.clone(), 1, 2_000, 100).await;
    let ex = db.client().await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(120), &running)
        .await;
    let (pid, _) = slot_state(&ex, &wp.slot()).await;
    assert!(pid.is_some(), "the slot is not active");

    outage(&proxy);
    let writer = tokio::spawn(workload(db.url.clone(), 2_001, 4_000, 100));
    let store = wp.store().await;
    let started = Instant::now();
    let mut said_not_ready = None;
    // Three wal_sender_timeouts and more.
    while started.elapsed() < Duration::from_secs(18) {
        let checkpoint = wp.checkpoint().await;
        let (now, confirmed) = slot_state(&ex, &wp.slot()).await;
        assert_eq!(
            now,
            pid,
            "the walsender changed {:?} into the outage; stderr:\n{}",
            started.elapsed(),
            running.stderr()
        );
        assert!(
            confirmed <= checkpoint,
            "the slot was confirmed at {confirmed}, past the store's checkpoint {checkpoint}"
        );
        if said_not_ready.is_none() {
            let (status, body) = get_json(&addr, "/readyz").await;
            if status == 503 && body["reason"].as_str().is_some_and(|r| r.contains("store")) {
                said_not_ready = Some(body["reason"].as_str().unwrap_or_default().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(store);
    restore(&proxy);
    writer.await.unwrap();
    assert_complete(&db, &wp, &running, "wp_ref", 6_000).await;
    let log = server_log(db.cluster());
    assert!(
        !log.contains(REPLICATION_TIMEOUT),
        "the walsender timed out:\n{log}"
    );
    assert!(
        running.stderr().contains(expect_in_log),
        "no {expect_in_log:?} in stderr:\n{}",
        running.stderr()
    );
    eprintln!("/readyz during the outage: {said_not_ready:?}");
    if expect_in_log.contains("holding") {
        assert!(
            said_not_ready.is_some(),
            "/readyz never named the store during the outage"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_store_holds_the_slot_and_acknowledges_nothing_until_it_returns() {
    store_outage_holds_the_slot(
        "fault_refused",
        |p| {
            p.refuse(true);
            p.reset_all();
        },
        |p| p.refuse(false),
        "holding the replication session open",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_store_holds_the_slot_and_acknowledges_nothing_until_it_returns() {
    // The store write just hangs: walpoints stops reading the stream, whose transport keeps
    // the standby feedback going.
    store_outage_holds_the_slot("fault_blackhole", |p| p.stall(true), |p| p.stall(false), "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_store_commit_and_slot_acknowledgement_changes_nothing() {
    let db = TestDb::exchange("fault_unacked").await;
    reference_slot(&db, "wp_ref").await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let wp = Walpoints::new(&db, "unacked").env("WALPOINTS_SOURCE_URL", &url);
    let mut running = wp.setup_and_stream().await;
    let ex = db.client().await;
    workload(db.url.clone(), 1, 2_000, 100).await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(120), &running)
        .await;

    // From here the server's stream still arrives and the store still commits, but no
    // acknowledgement reaches the server.
    proxy.stall_upstream(true);
    // Acknowledgements already past the proxy may still land: wait until the slot stands still.
    let mut held = slot_state(&ex, &wp.slot()).await.1;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = slot_state(&ex, &wp.slot()).await.1;
        if now == held {
            break;
        }
        held = now;
    }
    workload(db.url.clone(), 2_001, 3_000, 100).await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(120), &running)
        .await;
    running.child.kill().expect("SIGKILL");
    let _ = running.child.wait();
    // Throw away what the proxy held (the acknowledgements) with the connections.
    proxy.reset_all();
    eventually("the proxy to let go", Duration::from_secs(10), || async {
        proxy.live() == 0
    })
    .await;
    proxy.stall_upstream(false);
    let checkpoint = wp.checkpoint().await;
    eventually("the walsender to exit", Duration::from_secs(30), || async {
        slot_state(&ex, &wp.slot()).await.0.is_none()
    })
    .await;
    let (_, confirmed) = slot_state(&ex, &wp.slot()).await;
    eprintln!("killed with the checkpoint at {checkpoint}, the slot confirmed at {confirmed}");
    assert_eq!(confirmed, held, "an acknowledgement got through");
    assert!(
        confirmed < checkpoint,
        "the kill was not between commit and acknowledgement"
    );

    // The slot streams again from before what the store has: those transactions are skipped.
    workload(db.url.clone(), 5_001, 1_000, 100).await;
    let running = wp.start();
    assert_complete(&db, &wp, &running, "wp_ref", 6_000).await;
}

/// `wp` backfilling every trade of the snapshot test's history.
fn backfill(wp: Walpoints<'_>) -> Walpoints<'_> {
    wp.env("WALPOINTS_BACKFILL_TRADES_SINCE", "2026-01-01T00:00:00Z")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_initial_snapshot_then_setup_again_starts_over_cleanly() {
    const BEFORE: i64 = 20_000;
    let db = TestDb::exchange("fault_snapshot").await;
    // History before setup, all backfilled by the snapshot; no open position, so the snapshot's
    // own time (which differs between two setups) earns nothing.
    let ex = db.client().await;
    ex.batch_execute(&format!(
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address, created_at)
         SELECT g, 'BTC-PERP', 100 + g % 7, 1 + g % 5,
                '0x' || ((g * 7919) % 1000), '0x' || ((g * 104729 + 3) % 1000),
                '2026-06-01T00:00:00Z'::timestamptz + g * interval '1 ms'
         FROM generate_series(1::bigint, {BEFORE}) g;
         INSERT INTO referral_relations
         SELECT '0x' || g, '0x' || ((g * 31 + 7) % 1000) FROM generate_series(1, 500) g
         WHERE g <> (g * 31 + 7) % 1000;"
    ))
    .await
    .expect("history");
    let steady = backfill(Walpoints::new(&db, "steady"));
    let killed = backfill(Walpoints::new(&db, "killed"));
    let started = Instant::now();
    steady.setup();
    let took = started.elapsed();

    // Once the slot exists, somewhere in the first half of what an undisturbed setup took:
    // the snapshot is being read, evaluated and written.
    let mut rng = Lcg::seeded("snapshot kill moment");
    let delay = took * (rng.below(50) as u32) / 100;
    let mut setup = Running::spawn(killed.cmd(&["setup"]));
    eventually("setup to create its slot", Duration::from_secs(60), || {
        let created = setup.stderr().contains("slot created");
        async move { created }
    })
    .await;
    tokio::time::sleep(delay).await;
    assert!(
        setup.child.try_wait().unwrap().is_none(),
        "setup finished within {delay:?} of creating its slot, before the kill; stderr:\n{}",
        setup.stderr()
    );
    setup.child.kill().expect("SIGKILL");
    let _ = setup.child.wait();
    eprintln!("setup killed {delay:?} after creating its slot (an undisturbed one took {took:?})");
    // Nothing of the snapshot is in the store: it is one transaction with the checkpoint.
    let store = connect(&killed.store_url).await;
    let rows: i64 = store
        .query_one(
            "SELECT (SELECT count(*) FROM walpoints.ledger WHERE source_id = 'killed')
                  + (SELECT count(*) FROM walpoints.checkpoint WHERE source_id = 'killed')",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(rows, 0, "a killed setup left rows in the store");
    // The slot it may have created is dropped and made anew by the next setup.
    let out = killed.setup();
    assert!(out.contains("set up:"), "{out}");

    let steady_run = steady.start();
    let killed_run = killed.start();
    workload(db.url.clone(), BEFORE + 1, 3_000, 100).await;
    assert_same_as_undisturbed(
        &db,
        (&steady, &steady_run),
        (&killed, &killed_run),
        2 * BEFORE as usize,
        BEFORE + 3_000,
    )
    .await;
}

/// A source shutdown waits until walpoints confirms everything the walsender sent, which it
/// cannot while its store is away: the held replication session must be let go, not hold the
/// shutdown; and nothing is lost across both outages.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_shutdown_during_a_store_outage_is_not_held_up() {
    let db = TestDb::own_exchange("fault_both", &[]).await;
    let cluster = db.cluster();
    let store_db = TestDb::new("fault_both_store").await;
    reference_slot(&db, "wp_ref").await;
    let direct = Walpoints::new(&db, "both").store_on(&store_db);
    let (proxy, url) = Proxy::in_front_of(&direct.store_url).await;
    let wp = direct.env("WALPOINTS_STORE_URL", &url);
    let running = wp.setup_and_stream().await;
    workload(db.url.clone(), 1, 1_000, 100).await;

    proxy.refuse(true);
    proxy.reset_all();
    workload(db.url.clone(), 1_001, 1_000, 100).await;
    eventually(
        "the daemon to hold the session",
        Duration::from_secs(60),
        || {
            let held = running
                .stderr()
                .contains("holding the replication session open");
            async move { held }
        },
    )
    .await;
    let started = Instant::now();
    cluster
        .stop(walpoints::testing::StopMode::Fast)
        .expect("stop the source fast");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the shutdown took {:?}",
        started.elapsed()
    );
    let released = [
        "asks walpoints to confirm",
        "ended the replication stream",
        "failed too",
    ];
    let stderr = running.stderr();
    assert!(
        released.iter().any(|r| stderr.contains(r)),
        "the daemon did not say it let the session go:\n{stderr}"
    );
    eprintln!(
        "{}",
        stderr
            .lines()
            .filter(|l| released.iter().any(|r| l.contains(r)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster.start_again().expect("start the source again");
    proxy.refuse(false);
    workload(db.url.clone(), 2_001, 1_000, 100).await;
    assert_complete(&db, &wp, &running, "wp_ref", 3_000).await;
}

/// What walpoints logs when its silence watchdog gives up on the replication connection.
const PRESUMED_DEAD: &str = "source connection presumed dead";

/// The source's connection is black-holed for good (its host or route died: no FIN, no RST)
/// while new connections get through, once on an idle, fully confirmed stream and once mid-
/// workload: each time the silence watchdog drops it within `source.silence_timeout` (a probe
/// the stream never delivers) and walpoints reconnects; an idle stream alone never trips it;
/// and the ledger is the undisturbed one.
#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_source_connection_is_dropped_after_the_silence_timeout_and_nothing_is_lost()
{
    let db = TestDb::own_exchange(
        "fault_silence",
        &[("wal_sender_timeout", WAL_SENDER_TIMEOUT)],
    )
    .await;
    reference_slot(&db, "wp_ref").await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let wp = Walpoints::new(&db, "silence")
        .env("WALPOINTS_SOURCE_URL", &url)
        .env("WALPOINTS_SOURCE_SILENCE_TIMEOUT", "4s");
    let mut running = wp.setup_and_stream().await;
    workload(db.url.clone(), 1, 500, 100).await;
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;

    // Idle and fully confirmed (heartbeat off) for three timeouts: the probes keep it alive.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        !running.stderr().contains(PRESUMED_DEAD),
        "an idle stream was presumed dead; stderr:\n{}",
        running.stderr()
    );

    let dead_count = |running: &Running| running.stderr().matches(PRESUMED_DEAD).count();
    let source = db.client().await;
    // Black-holed while idle.
    let (old, _) = slot_state(&source, &wp.slot()).await;
    let holed = Instant::now();
    proxy.black_hole_all();
    running.wait_for_stderr(PRESUMED_DEAD, Duration::from_secs(60));
    eprintln!("idle stream: presumed dead after {:?}", holed.elapsed());
    // Streaming again on a walsender of its own (the black-holed one lingers until the server's
    // wal_sender_timeout).
    eventually(
        "a new walsender on the slot",
        Duration::from_secs(60),
        || async {
            let (pid, _) = slot_state(&source, &wp.slot()).await;
            pid.is_some() && pid != old
        },
    )
    .await;
    eprintln!("idle stream: streaming again after {:?}", holed.elapsed());

    // Black-holed while trades keep coming (they go to the server directly).
    let writer = tokio::spawn(workload(db.url.clone(), 501, 1_500, 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let holed = Instant::now();
    proxy.black_hole_all();
    while dead_count(&running) < 2 {
        assert!(
            holed.elapsed() < Duration::from_secs(60),
            "no second silence verdict; stderr:\n{}",
            running.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("busy stream: presumed dead after {:?}", holed.elapsed());
    drop(source);
    writer.await.unwrap();
    assert_complete(&db, &wp, &running, "wp_ref", 2_000).await;
}

/// A walsender busy with a long stretch of WAL that holds nothing for walpoints (one big
/// transaction on a table it does not follow, committed while walpoints was stopped) sends
/// nothing for longer than the silence timeout while it decodes it: the watchdog's second
/// probe sees it reading on or at work, and the stream is kept. Before, the stream was
/// dropped, and every reconnect decoded the same transaction again from the slot's restart
/// point, never getting past it.
#[tokio::test(flavor = "multi_thread")]
async fn a_walsender_busy_with_wal_of_other_tables_is_not_presumed_dead() {
    let db = TestDb::own_exchange("fault_busy_walsender", &[]).await;
    let wp = Walpoints::new(&db, "busy").env("WALPOINTS_SOURCE_SILENCE_TIMEOUT", "2s");
    wp.setup();
    let source = db.client().await;
    // Decoding it takes seconds (the walsender reads it into its spill files, then hands
    // every change to pgoutput at the commit), with no wait for WAL and so no keepalive.
    source
        .batch_execute(
            "CREATE TABLE public.noise (id bigint, pad text); \
             INSERT INTO public.noise SELECT g, repeat('x', 20) FROM generate_series(1, 5000000) g",
        )
        .await
        .expect("the noise transaction");
    workload(db.url.clone(), 1, 100, 100).await;
    let until = fence(&source).await;
    let mut running = wp.start();
    wp.wait_streaming(&mut running).await;
    wp.wait_for(until, Duration::from_secs(240), &running).await;
    let stderr = running.stderr();
    assert!(
        stderr.contains("its walsender is reading WAL"),
        "the walsender was never silent for a whole timeout, so this proves nothing; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains(PRESUMED_DEAD),
        "a busy walsender was presumed dead; stderr:\n{stderr}"
    );
}
