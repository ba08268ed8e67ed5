//! `walpoints tail` in tests: started on a test database and waited for until its slot streams,
//! and the one-table database most tail scenarios follow.

use std::time::Duration;

use super::{eventually, Running, TestDb};

/// Waits until a walpoints tail slot is streaming on the test database.
pub async fn wait_for_active_tail_slot(db: &TestDb) {
    let client = db.client().await;
    eventually("tail's slot to become active", Duration::from_secs(30), || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walpoints_tail%' AND active AND database = current_database()",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    })
    .await;
}

/// Starts `walpoints tail ARGS` on the test database and waits until its slot streams, so every
/// change committed afterwards is seen.
pub async fn start_tail(db: &TestDb, args: &[&str]) -> Running {
    let mut cmd = db.walpoints();
    cmd.arg("tail").args(args);
    let running = Running::spawn(cmd);
    wait_for_active_tail_slot(db).await;
    running
}

/// A test database with one table, `public.t`, for `walpoints tail --table public.t` to follow.
pub struct TailedTable {
    /// The database.
    pub db: TestDb,
    /// A session on it for the test's writes.
    pub client: tokio_postgres::Client,
}

impl TailedTable {
    /// Database `name` with `CREATE TABLE t (columns)`.
    pub async fn create(name: &str, columns: &str) -> TailedTable {
        let db = TestDb::new(name).await;
        let client = db.client().await;
        client
            .batch_execute(&format!("CREATE TABLE t ({columns})"))
            .await
            .expect("create the table t");
        TailedTable { db, client }
    }

    /// Starts `walpoints tail --table public.t ARGS` and waits until it streams.
    pub async fn tail(&self, args: &[&str]) -> Running {
        let mut all = vec!["--table", "public.t"];
        all.extend_from_slice(args);
        start_tail(&self.db, &all).await
    }
}
