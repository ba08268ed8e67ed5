//! One open store transaction: everything a batch (or the initial snapshot) writes, then the
//! commit after which its LSN may be acknowledged.
//!
//! The checkpoint row is this transaction's fence: [`StoreTx::lock_checkpoint`] first (it must
//! be where this process left it, and its row lock holds back a second writer), the batch's rows
//! in between, [`StoreTx::advance_checkpoint`] last.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Statement, Transaction};

use super::batch::UserBatch;
use super::{epoch_to_db, lsn_of, pg_lsn, Batch, Checkpoint, StoreError};
use crate::dead_letter::DeadLetter;
use crate::lsn::Lsn;
use crate::points::{EpochId, Totals};
use crate::time::system_time;

/// Rows of a per-user table (`user_epoch_points`, `user_batch`, the rule state) written by one
/// `unnest` statement. A backlog batch touches 200,000 users or more; as one statement its
/// parameters were encoded twice at once (the client's message buffer and the connection's
/// write buffer, 27 MB each) next to 30 MB of column vectors, the peak of `run`'s RSS.
/// Statements of this many rows keep that to a few MB, and cost nothing measurable: a
/// statement per 10,000 rows.
pub(super) const ROWS_PER_STATEMENT: usize = 10_000;

/// One open store transaction: write batches into it, then commit.
pub struct StoreTx<'a> {
    pub(super) tx: Transaction<'a>,
    pub(super) source_id: &'a str,
    pub(super) rules_id: Option<i16>,
    pub(super) rules_version: Option<&'a str>,
    /// Epochs whose partitions exist, shared by the connection's transactions.
    pub(super) partitions: &'a std::sync::Mutex<std::collections::BTreeSet<i32>>,
    /// The connection's prepared statements ([`StoreTx::prepared`]).
    pub(super) statements: &'a Statements,
}

/// A connection's prepared statements by their text. A prepared statement outlives the
/// transaction that prepared it (even one rolled back), so the cache lives with the connection.
pub(super) type Statements = std::sync::Mutex<std::collections::HashMap<String, Statement>>;

