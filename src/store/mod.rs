//! The store: walpoints' own PostgreSQL database holding the ledger, per-user epoch totals, the
//! rules engine's state and the checkpoint.
//!
//! Exactly-once rests on one rule enforced here: a batch's ledger rows, total increments, state
//! rows, dead letters and the new checkpoint are written in ONE store transaction
//! ([`StoreTx`]), which first moves the checkpoint from the LSN this process last committed to
//! the new one. If that row is not where we left it, another process wrote to this source and
//! the batch is refused ([`StoreError::Fenced`]). The caller acknowledges the slot only after
//! [`StoreTx::commit`] returned, so after any crash the stream resumes at the checkpoint and
//! every transaction at or below it is skipped.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the connection for one source, its checkpoint, `teardown --drop-store` |
//! | [`batch`] | what one store transaction writes; the trade awards of the open batch |
//! | `tx.rs` | the open transaction: checkpoint fence, totals, postings, dead letters |
//! | `journal.rs` | the journal of inputs: appended per batch, read back by `replay` |
//! | `ledger.rs` | the compact ledger (`ledger_fill`, `ledger_position`) and the awards read from it |
//! | `ledger_read.rs` | the stored ledger read back entry by entry in commit order, for `replay` |
//! | `rules.rs` | the `rules` table: every rules version with its text |
//! | `state.rs` | the rules engine's state tables, loaded at start and written per batch |
//! | `writer.rs` | the writer task that commits one batch while the next is built |
//! | `copy.rs`, `lock.rs`, `migrate.rs` | binary COPY encoding, the one-instance lock, migrations |

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::config::ConnUrl;
use crate::lsn::Lsn;
use crate::points::EpochId;
use crate::time::micros_of;

pub mod batch;
mod copy;
mod error;
mod journal;
mod ledger;
mod ledger_read;
mod lock;
mod migrate;
mod rank;
mod rules;
mod state;
mod tx;
mod writer;

pub use batch::{Batch, BatchAwards};
pub use error::StoreError;
pub use journal::{JournalChunk, JournalReader, JournaledTx};
pub use ledger::FillRow;
pub use ledger_read::{FillSlot, StoredEntry, StoredFill, StoredItem, StoredLedger};
pub use rank::rank_bucket;
pub use tx::StoreTx;
pub use writer::{write_batches, Seal, StoreWriter, WriterJobs};

/// Where one source's stream stands in the store, and what it was set up against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The source.
    pub source_id: String,
    /// Its slot.
    pub slot_name: String,
    /// Its publication.
    pub publication: String,
    /// The source cluster's system identifier at setup.
    pub system_id: String,
    /// The slot's consistent point (where the snapshot ends and the stream begins).
    pub consistent_point: Lsn,
    /// When the snapshot was taken, µs since 1970.
    pub snapshot_time: i64,
    /// End LSN of the last source transaction whose effects are in the store.
    pub lsn: Lsn,
    /// Commit time of that transaction, µs since 1970.
    pub commit_time: i64,
    /// The engine's stream time.
    pub stream_time: Option<i64>,
    /// Source transactions applied since setup.
    pub transactions: i64,
    /// Rules version of the last batch.
    pub rules_version: String,
}

