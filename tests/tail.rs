//! `walpoints tail` against a real PostgreSQL: what the decoder and source see, end to end.

use std::time::Duration;

use serde_json::Value;

use crate::support::tail::{start_tail, TailedTable};
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(60);

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The row in PostgreSQL's text output form (what `SELECT col::text` returns; for boolean the
/// output function's `t`/`f`), which is what tail must print.
async fn row_text(client: &tokio_postgres::Client, table: &str, id: i64) -> Value {
    let messages = client
        .simple_query(&format!(
            "SELECT id, num, label, at, uid, flag, big FROM {table} WHERE id = {id}"
        ))
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("the row exists");
    let mut obj = serde_json::Map::new();
    for (i, name) in ["id", "num", "label", "at", "uid", "flag", "big"]
        .iter()
        .enumerate()
    {
        obj.insert(
            name.to_string(),
            row.get(i)
                .map_or(Value::Null, |v| Value::String(v.to_owned())),
        );
    }
    Value::Object(obj)
}

#[tokio::test(flavor = "multi_thread")]
async fn values_come_through_exactly_as_postgres_prints_them() {
    let db = TestDb::new("tail_values").await;
    let client = db.client().await;
    for (table, identity) in [("t_default", "DEFAULT"), ("t_full", "FULL")] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, num numeric(38,18), label text, \
                 at timestamptz, uid uuid, flag boolean, big text);
                 ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
                 ALTER TABLE {table} REPLICA IDENTITY {identity};"
            ))
            .await
            .unwrap();
    }
    let mut tail = start_tail(
        &db,
        &[
            "--table",
            "public.t_default",
            "--table",
            "public.t_full",
            "--limit",
            "10",
        ],
    )
    .await;

    let big: String = (0..12_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let mut expected: Vec<(String, &str, Value, Value, Value)> = Vec::new(); // table, op, new, old, key
    for table in ["t_default", "t_full"] {
        let full = table == "t_full";
        client
            .execute(
                &format!(
                    "INSERT INTO {table} VALUES (1, 12345678901234567890.123456789012345678, \
                     E'h\\u00e9llo \"quoted\"\\n\\ttab', '2026-03-01 12:34:56.789012+02', \
                     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, $1)"
                ),
                &[&big],
            )
            .await
            .unwrap();
        let row1 = row_text(&client, table, 1).await;
        expected.push((
            table.into(),
            "insert",
            row1.clone(),
            Value::Null,
            Value::Null,
        ));
        client
            .execute(&format!("INSERT INTO {table} (id) VALUES (2)"), &[])
            .await
            .unwrap();
        let row2 = row_text(&client, table, 2).await;
        expected.push((
            table.into(),
            "insert",
            row2.clone(),
            Value::Null,
            Value::Null,
        ));

        client
            .execute(
                &format!("UPDATE {table} SET label = 'changed', num = -0.000000000000000001 WHERE id = 1"),
                &[],
            )
            .await
            .unwrap();
        let mut new1 = row_text(&client, table, 1).await;
        new1["big"] = Value::String("<unchanged-toast>".into());
        let old = if full { row1.clone() } else { Value::Null };
        expected.push((table.into(), "update", new1, old, Value::Null));

        client
            .execute(&format!("DELETE FROM {table} WHERE id = 2"), &[])
            .await
            .unwrap();
        let (old, key) = if full {
            (row2.clone(), Value::Null)
        } else {
            (Value::Null, serde_json::json!({"id": "2"}))
        };
        expected.push((table.into(), "delete", Value::Null, old, key));
        client
            .execute(&format!("TRUNCATE {table}"), &[])
            .await
            .unwrap();
        expected.push((
            table.into(),
            "truncate",
            Value::Null,
            Value::Null,
            Value::Null,
        ));
    }

    let got = parse(&tail.lines(10, WAIT));
    assert!(tail.wait(WAIT).success(), "{}", tail.stderr());
    for (line, (table, op, new, old, key)) in got.iter().zip(&expected) {
        assert_eq!(line["schema"], "public");
        assert_eq!(line["table"], table.as_str(), "{line}");
        assert_eq!(line["op"], *op, "{line}");
        assert_eq!(line["new"], *new, "{table} {op} new");
        assert_eq!(line["old"], *old, "{table} {op} old");
        assert_eq!(line["key"], *key, "{table} {op} key");
        let time = line["commit_time"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok()
                && time.ends_with('Z')
                && time.len() == 27,
            "commit_time {time}"
        );
        assert!(line["lsn"].as_str().unwrap().contains('/'));
        assert!(line["xid"].as_u64().unwrap() > 0);
    }
    // The exact text of tricky values, spelled out.
    assert_eq!(
        got[0]["new"]["num"],
        "12345678901234567890.123456789012345678"
    );
    assert_eq!(got[0]["new"]["at"], "2026-03-01 10:34:56.789012+00");
    assert_eq!(got[0]["new"]["label"], "h\u{e9}llo \"quoted\"\n\ttab");
    assert_eq!(got[0]["new"]["flag"], "t");
    assert_eq!(got[0]["new"]["big"].as_str().unwrap().len(), 12_000);
    assert_eq!(got[1]["new"]["num"], Value::Null);
    assert_eq!(
        got[7]["old"]["big"].as_str().unwrap(),
        big,
        "FULL old row carries the TOASTed value"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn added_column_shows_up_in_later_rows() {
    let t = TailedTable::create("tail_add_column", "id int PRIMARY KEY, a text").await;
    let mut tail = t.tail(&["--limit", "3"]).await;
    t.client
        .batch_execute(
            "INSERT INTO t VALUES (1, 'one');
             ALTER TABLE t ADD COLUMN extra numeric DEFAULT 1.5;
             INSERT INTO t VALUES (2, 'two', 2.25);
             UPDATE t SET a = 'uno' WHERE id = 1;",
        )
        .await
        .unwrap();
    let got = parse(&tail.lines(3, WAIT));
    assert!(tail.wait(WAIT).success());
    assert_eq!(got[0]["new"], serde_json::json!({"id": "1", "a": "one"}));
    assert_eq!(
        got[1]["new"],
        serde_json::json!({"id": "2", "a": "two", "extra": "2.25"})
    );
    assert_eq!(
        got[2]["new"],
        serde_json::json!({"id": "1", "a": "uno", "extra": "1.5"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_thousand_rows_arrive_in_commit_order_once() {
    let t = TailedTable::create("tail_bulk", "id bigint PRIMARY KEY, note text").await;
    let mut tail = t.tail(&["--limit", "100000"]).await;
    for tx in 0..100i64 {
        t.client
            .execute(
                "INSERT INTO t SELECT g, 'row ' || g FROM generate_series($1::bigint, $2::bigint) g",
                &[&(tx * 1000 + 1), &(tx * 1000 + 1000)],
            )
            .await
            .unwrap();
    }
    let lines = tail.lines(100_000, Duration::from_secs(180));
    assert!(tail.wait(WAIT).success(), "{}", tail.stderr());
    assert!(tail.rest().is_empty(), "--limit printed more than asked");
    let mut last_commit = String::new();
    let mut xids = Vec::new();
    for (i, line) in parse(&lines).iter().enumerate() {
        let id: i64 = line["new"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(id, i as i64 + 1, "row {i} out of order or duplicated");
        let commit = line["commit_lsn"].as_str().unwrap().to_owned();
        let xid = line["xid"].as_u64().unwrap();
        if commit != last_commit {
            xids.push(xid);
            last_commit = commit;
        }
    }
    assert_eq!(xids.len(), 100, "one group per source transaction");
}

#[tokio::test(flavor = "multi_thread")]
async fn limit_and_until_lsn_stop_where_they_say_on_a_named_slot() {
    let db = TestDb::new("tail_bounds").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .unwrap();
    for tx in 0..3 {
        client
            .execute(
                "INSERT INTO t SELECT g FROM generate_series($1::int, $1::int + 1) g",
                &[&(tx * 2 + 1)],
            )
            .await
            .unwrap();
    }
    let until: String = client
        // The insert position: with synchronous_commit = off the write position lags behind.
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute("INSERT INTO t SELECT g FROM generate_series(7, 10) g", &[])
        .await
        .unwrap();
    let slot_before: Option<String> = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let run = |args: &[&str]| {
        let mut cmd = db.walpoints();
        cmd.args([
            "tail",
            "--slot",
            "s",
            "--publication",
            "p",
            "--table",
            "public.t",
        ])
        .args(args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        parse(&lines)
            .iter()
            .map(|l| l["new"]["id"].as_str().unwrap().parse::<i32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(&["--until-lsn", &until]), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(run(&["--limit", "3"]), vec![1, 2, 3]);
    assert_eq!(run(&["--limit", "10"]), (1..=10).collect::<Vec<_>>());

    let slot_after: Option<String> = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot_before, slot_after, "tail must never move a named slot");
}

async fn own_objects(db: &TestDb) -> (i64, i64) {
    let client = db.client().await;
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walpoints_tail%' \
             AND database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pubs: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'walpoints_tail%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (slots, pubs)
}

async fn assert_nothing_left(db: &TestDb) {
    eventually(
        "tail's slot and publication to go",
        Duration::from_secs(10),
        || async { own_objects(db).await == (0, 0) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_left_behind_after_a_normal_exit_or_sigint() {
    let t = TailedTable::create("tail_cleanup", "id int").await;

    let mut tail = t.tail(&["--limit", "1"]).await;
    t.client
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    assert!(tail.wait(WAIT).success());
    assert_nothing_left(&t.db).await;

    let mut tail = t.tail(&[]).await;
    t.client
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    assert_eq!(parse(&tail.lines(1, WAIT))[0]["new"]["id"], "2");
    tail.signal(libc::SIGINT);
    let status = tail.wait(WAIT);
    assert!(
        status.success(),
        "SIGINT is a clean exit: {status:?} {}",
        tail.stderr()
    );
    assert_nothing_left(&t.db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_table_is_a_clear_error() {
    let db = TestDb::new("tail_missing").await;
    let out = db
        .walpoints()
        .args(["tail", "--table", "public.nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(
        own_objects(&db).await,
        (0, 0),
        "no slot or publication left"
    );
}
