//! The points API answers a known workload with the expected JSON, field by field, and refuses
//! bad input with 400.
//!
//! The workload (default rules: taker 0.01, maker 0.005 per unit of notional, referrer 10 % of
//! the referee's trading points, tier 1 from 100,000 of epoch volume; `liq` excluded):
//!
//! | trade | taker | maker | notional | points |
//! |---|---|---|---|---|
//! | 1 | alice | bob | 1,000 | alice 10, bob 5, carol 1 (referral of alice's) |
//! | 2 | carol | alice | 1,000 | carol 10, alice 5, carol 0.5 (referral) |
//! | 3 | dave | dave | 500 | nothing (self-trade) |
//! | 4 | eve | frank | 500 | eve 5, frank 2.5 |
//! | 5 | liq | dave | 1,000 | nothing (excluded address) |
//!
//! Totals: alice 15, carol 11.5, bob 5, eve 5, frank 2.5: ranks 1, 2, 3, 3, 5.

use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::daemon::{fence, Walpoints};
use crate::support::http::{get_json, http_addr, raw};
use crate::support::{Running, TestDb};

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a decimal string"))
        .parse()
        .unwrap()
}

/// Asserts the decimal strings of `got` equal `want` by value ("15.000000" == 15).
fn assert_points(got: &Value, want: [(&str, &str); 5]) {
    for (k, v) in want {
        assert_eq!(dec(&got[k]), v.parse::<Decimal>().unwrap(), "{k} in {got}");
    }
}

fn current_epoch() -> u64 {
    let genesis = chrono::DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z").unwrap();
    ((chrono::Utc::now().timestamp() - genesis.timestamp()) / (7 * 86_400)) as u64
}

struct Api {
    addr: String,
    _running: Running,
}

/// Source `source` on `db` with `excluded` as its one excluded address and its HTTP server on
/// a free port.
fn serving<'a>(db: &'a TestDb, source: &str, excluded: &str) -> Walpoints<'a> {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("excluded_addresses = [\"{excluded}\"]\n"),
    )
    .unwrap();
    let path = config.into_temp_path().keep().unwrap();
    Walpoints::new(db, source)
        .env("WALPOINTS_CONFIG", path.to_str().unwrap())
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
}

