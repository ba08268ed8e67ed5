//! Holding through the daemon: hours credited to the totals as stream time passes them, one
//! ledger entry per segment, and a rules change that ends the open segments under the rules that
//! credited them. Stream time comes from commit times, so the scenario moves the store's stream
//! time and the positions back by hand (with the credits those hours would have earned) instead
//! of waiting for hours to pass.

use std::io::Write;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::support::daemon::{fence, Walpoints};
use crate::support::{totals, TestDb};

const HOUR: i64 = 3_600_000_000;

/// Commits `sql` on the exchange and waits until walpoints has it in the store.
async fn commit_and_follow(
    ex: &tokio_postgres::Client,
    wp: &Walpoints<'_>,
    running: &crate::support::Running,
    sql: &str,
) {
    ex.batch_execute(sql).await.unwrap();
    let until = fence(ex).await;
    wp.wait_for(until, Duration::from_secs(30), running).await;
}

/// A holding entry of the store: (position, segment start µs, end µs, points, rate).
type Segment = (String, i64, i64, Decimal, Decimal);

/// The store's holding entries, with the rules version each is stamped with.
async fn segments(store: &tokio_postgres::Client) -> Vec<(Segment, String)> {
    store
        .query(
            "SELECT position_id,
                    (extract(epoch FROM segment_start) * 1000000)::bigint,
                    (extract(epoch FROM event_time) * 1000000)::bigint, points, rate,
                    rules_version
             FROM walpoints.ledger WHERE kind = 'holding' ORDER BY commit_lsn, ordinal",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)), r.get(5)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hours_are_credited_as_they_pass_and_a_rules_change_ends_the_open_segments() {
    let db = TestDb::exchange("holding_hours").await;
    let ex = db.client().await;
    let wp = Walpoints::set_up(&db, "hold");
    let mut running = wp.start();
    commit_and_follow(
        &ex,
        &wp,
        &running,
        "INSERT INTO positions (id, user_address, symbol, size, entry_price)
         VALUES ('00000000-0000-0000-0000-0000000000a1', '0xhold_a', 'BTC-PERP', 1, 1000),
                ('00000000-0000-0000-0000-0000000000b2', '0xhold_b', 'ETH-PERP', -2, 500);",
    )
    .await;
    running.signal(libc::SIGTERM);
    assert!(
        running.wait(Duration::from_secs(10)).success(),
        "{}",
        running.stderr()
    );
    let store = wp.store().await;
    assert!(
        segments(&store).await.is_empty(),
        "no segment has ended yet"
    );

    // Back-date: the store's stream time goes back 2 hours (3 if that hour starts an epoch, where
    // segments end anyway) and the positions opened 3 hours and 10 minutes before it; the totals
    // get what those hours credited (the test's own hour-by-hour sum), as if walpoints had seen
    // them pass.
    let stream_time: i64 = store
        .query_one("SELECT stream_time FROM walpoints.checkpoint", &[])
        .await
        .unwrap()
        .get(0);
    const GENESIS: i64 = 1_767_571_200_000_000; // the default, 2026-01-05T00:00:00Z
    let starts_epoch = |t: i64| (t - t.rem_euclid(HOUR) - GENESIS).rem_euclid(168 * HOUR) == 0;
    let back = if starts_epoch(stream_time - 2 * HOUR) {
        3 * HOUR
    } else {
        2 * HOUR
    };
    store
        .batch_execute(&format!(
            "UPDATE walpoints.state_open_position SET since = since - {};
             UPDATE walpoints.checkpoint SET stream_time = stream_time - {back};",
            back + 3 * HOUR + 10 * 60_000_000,
        ))
        .await
        .unwrap();
    let mut client = wp.store().await;
    let tx = client.transaction().await.unwrap();
    let credited = totals::open_segment_credits(&tx).await;
    tx.commit().await.unwrap();
    assert_eq!(credited.len(), 2, "{credited:?}");
    for ((user, epoch), s) in &credited {
        store
            .execute(
                "INSERT INTO walpoints.user_epoch_points (user_address, epoch, holding_points,
                     total_points)
                 VALUES ($1, $2, $3, $3)
                 ON CONFLICT (user_address, epoch) DO UPDATE SET
                     holding_points = user_epoch_points.holding_points + $3,
                     total_points = user_epoch_points.total_points + $3",
                &[user, epoch, &s.holding],
            )
            .await
            .unwrap();
    }
    wp.assert_totals_match_ledger().await;
    let old_settled: i64 = {
        let t: i64 = store
            .query_one("SELECT stream_time FROM walpoints.checkpoint", &[])
            .await
            .unwrap()
            .get(0);
        t - t.rem_euclid(HOUR)
    };

    // Restart with the holding rate doubled, and trade: the first transaction ends both open
    // segments at the last settled hour under the old rate, then credits the hours since at the
    // new one.
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config
        .write_all(b"[holding]\nrate_per_day = 0.004\n")
        .unwrap();
    let wp = wp.env("WALPOINTS_CONFIG", config.path().to_str().unwrap());
    let mut running = wp.start();
    commit_and_follow(
        &ex,
        &wp,
        &running,
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
         VALUES (1, 'BTC-PERP', 100, 1, '0xhold_a', '0xhold_b');",
    )
    .await;
    let old_version: String = store
        .query_one(
            "SELECT version FROM walpoints.rules WHERE rules_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ended = segments(&store).await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    for ((id, start, end, points, rate), version) in &ended {
        assert_eq!(
            version, &old_version,
            "{id} is stamped with the rules it was credited by"
        );
        assert_eq!(
            *end, old_settled,
            "{id} ends at the last hour the old rules settled"
        );
        assert!(
            *start < *end && *points > Decimal::ZERO,
            "{id}: {start} {end} {points}"
        );
        assert_eq!(
            *rate,
            Decimal::new(2, 3),
            "{id} was credited at the old rate"
        );
    }
    wp.assert_totals_match_ledger().await;

    // Closing one position writes its next segment, at the new rate, from the old settled hour.
    commit_and_follow(
        &ex,
        &wp,
        &running,
        "UPDATE positions SET status = 'closed', realized_pnl = 0
         WHERE id = '00000000-0000-0000-0000-0000000000a1'",
    )
    .await;
    let all = segments(&store).await;
    assert_eq!(all.len(), 3, "{all:?}");
    let ((id, start, _, points, rate), version) = &all[2];
    assert_eq!(id, "00000000-0000-0000-0000-0000000000a1");
    assert_eq!((*start, *rate), (old_settled, Decimal::new(4, 3)));
    assert!(*points > Decimal::ZERO);
    assert_ne!(version, &old_version);
    wp.assert_totals_match_ledger().await;
    running.signal(libc::SIGTERM);
    assert!(
        running.wait(Duration::from_secs(10)).success(),
        "{}",
        running.stderr()
    );
}
