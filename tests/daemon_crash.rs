//! Exactly-once under failure: walpoints killed with SIGKILL at random moments, the source
//! PostgreSQL (which also holds the store) stopped fast and immediate mid-stream, and a store
//! on a server of its own stopped fast or crashed (immediate) while the source keeps trading,
//! end with the same ledger as an undisturbed run over the same WAL: nothing lost, nothing
//! counted twice. Connection faults and the other kills are in `tests/faults.rs`.

use std::time::{Duration, Instant};

use walpoints::points::RuleSet;
use walpoints::testing::StopMode;

use crate::support::daemon::{
    assert_same_ledger, fence, reference_ledger, reference_slot, workload, Walpoints,
};
use crate::support::rng::Lcg;
use crate::support::workload::{assert_each_trade_once, assert_same_as_undisturbed};
use crate::support::{eventually, TestDb};

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_five_random_moments_changes_nothing_in_the_ledger() {
    let db = TestDb::exchange("crash_kill").await;
    let steady = Walpoints::new(&db, "steady");
    let killed = Walpoints::new(&db, "killed");
    steady.setup();
    killed.setup();
    let steady_run = steady.start();
    let mut killed_run = killed.start();

    let mut rng = Lcg::seeded("kill moments");

    let writer = tokio::spawn(workload(db.url.clone(), 1, 50_000, 100));
    let started = Instant::now();
    let mut last = killed.checkpoint().await;
    for kill in 1..=5 {
        // Each kill lands while the daemon makes progress (however loaded the machine), not
        // in a row of restarts that never get to commit.
        let before = last;
        eventually(
            "the killed daemon to commit",
            Duration::from_secs(120),
            || async { writer.is_finished() || killed.checkpoint().await > before },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.below(1200))).await;
        killed_run.child.kill().expect("SIGKILL");
        let _ = killed_run.child.wait();
        last = killed.checkpoint().await;
        eprintln!("kill {kill} at {:?}, checkpoint {last}", started.elapsed());
        killed_run = killed.start();
    }
    writer.await.unwrap();
    // Every trade got exactly one award (taker side) in the killed run: no gap, no double.
    assert_same_as_undisturbed(
        &db,
        (&steady, &steady_run),
        (&killed, &killed_run),
        100_000,
        50_000,
    )
    .await;
    // And the journal the killed daemon wrote replays to exactly its ledger and totals.
    let (code, stdout, stderr) = crate::replay::replay(&killed);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_restart_mid_stream_loses_and_doubles_nothing() {
    let db = TestDb::own_exchange("crash_restart", &[]).await;
    let cluster = db.cluster();
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::set_up(&db, "restart");
    let running = wp.start();

    workload(db.url.clone(), 1, 20_000, 200).await;
    // The daemon is still draining that backlog: stop the server under it, twice.
    cluster.stop(StopMode::Fast).expect("stop fast");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_again().expect("start again");
    workload(db.url.clone(), 20_001, 10_000, 200).await;
    cluster.stop(StopMode::Immediate).expect("stop immediate");
    cluster.start_again().expect("start again");
    workload(db.url.clone(), 30_001, 10_000, 200).await;

    let ex = db.client().await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(180), &running).await;
    let got = wp.ledger().await;
    let expected = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert_same_ledger(&got, &expected, "the pure engine");
    assert_each_trade_once(&wp, 40_000).await;
    assert!(
        running.stderr().contains("reconnecting"),
        "the daemon should have logged its reconnects:\n{}",
        running.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_restart_mid_stream_loses_and_doubles_nothing() {
    store_restart_mid_stream(StopMode::Fast, "crash_store_restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_crash_mid_stream_loses_and_doubles_nothing() {
    store_restart_mid_stream(StopMode::Immediate, "crash_store_crash").await;
}

/// The store, on a server of its own, stopped in `mode` while walpoints drains a backlog and
/// the source keeps trading, then started again.
async fn store_restart_mid_stream(mode: StopMode, name: &str) {
    let db = TestDb::exchange(name).await;
    let store_db = TestDb::own_cluster(&format!("{name}_server"), &[]).await;
    let store_cluster = store_db.cluster();
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::new(&db, "store_restart").store_on(&store_db);
    wp.setup();
    let running = wp.start();

    workload(db.url.clone(), 1, 20_000, 200).await;
    store_cluster.stop(mode).expect("stop the store");
    // The source keeps trading while the store is away.
    workload(db.url.clone(), 20_001, 5_000, 200).await;
    store_cluster.start_again().expect("start the store again");
    workload(db.url.clone(), 25_001, 5_000, 200).await;

    let ex = db.client().await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(180), &running).await;
    let got = wp.ledger().await;
    let expected = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert_same_ledger(&got, &expected, "the pure engine");
    assert_each_trade_once(&wp, 30_000).await;
}

/// PostgreSQL's fast shutdown waits until each walsender's client has confirmed everything it
/// was sent. walpoints idles with its store on the same server (whose writes follow the last
/// trade in the WAL), so it must confirm that WAL too, or drop the stream, but never hold the
/// shutdown; and nothing may be lost or doubled across it.
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_shutdown_of_the_source_is_not_held_up_by_an_idle_walpoints() {
    let db = TestDb::own_exchange("crash_shutdown", &[]).await;
    let cluster = db.cluster();
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::new(&db, "shutdown");
    let running = wp.setup_and_stream().await;
    workload(db.url.clone(), 1, 2_000, 100).await;
    let ex = db.client().await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(60), &running)
        .await;
    drop(ex);

    let started = std::time::Instant::now();
    cluster.stop(StopMode::Fast).expect("stop fast");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the shutdown took {:?}",
        started.elapsed()
    );
    cluster.start_again().expect("start again");
    workload(db.url.clone(), 2_001, 1_000, 100).await;
    let ex = db.client().await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(90), &running).await;
    let expected = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");
    wp.assert_totals_match_ledger().await;
}
