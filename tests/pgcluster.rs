//! The throwaway-cluster harness itself: start, stop, kill -9, restart, clean up.

use walpoints::testing::{PgCluster, StopMode};

use crate::support::connect;

async fn count(url: &str) -> i64 {
    connect(url)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_survives_stop_kill9_and_restart_then_vanishes() {
    let cluster = PgCluster::start(&[]).unwrap();
    let url = cluster.url("postgres");
    let client = connect(&url).await;
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "logical");
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(client);

    cluster.stop(StopMode::Fast).unwrap();
    assert!(cluster.postmaster_pid().is_none());
    cluster.start_again().unwrap();
    assert_eq!(count(&url).await, 1);

    let pid = cluster.postmaster_pid().expect("running");
    connect(&url)
        .await
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    cluster.kill9().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap()
                .contains("zombie")
    );
    cluster.start_again().unwrap();
    assert_eq!(
        count(&url).await,
        2,
        "a commit survives kill -9 of the server"
    );

    cluster.stop(StopMode::Immediate).unwrap();
    cluster.start_again().unwrap();
    assert_eq!(count(&url).await, 2);

    let data = cluster.data_dir();
    assert!(data.exists());
    drop(cluster);
    assert!(!data.exists(), "dropping the cluster removes its files");
}
