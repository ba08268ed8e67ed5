//! Least privilege: walpoints runs as the role `sql/role.sql` creates (LOGIN REPLICATION, SELECT
//! on the three tables, a SCRAM password), against the publication `sql/publication.sql` makes,
//! with the ledger of the pure engine; that role cannot write the business tables; and the
//! store needs a role of its own with no access to the source at all.

use std::time::Duration;

use walpoints::points::RuleSet;

use crate::support::daemon::{
    assert_same_ledger, fence, reference_ledger, reference_slot, workload, Walpoints,
};
use crate::support::{connect, with_db, TestDb};

/// The walpoints role's password; SCRAM-SHA-256 (the server's default password_encryption).
const PASSWORD: &str = "least-Pr1v-pw";

/// A throwaway cluster with the exchange's tables, where only `postgres` is trusted and every
/// other role logs in with a SCRAM password, and the role and publication of `sql/` created as
/// an operator would (the role's password set to [`PASSWORD`]). A cluster of its own, whatever
/// `WALPOINTS_TEST_PG_URL` says: a shared server's roles and authentication must not change.
async fn exchange_with_sql_role(name: &str) -> TestDb {
    let db = TestDb::own_exchange(name, &[]).await;
    db.cluster()
        .write_data_file(
            "pg_hba.conf",
            b"local all all trust\nhost all postgres 127.0.0.1/32 trust\n\
              host all all 127.0.0.1/32 scram-sha-256\n",
            0o600,
        )
        .unwrap();
    let admin = db.client().await;
    admin.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    let role = include_str!("../sql/role.sql").replace("'change-me'", &format!("'{PASSWORD}'"));
    run_sql_file(&admin, &role).await;
    run_sql_file(&admin, include_str!("../sql/publication.sql")).await;
    db
}

/// Runs each statement of a `sql/` file on its own (CREATE DATABASE may not share a
/// transaction with anything).
async fn run_sql_file(client: &tokio_postgres::Client, sql: &str) {
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in code.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// `url` as `user` with `password`.
fn as_role(url: &str, user: &str, password: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://{user}:{password}@"),
        1,
    )
}

/// Streams a workload through walpoints configured by `wp`, and checks the ledger against the
/// pure engine fed the same WAL (`reference_slot` "wp_ref" made before `setup`).
async fn stream_and_compare(db: &TestDb, wp: &Walpoints<'_>) {
    let setup = wp.setup();
    assert!(setup.contains("set up"), "{setup}");
    let running = wp.start();
    workload(db.url.clone(), 1, 2_000, 100).await;
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(120), &running).await;
    let expected = reference_ledger(db, "wp_ref", RuleSet::default(), until).await;
    assert!(expected.len() > 2_000, "{} entries", expected.len());
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");
    wp.assert_totals_match_ledger().await;
    let stderr = running.stderr();
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "the daemon complained:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_role_from_sql_runs_walpoints_and_cannot_write_the_business_tables() {
    let db = exchange_with_sql_role("priv_role").await;
    reference_slot(&db, "wp_ref").await;
    // The password is checked, and stored as a SCRAM-SHA-256 verifier.
    let scram: bool = db
        .client()
        .await
        .query_one(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'walpoints'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(scram, "the role's password is a SCRAM verifier");
    let wrong = as_role(&db.url, "walpoints", "not-the-password");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password was accepted");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );
    // Source and store (the database `walpoints` role.sql creates for it) as that role.
    let source = as_role(&db.url, "walpoints", PASSWORD);
    let mut wp = Walpoints::new(&db, "role")
        .env("WALPOINTS_SOURCE_URL", &source)
        .env("WALPOINTS_SOURCE_PUBLICATION", "walpoints");
    wp.store_url = with_db(&source, "walpoints");
    stream_and_compare(&db, &wp).await;

    // The heartbeat's call works for the role as it is.
    let role = connect(&source).await;
    role.query_one(
        "SELECT pg_logical_emit_message(true, 'walpoints.heartbeat', 'role')",
        &[],
    )
    .await
    .expect("the heartbeat needs no further grant");
    // It may read the business tables but write none of them.
    for table in ["trades", "positions", "referral_relations"] {
        role.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("SELECT on {table}: {e}"));
        for write in [
            format!("INSERT INTO {table} DEFAULT VALUES"),
            format!("UPDATE {table} SET created_at = now()"),
            format!("DELETE FROM {table}"),
            format!("TRUNCATE {table}"),
        ] {
            let err = role
                .batch_execute(&write)
                .await
                .expect_err(&format!("{write} succeeded as the walpoints role"));
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{write}: {err:?}"
            );
        }
    }
    // And it cannot make itself more.
    let err = role
        .batch_execute("ALTER ROLE walpoints SUPERUSER")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_role_needs_no_access_to_the_source() {
    let db = exchange_with_sql_role("priv_store").await;
    reference_slot(&db, "wp_ref").await;
    // The source database admits the walpoints role (and the superuser) only; the store is
    // a database of its own, owned by a role with no grant on the source.
    let admin = db.client().await;
    for sql in [
        format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", db.name),
        format!("GRANT CONNECT ON DATABASE {} TO walpoints", db.name),
        format!("CREATE ROLE wp_store LOGIN PASSWORD '{PASSWORD}'"),
        "CREATE DATABASE wp_store OWNER wp_store".to_owned(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let source_as_store_role = as_role(&db.url, "wp_store", PASSWORD);
    let refused = tokio_postgres::connect(&source_as_store_role, tokio_postgres::NoTls).await;
    let err = refused
        .err()
        .expect("the store role connected to the source");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );

    let mut wp = Walpoints::new(&db, "store_role")
        .env(
            "WALPOINTS_SOURCE_URL",
            &as_role(&db.url, "walpoints", PASSWORD),
        )
        .env("WALPOINTS_SOURCE_PUBLICATION", "walpoints");
    wp.store_url = with_db(&source_as_store_role, "wp_store");
    stream_and_compare(&db, &wp).await;
    // `status` reads the slot as the source role and the checkpoint as the store role.
    let out = wp.output(&["status"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
