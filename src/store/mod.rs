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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Transaction};

use crate::config::ConnUrl;
use crate::lsn::Lsn;
use crate::points::{
    Award, AwardBook, EpochId, LedgerEntry, OpenPositionRow, PositionRow, ReferralRow, State,
    StateDelta, Totals, VolumeRow,
};

mod copy;
mod lock;
mod migrate;
mod writer;

pub use writer::{write_batches, Seal, StoreWriter, WriterJobs};

/// Why a store operation failed, split by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is unreachable or restarting, or the transaction hit a serialization failure:
    /// reconnect and retry; nothing was committed.
    #[error("store unavailable: {0}")]
    Transient(String),
    /// Another process moved this source's checkpoint: two instances are running.
    #[error(
        "the store's checkpoint for source {source_id:?} is at {found}, not at {expected} where \
         this process left it: another walpoints instance is writing the same source. Stop it \
         (only one `walpoints run` per source id may run at a time)"
    )]
    Fenced {
        /// The source.
        source_id: String,
        /// Where this process left it.
        expected: Lsn,
        /// Where it is.
        found: String,
    },
    /// Anything else: a bad schema, a constraint violation, a value out of range. Stop.
    #[error("store: {0}")]
    Definite(String),
    /// The store's database does not exist (yet: `setup` creates it).
    #[error("store: {0}")]
    NoDatabase(String),
}

impl StoreError {
    /// Whether reconnecting and retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }

    /// Wraps a driver error with what we were doing, classified.
    fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
        move |e| {
            let text = format!("{what}: {}", crate::pgconn::error_text(&e));
            if crate::pgconn::is_transient(&e) {
                StoreError::Transient(text)
            } else {
                StoreError::Definite(text)
            }
        }
    }
}

impl From<crate::pgconn::ConnectError> for StoreError {
    fn from(e: crate::pgconn::ConnectError) -> Self {
        match e {
            crate::pgconn::ConnectError::Transient(m) => StoreError::Transient(m),
            crate::pgconn::ConnectError::Definite(m) => StoreError::Definite(m),
            crate::pgconn::ConnectError::NoDatabase(m) => StoreError::NoDatabase(m),
        }
    }
}

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

/// A row that could not be used, kept with its position and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Commit LSN of the source transaction.
    pub commit_lsn: Lsn,
    /// Position among the transaction's dead letters.
    pub seq: u32,
    /// WAL position of the change.
    pub lsn: Lsn,
    /// `schema.table`.
    pub table: String,
    /// insert / update / delete / truncate.
    pub op: String,
    /// Stable reason code (a metrics label).
    pub reason: String,
    /// What was wrong, for a human.
    pub detail: String,
    /// The row as JSON.
    pub row: serde_json::Value,
    /// Commit time of the transaction, µs since 1970.
    pub at: i64,
}

/// Everything one store transaction writes besides the checkpoint.
#[derive(Debug, Default)]
pub struct Batch {
    /// Ledger rows with their transaction's commit LSN and commit time.
    pub entries: Vec<(Lsn, i64, LedgerEntry)>,
    /// Increments of `user_epoch_points`, one per (user, epoch).
    pub totals: BTreeMap<(String, EpochId), Totals>,
    /// Changed engine state.
    pub state: StateDelta,
    /// Changed trade awards (`None`: forget the trade).
    pub awards: BTreeMap<String, Option<Award>>,
    /// Rows dead-lettered.
    pub dead: Vec<DeadLetter>,
}

impl Batch {
    /// Adds a transaction's entries and their totals.
    pub fn add_entries(
        &mut self,
        commit_lsn: Lsn,
        commit_time: i64,
        entries: Vec<LedgerEntry>,
    ) -> Result<(), StoreError> {
        for e in entries {
            self.totals
                .entry((e.user.clone(), e.epoch))
                .or_default()
                .add_entry(&e)
                .map_err(|e| StoreError::Definite(format!("totals: {e}")))?;
            self.entries.push((commit_lsn, commit_time, e));
        }
        Ok(())
    }
}

