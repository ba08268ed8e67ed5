//! The source URL's `sslmode=verify-full`: the change stream runs over TLS with the right CA and
//! host name, and refuses a wrong CA or a wrong host name.

use std::path::Path;
use std::time::Duration;

use crate::support::tail::wait_for_active_tail_slot;
use crate::support::tls::certificates;
use crate::support::{serve_tls, Running, TestDb};

/// Installs `name`.crt/.key as the server's certificate and restarts the server.
/// Serves `name.crt`/`name.key` from `dir`: the role `tls` may only come in over TLS,
/// `postgres` (the test's own SQL) over anything.
fn install_certificate(cluster: &walpoints::testing::PgCluster, dir: &Path, name: &str) {
    let read = |ext: &str| std::fs::read(dir.join(format!("{name}.{ext}"))).unwrap();
    serve_tls(
        cluster,
        &read("crt"),
        &read("key"),
        b"local all all trust\nhostssl all tls 127.0.0.1/32 trust\nhost all tls 127.0.0.1/32 reject\nhost all postgres 127.0.0.1/32 trust\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_streams_over_tls_and_refuses_wrong_ca_or_host() {
    // A cluster of its own to configure TLS on.
    let db = TestDb::own_cluster("tls", &[]).await;
    let cluster = db.cluster();
    let dir = tempfile::tempdir().unwrap();
    certificates(
        dir.path(),
        &[
            ("server", "DNS:localhost"),
            ("elsewhere", "DNS:elsewhere.invalid"),
        ],
    );
    install_certificate(cluster, dir.path(), "server");
    let client = db.client().await;
    // tail creates its own publication: it needs CREATE on the database and to own the table.
    client
        .batch_execute(&format!(
            "CREATE ROLE tls LOGIN REPLICATION; CREATE TABLE t (id int); \
             ALTER TABLE t OWNER TO tls; GRANT CREATE ON DATABASE {} TO tls",
            db.name
        ))
        .await
        .unwrap();

    let url = |host: &str, ca: &str| {
        format!(
            "postgres://tls@{host}:{}/{}?sslmode=verify-full&sslrootcert={}",
            cluster.port(),
            db.name,
            dir.path().join(ca).display()
        )
    };
    let tail = |url: String, extra: &[&str]| {
        let mut cmd = db.walpoints();
        cmd.env("WALPOINTS_SOURCE_URL", url)
            .args(["tail", "--table", "public.t"])
            .args(extra);
        cmd
    };

    let mut running = Running::spawn(tail(url("localhost", "ca.crt"), &["--limit", "1"]));
    wait_for_active_tail_slot(&db).await;
    let ssl: bool = client
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'walsender'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the walsender connection uses TLS");
    client
        .execute("INSERT INTO t VALUES (42)", &[])
        .await
        .unwrap();
    let line = running.lines(1, Duration::from_secs(60)).remove(0);
    assert!(line.contains("\"new\":{\"id\":\"42\"}"), "{line}");
    assert!(
        running.wait(Duration::from_secs(30)).success(),
        "{}",
        running.stderr()
    );

    let refused = |url: String, why: &str| {
        let out = tail(url, &["--limit", "1"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "connected despite {why}");
        assert!(err.contains("certificate"), "{why}: {err}");
    };
    refused(
        url("localhost", "other-ca.crt"),
        "a certificate from another CA",
    );
    install_certificate(cluster, dir.path(), "elsewhere");
    refused(
        url("localhost", "ca.crt"),
        "a certificate for another host name",
    );
}
