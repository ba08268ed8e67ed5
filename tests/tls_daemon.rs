//! The daemon with its source and its store each behind TLS on a server of its own, logging in
//! with SCRAM-SHA-256 passwords over `sslmode=verify-full`: `setup` and `run` stream a workload
//! to the pure engine's ledger; a wrong CA or host name on either side stops `run` at once with
//! a certificate error; and the password or the full URL shows nowhere: not in logs (text or
//! JSON, at debug level), errors, `status` or the HTTP server's answers.

use std::process::Output;
use std::time::Duration;

use walpoints::points::RuleSet;

use crate::support::daemon::{
    assert_same_ledger, fence, reference_ledger, reference_slot, workload, Walpoints,
};
use crate::support::http::{get, http_addr};
use crate::support::tls::certificates;
use crate::support::{error_line, serve_tls, with_db, Running, TestDb};

/// The role `wp`'s password on both servers: distinctive, so a leak is found by grep.
const PASSWORD: &str = "S3cr3t-pa55-XYZ";

/// The store's database on the store server.
const STORE_DB: &str = "store_tls";

/// Source and store servers serving TLS with a certificate for `localhost` only. The role `wp`
/// (REPLICATION and SELECT on the three tables on the source, owner of [`STORE_DB`] on the
/// store) may only come in over TLS with its password; `postgres` (the test's own SQL) is
/// trusted.
struct Servers {
    source: TestDb,
    store: TestDb,
    certs: tempfile::TempDir,
}

impl Servers {
    /// Two clusters of its own, whatever `WALPOINTS_TEST_PG_URL` says: a shared server's TLS
    /// and authentication must not change.
    async fn start(name: &str) -> Servers {
        let certs = tempfile::tempdir().unwrap();
        certificates(certs.path(), &[("server", "DNS:localhost")]);
        let read = |f: &str| std::fs::read(certs.path().join(f)).unwrap();
        let source = TestDb::own_exchange(&format!("{name}_src"), &[]).await;
        let store = TestDb::own_cluster(&format!("{name}_store"), &[]).await;
        for db in [&source, &store] {
            serve_tls(
                db.cluster(),
                &read("server.crt"),
                &read("server.key"),
                b"local all all trust\nhostssl all wp 127.0.0.1/32 scram-sha-256\n\
                  host all wp 127.0.0.1/32 reject\nhost all postgres 127.0.0.1/32 trust\n",
            );
        }
        source
            .client()
            .await
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE wp LOGIN REPLICATION PASSWORD '{PASSWORD}';
                 GRANT SELECT ON trades, positions, referral_relations TO wp"
            ))
            .await
            .unwrap();
        let store_admin = store.client().await;
        store_admin
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE wp LOGIN PASSWORD '{PASSWORD}'"
            ))
            .await
            .unwrap();
        store_admin
            .batch_execute(&format!("CREATE DATABASE {STORE_DB} OWNER wp"))
            .await
            .unwrap();
        Servers {
            source,
            store,
            certs,
        }
    }

    /// `wp` with `password` at `host` on `db`'s server, verify-full against `ca`.
    fn url(&self, db: &TestDb, dbname: &str, host: &str, ca: &str, password: &str) -> String {
        format!(
            "postgres://wp:{password}@{host}:{}/{dbname}?sslmode=verify-full&sslrootcert={}",
            db.cluster().port(),
            self.certs.path().join(ca).display()
        )
    }

    /// The source URL walpoints gets.
    fn source_url(&self, host: &str, ca: &str, password: &str) -> String {
        self.url(&self.source, &self.source.name, host, ca, password)
    }

    /// The store URL walpoints gets.
    fn store_url(&self, host: &str, ca: &str, password: &str) -> String {
        self.url(&self.store, STORE_DB, host, ca, password)
    }

    /// Source `id` configured with the good URLs (the harness itself reads the store as
    /// `postgres`, without TLS).
    fn walpoints(&self, id: &str) -> Walpoints<'_> {
        let mut wp = Walpoints::new(&self.source, id)
            .env(
                "WALPOINTS_SOURCE_URL",
                &self.source_url("localhost", "ca.crt", PASSWORD),
            )
            .env(
                "WALPOINTS_STORE_URL",
                &self.store_url("localhost", "ca.crt", PASSWORD),
            );
        wp.store_url = with_db(&self.store.url, STORE_DB);
        wp
    }

    /// Creates source `id`'s publication as the tables' owner (the role may not).
    async fn publish(&self, id: &str) {
        self.source
            .client()
            .await
            .batch_execute(&format!(
                "CREATE PUBLICATION wp_pub_{id} FOR TABLE trades, positions, referral_relations"
            ))
            .await
            .unwrap();
    }
}

