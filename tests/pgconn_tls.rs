//! `pgconn::connect` against a throwaway cluster with TLS on: each `sslmode` does what libpq's
//! does, failures are classified transient or definite, and no error shows the password.

use std::path::PathBuf;

use walpoints::config::ConnUrl;
use walpoints::pg::connect::{connect, is_transient, ConnectError};
use walpoints::testing::PgCluster;

use crate::support::tls::certificates;
use crate::support::{serve_tls, throwaway_cluster};

/// The password of the role `pw` (scram-sha-256); it must never show in an error.
const PASSWORD: &str = "Sekr3t-do-not-print";

/// A throwaway cluster serving TLS with a certificate for `sans`; the role `pw` logs in with
/// [`PASSWORD`], everyone else is trusted. Always a cluster of its own, whatever
/// `WALPOINTS_TEST_PG_URL` says: a shared server's TLS and authentication must not change.
struct TlsServer {
    cluster: PgCluster,
    dir: tempfile::TempDir,
}

impl TlsServer {
    async fn start(sans: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path(), &[("server", sans)]);
        // The certificate files go into the data directory, which exists only once the cluster
        // has started: start plain, then restart with TLS on.
        let cluster = throwaway_cluster(&[]);
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        serve_tls(
            &cluster,
            &read("server.crt"),
            &read("server.key"),
            b"local all all trust\nhost all pw 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
        );
        let server = TlsServer { cluster, dir };
        let admin = connect(
            &server.url("postgres", "127.0.0.1", "disable", None),
            "admin",
        )
        .await
        .unwrap();
        admin
            .batch_execute(&format!("CREATE ROLE pw LOGIN PASSWORD '{PASSWORD}'"))
            .await
            .unwrap();
        server
    }

    /// `user` (with [`PASSWORD`] for `pw`) at `host` with `sslmode`, and `ca` (a file in the
    /// certificate directory) as `sslrootcert`.
    fn url(&self, user: &str, host: &str, sslmode: &str, ca: Option<&str>) -> ConnUrl {
        let auth = if user == "pw" {
            format!("pw:{PASSWORD}")
        } else {
            user.to_owned()
        };
        let mut url = format!(
            "postgres://{auth}@{host}:{}/postgres?sslmode={sslmode}",
            self.cluster.port()
        );
        if let Some(ca) = ca {
            url.push_str(&format!("&sslrootcert={}", self.ca(ca).display()));
        }
        url.parse().unwrap()
    }

    fn ca(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Whether the session of `client` runs over TLS, per the server.
async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Connects to `url`, which must be refused definitely, and returns the error text.
async fn refused(url: &ConnUrl, why: &str) -> String {
    match connect(url, "pgconn_test").await {
        Ok(_) => panic!("connected to {url} despite {why}"),
        Err(e) if e.is_transient() => panic!("{why}: transient, not definite: {e}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_with_the_right_ca_connects_over_tls_by_name_or_ip() {
    let server = TlsServer::start("DNS:localhost,IP:127.0.0.1").await;
    for host in ["localhost", "127.0.0.1"] {
        let url = server.url("postgres", host, "verify-full", Some("ca.crt"));
        let client = connect(&url, "pgconn_test")
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(uses_tls(&client).await, "{host}: the session uses TLS");
        let row = client
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "UTC");
        assert_eq!(row.get::<_, String>(1), "pgconn_test");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_a_wrong_ca_or_host_name() {
    let server = TlsServer::start("DNS:localhost").await;
    // The right CA and name connect, so the refusals below are for the CA and the name.
    let good = server.url("postgres", "localhost", "verify-full", Some("ca.crt"));
    assert!(uses_tls(&connect(&good, "pgconn_test").await.unwrap()).await);

    let wrong_ca = server.url("postgres", "localhost", "verify-full", Some("other-ca.crt"));
    let text = refused(&wrong_ca, "a certificate from another CA").await;
    assert!(text.contains("certificate"), "{text}");
    assert!(
        text.contains("other-ca.crt"),
        "names the sslrootcert: {text}"
    );

    let wrong_host = server.url("postgres", "127.0.0.1", "verify-full", Some("ca.crt"));
    let text = refused(&wrong_host, "a certificate for another host name").await;
    assert!(text.contains("certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let server = TlsServer::start("DNS:elsewhere.invalid").await;
    // The certificate names another host: verify-ca (and require with a root certificate, as
    // libpq) accept it for its chain...
    for mode in ["verify-ca", "require"] {
        let url = server.url("postgres", "127.0.0.1", mode, Some("ca.crt"));
        let client = connect(&url, "pgconn_test")
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(uses_tls(&client).await, "{mode}");
    }
    // ...and refuse it against another CA.
    for mode in ["verify-ca", "require"] {
        let url = server.url("postgres", "127.0.0.1", mode, Some("other-ca.crt"));
        let text = refused(&url, &format!("{mode} with another CA")).await;
        assert!(text.contains("certificate"), "{text}");
    }
    // verify-full does check the name.
    let url = server.url("postgres", "127.0.0.1", "verify-full", Some("ca.crt"));
    refused(&url, "verify-full with a certificate for another name").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn require_uses_tls_without_a_ca_and_disable_does_not() {
    let server = TlsServer::start("DNS:elsewhere.invalid").await;
    for (mode, tls) in [("require", true), ("prefer", true), ("disable", false)] {
        let url = server.url("postgres", "127.0.0.1", mode, None);
        let client = connect(&url, "pgconn_test")
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(uses_tls(&client).await, tls, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_password_or_database_is_definite_and_a_closed_port_transient() {
    let server = TlsServer::start("DNS:localhost").await;
    // The role's password works (over TLS, with SCRAM channel binding)...
    let good = server.url("pw", "localhost", "verify-full", Some("ca.crt"));
    connect(&good, "pgconn_test").await.unwrap();
    // ...another password does not, and the error shows neither.
    for mode in ["require", "disable"] {
        let mut url = server.url("pw", "127.0.0.1", mode, None);
        url.password = Some(walpoints::config::Secret::new(format!("{PASSWORD}-wrong")));
        let err = connect(&url, "pgconn_test").await.unwrap_err();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!err.is_transient(), "{text}");
            assert!(text.contains("password authentication failed"), "{text}");
            assert!(
                !text.contains(PASSWORD),
                "the error shows the password: {text}"
            );
        }
    }

    let missing = server
        .url("pw", "127.0.0.1", "require", None)
        .with_dbname("no_such_database");
    let text = refused(&missing, "a missing database").await;
    assert!(text.contains("no_such_database"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // A port nobody listens on (bound, then let go).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url: ConnUrl =
        format!("postgres://pw:{PASSWORD}@127.0.0.1:{port}/postgres?sslmode=require")
            .parse()
            .unwrap();
    match connect(&url, "pgconn_test").await {
        Err(e @ ConnectError::Unavailable { .. }) => {
            let text = e.to_string();
            assert!(!text.contains(PASSWORD), "{text}");
        }
        other => panic!("a closed port is transient, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_session_is_transient_and_a_sql_error_definite() {
    let server = TlsServer::start("DNS:localhost").await;
    let url = server.url("postgres", "localhost", "verify-full", Some("ca.crt"));
    let victim = connect(&url, "pgconn_victim").await.unwrap();
    let killer = connect(&url, "pgconn_test").await.unwrap();

    let e = victim.simple_query("SELEC 1").await.unwrap_err();
    assert!(!is_transient(&e), "a syntax error is definite: {e:?}");
    let e = victim
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (1)")
        .await
        .unwrap_err();
    assert!(!is_transient(&e), "a unique violation is definite: {e:?}");

    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let terminated: bool = killer
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let e = victim.simple_query("SELECT 1").await.unwrap_err();
    assert!(is_transient(&e), "a terminated session is transient: {e:?}");
}
