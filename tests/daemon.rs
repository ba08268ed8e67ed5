//! The daemon end to end: `setup`, `run` and a scripted exchange workload produce exactly the
//! ledger the points rules predict, totals equal the ledger's sums, bad rows are dead-lettered
//! without stopping the stream, and a clean stop and restart writes nothing twice.

use std::time::Duration;

use rust_decimal::Decimal;
use walpoints::points::RuleSet;

use crate::support::daemon::{fence, reference_ledger, reference_slot, Walpoints};
use crate::support::TestDb;

async fn points_of(
    store: &tokio_postgres::Client,
    user: &str,
    kind: &str,
    trade: Option<i64>,
) -> Vec<String> {
    store
        .query(
            "SELECT points::text || CASE WHEN reversal THEN ' rev' ELSE '' END
             FROM walpoints.ledger l
             WHERE user_address = $1 AND kind = $2 AND ($3::text IS NULL OR trade_id = $3)
             ORDER BY commit_lsn, ordinal",
            &[&user, &kind, &trade.map(|t| t.to_string())],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_workload_gives_the_predicted_ledger_and_totals() {
    let db = TestDb::exchange("daemon_workload").await;
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::new(&db, "main");
    let out = wp.setup();
    assert!(out.contains("set up"), "{out}");
    // Setup is safe to re-run.
    assert!(wp.setup().contains("already set up"));
    let mut running = wp.start();

    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO referral_relations VALUES ('0xbob', '0xAlice'), ('0xcarol', '0xalice'),
                                               ('0xeve', '0xeve');
         -- t1: bob takes 200 from carol; alice refers both
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (1, 'BTC-PERP', 100, 2, '0xBOB', '0xcarol');
         -- a self-trade earns nothing
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (2, 'BTC-PERP', 100, 5, '0xdave', '0xdave');
         -- bob crosses the 100,000 tier with 150,000 against dan ...
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (3, 'ETH-PERP', 1500, 100, '0xbob', '0xdan');
         -- ... so his next fill has multiplier 1.10
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (4, 'ETH-PERP', 10, 10, '0xbob', '0xdan');
         -- t1 corrected: amount 2 -> 4 (reversal + new award); t4 deleted (reversal)
         UPDATE trades SET amount = 4 WHERE id = 1;
         DELETE FROM trades WHERE id = 4;
         -- positions: bob opens, resizes and closes in profit; carol closes at a loss
         INSERT INTO positions (id, user_address, symbol, size, entry_price)
             VALUES ('00000000-0000-0000-0000-00000000000b', '0xbob', 'BTC-PERP', 1, 1000),
                    ('00000000-0000-0000-0000-00000000000c', '0xcarol', 'BTC-PERP', -3, 500);
         UPDATE positions SET size = 2 WHERE user_address = '0xbob';
         UPDATE positions SET status = 'closed', realized_pnl = 50 WHERE user_address = '0xbob';
         UPDATE positions SET status = 'closed', realized_pnl = -20 WHERE user_address = '0xcarol';",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;

    // Field by field, the same ledger as the pure engine fed by the same WAL.
    let store_ledger = wp.ledger().await;
    let reference = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert_eq!(store_ledger, reference);

    // And the figures the rules predict.
    let store = wp.store().await;
    assert_eq!(
        points_of(&store, "0xbob", "trading_taker", Some(1)).await,
        ["2.000000", "-2.000000 rev", "4.400000"],
        "t1 awarded, reversed by the correction, awarded again at amount 4 with bob's tier \
         as it is at the correction (1.10)"
    );
    assert_eq!(
        points_of(&store, "0xcarol", "trading_maker", Some(1)).await,
        ["1.000000", "-1.000000 rev", "2.000000"]
    );
    assert_eq!(
        points_of(&store, "0xalice", "referral_l1", Some(1)).await,
        [
            "0.200000",
            "0.100000",
            "-0.200000 rev",
            "-0.100000 rev",
            "0.440000",
            "0.200000"
        ],
        "alice (mixed case in the row) earns 10% of both of her referees' points"
    );
    assert!(points_of(&store, "0xdave", "trading_taker", None)
        .await
        .is_empty());
    assert_eq!(
        points_of(&store, "0xbob", "trading_taker", Some(3)).await,
        ["1500.000000"],
        "multiplier 1.00: volume before the fill was 200"
    );
    assert_eq!(
        points_of(&store, "0xbob", "trading_taker", Some(4)).await,
        ["1.100000", "-1.100000 rev"],
        "multiplier 1.10 after crossing 100,000; the delete reverses it"
    );
    assert_eq!(points_of(&store, "0xbob", "pnl", None).await.len(), 1);
    assert!(points_of(&store, "0xcarol", "pnl", None).await.is_empty());
    assert!(points_of(&store, "0xeve", "referral_l1", None)
        .await
        .is_empty());
    let rows = wp.assert_totals_match_ledger().await;
    assert!(rows >= 4, "{rows}");
    let volume: Decimal = store
        .query_one(
            "SELECT sum(trading_volume) FROM walpoints.user_epoch_points WHERE user_address = '0xbob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        volume,
        Decimal::from(150_400),
        "t1 (400 after correction) + t3"
    );

    // SIGTERM: the batch is committed, the process exits 0 within a few seconds.
    running.signal(libc::SIGTERM);
    let status = running.wait(Duration::from_secs(10));
    assert!(status.success(), "{}", running.stderr());

    // Restarting writes nothing twice.
    let before = wp.ledger().await;
    let running = wp.start();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    assert_eq!(wp.ledger().await, before);
    wp.assert_totals_match_ledger().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_row_is_dead_lettered_and_the_rows_after_it_are_processed() {
    let db = TestDb::exchange("daemon_dead_letter").await;
    let wp = Walpoints::set_up(&db, "dl");
    let running = wp.start();
    let ex = db.client().await;
    ex.batch_execute(
        "ALTER TABLE positions DROP CONSTRAINT positions_status_check;
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (1, 'X', 'NaN', 1, '0xa', '0xb');
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (2, 'X', -5, 1, '0xa', '0xb');
         INSERT INTO positions (user_address, symbol, size, entry_price, status)
             VALUES ('0xa', 'X', 1, 100, 'liquidating');
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (3, 'X', 100, 1, '0xa', '0xb');",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    let store = wp.store().await;
    let dead: Vec<(String, String, String)> = store
        .query(
            "SELECT table_name, reason, row->'new'->>'price' FROM walpoints.dead_letter
             ORDER BY commit_lsn, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<_, Option<String>>(2).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(dead[0].0, "public.trades");
    assert_eq!(dead[0].2, "NaN");
    assert_eq!(dead[1].1, "negative_price");
    assert_eq!(dead[2].1, "unknown_status");
    let awarded: i64 = store
        .query_one(
            "SELECT count(*) FROM walpoints.ledger WHERE trade_id = '3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        awarded, 2,
        "the fill after the bad rows earns taker and maker points"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_exchange_shards_share_one_store() {
    let east = TestDb::exchange("daemon_shards").await;
    let west = east.sibling("west").await;
    west.create_exchange_schema().await;
    let a = Walpoints::new(&east, "east");
    let b = Walpoints::new(&west, "west").sharing_store_of(&a);
    a.setup();
    b.setup();
    let (ra, rb) = (a.start(), b.start());
    for db in [&east, &west] {
        db.client()
            .await
            .batch_execute(
                "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
                 VALUES (1, 'BTC-PERP', 100, 2, '0xsam', '0xmia')",
            )
            .await
            .unwrap();
    }
    let until = fence(&east.client().await).await;
    a.wait_for(until, Duration::from_secs(30), &ra).await;
    let until = fence(&west.client().await).await;
    b.wait_for(until, Duration::from_secs(30), &rb).await;

    // Each source's ledger is its own (the same commit LSN may occur in both); the totals add up.
    assert_eq!(a.ledger().await.len(), 2);
    assert_eq!(b.ledger().await.len(), 2);
    a.assert_totals_match_ledger().await;
    let store = a.store().await;
    let sam: Decimal = store
        .query_one(
            "SELECT total_points FROM walpoints.user_epoch_points WHERE user_address = '0xsam'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sam, Decimal::new(4, 0), "2 points from each shard");

    // Tearing one source down keeps the other.
    drop(ra);
    let out = a.output(&["teardown", "--yes", "--drop-store"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a.ledger().await.is_empty());
    assert_eq!(b.ledger().await.len(), 2);
    b.assert_totals_match_ledger().await;
    drop(rb);
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_that_move_a_key_move_its_points_too() {
    let db = TestDb::exchange("daemon_key_moves").await;
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::set_up(&db, "keys");
    let running = wp.start();
    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO referral_relations VALUES ('0xann', '0xboss');
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (1, 'BTC-PERP', 100, 2, '0xann', '0xkim');
         -- default replica identity: these updates carry only the old key
         UPDATE trades SET id = 101 WHERE id = 1;
         UPDATE referral_relations SET referee_address = '0xbea' WHERE referee_address = '0xann';
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES (2, 'BTC-PERP', 100, 2, '0xann', '0xkim');",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    assert_eq!(
        wp.ledger().await,
        reference_ledger(&db, "wp_ref", RuleSet::default(), until).await
    );
    let store = wp.store().await;
    assert_eq!(
        points_of(&store, "0xann", "trading_taker", Some(1)).await,
        ["2.000000", "-2.000000 rev"],
        "the award under the old id is reversed ..."
    );
    assert_eq!(
        points_of(&store, "0xann", "trading_taker", Some(101)).await,
        ["2.000000"],
        "... and made again under the new one"
    );
    assert_eq!(
        points_of(&store, "0xboss", "referral_l1", Some(2)).await,
        Vec::<String>::new(),
        "0xann is no longer anyone's referee after her row became 0xbea's"
    );
    wp.assert_totals_match_ledger().await;
}