/// stdout and stderr of a finished command, for grepping.
fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `walpoints run` with `env` on top of `wp`'s, which must fail by itself within 60 s; returns
/// its `walpoints: ` error line.
fn run_fails(wp: &Walpoints<'_>, env: &[(&str, &str)]) -> String {
    let mut cmd = wp.cmd(&["run"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut running = Running::spawn(cmd);
    let status = running.wait(Duration::from_secs(60));
    assert!(!status.success(), "run succeeded with {env:?}");
    let stderr = running.wait_for_stderr("walpoints: ", Duration::from_secs(5));
    error_line(&stderr).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_and_run_stream_over_verify_full_with_scram_passwords() {
    let servers = Servers::start("tlsd_ok").await;
    reference_slot(&servers.source, "wp_ref").await;
    servers.publish("tls_ok").await;
    let wp = servers.walpoints("tls_ok");
    let mut running = wp.setup_and_stream().await;

    workload(servers.source.url.clone(), 1, 2_000, 100).await;
    let until = fence(&servers.source.client().await).await;
    wp.wait_for(until, Duration::from_secs(120), &running).await;
    let expected = reference_ledger(&servers.source, "wp_ref", RuleSet::default(), until).await;
    assert!(expected.len() > 2_000, "{} entries", expected.len());
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");

    // Every session of walpoints on either server is the role `wp` over TLS.
    for (db, what) in [(&servers.source, "source"), (&servers.store, "store")] {
        let rows = db
            .client()
            .await
            .query(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'wp'",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty(), "walpoints has no session on the {what}");
        for r in rows {
            let (app, ssl): (String, bool) = (r.get(0), r.get(1));
            assert!(ssl, "{what}: {app} without TLS");
        }
    }
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_or_host_name_on_either_side_stops_run_with_a_certificate_error() {
    let servers = Servers::start("tlsd_bad").await;
    servers.publish("tls_bad").await;
    let wp = servers.walpoints("tls_bad");
    wp.setup();
    let cases = [
        (
            "WALPOINTS_SOURCE_URL",
            servers.source_url("localhost", "other-ca.crt", PASSWORD),
            "source signed by another CA",
        ),
        (
            "WALPOINTS_SOURCE_URL",
            servers.source_url("127.0.0.1", "ca.crt", PASSWORD),
            "source certificate for another host name",
        ),
        (
            "WALPOINTS_STORE_URL",
            servers.store_url("localhost", "other-ca.crt", PASSWORD),
            "store signed by another CA",
        ),
        (
            "WALPOINTS_STORE_URL",
            servers.store_url("127.0.0.1", "ca.crt", PASSWORD),
            "store certificate for another host name",
        ),
    ];
    for (var, url, why) in &cases {
        let line = run_fails(&wp, &[(var, url)]);
        let lower = line.to_lowercase();
        assert!(
            lower.contains("certificate") && lower.contains("tls"),
            "{why}: {line}"
        );
        assert!(!line.contains(PASSWORD), "{why}: {line}");
    }
    // setup refuses a bad certificate too.
    let out = wp
        .cmd(&["setup"])
        .env(cases[0].0, &cases[0].1)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("certificate"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_or_url_shows_in_logs_errors_status_or_http() {
    let servers = Servers::start("tlsd_secret").await;
    servers.publish("tls_secret").await;
    let wp = servers
        .walpoints("tls_secret")
        .env("RUST_LOG", "debug")
        .env("WALPOINTS_HEARTBEAT_INTERVAL", "1s")
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .env("WALPOINTS_HTTP_POLL_INTERVAL", "1s");
    let mut seen: Vec<(String, String)> = Vec::new();

    let out = wp.output(&["setup"]);
    assert!(out.status.success(), "{}", text(&out));
    seen.push(("setup".into(), text(&out)));

    // run, text logs and JSON logs, with HTTP answers along the way.
    for format in ["text", "json"] {
        let mut running = Running::spawn(wp.cmd(&["--log-format", format, "run"]));
        wp.wait_streaming(&mut running).await;
        let ex = servers.source.client().await;
        ex.batch_execute(
            "INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
             VALUES ('BTC-PERP', 100, 2, '0xa', '0xb')",
        )
        .await
        .unwrap();
        wp.wait_for(fence(&ex).await, Duration::from_secs(60), &running)
            .await;
        let addr = http_addr(&running).await;
        // Once the slot has been polled, /readyz answers from a full picture.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for path in [
            "/metrics",
            "/readyz",
            "/healthz",
            "/v1/epochs",
            "/v1/leaderboard",
            "/v1/users/0xa",
            "/v1/users/0xa/ledger",
            "/no/such/path",
        ] {
            let (code, body) = get(&addr, path).await;
            seen.push((format!("GET {path} ({format})"), format!("{code} {body}")));
        }
        running.signal(libc::SIGTERM);
        assert!(running.wait(Duration::from_secs(60)).success());
        seen.push((format!("run --log-format {format}"), running.stderr()));
    }

    let out = wp.output(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    seen.push(("status".into(), text(&out)));
    let out = wp.output(&["status", "--json"]);
    seen.push(("status --json".into(), text(&out)));

    // Failures: a wrong password on either side, an unreachable source.
    let wrong = format!("{PASSWORD}-wrong");
    for (var, url) in [
        (
            "WALPOINTS_SOURCE_URL",
            servers.source_url("localhost", "ca.crt", &wrong),
        ),
        (
            "WALPOINTS_STORE_URL",
            servers.store_url("localhost", "ca.crt", &wrong),
        ),
    ] {
        let line = run_fails(&wp, &[(var, &url)]);
        assert!(line.contains("password authentication failed"), "{line}");
        seen.push((format!("run, wrong password in {var}"), line));
        let out = wp
            .cmd(&["status", "--json"])
            .env(var, &url)
            .output()
            .unwrap();
        assert!(!out.status.success());
        seen.push((format!("status, wrong password in {var}"), text(&out)));
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!(
        "postgres://wp:{PASSWORD}@localhost:{closed}/x?sslmode=verify-full&sslrootcert={}",
        servers.certs.path().join("ca.crt").display()
    );
    let mut cmd = wp.cmd(&["run"]);
    cmd.env("WALPOINTS_SOURCE_URL", &unreachable);
    let mut running = Running::spawn(cmd);
    running.wait_for_stderr("reconnecting", Duration::from_secs(60));
    running.signal(libc::SIGTERM);
    running.wait(Duration::from_secs(60));
    seen.push(("run, unreachable source".into(), running.stderr()));
    let out = wp
        .cmd(&["status"])
        .env("WALPOINTS_SOURCE_URL", &unreachable)
        .output()
        .unwrap();
    seen.push(("status, unreachable source".into(), text(&out)));
    // A URL that does not parse, on the command line.
    let out = wp
        .cmd(&[
            "--source-url",
            &format!("postgres://wp:{PASSWORD}@localhost/x?sslmode=maybe"),
            "status",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    seen.push(("--source-url that does not parse".into(), text(&out)));

    let mut bytes = 0;
    for (what, output) in &seen {
        bytes += output.len();
        for secret in [PASSWORD, "wp:S3cr3t", "postgres://wp:S"] {
            assert!(
                !output.contains(secret),
                "{what} shows {secret:?}:\n{output}"
            );
        }
    }
    // The outputs were not empty: the debug logs did run.
    assert!(bytes > 20_000, "only {bytes} bytes of output were checked");
    assert!(
        seen.iter()
            .any(|(_, o)| o.contains("postgres://wp:***@localhost")),
        "the redacted URL is what shows"
    );
}