/// A connection to the store, for one source.
pub struct Store {
    pub(super) client: Client,
    pub(super) source_id: String,
    /// The rules version batches are stamped with ([`Store::use_rules`]).
    pub(super) rules_id: Option<i16>,
    /// That version's hash: rows of entries made under another version (the holding segments
    /// a rules change ends) are stamped with that one's id instead.
    pub(super) rules_version: Option<String>,
    /// Epochs whose journal and ledger partitions are known to exist.
    pub(super) partitions: std::sync::Mutex<std::collections::BTreeSet<i32>>,
    /// The hot path's statements, prepared once on this connection: each then costs one round
    /// trip to the server instead of two (parse and describe, then execute), which is most of
    /// a small batch's commit latency.
    pub(super) statements: tx::Statements,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("source_id", &self.source_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to the store. With `create_database`, a missing database is created first
    /// (through the server's `postgres` database), which is what `setup` wants.
    pub async fn connect(
        url: &ConnUrl,
        source_id: &str,
        create_database: bool,
    ) -> Result<Store, StoreError> {
        if create_database {
            ensure_database(url).await?;
        }
        let client = crate::pg::connect::connect(url, "walpoints-store").await?;
        Ok(Store {
            client,
            source_id: source_id.to_owned(),
            rules_id: None,
            rules_version: None,
            partitions: Default::default(),
            statements: Default::default(),
        })
    }

    /// The source this connection writes for.
    pub fn source_id(&self) -> &str {
        &self.source_id
    }

    /// Applies the schema migrations that are missing (idempotent, safe concurrently).
    pub async fn migrate(&mut self) -> Result<usize, StoreError> {
        migrate::migrate(&mut self.client).await
    }

    /// The checkpoint of this source, `None` before `setup` completed.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT slot_name, publication, system_id, consistent_point, snapshot_time, lsn, \
                 commit_time, stream_time, transactions, rules_version \
                 FROM walpoints.checkpoint WHERE source_id = $1",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("read the checkpoint"))?;
        Ok(row.map(|r| Checkpoint {
            source_id: self.source_id.clone(),
            slot_name: r.get(0),
            publication: r.get(1),
            system_id: r.get(2),
            consistent_point: lsn_of(r.get(3)),
            snapshot_time: micros_of(r.get(4)),
            lsn: lsn_of(r.get(5)),
            commit_time: micros_of(r.get(6)),
            stream_time: r.get(7),
            transactions: r.get(8),
            rules_version: r.get(9),
        }))
    }