/// Awards for the engine during one batch: what the store has (fetched on demand before each
/// transaction) overlaid by what this batch changed, which is written with the batch.
#[derive(Debug, Default)]
pub struct BatchAwards {
    fetched: HashMap<String, Option<Award>>,
    changed: BTreeMap<String, Option<Award>>,
}

impl BatchAwards {
    /// The ids among `ids` whose award this batch has neither changed nor fetched yet: what
    /// must be read from the store before the engine call.
    pub fn missing<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<String> {
        let mut missing: Vec<String> = ids
            .filter(|id| !self.changed.contains_key(*id) && !self.fetched.contains_key(*id))
            .map(str::to_owned)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Records what the store answered for `missing` (ids it does not know have no award), so
    /// that [`AwardBook::get`] answers from memory during the engine call.
    pub fn record_fetched(&mut self, missing: Vec<String>, found: Vec<(String, Award)>) {
        for id in missing {
            self.fetched.insert(id, None);
        }
        for (id, award) in found {
            self.fetched.insert(id, Some(award));
        }
    }

    /// How many awards this batch changed (and holds until they are written).
    pub fn changed(&self) -> usize {
        self.changed.len()
    }

    /// Hands the batch's changes over for writing and forgets everything.
    pub fn take_changes(&mut self) -> BTreeMap<String, Option<Award>> {
        self.fetched.clear();
        std::mem::take(&mut self.changed)
    }
}

impl AwardBook for BatchAwards {
    fn get(&self, trade_id: &str) -> Option<Award> {
        match self.changed.get(trade_id) {
            Some(a) => a.clone(),
            None => self.fetched.get(trade_id).cloned().flatten(),
        }
    }

    fn put(&mut self, trade_id: &str, award: Award) {
        self.changed.insert(trade_id.to_owned(), Some(award));
    }