impl StoreTx<'_> {
    /// `sql` prepared on this connection, once: the hot path's statements then cost one round
    /// trip each, and independent ones sent together ([`StoreTx::write_keyed`]) one between them.
    pub(super) async fn prepared(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cached = self
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
            .cloned();
        if let Some(statement) = cached {
            return Ok(statement);
        }
        let statement = self.tx.prepare(sql).await?;
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Executes `sql` as a prepared statement ([`StoreTx::prepared`]).
    pub(super) async fn execute_prepared(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepared(sql).await?;
        self.tx.execute(&statement, params).await
    }

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
                    &pg_lsn(cp.consistent_point),
                    &system_time(cp.snapshot_time),
                    &pg_lsn(cp.lsn),
                    &system_time(cp.commit_time),
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
    /// [`StoreError::Fenced`] if it is elsewhere. The batch's [`StoreTx::lock_checkpoint`] took
    /// the row's lock at its start; this runs at its end, sent with the keyed statements.
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
            .execute_prepared(
                "UPDATE walpoints.checkpoint SET lsn = $2, commit_time = $3, stream_time = $4, \
                 transactions = transactions + $5, rules_version = $6, updated_at = now() \
                 WHERE source_id = $1 AND lsn = $7",
                &[
                    &self.source_id,
                    &pg_lsn(to),
                    &system_time(commit_time),
                    &stream_time,
                    &i64::try_from(transactions).unwrap_or(i64::MAX),
                    &rules_version,
                    &pg_lsn(from),
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
            .execute_prepared(
                "UPDATE walpoints.checkpoint SET lsn = $2, updated_at = now() \
                 WHERE source_id = $1 AND lsn = $3",
                &[&self.source_id, &pg_lsn(to), &pg_lsn(from)],
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
                &self
                    .prepared(
                        "SELECT lsn FROM walpoints.checkpoint WHERE source_id = $1 FOR UPDATE",
                    )
                    .await
                    .map_err(StoreError::db("lock the checkpoint"))?,
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
                    |l| lsn_of(l).to_string(),
                ),
            }),
        }
    }

    /// Writes a batch: the journal and the compact ledger (binary COPY, appended in commit
    /// order), one total increment and one `user_batch` posting per (user, epoch), state rows
    /// and dead letters.
    pub async fn write(&self, batch: &mut Batch) -> Result<(), StoreError> {
        self.write_appends(batch).await?;
        self.write_keyed(batch).await
    }

    /// The appended part of [`StoreTx::write`]: the journal and the compact ledger, each one
    /// `COPY` (which holds the connection until it ends, so these go one after another).
    pub async fn write_appends(&self, batch: &mut Batch) -> Result<(), StoreError> {
        self.ensure_partitions(batch).await?;
        self.copy_journal(batch.journal()).await?;
        self.copy_fills(&batch.fills).await?;
        self.copy_position_entries(&batch.entries).await
    }

    /// The keyed part of [`StoreTx::write`]: totals, postings, rule state and dead letters.
    /// They touch different tables, so they are sent together (pipelined on the connection)
    /// and a small batch pays one round trip for them, not one each: the commit latency of a
    /// live batch is mostly round trips. The first statement to fail is the error reported.
    pub async fn write_keyed(&self, batch: &Batch) -> Result<(), StoreError> {
        let sorted = batch.sorted_totals();
        let (totals, postings, state, dead) = tokio::join!(
            async {
                let moves = self.add_totals(&sorted, &batch.credits).await?;
                self.move_rank_buckets(&moves).await
            },
            self.add_postings(batch, &sorted),
            self.write_state(&batch.state),
            self.write_dead_letters(&batch.dead),
        );
        first_failure([totals, postings, state, dead])
    }

    /// The ids of the rules versions among `versions` other than this connection's (entries
    /// made under the rules in force before a change: the holding segments it ended).
    pub(super) async fn other_rules_ids<'v>(
        &self,
        versions: impl Iterator<Item = &'v str>,
    ) -> Result<std::collections::HashMap<String, i16>, StoreError> {
        let mut others: Vec<&str> = versions
            .filter(|v| Some(*v) != self.rules_version)
            .collect();
        if others.is_empty() {
            return Ok(Default::default());
        }
        others.sort_unstable();
        others.dedup();
        let rows = self
            .tx
            .query(
                "SELECT version, rules_id FROM walpoints.rules WHERE version = ANY($1)",
                &[&others],
            )
            .await
            .map_err(StoreError::db("read walpoints.rules"))?;
        let ids: std::collections::HashMap<String, i16> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if let Some(missing) = others.iter().find(|v| !ids.contains_key(**v)) {
            return Err(StoreError::Schema(format!(
                "an entry names rules version {missing}, which walpoints.rules does not hold"
            )));
        }
        Ok(ids)
    }

    /// The rules version rows are stamped with.
    pub(super) fn rules_id(&self) -> Result<i16, StoreError> {
        self.rules_id.ok_or_else(|| {
            StoreError::Schema("no rules version recorded for this connection".into())
        })
    }

    /// Sends encoded rows through one `COPY ... FROM STDIN (FORMAT binary)`.
    pub(super) async fn send_copy(
        &self,
        statement: &str,
        table: &'static str,
        chunks: Vec<bytes::Bytes>,
    ) -> Result<(), StoreError> {
        use futures_util::SinkExt;
        let statement = self
            .prepared(statement)
            .await
            .map_err(StoreError::db(table))?;
        let sink = self
            .tx
            .copy_in(&statement)
            .await
            .map_err(StoreError::db(table))?;
        futures_util::pin_mut!(sink);
        for chunk in chunks {
            sink.send(chunk).await.map_err(StoreError::db(table))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(StoreError::db(table))?;
        Ok(())
    }

    /// Creates the epoch partitions this batch's rows need that `run` did not create ahead.
    async fn ensure_partitions(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut needed = std::collections::BTreeSet::new();
        needed.extend(batch.journal().iter().map(|c| c.epoch));
        for f in &batch.fills {
            needed.insert(f.fill.epoch.map(epoch_to_db).transpose()?.unwrap_or(-1));
        }
        for (_, _, e) in &batch.entries {
            needed.insert(epoch_to_db(e.epoch)?);
        }
        let mut known = self
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let missing: Vec<i32> = needed.into_iter().filter(|e| !known.contains(e)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        for e in &missing {
            self.tx
                .execute("SELECT walpoints.ensure_epoch_partitions($1)", &[e])
                .await
                .map_err(StoreError::db("create epoch partitions"))?;
            known.insert(*e);
        }
        // Remembered only once committed would be exact; a rollback merely makes the next
        // batch ask again (the function is idempotent), so remembering now is safe.
        *self.partitions.lock().unwrap_or_else(|p| p.into_inner()) = known;
        Ok(())
    }

    /// One `user_batch` row per (user, epoch) with entries in this batch: how the API finds a
    /// user's entries without an index entry per ledger row. Holding credits have no row, so a
    /// user with credits only gets no posting.
    async fn add_postings(
        &self,
        batch: &Batch,
        totals: &[(&(String, EpochId), &UserBatch)],
    ) -> Result<(), StoreError> {
        let Some((first, last)) = batch.lsn_range else {
            return Ok(());
        };
        // Every (user, epoch) here has entries (credits are kept apart), so each gets a posting.
        for part in totals.chunks(ROWS_PER_STATEMENT) {
            self.add_postings_part(part, first, last).await?;
        }
        Ok(())
    }

    /// [`StoreTx::add_postings`] for up to [`ROWS_PER_STATEMENT`] users, in one statement.
    async fn add_postings_part(
        &self,
        part: &[(&(String, EpochId), &UserBatch)],
        first: Lsn,
        last: Lsn,
    ) -> Result<(), StoreError> {
        let mut users = Vec::with_capacity(part.len());
        let mut epochs = Vec::with_capacity(part.len());
        let mut lsns = Vec::with_capacity(part.len());
        for ((user, epoch), u) in part {
            users.push(user.as_str());
            epochs.push(epoch_to_db(*epoch)?);
            // An array literal per posting: one text value instead of one per entry.
            let mut text = String::with_capacity(2 + 12 * u.commit_lsns.len());
            text.push('{');
            for (i, lsn) in u.commit_lsns.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&lsn.to_string());
            }
            text.push('}');
            lsns.push(text);
        }
        self.execute_prepared(
            "INSERT INTO walpoints.user_batch (user_address, epoch, source_id, first_lsn, \
                 last_lsn, commit_lsns) \
                 SELECT u, e, $3, $4, $5, l::pg_lsn[] \
                 FROM unnest($1::text[], $2::int4[], $6::text[]) AS x(u, e, l) \
                 ON CONFLICT DO NOTHING",
            &[
                &users,
                &epochs,
                &self.source_id,
                &pg_lsn(first),
                &pg_lsn(last),
                &lsns,
            ],
        )
        .await
        .map_err(StoreError::db("add to user_batch"))?;
        Ok(())
    }

    /// Commits: from here on the batch is durable and its LSN may be acknowledged.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(StoreError::db("commit"))
    }

    async fn write_dead_letters(&self, dead: &[DeadLetter]) -> Result<(), StoreError> {
        for d in dead {
            self.execute_prepared(
                "INSERT INTO walpoints.dead_letter (source_id, commit_lsn, seq, lsn, \
                     table_name, op, reason, detail, row, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10)",
                &[
                    &self.source_id,
                    &pg_lsn(d.commit_lsn),
                    &i32::try_from(d.seq).unwrap_or(i32::MAX),
                    &pg_lsn(d.lsn),
                    &d.table,
                    &d.op,
                    &d.reason.as_str(),
                    &d.detail,
                    &d.row.to_string(),
                    &system_time(d.at),
                ],
            )
            .await
            .map_err(StoreError::db("write a dead letter"))?;
        }
        Ok(())
    }

    /// Adds the batch's totals and holding credits to `user_epoch_points`, in key order (so
    /// concurrent sources lock rows in the same order), [`ROWS_PER_STATEMENT`] rows a statement so
    /// that an hour boundary crediting a million users needs bounded memory on both sides.
    /// Returns how many users each rank bucket gained (or lost) by these changes.
    async fn add_totals(
        &self,
        totals: &[(&(String, EpochId), &UserBatch)],
        credits: &BTreeMap<(String, EpochId), Decimal>,
    ) -> Result<RankMoves, StoreError> {
        let mut chunk = TotalsChunk::default();
        let mut credits = credits.iter().peekable();
        let credit_only = |c: &Decimal| {
            let mut t = Totals::default();
            t.add_holding(*c).map(|()| t).map_err(overflow)
        };
        for &(key, u) in totals {
            while let Some((k, c)) = credits.next_if(|(k, _)| *k < key) {
                self.push_total(&mut chunk, k, &credit_only(c)?).await?;
            }
            let mut t = u.totals.clone();
            if let Some((_, c)) = credits.next_if(|(k, _)| *k == key) {
                t.add_holding(*c).map_err(overflow)?;
            }
            self.push_total(&mut chunk, key, &t).await?;
        }
        for (k, c) in credits {
            self.push_total(&mut chunk, k, &credit_only(c)?).await?;
        }
        self.write_totals(&mut chunk).await?;
        Ok(chunk.moves)
    }

    /// Applies a batch's rank bucket moves (see `migrations/0006_rank_buckets.sql`) in one
    /// statement, in key order, after every total of the batch is written: so concurrent
    /// sources take the bucket rows' locks last and in the same order, and never deadlock.
    async fn move_rank_buckets(&self, moves: &RankMoves) -> Result<(), StoreError> {
        let (mut epochs, mut buckets, mut users) = (Vec::new(), Vec::new(), Vec::new());
        for (&(epoch, bucket), &n) in moves.iter().filter(|(_, n)| **n != 0) {
            epochs.push(epoch);
            buckets.push(bucket);
            users.push(n);
        }
        if epochs.is_empty() {
            return Ok(());
        }
        self.execute_prepared(
            "INSERT INTO walpoints.rank_bucket AS b (epoch, bucket, users) \
             SELECT * FROM unnest($1::int4[], $2::int4[], $3::int8[]) \
             ON CONFLICT (epoch, bucket) DO UPDATE SET users = b.users + excluded.users",
            &[&epochs, &buckets, &users],
        )
        .await
        .map_err(StoreError::db("move users between rank buckets"))?;
        Ok(())
    }

    /// Adds one (user, epoch)'s increment to `chunk`, writing the chunk once it is full.
    async fn push_total<'k>(
        &self,
        chunk: &mut TotalsChunk<'k>,
        key: &'k (String, EpochId),
        t: &Totals,
    ) -> Result<(), StoreError> {
        chunk.push(key, t)?;
        if chunk.users.len() >= ROWS_PER_STATEMENT {
            self.write_totals(chunk).await?;
        }
        Ok(())
    }

    /// Writes one chunk of increments; the statement answers with the rank bucket moves they
    /// make (a user leaves the bucket of their old total and joins that of the new), summed
    /// into `chunk.moves`.
    async fn write_totals(&self, chunk: &mut TotalsChunk<'_>) -> Result<(), StoreError> {
        if chunk.users.is_empty() {
            return Ok(());
        }
        let c = &chunk.cols;
        let statement = self
            .prepared(
                "WITH d AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::numeric[], \
                 $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[], $8::numeric[]) \
                 AS d(user_address, epoch, tp, rp, hp, pp, total, volume)), \
                 up AS (INSERT INTO walpoints.user_epoch_points AS t (user_address, epoch, \
                 trading_points, referral_points, holding_points, pnl_points, total_points, \
                 trading_volume) SELECT * FROM d \
                 ON CONFLICT (user_address, epoch) DO UPDATE SET \
                 trading_points = t.trading_points + excluded.trading_points, \
                 referral_points = t.referral_points + excluded.referral_points, \
                 holding_points = t.holding_points + excluded.holding_points, \
                 pnl_points = t.pnl_points + excluded.pnl_points, \
                 total_points = t.total_points + excluded.total_points, \
                 trading_volume = t.trading_volume + excluded.trading_volume, \
                 updated_at = now() \
                 RETURNING t.user_address, t.epoch, t.total_points) \
                 SELECT m.epoch, m.bucket, sum(m.n)::int8 FROM ( \
                   SELECT up.epoch, walpoints.rank_bucket(up.total_points) AS bucket, 1 AS n \
                   FROM up WHERE up.total_points > 0 \
                   UNION ALL \
                   SELECT up.epoch, walpoints.rank_bucket(up.total_points - d.total), -1 \
                   FROM up JOIN d USING (user_address, epoch) \
                   WHERE up.total_points - d.total > 0) m \
                 GROUP BY 1, 2",
            )
            .await
            .map_err(StoreError::db("add to user_epoch_points"))?;
        let rows = self
            .tx
            .query(
                &statement,
                &[
                    &chunk.users,
                    &chunk.epochs,
                    &c[0],
                    &c[1],
                    &c[2],
                    &c[3],
                    &c[4],
                    &c[5],
                ],
            )
            .await
            .map_err(StoreError::db("add to user_epoch_points"))?;
        for row in rows {
            let key = (row.get::<_, i32>(0), row.get::<_, i32>(1));
            *chunk.moves.entry(key).or_default() += row.get::<_, i64>(2);
        }
        chunk.users.clear();
        chunk.epochs.clear();
        for col in &mut chunk.cols {
            col.clear();
        }
        Ok(())
    }
}

