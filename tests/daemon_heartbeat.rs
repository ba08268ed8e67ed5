//! The heartbeat keeps the slot moving while only tables walpoints does not follow are written:
//! the slot's confirmed position, the store's checkpoint and the slot's restart_lsn all pass
//! the point where the load began, so the slot pins no WAL. Without the heartbeat the slot
//! stays where it was under the same load, which is why the heartbeat exists.

use std::time::{Duration, Instant};

use tokio_postgres::types::PgLsn;
use walpoints::lsn::Lsn;

use crate::support::daemon::Walpoints;
use crate::support::TestDb;

/// The slot's (confirmed_flush_lsn, restart_lsn).
async fn slot_position(client: &tokio_postgres::Client, slot: &str) -> (Lsn, Lsn) {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn, restart_lsn FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("read the slot");
    let lsn = |i: usize| Lsn(row.get::<_, Option<PgLsn>>(i).map_or(0, u64::from));
    (lsn(0), lsn(1))
}

async fn current_lsn(client: &tokio_postgres::Client) -> Lsn {
    let lsn: PgLsn = client
        .query_one("SELECT pg_current_wal_lsn()", &[])
        .await
        .unwrap()
        .get(0);
    Lsn(u64::from(lsn))
}

/// Writes to `noise` (published nowhere) for `how_long`, switching WAL segments twice.
async fn unfollowed_load(client: &tokio_postgres::Client, how_long: Duration) {
    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed() < how_long {
        client
            .batch_execute("INSERT INTO noise (x) SELECT generate_series(1, 200)")
            .await
            .expect("write to the unfollowed table");
        round += 1;
        if round % 10 == 5 && round <= 15 {
            client
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_heartbeat_moves_the_slot_past_unfollowed_writes() {
    let db = TestDb::exchange("heartbeat_on").await;
    let wp = Walpoints::new(&db, "hb_on").env("WALPOINTS_HEARTBEAT_INTERVAL", "200ms");
    wp.setup();
    let src = db.client().await;
    src.batch_execute("CREATE TABLE noise (x int)")
        .await
        .unwrap();
    let mut running = wp.start();
    wp.wait_streaming(&mut running).await;

    // The heartbeat already runs (its first beat is at start): the load's own first write marks
    // the point that every position must pass.
    src.batch_execute("INSERT INTO noise VALUES (0)")
        .await
        .unwrap();
    let start = current_lsn(&src).await;
    let (confirmed0, restart0) = slot_position(&src, &wp.slot()).await;
    let checkpoint0 = wp.checkpoint().await;
    unfollowed_load(&src, Duration::from_secs(3)).await;

    let (confirmed, _) = slot_position(&src, &wp.slot()).await;
    assert!(
        confirmed > start,
        "confirmed_flush_lsn {confirmed} did not pass {start} (was {confirmed0}); stderr:\n{}",
        running.stderr()
    );
    let checkpoint = wp.checkpoint().await;
    assert!(
        checkpoint > start,
        "the store's checkpoint {checkpoint} did not pass {start} (was {checkpoint0})"
    );
    assert!(
        checkpoint >= confirmed,
        "the slot ({confirmed}) was acknowledged past the store's checkpoint ({checkpoint})"
    );

    // restart_lsn follows once decoding has met a running-xacts record after the confirmed
    // point; a checkpoint writes one (the bgwriter does too, every 15 s, on a busy server).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, restart) = slot_position(&src, &wp.slot()).await;
        if restart > start {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restart_lsn {restart} (was {restart0}) did not pass {start}: the slot pins WAL; \
             stderr:\n{}",
            running.stderr()
        );
        src.batch_execute("INSERT INTO noise VALUES (0); CHECKPOINT")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon stopped; stderr:\n{}",
        running.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_heartbeat_the_slot_stays_put_under_unfollowed_writes() {
    let db = TestDb::exchange("heartbeat_off").await;
    // The harness's default: heartbeat.interval = "0s".
    let wp = Walpoints::set_up(&db, "hb_off");
    let src = db.client().await;
    src.batch_execute("CREATE TABLE noise (x int)")
        .await
        .unwrap();
    let mut running = wp.start();
    wp.wait_streaming(&mut running).await;

    let start = current_lsn(&src).await;
    let (confirmed0, _) = slot_position(&src, &wp.slot()).await;
    let checkpoint0 = wp.checkpoint().await;
    unfollowed_load(&src, Duration::from_secs(2)).await;
    // Time for a batch and an acknowledgement to land, had there been anything to acknowledge.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (confirmed, _) = slot_position(&src, &wp.slot()).await;
    assert!(
        confirmed <= start,
        "confirmed_flush_lsn moved from {confirmed0} to {confirmed}, past {start}, without a \
         heartbeat: this test no longer shows what the heartbeat is for"
    );
    assert_eq!(wp.checkpoint().await, checkpoint0);
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon stopped; stderr:\n{}",
        running.stderr()
    );
}
