//! The initial snapshot: what existed before `setup` (open positions, referral relations, and
//! with `backfill.trades_since` the trades since then) is picked up in the slot's exported
//! snapshot, and the stream starts exactly where the snapshot ends: a writer committing trades
//! throughout `setup` has each one awarded exactly once.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::daemon::{fence, Walpoints};
use crate::support::{connect, TestDb};

#[tokio::test(flavor = "multi_thread")]
async fn rows_from_before_setup_are_in_the_snapshot_and_nothing_is_missed_or_doubled() {
    let db = TestDb::exchange("snapshot").await;
    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO referral_relations VALUES ('0xref1', '0xboss'), ('0xref2', '0xboss');
         INSERT INTO positions (id, user_address, symbol, size, entry_price, status, realized_pnl)
         VALUES ('00000000-0000-0000-0000-000000000001', '0xholder', 'BTC-PERP', 2, 1000, 'open', NULL),
                ('00000000-0000-0000-0000-000000000002', '0xholder', 'BTC-PERP', 1, 50, 'closed', 30);
         -- before backfill.trades_since: earns nothing
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address, created_at)
         VALUES (1, 'BTC-PERP', 100, 1, '0xold', '0xold2', '2026-03-01T00:00:00Z');",
    )
    .await
    .unwrap();

    // A writer commits one trade per transaction, before, during and after setup.
    let next_id = Arc::new(AtomicI64::new(1000));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, next_id, stop) = (db.url.clone(), next_id.clone(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                c.execute(
                    "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
                     VALUES ($1, 'ETH-PERP', 20, 1, '0xref1', '0xmaker')",
                    &[&id],
                )
                .await
                .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wp =
        Walpoints::new(&db, "snap").env("WALPOINTS_BACKFILL_TRADES_SINCE", "2026-06-01T00:00:00Z");
    let report = wp.setup();
    assert!(
        report.contains("1 open positions, 2 referral relations"),
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let written = next_id.load(Ordering::SeqCst) - 1000;
    assert!(written > 20, "the writer committed only {written} trades");

    let running = wp.start();
    ex.batch_execute(
        "UPDATE positions SET status = 'closed', realized_pnl = 100
         WHERE id = '00000000-0000-0000-0000-000000000001'",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;

    let store = wp.store().await;
    let count = |sql: &'static str| {
        let store = &store;
        async move { store.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // Every trade of the writer is awarded exactly once, whether it came from the snapshot
    // (pseudo LSNs below the consistent point) or from the stream.
    assert_eq!(
        count(
            "SELECT count(DISTINCT trade_id) FROM walpoints.ledger
             WHERE kind = 'trading_taker' AND trade_id::bigint >= 1000"
        )
        .await,
        written
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM walpoints.ledger
             WHERE kind = 'trading_taker' AND trade_id::bigint >= 1000"
        )
        .await,
        written
    );
    let (from_snapshot, consistent): (i64, i64) = {
        let r = store
            .query_one(
                "SELECT count(*) FILTER (WHERE l.commit_lsn < c.consistent_point),
                        count(*) FILTER (WHERE l.commit_lsn > c.consistent_point)
                 FROM walpoints.ledger l JOIN walpoints.checkpoint c USING (source_id)
                 WHERE kind = 'trading_taker'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(
        from_snapshot > 0 && consistent > 0,
        "trades from both the snapshot ({from_snapshot}) and the stream ({consistent})"
    );
    // The trade from before trades_since earns nothing; the referral relations from before
    // setup pay 0xboss a share of 0xref1's points.
    assert_eq!(
        count("SELECT count(*) FROM walpoints.ledger WHERE trade_id = '1'").await,
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM walpoints.ledger
             WHERE user_address = '0xboss' AND kind = 'referral_l1'"
        )
        .await,
        written
    );
    // The position open before setup was tracked from the snapshot: closing it in profit pays
    // PnL once; the one closed before setup pays nothing.
    assert_eq!(
        count(
            "SELECT count(*) FROM walpoints.ledger
             WHERE kind = 'pnl' AND position_id = '00000000-0000-0000-0000-000000000001'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM walpoints.ledger
             WHERE position_id = '00000000-0000-0000-0000-000000000002'"
        )
        .await,
        0
    );
    // Its holding started at the snapshot's time.
    assert_eq!(
        count(
            "SELECT count(*) FROM walpoints.ledger l JOIN walpoints.checkpoint c USING (source_id)
             WHERE kind = 'holding' AND position_id = '00000000-0000-0000-0000-000000000001'
               AND l.segment_start = c.snapshot_time"
        )
        .await,
        1
    );
    wp.assert_totals_match_ledger().await;
}
