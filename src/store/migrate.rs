//! The store's schema: the SQL files in `migrations/`, embedded in the binary, applied in order
//! and recorded in `walpoints.migrations` so that `setup` and `run` can both apply them safely,
//! concurrently too (an advisory lock serializes them).

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::StoreError;

/// Every migration in order: (version, file name, SQL). Never edit one that has shipped: add the
/// next file instead; a changed checksum stops walpoints.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_referrer_index.sql",
        include_str!("../../migrations/0002_referrer_index.sql"),
    ),
    (
        3,
        "0003_journal.sql",
        include_str!("../../migrations/0003_journal.sql"),
    ),
    (
        4,
        "0004_rank_cover_index.sql",
        include_str!("../../migrations/0004_rank_cover_index.sql"),
    ),
    (
        5,
        "0005_holding_segments.sql",
        include_str!("../../migrations/0005_holding_segments.sql"),
    ),
    (
        6,
        "0006_rank_buckets.sql",
        include_str!("../../migrations/0006_rank_buckets.sql"),
    ),
    (
        7,
        "0007_lean_trade_index.sql",
        include_str!("../../migrations/0007_lean_trade_index.sql"),
    ),
];

/// Creates the schema and applies the migrations the store has not recorded yet; returns how
/// many were applied.
pub(super) async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(StoreError::db("begin migrations"))?;
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock(hashtext('walpoints.migrate'));
         CREATE SCHEMA IF NOT EXISTS walpoints;
         CREATE TABLE IF NOT EXISTS walpoints.migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await
    .map_err(StoreError::db("create the walpoints schema"))?;
    let rows = tx
        .query(
            "SELECT version, name, checksum FROM walpoints.migrations",
            &[],
        )
        .await
        .map_err(StoreError::db("read walpoints.migrations"))?;
    let recorded: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        match recorded.iter().find(|(v, _, _)| *v == version) {
            Some((_, _, c)) if *c == checksum => continue,
            Some((_, recorded_name, _)) => {
                return Err(StoreError::Schema(format!(
                    "migration {version} ({recorded_name}) in the store differs from the one \
                     this walpoints ships ({name}): the store was created by another build. \
                     Use the walpoints version that created it, or start a new store."
                )))
            }
            None => {}
        }
        tx.batch_execute(sql)
            .await
            .map_err(StoreError::db("apply a migration"))?;
        tx.execute(
            "INSERT INTO walpoints.migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &checksum],
        )
        .await
        .map_err(StoreError::db("record a migration"))?;
        tracing::info!(version, name, "store migration applied");
        applied += 1;
    }
    if let Some((v, n, _)) = recorded
        .iter()
        .find(|(v, _, _)| !MIGRATIONS.iter().any(|m| m.0 == *v))
    {
        return Err(StoreError::Schema(format!(
            "the store has migration {v} ({n}), which this walpoints does not know: it was \
             upgraded by a newer walpoints. Run that version."
        )));
    }
    tx.commit()
        .await
        .map_err(StoreError::db("commit migrations"))?;
    Ok(applied)
}
