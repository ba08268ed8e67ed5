//! `walpoints verify`: after a workload streamed by the daemon it finds the store equal to what
//! plain SQL recomputes from the business tables (exit 0), and when a row of the store is
//! tampered with it names the user, the epoch and what differs (exit 1). Each test has a
//! cluster, a source and a store of its own; verify runs while the daemon streams.

use std::io::Write;
use std::process::Output;
use std::time::Duration;

use crate::support::daemon::{fence, Walpoints};
use crate::support::{Running, TestDb};

/// Rules that make the workload exercise every eligibility rule verify recomputes.
const RULES: &str = "excluded_addresses = [\"0xLIQ\"]\n";

/// A config file with [`RULES`], and the daemon streaming a workload into the store.
struct Streamed<'a> {
    wp: Walpoints<'a>,
    _running: Running,
    _config: tempfile::NamedTempFile,
}

/// A config file holding [`RULES`].
fn rules_file() -> tempfile::NamedTempFile {
    let mut config = tempfile::NamedTempFile::new().expect("a config file");
    config.write_all(RULES.as_bytes()).unwrap();
    config
}

/// Sets the source up, starts the daemon, runs the workload and waits until it is in the store.
async fn stream(wp: &Walpoints<'_>, db: &TestDb) -> Running {
    let mut running = wp.setup_and_stream().await;
    workload(db).await;
    let end = fence(&db.client().await).await;
    wp.wait_for(end, Duration::from_secs(30), &running).await;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon stopped: {}",
        running.stderr()
    );
    running
}

/// Source `id` on `db` (which has the exchange's tables) with `env` and the config file of
/// [`RULES`], [`stream`]ed.
async fn streamed<'a>(db: &'a TestDb, id: &str, env: &[(&str, &str)]) -> Streamed<'a> {
    let config = rules_file();
    let mut wp = Walpoints::new(db, id).env("WALPOINTS_CONFIG", config.path().to_str().unwrap());
    for (k, v) in env {
        wp = wp.env(k, v);
    }
    let running = stream(&wp, db).await;
    Streamed {
        wp,
        _running: running,
        _config: config,
    }
}

/// Fills that count and fills that do not (self-trade, below the minimum, an excluded
/// address, deleted), a correction, and positions opened, resized and closed in profit and at
/// a loss; one transaction per statement, so that positions are held for a while.
async fn workload(db: &TestDb) {
    let ex = db.client().await;
    for sql in [
        "INSERT INTO referral_relations VALUES ('0xbob', '0xalice')",
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address) VALUES
           (1, 'BTC-PERP', 100, 2, '0xBOB', '0xcarol'),
           (2, 'BTC-PERP', 100, 5, '0xdave', '0xDAVE'),
           (3, 'ETH-PERP', 1500, 100, '0xbob', '0xdan'),
           (4, 'ETH-PERP', 1, 5, '0xbob', '0xdan'),
           (5, 'SOL-PERP', 150, -3, '0xliq', '0xbob'),
           (6, 'SOL-PERP', 150, 3, '0xcarol', '0xdan')",
        "UPDATE trades SET price = 110 WHERE id = 1",
        "DELETE FROM trades WHERE id = 6",
        "INSERT INTO positions (id, user_address, symbol, size, entry_price) VALUES
           ('00000000-0000-0000-0000-000000000001', '0xbob', 'BTC-PERP', 2, 100),
           ('00000000-0000-0000-0000-000000000002', '0xcarol', 'BTC-PERP', -1, 200),
           ('00000000-0000-0000-0000-000000000003', '0xdan', 'BTC-PERP', 0.01, 100)",
        "SELECT pg_sleep(0.05)",
        "UPDATE positions SET size = 3 WHERE id = '00000000-0000-0000-0000-000000000001'",
        "SELECT pg_sleep(0.05)",
        "UPDATE positions SET status = 'closed', realized_pnl = 123.456789
         WHERE id = '00000000-0000-0000-0000-000000000001'",
        "UPDATE positions SET status = 'closed', realized_pnl = -50
         WHERE id = '00000000-0000-0000-0000-000000000002'",
        "UPDATE positions SET status = 'closed', realized_pnl = 5
         WHERE id = '00000000-0000-0000-0000-000000000003'",
    ] {
        ex.batch_execute(sql).await.expect(sql);
    }
}