    fn remove(&mut self, trade_id: &str) {
        self.changed.insert(trade_id.to_owned(), None);
    }
}

/// A connection to the store, for one source.
pub struct Store {
    client: Client,
    source_id: String,
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
        let client = crate::pgconn::connect(url, "walpoints-store").await?;
        Ok(Store {
            client,
            source_id: source_id.to_owned(),
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
            consistent_point: Lsn(u64::from(r.get::<_, PgLsn>(3))),
            snapshot_time: micros_of(r.get(4)),
            lsn: Lsn(u64::from(r.get::<_, PgLsn>(5))),
            commit_time: micros_of(r.get(6)),
            stream_time: r.get(7),
            transactions: r.get(8),
            rules_version: r.get(9),
        }))
    }

    /// Rebuilds the engine's state from the store (with change tracking on), as of the
    /// checkpoint. Rows are streamed and applied in chunks, so loading a million open positions
    /// never holds them twice (as rows and as state).
    pub async fn load_state(&self, stream_time: Option<i64>) -> Result<State, StoreError> {
        let mut state = State::new();
        state
            .apply_delta(StateDelta {
                stream_time,
                ..StateDelta::default()
            })
            .map_err(|e| StoreError::Definite(format!("loading the rules state: {e}")))?;
        self.load_rows(
            &mut state,
            "SELECT user_address, epoch, volume FROM walpoints.state_volume WHERE source_id = $1",
            |r, d| {
                d.volumes.push(VolumeRow {
                    user: col(r, 0)?,
                    epoch: epoch_from_db(col(r, 1)?)?,
                    volume: col(r, 2)?,
                });
                Ok(())
            },
        )
        .await?;
        self.load_rows(
            &mut state,
            "SELECT referee, referrer FROM walpoints.state_referral WHERE source_id = $1",
            |r, d| {
                d.referrals.push(ReferralRow {
                    referee: col(r, 0)?,
                    referrer: Some(col(r, 1)?),
                });
                Ok(())
            },
        )
        .await?;
        let positions: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM walpoints.state_open_position WHERE source_id = $1",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("count the open positions"))?
            .get(0);
        state.reserve_positions(usize::try_from(positions).unwrap_or(0));
        self.load_rows(
            &mut state,
            "SELECT position_id, user_address, notional, since \
             FROM walpoints.state_open_position WHERE source_id = $1",
            |r, d| {
                d.positions.push(PositionRow {
                    id: col(r, 0)?,
                    open: Some(OpenPositionRow {
                        user: col(r, 1)?,
                        notional: col(r, 2)?,
                        since: col(r, 3)?,
                    }),
                });
                Ok(())
            },
        )
        .await?;
        self.load_rows(
            &mut state,
            "SELECT position_id FROM walpoints.state_pnl_paid WHERE source_id = $1",
            |r, d| {
                d.pnl_paid.push(col(r, 0)?);
                Ok(())
            },
        )
        .await?;
        state.enable_change_tracking();
        Ok(state)
    }

    /// Streams one state table's rows of this source into `state`, `LOAD_CHUNK` at a time.
    async fn load_rows(
        &self,
        state: &mut State,
        sql: &str,
        mut add: impl FnMut(&tokio_postgres::Row, &mut StateDelta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
        const LOAD_CHUNK: usize = 10_000;
        let err = StoreError::db("load the rules state");
        let rows = self
            .client
            .query_raw(sql, [&self.source_id])
            .await
            .map_err(&err)?;
        futures_util::pin_mut!(rows);
        let mut chunk = StateDelta::default();
        let mut n = 0;
        loop {
            let row = rows.try_next().await.map_err(&err)?;
            let done = row.is_none();
            if let Some(row) = row {
                add(&row, &mut chunk)?;
                n += 1;
            }
            if done || n == LOAD_CHUNK {
                state
                    .apply_delta(std::mem::take(&mut chunk))
                    .map_err(|e| StoreError::Definite(format!("loading the rules state: {e}")))?;
                n = 0;
            }
            if done {
                return Ok(());
            }
        }
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
        })
    }

    /// Deletes everything of this source (for `teardown --drop-store`), its share of the shared
    /// totals included; drops the whole schema when no other source is left in it. Returns
    /// whether the schema was dropped.
    pub async fn drop_source(&mut self) -> Result<bool, StoreError> {
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
        tx.execute(
            "DELETE FROM walpoints.user_epoch_points WHERE trading_points = 0 \
             AND referral_points = 0 AND holding_points = 0 AND pnl_points = 0 \
             AND total_points = 0 AND trading_volume = 0",
            &[],
        )
        .await
        .map_err(StoreError::db("delete emptied totals"))?;
        for table in [
            "ledger",
            "state_volume",
            "state_referral",
            "state_open_position",
            "state_pnl_paid",
            "trade_award",
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

    /// Runs a read-only query; for status reports and tests.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Creates the store's database when it does not exist, through the server's `postgres`
/// database (the default store is a database of its own on the source server).
async fn ensure_database(url: &ConnUrl) -> Result<(), StoreError> {
    let admin = match crate::pgconn::connect(&url.with_dbname("postgres"), "walpoints-setup").await
    {
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
                crate::config::quote_ident(&url.dbname)
            ))
            .await
            .map_err(StoreError::db("create the store database"))?;
        tracing::info!(database = %url.dbname, "store database created");
    }
    Ok(())
}

/// One open store transaction: write batches into it, then commit.
pub struct StoreTx<'a> {
    tx: Transaction<'a>,
    source_id: &'a str,
}