/// Users gained (lost, when negative) per (epoch, rank bucket).
type RankMoves = BTreeMap<(i32, i32), i64>;

/// One statement's worth of `user_epoch_points` increments, column by column, and the rank
/// bucket moves of the chunks written so far.
#[derive(Default)]
struct TotalsChunk<'a> {
    users: Vec<&'a str>,
    epochs: Vec<i32>,
    cols: [Vec<Decimal>; 6],
    moves: RankMoves,
}

impl<'a> TotalsChunk<'a> {
    fn push(&mut self, (user, epoch): &'a (String, EpochId), t: &Totals) -> Result<(), StoreError> {
        self.epochs.push(epoch_to_db(*epoch)?);
        self.users.push(user);
        for (col, v) in self.cols.iter_mut().zip(t.columns()) {
            col.push(v);
        }
        Ok(())
    }
}

/// The outcome of statements sent together. Their statements may interleave (a part of
/// 10,000 rows each), and after the first failure PostgreSQL answers every later one "current
/// transaction is aborted": reporting that echo would hide the cause, and turn a transient
/// failure (a deadlock, a lost connection) into a definite one.
pub(super) fn first_failure<const N: usize>(
    results: [Result<(), StoreError>; N],
) -> Result<(), StoreError> {
    let mut echo = None;
    for result in results {
        match result {
            Ok(()) => {}
            Err(e) if e.is_aborted_echo() => {
                echo.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    echo.map_or(Ok(()), Err)
}

fn overflow(source: crate::points::EventError) -> StoreError {
    StoreError::bad_value("user_epoch_points", source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_sent_together_report_their_first_failure() {
        assert!(first_failure([Ok(()), Ok(())]).is_ok());
        let got = first_failure([
            Ok(()),
            Err(StoreError::WriterStopped),
            Err(StoreError::Schema("later".into())),
        ]);
        assert!(matches!(got, Err(StoreError::WriterStopped)), "{got:?}");
    }
}