fn verify(wp: &Walpoints<'_>) -> (Output, String) {
    let out = wp.output(&["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The epoch every fill of the workload is in: the store's only one.
async fn the_epoch(wp: &Walpoints<'_>) -> i32 {
    wp.store()
        .await
        .query_one(
            "SELECT DISTINCT epoch FROM walpoints.user_epoch_points",
            &[],
        )
        .await
        .expect("one epoch")
        .get(0)
}

/// The row of verify's difference table for `user`, as whitespace-separated cells.
fn row_of<'s>(stdout: &'s str, user: &str) -> Vec<&'s str> {
    stdout
        .lines()
        .find(|l| l.starts_with(user))
        .unwrap_or_else(|| panic!("no difference for {user} in:\n{stdout}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_workload_the_store_matches_the_business_tables() {
    let db = TestDb::exchange("verify_clean").await;
    let s = streamed(&db, "vclean", &[]).await;
    let (out, stdout) = verify(&s.wp);
    assert!(
        out.status.success(),
        "verify failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK: no differences"), "{stdout}");
    // Trades 1 (corrected) and 3 count; the self-trade, the dust fill, the excluded address
    // and the deleted trade do not.
    assert!(stdout.contains("trading: 2 eligible fills"), "{stdout}");
    // bob's (seen open) and dan's (below the holding minimum, but paid): compared; carol's
    // loss earns nothing.
    assert!(
        stdout.contains("pnl: 2 positions closed in profit compared"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_volume_is_named_with_its_user_and_epoch() {
    let db = TestDb::exchange("verify_volume").await;
    let s = streamed(&db, "vvolume", &[]).await;
    let epoch = the_epoch(&s.wp).await;
    let changed =
        s.wp.store()
            .await
            .execute(
                "UPDATE walpoints.user_epoch_points SET trading_volume = trading_volume + 1
             WHERE user_address = '0xbob' AND epoch = $1",
                &[&epoch],
            )
            .await
            .unwrap();
    assert_eq!(changed, 1);
    let (out, stdout) = verify(&s.wp);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // bob: 2 × 110 (corrected trade 1) + 150,000 (trade 3).
    assert_eq!(
        row_of(&stdout, "0xbob"),
        [
            "0xbob",
            &epoch.to_string(),
            "trading",
            "volume",
            "150221",
            "150220"
        ]
    );
    assert!(
        stdout.contains("DIFFERENT: 1 difference(s)"),
        "only bob's volume: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_pnl_entry_is_named_with_its_user_and_epoch() {
    let db = TestDb::exchange("verify_pnl").await;
    let s = streamed(&db, "vpnl", &[]).await;
    let epoch = the_epoch(&s.wp).await;
    let deleted = s
        .wp
        .store()
        .await
        .execute(
            "DELETE FROM walpoints.ledger_position WHERE kind = 'pnl' AND user_address = '0xbob'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let (out, stdout) = verify(&s.wp);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // 123.456789 × 5 % = 6.17283945 → 6.172839
    let row = row_of(&stdout, "0xbob");
    assert_eq!(row[1], epoch.to_string(), "{stdout}");
    assert!(
        row.join(" ").contains(
            "pnl points, position 00000000-0000-0000-0000-000000000001 0 (not paid) 6.172839"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_trade_time_column_the_trading_checks_are_skipped_and_said_so() {
    let db = TestDb::exchange("verify_no_time").await;
    let s = streamed(&db, "vnotime", &[("WALPOINTS_COLUMNS_TRADES_TIME", "")]).await;
    let (out, stdout) = verify(&s.wp);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("trading: NOT CHECKED: columns.trades_time is empty"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pnl: 2 positions closed in profit compared"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_sharing_a_store_each_verify_their_own_share() {
    let db = TestDb::exchange("verify_shards").await;
    let db_b = db.sibling("b").await;
    db_b.create_exchange_schema().await;
    let config = rules_file();
    let path = config.path().to_str().unwrap().to_owned();
    let a = Walpoints::new(&db, "sha").env("WALPOINTS_CONFIG", &path);
    let b = Walpoints::new(&db_b, "shb")
        .sharing_store_of(&a)
        .env("WALPOINTS_CONFIG", &path);
    // The same users trade on both shards: their totals in the store are the sums.
    let _running_a = stream(&a, &db).await;
    let _running_b = stream(&b, &db_b).await;
    for wp in [&a, &b] {
        let (out, stdout) = verify(wp);
        assert!(out.status.success(), "source {}: {stdout}", wp.id);
        assert!(stdout.contains("OK: no differences"), "{stdout}");
    }
}