/// Source `api` on `db` (an exchange) with `liq` excluded and its HTTP server on, once the
/// module's workload is in its store.
async fn start(db: &TestDb) -> (Walpoints<'_>, Api) {
    let wp = serving(db, "api", "LIQ");
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO referral_relations (referee_address, referrer_address) VALUES ('alice', 'carol');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('BTC', 100, 10, 'alice', 'bob');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('ETH', 200, 5, 'carol', 'alice');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('ETH', 50, 10, 'dave', 'dave'),
           ('SOL', 50, 10, 'Eve', 'frank'),
           ('BTC', 100, 10, 'liq', 'dave');",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    (
        wp,
        Api {
            addr,
            _running: running,
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_endpoint_answers_the_known_workload() {
    let db = TestDb::exchange("api_known").await;
    let (wp, api) = start(&db).await;
    let epoch = current_epoch();
    let store = wp.store().await;
    let as_of: String = store
        .query_one(
            "SELECT to_char(commit_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM walpoints.checkpoint",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // GET /v1/epochs
    let (status, epochs) = get_json(&api.addr, "/v1/epochs").await;
    assert_eq!(status, 200, "{epochs}");
    assert_eq!(epochs["current"], epoch);
    let list = epochs["epochs"].as_array().unwrap();
    assert_eq!(list.len() as u64, epoch + 1);
    assert_eq!(
        list[0],
        json!({"epoch": 0, "start": "2026-01-05T00:00:00.000000Z",
               "end": "2026-01-12T00:00:00.000000Z", "current": false})
    );
    assert_eq!(list.last().unwrap()["current"], true);
    assert_eq!(list.iter().filter(|e| e["current"] == true).count(), 1);

    // GET /v1/users/{address}: the default epoch is the current one; addresses are matched
    // lowercase.
    let (status, alice) = get_json(&api.addr, "/v1/users/ALICE").await;
    assert_eq!(status, 200, "{alice}");
    let fields: Vec<&String> = alice.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        vec![
            "address",
            "as_of",
            "epoch",
            "excluded",
            "next_tier",
            "points",
            "rank",
            "referees",
            "referrer",
            "tier",
            "trading_volume"
        ]
    );
    assert_eq!(alice["address"], "alice");
    assert_eq!(alice["epoch"], epoch);
    assert_points(
        &alice["points"],
        [
            ("trading", "15"),
            ("referral", "0"),
            ("holding", "0"),
            ("pnl", "0"),
            ("total", "15"),
        ],
    );
    assert_eq!(dec(&alice["trading_volume"]), Decimal::from(2000));
    assert_eq!(alice["tier"]["level"], 0);
    assert_eq!(dec(&alice["tier"]["min_volume"]), Decimal::ZERO);
    assert_eq!(dec(&alice["tier"]["multiplier"]), Decimal::ONE);
    assert_eq!(alice["next_tier"]["level"], 1);
    assert_eq!(
        dec(&alice["next_tier"]["min_volume"]),
        Decimal::from(100_000)
    );
    assert_eq!(
        dec(&alice["next_tier"]["multiplier"]),
        "1.10".parse().unwrap()
    );
    assert_eq!(
        dec(&alice["next_tier"]["volume_needed"]),
        Decimal::from(98_000)
    );
    assert_eq!(alice["rank"], 1);
    assert_eq!(alice["excluded"], false);
    assert_eq!(alice["referrer"], "carol");
    assert_eq!(alice["referees"], 0);
    assert_eq!(alice["as_of"], as_of);

    let (_, carol) = get_json(&api.addr, &format!("/v1/users/carol?epoch={epoch}")).await;
    assert_points(
        &carol["points"],
        [
            ("trading", "10"),
            ("referral", "1.5"),
            ("holding", "0"),
            ("pnl", "0"),
            ("total", "11.5"),
        ],
    );
    assert_eq!(carol["rank"], 2);
    assert_eq!(carol["referrer"], Value::Null);
    assert_eq!(carol["referees"], 1);
    let (_, bob) = get_json(&api.addr, "/v1/users/bob").await;
    let (_, eve) = get_json(&api.addr, "/v1/users/eve").await;
    assert_eq!(
        (bob["rank"].clone(), eve["rank"].clone()),
        (json!(3), json!(3)),
        "a tie"
    );
    let (_, frank) = get_json(&api.addr, "/v1/users/frank").await;
    assert_eq!(frank["rank"], 5);
    assert_eq!(dec(&frank["points"]["total"]), "2.5".parse().unwrap());

    // An unknown user is zeros, not an error; so is a past epoch.
    for path in ["/v1/users/nobody", "/v1/users/alice?epoch=0"] {
        let (status, nobody) = get_json(&api.addr, path).await;
        assert_eq!(status, 200, "{path}: {nobody}");
        assert_points(
            &nobody["points"],
            [
                ("trading", "0"),
                ("referral", "0"),
                ("holding", "0"),
                ("pnl", "0"),
                ("total", "0"),
            ],
        );
        assert_eq!(dec(&nobody["trading_volume"]), Decimal::ZERO);
        assert_eq!(nobody["rank"], Value::Null);
        assert_eq!(nobody["tier"]["level"], 0);
        assert_eq!(
            dec(&nobody["next_tier"]["volume_needed"]),
            Decimal::from(100_000)
        );
    }
    // The excluded address earns nothing and has no rank.
    let (_, liq) = get_json(&api.addr, "/v1/users/liq").await;
    assert_eq!(liq["excluded"], true);
    assert_eq!(liq["rank"], Value::Null);

    // GET /v1/users/{address}/ledger: newest first, one page at a time.
    let (status, page1) = get_json(&api.addr, "/v1/users/alice/ledger?limit=1").await;
    assert_eq!(status, 200, "{page1}");
    let e = &page1["entries"].as_array().unwrap()[0];
    assert_eq!(e["kind"], "trading_maker");
    assert_eq!(e["trade_id"], "2");
    assert_eq!(e["reversal"], false);
    assert_eq!(dec(&e["points"]), Decimal::from(5));
    assert_eq!(dec(&e["basis"]), Decimal::from(1000));
    assert_eq!(dec(&e["multiplier"]), Decimal::ONE);
    assert_eq!(dec(&e["rate"]), "0.005".parse().unwrap());
    assert_eq!(e["source_id"], "api");
    assert!(e["ordinal"].is_u64());
    assert_eq!(e["position_id"], Value::Null);
    assert!(e["commit_lsn"].as_str().unwrap().contains('/'));
    assert!(e["event_time"].as_str().unwrap().ends_with('Z'));
    let cursor = page1["next_cursor"].as_str().expect("a second page");
    let (_, page2) = get_json(
        &api.addr,
        &format!("/v1/users/alice/ledger?limit=1&cursor={cursor}"),
    )
    .await;
    let e = &page2["entries"].as_array().unwrap()[0];
    assert_eq!(
        (e["kind"].as_str(), e["trade_id"].as_str()),
        (Some("trading_taker"), Some("1"))
    );
    assert_eq!(dec(&e["points"]), Decimal::from(10));
    assert_eq!(page2["next_cursor"], Value::Null, "alice has two entries");
    let (_, all) = get_json(&api.addr, "/v1/users/carol/ledger").await;
    let kinds: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["referral_l1", "trading_taker", "referral_l1"]);
    assert_eq!(all["entries"][0]["referee"], "alice");

    // GET /v1/leaderboard: ties share a rank, the order within a tie is by address, excluded
    // addresses never appear, and pages join up (a tie split across pages keeps its rank).
    let (status, board) = get_json(&api.addr, "/v1/leaderboard").await;
    assert_eq!(status, 200, "{board}");
    let rows: Vec<(String, i64, Decimal)> = board["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_owned(),
                r["rank"].as_i64().unwrap(),
                dec(&r["points"]["total"]),
            )
        })
        .collect();
    let want: Vec<(String, i64, Decimal)> = [
        ("alice", 1, "15"),
        ("carol", 2, "11.5"),
        ("bob", 3, "5"),
        ("eve", 3, "5"),
        ("frank", 5, "2.5"),
    ]
    .iter()
    .map(|(a, r, t)| (a.to_string(), *r, t.parse().unwrap()))
    .collect();
    assert_eq!(rows, want);
    assert_eq!(board["next_cursor"], Value::Null);
    assert_eq!(board["epoch"], epoch);
    assert_points(
        &board["entries"][1]["points"],
        [
            ("trading", "10"),
            ("referral", "1.5"),
            ("holding", "0"),
            ("pnl", "0"),
            ("total", "11.5"),
        ],
    );
    assert_eq!(
        dec(&board["entries"][0]["trading_volume"]),
        Decimal::from(2000)
    );
    for limit in [1, 2, 3] {
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/v1/leaderboard?limit={limit}"),
                Some(c) => format!("/v1/leaderboard?limit={limit}&cursor={c}"),
            };
            let (status, page) = get_json(&api.addr, &path).await;
            assert_eq!(status, 200, "{page}");
            for r in page["entries"].as_array().unwrap() {
                paged.push((
                    r["address"].as_str().unwrap().to_owned(),
                    r["rank"].as_i64().unwrap(),
                    dec(&r["points"]["total"]),
                ));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(paged, want, "pages of {limit}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_400_with_a_json_error() {
    let db = TestDb::exchange("api_bad").await;
    let (_wp, api) = start(&db).await;
    let long = "a".repeat(200);
    let foreign = hex::encode("B\u{1f}1.0\u{1f}alice");
    for (path, code) in [
        (format!("/v1/users/{long}"), "bad_address"),
        ("/v1/users/a%20b".into(), "bad_address"),
        ("/v1/users/%00".into(), "bad_address"),
        (format!("/v1/users/{long}/ledger"), "bad_address"),
        ("/v1/users/alice?epoch=-1".into(), "epoch_out_of_range"),
        ("/v1/users/alice?epoch=99999".into(), "epoch_out_of_range"),
        ("/v1/users/alice?epoch=abc".into(), "epoch_out_of_range"),
        (
            "/v1/leaderboard?epoch=4294967296".into(),
            "epoch_out_of_range",
        ),
        (
            "/v1/users/alice/ledger?epoch=99999".into(),
            "epoch_out_of_range",
        ),
        ("/v1/leaderboard?limit=1001".into(), "bad_limit"),
        ("/v1/users/alice/ledger?limit=1001".into(), "bad_limit"),
        ("/v1/leaderboard?limit=0".into(), "bad_limit"),
        ("/v1/leaderboard?limit=ten".into(), "bad_limit"),
        ("/v1/leaderboard?cursor=zz".into(), "bad_cursor"),
        ("/v1/leaderboard?cursor=deadbeef".into(), "bad_cursor"),
        ("/v1/users/alice/ledger?cursor=zz".into(), "bad_cursor"),
        (
            format!("/v1/users/alice/ledger?cursor={foreign}"),
            "bad_cursor",
        ),
        ("/v1/leaderboard?sort=asc".into(), "unknown_parameter"),
        ("/v1/users/alice?limit=5".into(), "unknown_parameter"),
        ("/v1/leaderboard?limit=5&limit=6".into(), "bad_query"),
    ] {
        let (status, body) = get_json(&api.addr, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{path}: {body}"
        );
    }
    let (status, body) = get_json(&api.addr, "/v1/nothing").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // The API is read-only: writes are refused whatever the path.
    let (status, _) = raw(
        &api.addr,
        format!(
            "POST /v1/leaderboard HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            api.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 405);
}

/// Ranks come from the store's rank buckets (`migrations/0006_rank_buckets.sql`): they must
/// stay exact while totals span eight decades, tie, fall back into lower buckets (corrections),
/// drop to zero (deletes) and belong to an excluded address; `replay --verify` checks the
/// buckets themselves, and names one edited by hand.
#[tokio::test(flavor = "multi_thread")]
async fn ranks_stay_exact_as_totals_rise_fall_tie_and_vanish() {
    let db = TestDb::exchange("api_ranks").await;
    let wp = serving(&db, "ranks", "0xliq");
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    let ex = db.client().await;
    // Notionals from 0.0001 to 1,000,000 (the smallest below the rules' minimum); every fifth trade
    // by the taker of the one before it; users with one small trade each, every ninth alike
    // (ties); the excluded address trades the largest.
    ex.batch_execute(
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
         SELECT g, 'BTC', (10::numeric ^ (g % 11 - 4)) * (1 + g % 3), 1,
                '0x' || (g - (g % 5 = 0)::int) % 40, '0xm' || g % 7
         FROM generate_series(1, 400) g;
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
         SELECT 2000 + g, 'BTC', 10::numeric ^ (g % 9 - 4), 1, '0xs' || g, '0xm9'
         FROM generate_series(1, 30) g;
         INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address) VALUES
           (1000, 'BTC', 1000000, 3, '0xliq', '0x1');",
    )
    .await
    .unwrap();
    // Corrections that lower totals across buckets, deletes that take some users to zero.
    ex.batch_execute(
        "UPDATE trades SET price = price / 1000 WHERE id % 9 = 0;
         DELETE FROM trades WHERE taker_address IN ('0x3', '0x4') OR id % 23 = 0;",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;

    let store = wp.store().await;
    let epoch = current_epoch() as i32;
    let users: Vec<(String, Decimal)> = store
        .query(
            "SELECT user_address, total_points FROM walpoints.user_epoch_points \
             WHERE epoch = $1 ORDER BY total_points DESC, user_address",
            &[&epoch],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(users.len() > 45, "{users:?}");
    assert!(
        users.iter().any(|(_, t)| *t == Decimal::ZERO),
        "some user is back at zero: {users:?}"
    );
    let ranked: Vec<&(String, Decimal)> = users
        .iter()
        .filter(|(u, t)| *t > Decimal::ZERO && u != "0xliq")
        .collect();
    let rank_of = |t: Decimal| 1 + ranked.iter().filter(|(_, o)| *o > t).count() as i64;
    let mut want = Vec::new();
    for (u, t) in &ranked {
        want.push((u.clone(), rank_of(*t)));
    }
    assert!(
        want.windows(2).any(|w| w[0].1 == w[1].1),
        "the workload has ties: {want:?}"
    );
    for (u, t) in &users {
        let (status, body) = get_json(&addr, &format!("/v1/users/{u}?epoch={epoch}")).await;
        assert_eq!(status, 200, "{body}");
        let expected = (*t > Decimal::ZERO && u != "0xliq").then(|| rank_of(*t));
        assert_eq!(body["rank"].as_i64(), expected, "{u} with {t}: {body}");
    }
    for limit in [1, 4, 7] {
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/v1/leaderboard?epoch={epoch}&limit={limit}"),
                Some(c) => format!("/v1/leaderboard?epoch={epoch}&limit={limit}&cursor={c}"),
            };
            let (status, page) = get_json(&addr, &path).await;
            assert_eq!(status, 200, "{page}");
            for r in page["entries"].as_array().unwrap() {
                paged.push((
                    r["address"].as_str().unwrap().to_owned(),
                    r["rank"].as_i64().unwrap(),
                ));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(paged, want, "pages of {limit}");
    }

    let (code, stdout, _) = crate::replay::replay(&wp);
    assert_eq!(code, Some(0), "{stdout}");
    store
        .batch_execute(
            "UPDATE walpoints.rank_bucket SET users = users + 1 \
             WHERE (epoch, bucket) = (SELECT epoch, bucket FROM walpoints.rank_bucket \
                                      ORDER BY users DESC, bucket LIMIT 1)",
        )
        .await
        .unwrap();
    let (code, stdout, _) = crate::replay::replay(&wp);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "difference: user (all) epoch {epoch} rank bucket "
        )),
        "{stdout}"
    );
}
