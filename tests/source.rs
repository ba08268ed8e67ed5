//! The replication source as the daemon will use it: publication and slot admin, whole
//! transactions in commit order, acknowledgement only on the caller's word, and feedback that
//! keeps flowing while the caller is busy.

use std::time::Duration;

use walpoints::changes::Op;
use walpoints::config::ConnUrl;
use walpoints::lsn::Lsn;
use walpoints::pg::{AdminSession, ReplicationSource, SourceError, SourceOptions};

use crate::support::{eventually, TestDb};

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Option<Lsn> {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, Option<String>>(0).map(|s| s.parse().unwrap())
}

fn options(url: &ConnUrl, start: Lsn) -> SourceOptions {
    SourceOptions {
        url: url.clone(),
        slot: "wp_slot".into(),
        publication: "wp_pub".into(),
        start_lsn: start,
        durable_lsn: start,
        temporary_slot: false,
        application_name: "walpoints test".into(),
        silence: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_arrive_whole_in_commit_order_and_ack_moves_the_slot() {
    let db = TestDb::new("source_tx").await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY);
             CREATE TABLE unrelated (id int)",
        )
        .await
        .unwrap();
    let url: ConnUrl = db.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints test").await.unwrap();
    let tables = ["public.a".parse().unwrap(), "public.b".parse().unwrap()];
    admin.ensure_publication("wp_pub", &tables).await.unwrap();
    admin.ensure_publication("wp_pub", &tables).await.unwrap(); // idempotent
    assert!(!admin.slot("wp_slot").await.unwrap().exists());
    let consistent = admin.create_slot("wp_slot").await.unwrap();
    let info = admin.slot("wp_slot").await.unwrap();
    assert!(info.exists() && info.is_pgoutput(), "{info:?}");
    assert_eq!(info.confirmed_flush_lsn, Some(consistent));
    assert!(!admin.system_id().await.unwrap().is_empty());

    // Two interleaved transactions: commit order, not start order, is what counts.
    let other = db.client().await;
    client
        .batch_execute("BEGIN; INSERT INTO a VALUES (1, 'first begun')")
        .await
        .unwrap();
    other
        .batch_execute("BEGIN; INSERT INTO b VALUES (10); INSERT INTO unrelated VALUES (0); UPDATE a SET v = v WHERE false; COMMIT")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO a VALUES (2, 'x'); COMMIT")
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM a WHERE id = 2")
        .await
        .unwrap();

    let mut source = ReplicationSource::start(&options(&url, consistent))
        .await
        .unwrap();
    let t1 = source.next_transaction().await.unwrap().unwrap();
    let t2 = source.next_transaction().await.unwrap().unwrap();
    let t3 = source.next_transaction().await.unwrap().unwrap();
    let shape = |t: &walpoints::changes::Transaction| {
        t.changes
            .iter()
            .map(|c| (c.relation.name.clone(), c.op))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(&t1),
        vec![("b".into(), Op::Insert)],
        "committed first, streamed first"
    );
    assert_eq!(
        shape(&t2),
        vec![("a".into(), Op::Insert), ("a".into(), Op::Insert)]
    );
    assert_eq!(shape(&t3), vec![("a".into(), Op::Delete)]);
    for (x, y) in [(&t1, &t2), (&t2, &t3)] {
        assert!(
            x.commit_lsn < x.end_lsn && x.end_lsn <= y.commit_lsn,
            "{x:?} {y:?}"
        );
        assert!(x.commit_time <= y.commit_time);
        assert_ne!(x.xid, y.xid);
    }
    assert!(t1.commit_lsn > consistent);

    // Nothing is acknowledged until the caller says so; then the slot follows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(confirmed_flush(&client, "wp_slot").await, Some(consistent));
    source.ack(t2.end_lsn);
    eventually(
        "the slot to reach the acknowledged LSN",
        Duration::from_secs(10),
        || async { confirmed_flush(&client, "wp_slot").await == Some(t2.end_lsn) },
    )
    .await;
    source.stop().await.unwrap();

    // Restarting from the acknowledged LSN streams only what came after it.
    // The old walsender may hold the slot for a moment after the stream ended (55006), which
    // walpoints treats as transient: so does the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut source = loop {
        match ReplicationSource::start(&options(&url, t2.end_lsn)).await {
            Err(SourceError::SlotBusy(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            started => break started.unwrap(),
        }
    };
    let again = source.next_transaction().await.unwrap().unwrap();
    assert_eq!(again.commit_lsn, t3.commit_lsn);
    source.stop().await.unwrap();

    eventually(
        "the slot to be released",
        Duration::from_secs(10),
        || async {
            let mut admin = AdminSession::connect(&url, "walpoints test").await.unwrap();
            admin.slot("wp_slot").await.unwrap().active_pid.is_none()
        },
    )
    .await;
    admin.drop_slot("wp_slot").await.unwrap();
    assert!(!admin.slot("wp_slot").await.unwrap().exists());
    admin.drop_publication("wp_pub").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_caller_does_not_trip_wal_sender_timeout() {
    // A cluster of its own: the setting must not touch a shared server.
    let db = TestDb::own_cluster("source_busy", &[("wal_sender_timeout", "'3s'")]).await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE a (id int)")
        .await
        .unwrap();
    let url: ConnUrl = db.url.parse().unwrap();
    let mut admin = AdminSession::connect(&url, "walpoints test").await.unwrap();
    admin
        .ensure_publication("wp_pub", &["public.a".parse().unwrap()])
        .await
        .unwrap();
    let start = admin.create_slot("wp_slot").await.unwrap();
    client
        .batch_execute("INSERT INTO a SELECT generate_series(1, 30000)")
        .await
        .unwrap();

    let mut source = ReplicationSource::start(&options(&url, start))
        .await
        .unwrap();
    // Read up to the first change, then stop reading.
    let mut changes = 0;
    while changes == 0 {
        if let Some(walpoints::pg::StreamEvent::Change(_)) = source.next_event().await.unwrap() {
            changes += 1;
        }
    }
    // Busy for more than two timeouts while the server has more to send (feedback goes out
    // every second, the status interval).
    tokio::time::sleep(Duration::from_secs(7)).await;
    loop {
        match source.next_event().await {
            Ok(Some(walpoints::pg::StreamEvent::Change(_))) => changes += 1,
            Ok(Some(walpoints::pg::StreamEvent::Commit(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}\n{}", db.cluster().log_tail()),
        }
    }
    assert_eq!(changes, 30_000);
    let log = db.cluster().log_tail();
    assert!(
        !log.contains("terminating walsender process due to replication timeout"),
        "{log}"
    );
    source.stop().await.unwrap();
}
