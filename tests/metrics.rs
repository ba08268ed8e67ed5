//! The daemon's HTTP server as operators use it: `/metrics` parses as Prometheus text and its
//! counters match the store after a workload; `/healthz` answers while the process lives;
//! `/readyz` turns 503 when the source PostgreSQL stops and 200 again when it returns.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use walpoints::testing::StopMode;

use crate::support::daemon::{fence, Walpoints};
use crate::support::http::{get, get_json, http_addr};
use crate::support::{eventually, TestDb};

fn with_http<'a>(wp: Walpoints<'a>) -> Walpoints<'a> {
    wp.env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .env("WALPOINTS_HTTP_POLL_INTERVAL", "200ms")
}

async fn scrape(addr: &str) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a number: {other:?}"),
        })
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_match_the_store_after_a_workload() {
    let db = TestDb::exchange("http_metrics").await;
    let wp = with_http(Walpoints::new(&db, "metrics"));
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;

    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO referral_relations VALUES ('alice', 'carol'), ('selfish', 'selfish');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
           SELECT 'BTC', 100 + g % 7, 1 + g % 3, 'u' || (g % 13), 'alice' FROM generate_series(1, 150) g;
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
           VALUES ('ETH', 10, 5, 'dave', 'dave'), ('ETH', 10, 6, 'erin', 'erin');
         UPDATE trades SET price = price * 2 WHERE id = 3;
         DELETE FROM trades WHERE id = 4;
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
           VALUES ('BTC', -1, 1, 'bad', 'row');
         INSERT INTO positions (id, user_address, symbol, size, entry_price)
           VALUES ('00000000-0000-0000-0000-000000000001', 'bob', 'BTC', 2, 100);
         UPDATE positions SET status = 'closed', realized_pnl = 40
           WHERE id = '00000000-0000-0000-0000-000000000001';",
    )
    .await
    .unwrap();
    for i in 0..20 {
        ex.execute(
            "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) \
             VALUES ('SOL', 50, 1, 'carol', $1)",
            &[&format!("m{i}")],
        )
        .await
        .unwrap();
    }
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;

    let s = scrape(&addr).await;
    let store = wp.store().await;

    // Source transactions: the store counts every one since setup; so does this process.
    let transactions: i64 = store
        .query_one(
            "SELECT transactions FROM walpoints.checkpoint WHERE source_id = $1",
            &[&wp.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        value(&s, "walpoints_transactions_total", &[]),
        transactions as f64
    );
    assert_eq!(
        value(&s, "walpoints_checkpoint_lsn", &[]),
        wp.checkpoint().await.0 as f64
    );

    // Row changes by table and op, as the workload made them.
    for (table, op, n) in [
        ("trades", "insert", 150.0 + 2.0 + 1.0 + 20.0),
        ("trades", "update", 1.0),
        ("trades", "delete", 1.0),
        ("positions", "insert", 1.0),
        ("positions", "update", 1.0),
        ("referral_relations", "insert", 2.0),
    ] {
        assert_eq!(
            value(
                &s,
                "walpoints_changes_total",
                &[("table", table), ("op", op)]
            ),
            n,
            "{table} {op}"
        );
    }

    // Points by kind: awarded − reversed equals the ledger's sum; reversals really happened.
    let sums: HashMap<String, (Decimal, Decimal)> = store
        .query(
            "SELECT kind, sum(points) FILTER (WHERE points > 0), \
                    -sum(points) FILTER (WHERE points < 0) \
             FROM walpoints.ledger GROUP BY kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let z = |i| r.get::<_, Option<Decimal>>(i).unwrap_or_default();
            (r.get(0), (z(1), z(2)))
        })
        .collect();
    assert!(
        sums.len() >= 4,
        "trading, referral and pnl entries: {sums:?}"
    );
    for (kind, (plus, minus)) in &sums {
        let got_plus = value(&s, "walpoints_points_awarded_total", &[("kind", kind)]);
        let got_minus = value(&s, "walpoints_points_reversed_total", &[("kind", kind)]);
        assert!(
            close(got_plus, plus.to_f64().unwrap()),
            "{kind}: {got_plus} vs {plus}"
        );
        assert!(
            close(got_minus, minus.to_f64().unwrap()),
            "{kind}: {got_minus} vs {minus}"
        );
    }
    assert!(
        sums["trading_taker"].1 > Decimal::ZERO,
        "the update and delete reversed points"
    );

    // Dead letters by reason equal the table; rule rejections are counted by reason.
    let dead: Vec<(String, i64)> = store
        .query(
            "SELECT reason, count(*) FROM walpoints.dead_letter GROUP BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(dead, vec![("negative_price".to_owned(), 1)]);
    assert_eq!(
        value(
            &s,
            "walpoints_dead_letter_total",
            &[("reason", "negative_price")]
        ),
        1.0
    );
    assert_eq!(value(&s, "walpoints_dead_letter_total", &[]), 1.0);
    assert_eq!(
        value(&s, "walpoints_rejected_total", &[("reason", "self_trades")]),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "walpoints_rejected_total",
            &[("reason", "referral_rejected_self")]
        ),
        1.0
    );

    // Batches: a histogram of sizes and durations, one observation per store commit.
    let batches = value(&s, "walpoints_batch_size_count", &[]);
    assert!(batches >= 1.0);
    assert_eq!(
        value(&s, "walpoints_batch_duration_seconds_count", &[]),
        batches
    );
    assert_eq!(
        value(&s, "walpoints_batch_size_sum", &[]),
        value(&s, "walpoints_changes_total", &[])
    );
    assert_eq!(value(&s, "walpoints_reconnects_total", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "walpoints_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The slot poll fills the lag gauges.
    eventually("the slot gauges", Duration::from_secs(10), || async {
        let s = scrape(&addr).await;
        value(
            &s,
            "walpoints_slot_wal_status",
            &[("wal_status", "reserved")],
        ) == 1.0
            && value(&s, "walpoints_slot_active", &[]) == 1.0
    })
    .await;
    let s = scrape(&addr).await;
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "walpoints_slot_lag_bytes"));
    assert!(value(&s, "walpoints_replication_lag_seconds", &[]) >= 0.0);

    let (status, body) = get_json(&addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_json(&addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_source_is_down_and_recovers() {
    let db = TestDb::own_exchange("http_ready", &[]).await;
    let cluster = db.cluster();
    let wp = with_http(Walpoints::new(&db, "ready"));
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    let ready = |want: u16| {
        let addr = addr.clone();
        async move { get_json(&addr, "/readyz").await.0 == want }
    };
    eventually("ready", Duration::from_secs(20), || ready(200)).await;

    cluster.stop(StopMode::Fast).expect("stop the source");
    eventually("not ready", Duration::from_secs(20), || ready(503)).await;
    let (_, body) = get_json(&addr, "/readyz").await;
    assert_eq!(body["status"], "not ready");
    assert!(!body["reason"].as_str().unwrap().is_empty(), "{body}");
    let (status, _) = get_json(&addr, "/healthz").await;
    assert_eq!(status, 200, "alive while the source is away");

    cluster.start_again().expect("start the source again");
    eventually("ready again", Duration::from_secs(60), || ready(200)).await;
    let s = scrape(&addr).await;
    assert!(value(&s, "walpoints_reconnects_total", &[]) >= 1.0);
}