    /// Opens the one store transaction a batch (or the initial snapshot) is written in.
    pub async fn begin(&mut self) -> Result<StoreTx<'_>, StoreError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(StoreError::db("begin"))?;
        Ok(StoreTx {
            tx,
            source_id: &self.source_id,
            rules_id: self.rules_id,
            rules_version: self.rules_version.as_deref(),
            partitions: &self.partitions,
            statements: &self.statements,
        })
    }

    /// Deletes everything of this source (for `teardown --drop-store`), its share of the shared
    /// totals included; drops the whole schema when no other source is left in it. Returns
    /// whether the schema was dropped.
    /// `open_credits` are the holding credits of the source's open segments (per user and
    /// epoch), which the totals hold but no ledger row does yet.
    pub async fn drop_source(
        &mut self,
        open_credits: &BTreeMap<(String, EpochId), Decimal>,
    ) -> Result<bool, StoreError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(StoreError::db("begin"))?;
        // Take this source's share out of the shared totals first, so they keep equalling the
        // ledger's sums; rows left at zero everywhere go (zero and absent read the same).
        tx.execute(
            "WITH share AS (
               SELECT user_address, epoch,
                 coalesce(sum(points) FILTER (WHERE kind LIKE 'trading%'), 0) AS tp,
                 coalesce(sum(points) FILTER (WHERE kind LIKE 'referral%'), 0) AS rp,
                 coalesce(sum(points) FILTER (WHERE kind = 'holding'), 0) AS hp,
                 coalesce(sum(points) FILTER (WHERE kind = 'pnl'), 0) AS pp,
                 sum(points) AS total,
                 coalesce(sum(basis) FILTER (WHERE kind LIKE 'trading%'), 0) AS vol
               FROM walpoints.ledger WHERE source_id = $1 GROUP BY 1, 2)
             UPDATE walpoints.user_epoch_points u SET
               trading_points = u.trading_points - s.tp,
               referral_points = u.referral_points - s.rp,
               holding_points = u.holding_points - s.hp,
               pnl_points = u.pnl_points - s.pp,
               total_points = u.total_points - s.total,
               trading_volume = u.trading_volume - s.vol,
               updated_at = now()
             FROM share s WHERE u.user_address = s.user_address AND u.epoch = s.epoch",
            &[&self.source_id],
        )
        .await
        .map_err(StoreError::db("take the source's share out of the totals"))?;
        let (mut users, mut epochs, mut points) = (Vec::new(), Vec::new(), Vec::new());
        for ((user, epoch), p) in open_credits {
            users.push(user.as_str());
            epochs.push(epoch_to_db(*epoch)?);
            points.push(*p);
        }
        tx.execute(
            "UPDATE walpoints.user_epoch_points u SET
               holding_points = u.holding_points - c.p,
               total_points = u.total_points - c.p,
               updated_at = now()
             FROM unnest($1::text[], $2::int4[], $3::numeric[]) AS c(user_address, epoch, p)
             WHERE u.user_address = c.user_address AND u.epoch = c.epoch",
            &[&users, &epochs, &points],
        )
        .await
        .map_err(StoreError::db(
            "take the source's open holding credits out of the totals",
        ))?;
        tx.execute(
            "DELETE FROM walpoints.user_epoch_points WHERE trading_points = 0 \
             AND referral_points = 0 AND holding_points = 0 AND pnl_points = 0 \
             AND total_points = 0 AND trading_volume = 0",
            &[],
        )
        .await
        .map_err(StoreError::db("delete emptied totals"))?;
        tx.execute("SELECT walpoints.rebuild_rank_buckets()", &[])
            .await
            .map_err(StoreError::db("recount the rank buckets"))?;
        for table in [
            "ledger_v1",
            "ledger_fill",
            "ledger_position",
            "journal",
            "user_batch",
            "trade_award_v1",
            "state_volume",
            "state_referral",
            "state_open_position",
            "state_pnl_paid",
            "volume_at_journal_start",
            "referral_at_journal_start",
            "open_position_at_journal_start",
            "pnl_paid_at_journal_start",
            "dead_letter",
            "checkpoint",
        ] {
            tx.execute(
                &format!("DELETE FROM walpoints.{table} WHERE source_id = $1"),
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("delete the source's rows"))?;
        }
        let others: i64 = tx
            .query_one("SELECT count(*) FROM walpoints.checkpoint", &[])
            .await
            .map_err(StoreError::db("count sources"))?
            .get(0);
        if others == 0 {
            tx.batch_execute("DROP SCHEMA walpoints CASCADE")
                .await
                .map_err(StoreError::db("drop the walpoints schema"))?;
        } else {
            tracing::info!(
                other_sources = others,
                "other sources share this store: kept the schema and their rows"
            );
        }
        tx.commit().await.map_err(StoreError::db("commit"))?;
        Ok(others == 0)
    }

    /// How many rows of this source are in `walpoints.dead_letter`.
    pub async fn dead_letters(&self) -> Result<i64, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM walpoints.dead_letter WHERE source_id = $1",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("count the dead letters"))?;
        Ok(row.get(0))
    }

    /// Runs a read-only query; for status reports and tests.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Creates the store's database when it does not exist, through the server's `postgres`
/// database (the default store is a database of its own on the source server).
async fn ensure_database(url: &ConnUrl) -> Result<(), StoreError> {
    let admin =
        match crate::pg::connect::connect(&url.with_dbname("postgres"), "walpoints-setup").await {
            Ok(c) => c,
            // No access to `postgres`: assume the operator created the database; the real connect
            // will say so if not.
            Err(e) if !e.is_transient() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&url.dbname],
        )
        .await
        .map_err(StoreError::db("look for the store database"))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                crate::identifier::quote_ident(&url.dbname)
            ))
            .await
            .map_err(StoreError::db("create the store database"))?;
        tracing::info!(database = %url.dbname, "store database created");
    }
    Ok(())
}

/// An LSN as a `pg_lsn` parameter.
fn pg_lsn(lsn: Lsn) -> PgLsn {
    PgLsn::from(lsn.0)
}

/// A `pg_lsn` column as an LSN.
fn lsn_of(lsn: PgLsn) -> Lsn {
    Lsn(u64::from(lsn))
}

fn epoch_to_db(e: EpochId) -> Result<i32, StoreError> {
    i32::try_from(e).map_err(|_| StoreError::OutOfRange(format!("epoch {e} out of range")))
}
