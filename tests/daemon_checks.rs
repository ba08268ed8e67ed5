//! Every startup check of the daemon fires, with the message that tells the operator what
//! happened and what to do: a dropped, advanced or invalidated slot, a different cluster, a
//! missing table or column, `run` before `setup`; TRUNCATE under each policy, and `teardown`.
//! Each test has a database of its own, on a cluster of its own unless `WALPOINTS_TEST_PG_URL`
//! names a shared server (hence the distinct source ids).

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::daemon::{fence, Walpoints};
use crate::support::{assert_mentions, wait_failed, TestDb};

/// Runs `cmd` to completion, killing it (by its own pid) and failing the test if it takes
/// longer than `timeout`: a check that does not fire would otherwise leave `run` streaming.
fn finish(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walpoints");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for walpoints"),
        Err(_) => {
            // SAFETY: kill(2) with plain integers; the pid is our own, not yet reaped, child's.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let out = rx.recv().expect("walpoints' waiter").expect("wait");
            panic!(
                "walpoints did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `walpoints ARGS`, which must fail within 30 s; returns its stderr.
fn fails(wp: &Walpoints<'_>, args: &[&str]) -> String {
    let out = finish(wp.cmd(args), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "walpoints {args:?} succeeded; stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `walpoints ARGS`, which must succeed; returns its stdout.
fn succeeds(wp: &Walpoints<'_>, args: &[&str]) -> String {
    let out = finish(wp.cmd(args), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "walpoints {args:?} failed; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn insert_trade(client: &tokio_postgres::Client, id: i64) {
    client
        .execute(
            "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
             VALUES ($1, 'BTC-PERP', 100, 2, '0xtaker', '0xmaker')",
            &[&id],
        )
        .await
        .expect("insert a trade");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_slot_with_a_checkpoint_refuses_to_run() {
    let db = TestDb::exchange("chk_slot_missing").await;
    let wp = Walpoints::set_up(&db, "chk_gone");
    db.client()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&wp.slot()])
        .await
        .unwrap();
    let stderr = fails(&wp, &["run"]);
    assert_mentions(
        &stderr,
        &[&wp.slot(), "does not exist", "teardown --yes --drop-store"],
    );
    // setup, which re-checks an existing checkpoint, refuses too instead of starting over.
    let stderr = fails(&wp, &["setup"]);
    assert_mentions(&stderr, &["does not exist", "teardown --yes --drop-store"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_confirmed_past_the_checkpoint_refuses_to_run() {
    let db = TestDb::exchange("chk_slot_ahead").await;
    let wp = Walpoints::set_up(&db, "chk_ahead");
    let ex = db.client().await;
    for id in 1..=3 {
        insert_trade(&ex, id).await;
    }
    ex.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&wp.slot()],
    )
    .await
    .unwrap();
    let stderr = fails(&wp, &["run"]);
    assert_mentions(
        &stderr,
        &[
            "ahead of the store's checkpoint",
            "teardown --yes --drop-store",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalidated_slot_refuses_to_run() {
    // A cluster of its own: the setting must not touch a shared server.
    let db = TestDb::own_exchange("chk_slot_lost", &[("max_slot_wal_keep_size", "1MB")]).await;
    let wp = Walpoints::new(&db, "chk_lost");
    // walpoints streams a while, then is stopped cleanly.
    let mut running = wp.setup_and_stream().await;
    let ex = db.client().await;
    insert_trade(&ex, 1).await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(60), &running)
        .await;
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(60)).success());
    // Write WAL on a table nobody follows, segment after segment, while the slot is idle, until
    // a checkpoint invalidates the slot.
    ex.batch_execute("CREATE TABLE filler (x int)")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for _ in 0..3 {
            ex.batch_execute(
                "INSERT INTO filler SELECT generate_series(1, 1000); SELECT pg_switch_wal();",
            )
            .await
            .unwrap();
        }
        ex.batch_execute("CHECKPOINT").await.unwrap();
        let status: Option<String> = ex
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&wp.slot()],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot is still {status:?} after 15 s of WAL"
        );
    }
    let stderr = fails(&wp, &["run"]);
    assert_mentions(
        &stderr,
        &[
            "wal_status = lost",
            "max_slot_wal_keep_size",
            "teardown --yes --drop-store",
            "walpoints setup",
        ],
    );
    // `status` shows the slot lost and exits 1, in text and in JSON.
    let out = finish(wp.cmd(&["status"]), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let wal_status = text
        .lines()
        .find(|l| l.starts_with("wal_status"))
        .unwrap_or_else(|| panic!("no wal_status row:\n{text}"));
    assert!(wal_status.ends_with(" lost"), "{wal_status}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains("is lost")),
        "{text}"
    );
    let out = finish(wp.cmd(&["status", "--json"]), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["healthy"], false, "{json}");
    assert_eq!(json["sources"][0]["slot"]["wal_status"], "lost", "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_cluster_refuses_to_run() {
    let db = TestDb::exchange("chk_system_id").await;
    let wp = Walpoints::set_up(&db, "chk_sysid");
    let n = wp
        .store()
        .await
        .execute(
            "UPDATE walpoints.checkpoint SET system_id = '1' WHERE source_id = $1",
            &[&wp.id],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let stderr = fails(&wp, &["run"]);
    assert_mentions(&stderr, &["system identifier", "set up against 1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_slot_refuses_to_run() {
    let db = TestDb::exchange("chk_slot_renamed").await;
    let wp = Walpoints::set_up(&db, "chk_renamed_slot");
    let other = Walpoints::new(&db, "chk_renamed_slot").env("WALPOINTS_SOURCE_SLOT", "wp_other");
    let stderr = fails(&other, &["run"]);
    assert_mentions(
        &stderr,
        &[
            &format!("set up with the slot \"{}\"", wp.slot()),
            "wp_other",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_table_fails_setup() {
    let db = TestDb::exchange("chk_table_missing").await;
    let wp = Walpoints::new(&db, "chk_notable").env("WALPOINTS_TABLES_TRADES", "public.nope");
    let stderr = fails(&wp, &["setup"]);
    assert_mentions(
        &stderr,
        &["public", "nope", "does not exist", "tables.trades"],
    );
    // Nothing was created on the source.
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
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_mapped_column_fails_setup_and_run() {
    let db = TestDb::exchange("chk_column_missing").await;

    // Misconfigured: trades has no column px.
    let bad = Walpoints::new(&db, "chk_nocol").env("WALPOINTS_COLUMNS_TRADES_PRICE", "px");
    let stderr = fails(&bad, &["setup"]);
    assert_mentions(&stderr, &["trades", "no column px"]);

    // Set up fine, then the column is renamed under it: run refuses at startup.
    let wp = Walpoints::set_up(&db, "chk_renamed");
    let ex = db.client().await;
    ex.batch_execute("ALTER TABLE trades RENAME COLUMN price TO px")
        .await
        .unwrap();
    let stderr = fails(&wp, &["run"]);
    assert_mentions(&stderr, &["trades", "no column price"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapped_column_of_a_type_walpoints_cannot_read_fails_setup_and_run() {
    let db = TestDb::exchange("chk_column_type").await;
    let ex = db.client().await;

    // A money price: every row would be dead-lettered, so setup refuses, naming the column.
    ex.batch_execute("ALTER TABLE trades ALTER COLUMN price TYPE money")
        .await
        .unwrap();
    let bad = Walpoints::new(&db, "chk_money");
    let stderr = fails(&bad, &["setup"]);
    assert_mentions(
        &stderr,
        &[
            "public.trades.price",
            "of type money",
            "columns.trades_price",
            "numeric, float4, float8, int2, int4, int8",
        ],
    );
    // Floats and integers are accepted.
    ex.batch_execute(
        "ALTER TABLE trades ALTER COLUMN price TYPE double precision USING price::numeric;
         ALTER TABLE trades ALTER COLUMN amount TYPE bigint;",
    )
    .await
    .unwrap();
    let wp = Walpoints::set_up(&db, "chk_coltype");

    // Set up fine, then a price becomes text under it: run refuses at startup.
    ex.batch_execute("ALTER TABLE positions ALTER COLUMN entry_price TYPE text")
        .await
        .unwrap();
    let stderr = fails(&wp, &["run"]);
    assert_mentions(
        &stderr,
        &[
            "public.positions.entry_price",
            "of type text",
            "columns.positions_entry_price",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_dropped_while_streaming_stops_the_daemon() {
    let db = TestDb::exchange("chk_column_dropped").await;
    let wp = Walpoints::new(&db, "chk_dropcol");
    let mut running = wp.setup_and_stream().await;
    let ex = db.client().await;
    insert_trade(&ex, 1).await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    ex.batch_execute("ALTER TABLE trades DROP COLUMN symbol")
        .await
        .unwrap();
    ex.execute(
        "INSERT INTO trades (id, price, amount, taker_address, maker_address)
         VALUES (2, 100, 1, '0xa', '0xb')",
        &[],
    )
    .await
    .unwrap();
    let stderr = wait_failed(&mut running);
    assert_mentions(
        &stderr,
        &["public.trades", "no column symbol", "columns.trades_symbol"],
    );
    // Nothing of the insert after the drop was written.
    let after: i64 = wp
        .store()
        .await
        .query_one(
            "SELECT count(*) FROM walpoints.ledger WHERE trade_id = '2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_before_setup_on_a_shared_store_says_to_run_setup() {
    let db = TestDb::exchange("chk_not_set_up").await;
    // A store that already serves another source, but not this one.
    let other = Walpoints::set_up(&db, "chk_other");
    let wp = Walpoints::new(&db, "chk_fresh").sharing_store_of(&other);
    let stderr = fails(&wp, &["run"]);
    assert_mentions(&stderr, &["chk_fresh", "run `walpoints setup` first"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_before_setup_without_a_store_database_says_to_run_setup() {
    let db = TestDb::exchange("chk_no_store").await;
    // The store database does not exist yet (setup creates it): that is "not set up" too, not
    // a connection failure.
    let wp = Walpoints::new(&db, "chk_nostore");
    let stderr = fails(&wp, &["run"]);
    assert_mentions(&stderr, &["chk_nostore", "run `walpoints setup` first"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_stops_the_daemon_by_default() {
    let db = TestDb::exchange("chk_truncate_stop").await;
    let wp = Walpoints::new(&db, "chk_trstop");
    let mut running = wp.setup_and_stream().await;
    let ex = db.client().await;
    insert_trade(&ex, 1).await;
    ex.batch_execute("TRUNCATE trades").await.unwrap();
    insert_trade(&ex, 2).await;
    let stderr = wait_failed(&mut running);
    assert_mentions(&stderr, &["public.trades", "TRUNCATE", "truncate.policy"]);
    // The trade before the TRUNCATE may be in the store; nothing after it is.
    let after: i64 = wp
        .store()
        .await
        .query_one(
            "SELECT count(*) FROM walpoints.ledger WHERE trade_id = '2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 0);
    // And it stays stopped: a restart meets the same TRUNCATE.
    let stderr = fails(&wp, &["run"]);
    assert_mentions(&stderr, &["TRUNCATE"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_is_ignored_when_the_policy_says_so() {
    let db = TestDb::exchange("chk_truncate_ignore").await;
    let wp = Walpoints::new(&db, "chk_trignore").env("WALPOINTS_TRUNCATE_POLICY", "ignore");
    let mut running = wp.setup_and_stream().await;
    let ex = db.client().await;
    insert_trade(&ex, 1).await;
    ex.batch_execute("TRUNCATE trades").await.unwrap();
    insert_trade(&ex, 2).await;
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon stopped; stderr:\n{}",
        running.stderr()
    );
    let store = wp.store().await;
    let rows = |trade: &'static str| {
        let store = &store;
        async move {
            store
                .query_one(
                    "SELECT count(*) FROM walpoints.ledger WHERE trade_id = $1 AND NOT reversal",
                    &[&trade],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        rows("1").await,
        2,
        "taker and maker points before the TRUNCATE"
    );
    assert_eq!(
        rows("2").await,
        2,
        "taker and maker points after the TRUNCATE"
    );
    let reversals: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger WHERE reversal", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reversals, 0, "what was awarded stays awarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn teardown_needs_yes_and_drops_slot_publication_and_store() {
    let db = TestDb::exchange("chk_teardown").await;
    let wp = Walpoints::set_up(&db, "chk_td");
    let src = db.client().await;
    let publication = format!("wp_pub_{}", wp.id);
    let objects = || async {
        let slots: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&wp.slot()],
            )
            .await
            .unwrap()
            .get(0);
        let pubs: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .unwrap()
            .get(0);
        (slots, pubs)
    };
    let checkpoint_rows = || async {
        let store = wp.store().await;
        let schema: bool = store
            .query_one(
                "SELECT to_regclass('walpoints.checkpoint') IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !schema {
            return 0;
        }
        store
            .query_one(
                "SELECT count(*) FROM walpoints.checkpoint WHERE source_id = $1",
                &[&wp.id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(objects().await, (1, 1));

    // Without --yes: refused, nothing dropped.
    let stderr = fails(&wp, &["teardown"]);
    assert_mentions(&stderr, &["--yes", &wp.slot(), &publication]);
    assert_eq!(objects().await, (1, 1));
    let stderr = fails(&wp, &["teardown", "--drop-store"]);
    assert_mentions(&stderr, &["--yes"]);
    assert_eq!(checkpoint_rows().await, 1);

    // --yes: slot and publication dropped, the store kept.
    let out = succeeds(&wp, &["teardown", "--yes"]);
    assert!(out.contains("the store is kept"), "{out}");
    assert_eq!(objects().await, (0, 0));
    assert_eq!(checkpoint_rows().await, 1);
    // The kept checkpoint now has no slot: setup refuses to paper over it.
    let stderr = fails(&wp, &["setup"]);
    assert_mentions(&stderr, &["does not exist", "teardown --yes --drop-store"]);

    // --yes --drop-store (slot and publication already gone: still fine) deletes the source's
    // rows, and setup starts over.
    let out = succeeds(&wp, &["teardown", "--yes", "--drop-store"]);
    assert!(out.contains("deleted the source's rows"), "{out}");
    assert_eq!(objects().await, (0, 0));
    assert_eq!(checkpoint_rows().await, 0);
    let out = wp.setup();
    assert!(out.starts_with("set up"), "{out}");
    assert_eq!(objects().await, (1, 1));
    assert_eq!(checkpoint_rows().await, 1);
}