impl StoreTx<'_> {
    /// Records a new source (the end of `setup`); fails if it exists.
    pub async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO walpoints.checkpoint (source_id, slot_name, publication, system_id, \
                 consistent_point, snapshot_time, lsn, commit_time, stream_time, transactions, \
                 rules_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &self.source_id,
                    &cp.slot_name,
                    &cp.publication,
                    &cp.system_id,
                    &PgLsn::from(cp.consistent_point.0),
                    &time_of(cp.snapshot_time),
                    &PgLsn::from(cp.lsn.0),
                    &time_of(cp.commit_time),
                    &cp.stream_time,
                    &cp.transactions,
                    &cp.rules_version,
                ],
            )
            .await
            .map_err(StoreError::db("record the checkpoint"))?;
        Ok(())
    }

    /// Moves the checkpoint from `from` (where this process left it) to `to`; refuses with
    /// [`StoreError::Fenced`] if it is elsewhere. Run it first: its row lock also keeps a second
    /// instance's batch waiting until this one commits.
    pub async fn advance_checkpoint(
        &self,
        from: Lsn,
        to: Lsn,
        commit_time: i64,
        stream_time: Option<i64>,
        transactions: u64,
        rules_version: &str,
    ) -> Result<(), StoreError> {
        let n = self
            .tx
            .execute(
                "UPDATE walpoints.checkpoint SET lsn = $2, commit_time = $3, stream_time = $4, \
                 transactions = transactions + $5, rules_version = $6, updated_at = now() \
                 WHERE source_id = $1 AND lsn = $7",
                &[
                    &self.source_id,
                    &PgLsn::from(to.0),
                    &time_of(commit_time),
                    &stream_time,
                    &i64::try_from(transactions).unwrap_or(i64::MAX),
                    &rules_version,
                    &PgLsn::from(from.0),
                ],
            )
            .await
            .map_err(StoreError::db("advance the checkpoint"))?;
        self.moved_or_fenced(n, from).await
    }

    /// Moves the checkpoint over WAL that held nothing for walpoints (the stream was idle at
    /// `from` and the server has sent everything up to `to`), so the slot can be acknowledged
    /// that far: PostgreSQL's shutdown waits for its walsenders' clients to confirm all WAL.
    pub async fn advance_idle(&self, from: Lsn, to: Lsn) -> Result<(), StoreError> {
        let n = self
            .tx
            .execute(
                "UPDATE walpoints.checkpoint SET lsn = $2, updated_at = now() \
                 WHERE source_id = $1 AND lsn = $3",
                &[&self.source_id, &PgLsn::from(to.0), &PgLsn::from(from.0)],
            )
            .await
            .map_err(StoreError::db("advance the checkpoint"))?;
        self.moved_or_fenced(n, from).await
    }

    /// `Ok` when one checkpoint row moved; otherwise the row is elsewhere (another writer).
    async fn moved_or_fenced(&self, n: u64, from: Lsn) -> Result<(), StoreError> {
        if n == 1 {
            return Ok(());
        }
        let found = self
            .tx
            .query_opt(
                "SELECT lsn::text FROM walpoints.checkpoint WHERE source_id = $1",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("read the checkpoint"))?
            .map_or_else(|| "nowhere (the source was removed)".into(), |r| r.get(0));
        Err(StoreError::Fenced {
            source_id: self.source_id.to_owned(),
            expected: from,
            found,
        })
    }

    /// Locks this source's checkpoint row and checks it is where this process left it (`from`),
    /// refusing with [`StoreError::Fenced`] otherwise. Run it first in a batch whose end is not
    /// known yet: the lock keeps a second instance's batch waiting until this one commits, and
    /// [`StoreTx::advance_checkpoint`] moves the row at the end.
    pub async fn lock_checkpoint(&self, from: Lsn) -> Result<(), StoreError> {
        let found: Option<PgLsn> = self
            .tx
            .query_opt(
                "SELECT lsn FROM walpoints.checkpoint WHERE source_id = $1 FOR UPDATE",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("lock the checkpoint"))?
            .map(|r| r.get(0));
        match found {
            Some(lsn) if u64::from(lsn) == from.0 => Ok(()),
            other => Err(StoreError::Fenced {
                source_id: self.source_id.to_owned(),
                expected: from,
                found: other.map_or_else(
                    || "nowhere (the source was removed)".into(),
                    |l| Lsn(u64::from(l)).to_string(),
                ),
            }),
        }
    }

    /// The stored awards of `ids`, as this transaction sees them (its own uncommitted writes
    /// included); ids without an award are absent.
    pub async fn awards(&self, ids: &[String]) -> Result<Vec<(String, Award)>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT trade_id, award FROM walpoints.trade_award \
                 WHERE source_id = $1 AND trade_id = ANY($2)",
                &[&self.source_id, &ids],
            )
            .await
            .map_err(StoreError::db("read trade awards"))?;
        rows.iter()
            .map(|row| {
                let id: String = row.get(0);
                let json: &str = row.get(1);
                let award: Award = serde_json::from_str(json).map_err(|e| {
                    StoreError::Definite(format!("walpoints.trade_award of trade {id}: {e}"))
                })?;
                Ok((id, award))
            })
            .collect()
    }

    /// Writes a batch: ledger rows (binary COPY), one total increment per (user, epoch), state
    /// rows, awards and dead letters.
    pub async fn write(&self, batch: &mut Batch) -> Result<(), StoreError> {
        self.copy_ledger(&batch.entries).await?;
        self.add_totals(&batch.totals).await?;
        self.write_state(&batch.state).await?;
        self.write_awards(&batch.awards).await?;
        for d in &batch.dead {
            self.tx
                .execute(
                    "INSERT INTO walpoints.dead_letter (source_id, commit_lsn, seq, lsn, \
                     table_name, op, reason, detail, row, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10)",
                    &[
                        &self.source_id,
                        &PgLsn::from(d.commit_lsn.0),
                        &i32::try_from(d.seq).unwrap_or(i32::MAX),
                        &PgLsn::from(d.lsn.0),
                        &d.table,
                        &d.op,
                        &d.reason,
                        &d.detail,
                        &d.row.to_string(),
                        &time_of(d.at),
                    ],
                )
                .await
                .map_err(StoreError::db("write a dead letter"))?;
        }
        Ok(())
    }

    /// Commits: from here on the batch is durable and its LSN may be acknowledged.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::db("commit"))
    }

    async fn copy_ledger(&self, entries: &[(Lsn, i64, LedgerEntry)]) -> Result<(), StoreError> {
        use futures_util::SinkExt;
        if entries.is_empty() {
            return Ok(());
        }
        let sink = self
            .tx
            .copy_in(
                "COPY walpoints.ledger (source_id, commit_lsn, ordinal, user_address, epoch, \
                 kind, reversal, points, basis, multiplier, rate, position_notional, trade_id, \
                 position_id, referee, segment_start, event_time, commit_time, rules_version) \
                 FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(StoreError::db("start the ledger COPY"))?;
        futures_util::pin_mut!(sink);
        let mut rows = copy::Rows::new();
        for (commit_lsn, commit_time, e) in entries {
            let ordinal = i32::try_from(e.ordinal)
                .map_err(|_| StoreError::Definite(format!("ordinal {} too big", e.ordinal)))?;
            let mut row = rows.row(19);
            row.text(self.source_id);
            row.i64(i64::try_from(commit_lsn.0).unwrap_or(i64::MAX));
            row.i32(ordinal);
            row.text(&e.user);
            row.i32(epoch_to_db(e.epoch)?);
            row.text(e.kind.as_str());
            row.bool(e.reversal);
            for d in [e.points, e.basis, e.multiplier, e.rate] {
                row.numeric(&d)?;
            }
            match &e.position_notional {
                Some(d) => row.numeric(d)?,
                None => row.null(),
            }
            for t in [&e.trade_id, &e.position_id, &e.referee] {
                match t {
                    Some(t) => row.text(t),
                    None => row.null(),
                }
            }
            match e.segment_start {
                Some(t) => row.timestamp(t),
                None => row.null(),
            }
            row.timestamp(e.event_time);
            row.timestamp(*commit_time);
            row.text(&e.rules_version);
            if rows.len() >= copy::CHUNK_BYTES {
                sink.send(rows.take())
                    .await
                    .map_err(StoreError::db("write ledger rows"))?;
            }
        }
        sink.send(rows.finish())
            .await
            .map_err(StoreError::db("write ledger rows"))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(StoreError::db("finish the ledger COPY"))?;
        Ok(())
    }

    async fn add_totals(
        &self,
        totals: &BTreeMap<(String, EpochId), Totals>,
    ) -> Result<(), StoreError> {
        if totals.is_empty() {
            return Ok(());
        }
        // Sorted by key (BTreeMap), so concurrent sources lock rows in the same order.
        let mut users = Vec::with_capacity(totals.len());
        let mut epochs = Vec::with_capacity(totals.len());
        let mut cols: [Vec<Decimal>; 6] = Default::default();
        for ((user, epoch), t) in totals {
            users.push(user.as_str());
            epochs.push(epoch_to_db(*epoch)?);
            for (col, v) in cols.iter_mut().zip([
                t.trading_points,
                t.referral_points,
                t.holding_points,
                t.pnl_points,
                t.total_points,
                t.trading_volume,
            ]) {
                col.push(v);
            }
        }
        self.tx
            .execute(
                "INSERT INTO walpoints.user_epoch_points AS t (user_address, epoch, \
                 trading_points, referral_points, holding_points, pnl_points, total_points, \
                 trading_volume) \
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::numeric[], $4::numeric[], \
                 $5::numeric[], $6::numeric[], $7::numeric[], $8::numeric[]) \
                 ON CONFLICT (user_address, epoch) DO UPDATE SET \
                 trading_points = t.trading_points + excluded.trading_points, \
                 referral_points = t.referral_points + excluded.referral_points, \
                 holding_points = t.holding_points + excluded.holding_points, \
                 pnl_points = t.pnl_points + excluded.pnl_points, \
                 total_points = t.total_points + excluded.total_points, \
                 trading_volume = t.trading_volume + excluded.trading_volume, \
                 updated_at = now()",
                &[
                    &users, &epochs, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4], &cols[5],
                ],
            )
            .await
            .map_err(StoreError::db("add to user_epoch_points"))?;
        Ok(())
    }

    async fn write_state(&self, s: &StateDelta) -> Result<(), StoreError> {
        let id = &self.source_id;
        let err = StoreError::db("write the rules state");
        let (gone, kept): (Vec<&VolumeRow>, Vec<&VolumeRow>) =
            s.volumes.iter().partition(|v| v.volume.is_zero());
        if !gone.is_empty() {
            let users: Vec<&str> = gone.iter().map(|v| v.user.as_str()).collect();
            let epochs = gone
                .iter()
                .map(|v| epoch_to_db(v.epoch))
                .collect::<Result<Vec<_>, _>>()?;
            self.tx
                .execute(
                    "DELETE FROM walpoints.state_volume s USING unnest($2::text[], $3::int4[]) \
                     AS x(u, e) WHERE s.source_id = $1 AND s.user_address = x.u AND s.epoch = x.e",
                    &[id, &users, &epochs],
                )
                .await
                .map_err(&err)?;
        }
        if !kept.is_empty() {
            let users: Vec<&str> = kept.iter().map(|v| v.user.as_str()).collect();
            let epochs = kept
                .iter()
                .map(|v| epoch_to_db(v.epoch))
                .collect::<Result<Vec<_>, _>>()?;
            let volumes: Vec<Decimal> = kept.iter().map(|v| v.volume).collect();
            self.tx
                .execute(
                    "INSERT INTO walpoints.state_volume (source_id, user_address, epoch, volume) \
                     SELECT $1, * FROM unnest($2::text[], $3::int4[], $4::numeric[]) \
                     ON CONFLICT (source_id, user_address, epoch) \
                     DO UPDATE SET volume = excluded.volume",
                    &[id, &users, &epochs, &volumes],
                )
                .await
                .map_err(&err)?;
        }
        let (bound, unbound): (Vec<&ReferralRow>, Vec<&ReferralRow>) =
            s.referrals.iter().partition(|r| r.referrer.is_some());
        if !unbound.is_empty() {
            let referees: Vec<&str> = unbound.iter().map(|r| r.referee.as_str()).collect();
            self.tx
                .execute(
                    "DELETE FROM walpoints.state_referral WHERE source_id = $1 \
                     AND referee = ANY($2)",
                    &[id, &referees],
                )
                .await
                .map_err(&err)?;
        }
        if !bound.is_empty() {
            let referees: Vec<&str> = bound.iter().map(|r| r.referee.as_str()).collect();
            let referrers: Vec<&str> = bound.iter().filter_map(|r| r.referrer.as_deref()).collect();
            self.tx
                .execute(
                    "INSERT INTO walpoints.state_referral (source_id, referee, referrer) \
                     SELECT $1, * FROM unnest($2::text[], $3::text[]) \
                     ON CONFLICT (source_id, referee) DO UPDATE SET referrer = excluded.referrer",
                    &[id, &referees, &referrers],
                )
                .await
                .map_err(&err)?;
        }
        let (open, closed): (Vec<&PositionRow>, Vec<&PositionRow>) =
            s.positions.iter().partition(|p| p.open.is_some());
        if !closed.is_empty() {
            let ids: Vec<&str> = closed.iter().map(|p| p.id.as_str()).collect();
            self.tx
                .execute(
                    "DELETE FROM walpoints.state_open_position WHERE source_id = $1 \
                     AND position_id = ANY($2)",
                    &[id, &ids],
                )
                .await
                .map_err(&err)?;
        }
        if !open.is_empty() {
            let mut ids = Vec::new();
            let mut users = Vec::new();
            let mut notionals = Vec::new();
            let mut sinces = Vec::new();
            for p in &open {
                if let Some(o) = &p.open {
                    ids.push(p.id.as_str());
                    users.push(o.user.as_str());
                    notionals.push(o.notional);
                    sinces.push(o.since);
                }
            }
            self.tx
                .execute(
                    "INSERT INTO walpoints.state_open_position (source_id, position_id, \
                     user_address, notional, since) \
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::numeric[], $5::int8[]) \
                     ON CONFLICT (source_id, position_id) DO UPDATE SET \
                     user_address = excluded.user_address, notional = excluded.notional, \
                     since = excluded.since",
                    &[id, &ids, &users, &notionals, &sinces],
                )
                .await
                .map_err(&err)?;
        }
        if !s.pnl_paid.is_empty() {
            self.tx
                .execute(
                    "INSERT INTO walpoints.state_pnl_paid (source_id, position_id) \
                     SELECT $1, * FROM unnest($2::text[]) ON CONFLICT DO NOTHING",
                    &[id, &s.pnl_paid],
                )
                .await
                .map_err(&err)?;
        }
        Ok(())
    }

    async fn write_awards(
        &self,
        awards: &BTreeMap<String, Option<Award>>,
    ) -> Result<(), StoreError> {
        let err = StoreError::db("write trade awards");
        let mut gone = Vec::new();
        let mut ids = Vec::new();
        let mut jsons = Vec::new();
        for (id, award) in awards {
            match award {
                None => gone.push(id.as_str()),
                Some(a) => {
                    ids.push(id.as_str());
                    jsons.push(
                        serde_json::to_string(a)
                            .map_err(|e| StoreError::Definite(format!("award of {id}: {e}")))?,
                    );
                }
            }
        }
        if !gone.is_empty() {
            self.tx
                .execute(
                    "DELETE FROM walpoints.trade_award WHERE source_id = $1 \
                     AND trade_id = ANY($2)",
                    &[&self.source_id, &gone],
                )
                .await
                .map_err(&err)?;
        }
        if !ids.is_empty() {
            self.tx
                .execute(
                    "INSERT INTO walpoints.trade_award (source_id, trade_id, award) \
                     SELECT $1, i, a FROM unnest($2::text[], $3::text[]) AS x(i, a) \
                     ON CONFLICT (source_id, trade_id) DO UPDATE SET award = excluded.award",
                    &[&self.source_id, &ids, &jsons],
                )
                .await
                .map_err(&err)?;
        }
        Ok(())
    }
}

/// Column `i` of a state row; a value that does not convert (a hand-edited store) is definite.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| StoreError::Definite(format!("loading the rules state: {e}")))
}

fn epoch_to_db(e: EpochId) -> Result<i32, StoreError> {
    i32::try_from(e).map_err(|_| StoreError::Definite(format!("epoch {e} out of range")))
}

fn epoch_from_db(e: i32) -> Result<EpochId, StoreError> {
    EpochId::try_from(e).map_err(|_| StoreError::Definite(format!("stored epoch {e} is negative")))
}

/// µs since 1970 as a `timestamptz` parameter.
pub fn time_of(micros: i64) -> SystemTime {
    let d = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A `timestamptz` as µs since 1970.
pub fn micros_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_system_time() {
        for m in [0, 1, -1, 1_767_225_600_000_000, -86_400_000_001] {
            assert_eq!(micros_of(time_of(m)), m);
        }
    }
}
