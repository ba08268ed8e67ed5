//! `walpoints status`: slot lag that grows while the daemon is stopped and the exchange trades,
//! drops once it runs again, and an exit code that follows the thresholds (a cron or
//! Kubernetes probe).

use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{fence, Walpoints};
use crate::support::{eventually, TestDb};

/// `status --json ARGS` → (exit code, the report).
fn status(wp: &Walpoints<'_>, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let out = wp.output(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn lag_bytes(report: &Value) -> i64 {
    report["sources"][0]["lag_bytes"]
        .as_i64()
        .unwrap_or_else(|| panic!("no lag_bytes in {report:#}"))
}

async fn trade(db: &TestDb, n: i64) {
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) \
             SELECT 'BTC', 100, 1, 'u' || (g % 50), 'u' || ((g + 1) % 50) \
             FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_while_stopped_and_drops_after_a_restart() {
    let db = TestDb::exchange("status_lag").await;
    let wp = Walpoints::new(&db, "status_lag");
    let mut running = wp.setup_and_stream().await;
    trade(&db, 100).await;
    let ex = db.client().await;
    wp.wait_for(fence(&ex).await, Duration::from_secs(30), &running)
        .await;

    let (code, healthy) = status(&wp, &[]);
    assert_eq!(code, 0, "{healthy:#}");
    let s = &healthy["sources"][0];
    assert_eq!(s["slot"]["slot_name"], wp.slot());
    assert_eq!(s["slot"]["active"], true);
    assert!(s["slot"]["active_pid"].as_i64().unwrap() > 0, "{s:#}");
    assert_eq!(s["slot"]["wal_status"], "reserved");
    assert_eq!(s["dead_letters"], 0);
    assert_eq!(
        s["checkpoint_lsn"].as_str().unwrap(),
        wp.checkpoint().await.to_string()
    );
    assert!(s["checkpoint_commit_time"].as_str().unwrap().ends_with('Z'));
    assert!(healthy["healthy"].as_bool().unwrap());

    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(30)).success());
    let (_, stopped) = status(&wp, &[]);
    let before = lag_bytes(&stopped);
    assert_eq!(stopped["sources"][0]["slot"]["active"], false);

    trade(&db, 5_000).await;
    let (_, one) = status(&wp, &[]);
    trade(&db, 5_000).await;
    let (_, two) = status(&wp, &[]);
    let (l1, l2) = (lag_bytes(&one), lag_bytes(&two));
    assert!(
        before < l1 && l1 < l2 && l2 > 500_000,
        "lag should grow while walpoints is stopped: {before} -> {l1} -> {l2}"
    );
    let lag_seconds = |r: &Value| r["sources"][0]["lag_seconds"].as_f64().unwrap();
    assert!(lag_seconds(&two) >= lag_seconds(&one));

    // The exit code follows the thresholds.
    let (code, over) = status(&wp, &["--max-lag-bytes", &(l2 / 2).to_string()]);
    assert_eq!(code, 1, "{over:#}");
    assert!(!over["healthy"].as_bool().unwrap());
    assert!(
        over["sources"][0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("--max-lag-bytes"),
        "{over:#}"
    );
    let (code, _) = status(&wp, &["--max-lag-bytes", &(l2 * 4).to_string()]);
    assert_eq!(code, 0);
    let (code, _) = status(&wp, &["--max-lag-seconds", "0.000001"]);
    assert_eq!(code, 1, "the last commit is older than a microsecond");
    let (code, _) = status(&wp, &["--max-lag-seconds", "3600"]);
    assert_eq!(code, 0);

    // Running again, walpoints catches up and the lag falls to (near) zero. The store shares
    // the server, so its own writes follow the last trade in the WAL: the heartbeat (on by
    // default, short here) is what carries the slot past them.
    let wp = wp.env("WALPOINTS_HEARTBEAT_INTERVAL", "200ms");
    let running = wp.start();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;
    eventually(
        "the slot's lag to drop",
        Duration::from_secs(20),
        || async {
            let (code, report) = status(&wp, &["--max-lag-bytes", "65536"]);
            code == 0 && lag_bytes(&report) < 65_536
        },
    )
    .await;

    // The human table says the same.
    let table = wp.output(&["status"]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    for field in [
        "slot",
        "confirmed_flush_lsn",
        "wal_status",
        "checkpoint",
        "healthy",
    ] {
        assert!(table.contains(field), "{field} missing from:\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_slot_or_store_makes_status_fail() {
    let db = TestDb::exchange("status_missing").await;
    let wp = Walpoints::new(&db, "status_missing");

    // Before setup: no slot, no store.
    let (code, report) = status(&wp, &[]);
    assert_eq!(code, 1, "{report:#}");
    let problems = report["sources"][0]["problems"].to_string();
    assert!(problems.contains("does not exist"), "{problems}");
    assert!(problems.contains("walpoints setup"), "{problems}");
    assert_eq!(report["sources"][0]["slot"]["wal_status"], Value::Null);

    wp.setup();
    let (code, report) = status(&wp, &[]);
    assert_eq!(code, 0, "{report:#}");

    // The slot dropped behind walpoints' back.
    db.client()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&wp.slot()])
        .await
        .unwrap();
    let (code, report) = status(&wp, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert!(report["sources"][0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let table = String::from_utf8_lossy(&wp.output(&["status"]).stdout).into_owned();
    assert!(table.contains("missing"), "{table}");
}
