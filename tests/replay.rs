//! `walpoints replay --verify`: the journal run through the engine again equals the stored
//! ledger and totals (exit 0), a hand edit of one ledger row or of one total is named (exit 1),
//! and a store made by the release before the journal upgrades in place keeping its figures,
//! with replay saying where its journal begins (exit 2).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::daemon::{fence, workload, Walpoints};
use crate::support::TestDb;

/// `replay --verify`: (exit code, stdout, stderr).
pub fn replay(wp: &Walpoints<'_>) -> (Option<i32>, String, String) {
    let out = wp.output(&["replay", "--verify"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_equals_the_store_and_names_a_hand_edited_ledger_row_and_total() {
    let db = TestDb::exchange("replay_edit").await;
    let wp = Walpoints::new(&db, "re");
    let mut running = wp.setup_and_stream().await;
    workload(db.url.clone(), 1, 3_000, 50).await;
    let ex = db.client().await;
    // Corrections, deletes, a re-tiering correction and a key move: the award book at work.
    ex.batch_execute(
        "UPDATE trades SET amount = amount * 3 WHERE id % 17 = 0;
         DELETE FROM trades WHERE id % 29 = 0;
         UPDATE trades SET taker_address = maker_address WHERE id % 101 = 0;
         UPDATE trades SET id = id + 1000000 WHERE id % 211 = 0;",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;

    // While `run` still streams.
    let (code, stdout, stderr) = replay(&wp);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("the store equals the replay"), "{stdout}");
    assert!(stderr.contains("replay: "), "no summary line: {stderr}");
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(10)).success());

    let store = wp.store().await;
    // One fill's taker points, by hand.
    let taker: String = store
        .query_one(
            "UPDATE walpoints.ledger_fill SET taker_points = taker_points + 1
             WHERE (commit_lsn, ordinal) = (SELECT commit_lsn, ordinal FROM walpoints.ledger_fill
                 WHERE notional IS NOT NULL AND NOT reversal ORDER BY commit_lsn, ordinal LIMIT 1)
             RETURNING taker",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (code, stdout, _) = replay(&wp);
    assert_eq!(code, Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("difference:"))
        .unwrap_or_else(|| panic!("no difference listed: {stdout}"));
    assert!(
        line.contains(&format!("user {taker} ")) && line.contains(" points: stored "),
        "{line}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("difference:"))
            .count(),
        1,
        "only the edited entry differs: {stdout}"
    );
    store
        .execute(
            "UPDATE walpoints.ledger_fill SET taker_points = taker_points - 1
             WHERE (commit_lsn, ordinal) = (SELECT commit_lsn, ordinal FROM walpoints.ledger_fill
                 WHERE notional IS NOT NULL AND NOT reversal ORDER BY commit_lsn, ordinal LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(replay(&wp).0, Some(0));

    // One total, by hand.
    let (user, epoch): (String, i32) = {
        let r = store
            .query_one(
                "UPDATE walpoints.user_epoch_points SET holding_points = holding_points + 0.000001
                 WHERE (user_address, epoch) = (SELECT user_address, epoch
                     FROM walpoints.user_epoch_points ORDER BY total_points DESC LIMIT 1)
                 RETURNING user_address, epoch",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (code, stdout, _) = replay(&wp);
    assert_eq!(code, Some(1), "{stdout}");
    let expected = format!("difference: user {user} epoch {epoch} total holding_points: stored ");
    assert!(stdout.contains(&expected), "{stdout}");
}

/// The schema the release before the journal made: migrations 0001 and 0002, recorded.
async fn make_0002_store(store: &tokio_postgres::Client) {
    let files = [
        (
            1,
            "0001_init.sql",
            include_str!("../migrations/0001_init.sql"),
        ),
        (
            2,
            "0002_referrer_index.sql",
            include_str!("../migrations/0002_referrer_index.sql"),
        ),
    ];
    store
        .batch_execute(
            "DROP SCHEMA IF EXISTS walpoints CASCADE; CREATE SCHEMA walpoints;
             CREATE TABLE walpoints.migrations (version integer PRIMARY KEY, name text NOT NULL,
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .unwrap();
    for (version, name, sql) in files {
        store.batch_execute(sql).await.unwrap();
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        store
            .execute(
                "INSERT INTO walpoints.migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&version, &name, &checksum],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_made_by_migration_0002_upgrades_in_place_and_keeps_its_figures() {
    let db = TestDb::exchange("replay_upgrade").await;
    let ex = db.client().await;
    // A fill the old release awarded: in the exchange before setup, so the new release never
    // sees its insert, only the correction below.
    ex.batch_execute(
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address, created_at)
         VALUES (7, 'BTC-PERP', 100, 2, '0xold_taker', '0xold_maker', now())",
    )
    .await
    .unwrap();
    let wp = Walpoints::new(&db, "up");
    wp.setup();
    let store = wp.store().await;
    let cp = store
        .query_one(
            "SELECT slot_name, publication, system_id, consistent_point::text, snapshot_time,
                    lsn::text, commit_time, stream_time, transactions, rules_version
             FROM walpoints.checkpoint",
            &[],
        )
        .await
        .unwrap();
    let version: String = cp.get(9);
    let created: std::time::SystemTime = ex
        .query_one("SELECT created_at FROM trades WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    let epoch = current_epoch(created);

    // What the old release would have stored for fill 7 (200 notional, default rates).
    make_0002_store(&store).await;
    store
        .execute(
            "INSERT INTO walpoints.checkpoint (source_id, slot_name, publication, system_id,
                 consistent_point, snapshot_time, lsn, commit_time, stream_time, transactions,
                 rules_version)
             VALUES ('up', $1, $2, $3, $4::text::pg_lsn, $5, $6::text::pg_lsn, $7, $8, $9, $10)",
            &[
                &cp.get::<_, String>(0),
                &cp.get::<_, String>(1),
                &cp.get::<_, String>(2),
                &cp.get::<_, String>(3),
                &cp.get::<_, std::time::SystemTime>(4),
                &cp.get::<_, String>(5),
                &cp.get::<_, std::time::SystemTime>(6),
                &cp.get::<_, Option<i64>>(7),
                &cp.get::<_, i64>(8),
                &version,
            ],
        )
        .await
        .unwrap();
    let micros = created
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let award = serde_json::json!({
        "trade": {"price": "100", "amount": "2", "taker": "0xold_taker", "maker": "0xold_maker",
                  "time": micros},
        "volume": {"epoch": epoch, "notional": "200"},
        "entries": [
            {"user": "0xold_taker", "epoch": epoch, "kind": "trading_taker", "points": "2",
             "basis": "200", "multiplier": "1", "rate": "0.01", "referee": null},
            {"user": "0xold_maker", "epoch": epoch, "kind": "trading_maker", "points": "1",
             "basis": "200", "multiplier": "1", "rate": "0.005", "referee": null}
        ]
    });
    store
        .execute(
            "INSERT INTO walpoints.trade_award VALUES ('up', '7', $1)",
            &[&award.to_string()],
        )
        .await
        .unwrap();
    store
        .batch_execute(&format!(
            "INSERT INTO walpoints.ledger VALUES
               ('up', '0/1000', 0, '0xold_taker', {epoch}, 'trading_taker', false, 2, 200, 1,
                0.01, NULL, '7', NULL, NULL, NULL, now(), now(), '{version}'),
               ('up', '0/1000', 1, '0xold_maker', {epoch}, 'trading_maker', false, 1, 200, 1,
                0.005, NULL, '7', NULL, NULL, NULL, now(), now(), '{version}');
             INSERT INTO walpoints.user_epoch_points (user_address, epoch, trading_points,
                 total_points, trading_volume)
             VALUES ('0xold_taker', {epoch}, 2, 2, 200), ('0xold_maker', {epoch}, 1, 1, 200);
             INSERT INTO walpoints.state_volume VALUES
               ('up', '0xold_taker', {epoch}, 200), ('up', '0xold_maker', {epoch}, 200);"
        ))
        .await
        .unwrap();
    let before = wp.ledger().await;
    assert_eq!(before.len(), 2);

    // The new release upgrades the store at `run` and corrects the old fill from its old award.
    let running = wp.start();
    ex.batch_execute("UPDATE trades SET amount = 4 WHERE id = 7")
        .await
        .unwrap();
    workload(db.url.clone(), 100, 500, 50).await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;

    let after = wp.ledger().await;
    assert_eq!(&after[..2], &before[..], "the old ledger stays as it was");
    let net: (i64, rust_decimal::Decimal) = {
        let r = store
            .query_one(
                "SELECT count(*), sum(points) FROM walpoints.ledger
                 WHERE trade_id = '7' AND user_address = '0xold_taker'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Awarded 2, reversed −2, re-awarded 4 for the doubled amount.
    assert_eq!(net.0, 3, "{after:?}");
    assert_eq!(net.1, "4".parse().unwrap());
    wp.assert_totals_match_ledger().await;
    let from: String = store
        .query_one("SELECT journal_from::text FROM walpoints.checkpoint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(from, cp.get::<_, String>(5));

    let (code, stdout, stderr) = replay(&wp);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "the journal is complete only from checkpoint {from}"
        )),
        "{stderr}"
    );
}

/// The epoch of `t` under the default rules (genesis 2026-01-05, weekly).
fn current_epoch(t: std::time::SystemTime) -> i32 {
    let genesis = 1_767_571_200i64;
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    ((secs - genesis) / (7 * 24 * 3600)) as i32
}
