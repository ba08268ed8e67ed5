//! The rules engine's state in the store: four tables (`state_volume`, `state_referral`,
//! `state_open_position`, `state_pnl_paid`) loaded into a [`State`] when a session starts, and
//! brought up to date with each batch's [`StateDelta`] inside the batch's transaction.
//!
//! Every table is written the same way ([`TableChanges`]): the keys whose row goes are deleted,
//! then the changed rows are upserted, each as statements over `unnest`ed arrays of up to
//! `ROWS_PER_STATEMENT` rows, so a batch costs two statements per table per 10,000 changed rows.

use rust_decimal::Decimal;
use tokio_postgres::types::{FromSql, ToSql};

use super::tx::ROWS_PER_STATEMENT;
use super::{epoch_to_db, Store, StoreError, StoreTx};
use crate::points::{
    EpochId, OpenPositionRow, PositionRow, ReferralRow, State, StateDelta, VolumeRow,
};

/// State rows streamed from the store and applied to the state at a time.
const LOAD_CHUNK: usize = 10_000;

impl Store {
    /// Rebuilds the engine's state from the store (with change tracking on), as of the
    /// checkpoint. Rows are streamed and applied in chunks, so loading a million open positions
    /// never holds them twice (as rows and as state).
    pub async fn load_state(&self, stream_time: Option<i64>) -> Result<State, StoreError> {
        let mut state = State::new();
        apply(
            &mut state,
            StateDelta {
                stream_time,
                ..StateDelta::default()
            },
        )?;
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

    /// Streams one state table's rows of this source into `state`, [`LOAD_CHUNK`] at a time.
    async fn load_rows(
        &self,
        state: &mut State,
        sql: &str,
        mut add: impl FnMut(&tokio_postgres::Row, &mut StateDelta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use futures_util::TryStreamExt;
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
                apply(state, std::mem::take(&mut chunk))?;
                n = 0;
            }
            if done {
                return Ok(());
            }
        }
    }
}

impl StoreTx<'_> {
    /// Writes a batch's state changes: per table, the rows that went, then the rows that
    /// changed.
    pub(super) async fn write_state(&self, delta: &StateDelta) -> Result<(), StoreError> {
        for table in changes_of(delta)? {
            self.write_table(&table).await?;
        }
        Ok(())
    }

    async fn write_table(&self, t: &TableChanges<'_>) -> Result<(), StoreError> {
        let err = StoreError::db("write the rules state");
        let keys = t.keys.join(", ");
        if !t.gone.is_empty() {
            let on: Vec<String> = t.keys.iter().map(|k| format!("t.{k} = x.{k}")).collect();
            let sql = format!(
                "DELETE FROM walpoints.{} t USING unnest({}) AS x({keys}) \
                 WHERE t.source_id = $1 AND {}",
                t.table,
                placeholders(&t.gone),
                on.join(" AND ")
            );
            for part in parts(&t.gone) {
                self.execute_prepared(&sql, &params(&self.source_id, &part))
                    .await
                    .map_err(&err)?;
            }
        }
        if !t.kept.is_empty() {
            let columns = t.keys.iter().chain(t.values).copied().collect::<Vec<_>>();
            let update = if t.values.is_empty() {
                "NOTHING".to_owned()
            } else {
                let set: Vec<String> = t
                    .values
                    .iter()
                    .map(|v| format!("{v} = excluded.{v}"))
                    .collect();
                format!("UPDATE SET {}", set.join(", "))
            };
            let sql = format!(
                "INSERT INTO walpoints.{} (source_id, {}) SELECT $1, * FROM unnest({}) \
                 ON CONFLICT (source_id, {keys}) DO {update}",
                t.table,
                columns.join(", "),
                placeholders(&t.kept)
            );
            for part in parts(&t.kept) {
                self.execute_prepared(&sql, &params(&self.source_id, &part))
                    .await
                    .map_err(&err)?;
            }
        }
        Ok(())
    }
}

/// The four state tables' changes in `delta`, in the order they are written.
fn changes_of(delta: &StateDelta) -> Result<[TableChanges<'_>; 4], StoreError> {
    let mut volume = TableChanges::new("state_volume", &["user_address", "epoch"], &["volume"]);
    for v in &delta.volumes {
        let key = [Value::Text(&v.user), Value::Int4(epoch_to_db(v.epoch)?)];
        if v.volume.is_zero() {
            volume.delete(key);
        } else {
            volume.upsert(key, [Value::Numeric(v.volume)]);
        }
    }
    let mut referral = TableChanges::new("state_referral", &["referee"], &["referrer"]);
    for r in &delta.referrals {
        match &r.referrer {
            Some(referrer) => referral.upsert([Value::Text(&r.referee)], [Value::Text(referrer)]),
            None => referral.delete([Value::Text(&r.referee)]),
        }
    }
    let mut position = TableChanges::new(
        "state_open_position",
        &["position_id"],
        &["user_address", "notional", "since"],
    );
    for p in &delta.positions {
        match &p.open {
            Some(o) => position.upsert(
                [Value::Text(&p.id)],
                [
                    Value::Text(&o.user),
                    Value::Numeric(o.notional),
                    Value::Int8(o.since),
                ],
            ),
            None => position.delete([Value::Text(&p.id)]),
        }
    }
    let mut pnl_paid = TableChanges::new("state_pnl_paid", &["position_id"], &[]);
    for id in &delta.pnl_paid {
        pnl_paid.upsert([Value::Text(id)], []);
    }
    Ok([volume, referral, position, pnl_paid])
}

/// One state table's changed rows, as columns of the arrays that `unnest` turns back into rows.
struct TableChanges<'a> {
    table: &'static str,
    keys: &'static [&'static str],
    values: &'static [&'static str],
    /// Key columns of the rows that go.
    gone: Vec<Column<'a>>,
    /// Key then value columns of the rows that are inserted or updated.
    kept: Vec<Column<'a>>,
}

impl<'a> TableChanges<'a> {
    fn new(
        table: &'static str,
        keys: &'static [&'static str],
        values: &'static [&'static str],
    ) -> Self {
        TableChanges {
            table,
            keys,
            values,
            gone: Vec::new(),
            kept: Vec::new(),
        }
    }

    fn delete<const K: usize>(&mut self, key: [Value<'a>; K]) {
        push_row(&mut self.gone, key);
    }

    fn upsert<const K: usize, const V: usize>(
        &mut self,
        key: [Value<'a>; K],
        values: [Value<'a>; V],
    ) {
        push_row(&mut self.kept, key.into_iter().chain(values));
    }
}

/// One cell of a changed row.
enum Value<'a> {
    Text(&'a str),
    Int4(i32),
    Int8(i64),
    Numeric(Decimal),
}

/// One column of changed rows: an array parameter of its SQL type.
enum Column<'a> {
    Text(Vec<&'a str>),
    Int4(Vec<i32>),
    Int8(Vec<i64>),
    Numeric(Vec<Decimal>),
}

impl<'a> Column<'a> {
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Text(_) => "text",
            Column::Int4(_) => "int4",
            Column::Int8(_) => "int8",
            Column::Numeric(_) => "numeric",
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Text(v) => v.len(),
            Column::Int4(v) => v.len(),
            Column::Int8(v) => v.len(),
            Column::Numeric(v) => v.len(),
        }
    }

    /// Rows `range` of the column (clamped to its length).
    fn slice(&self, range: std::ops::Range<usize>) -> Slice<'_, 'a> {
        let clamp = |len: usize| range.start.min(len)..range.end.min(len);
        match self {
            Column::Text(v) => Slice::Text(&v[clamp(v.len())]),
            Column::Int4(v) => Slice::Int4(&v[clamp(v.len())]),
            Column::Int8(v) => Slice::Int8(&v[clamp(v.len())]),
            Column::Numeric(v) => Slice::Numeric(&v[clamp(v.len())]),
        }
    }
}

/// Some rows of a [`Column`]: the array parameter of one statement.
enum Slice<'c, 'a> {
    Text(&'c [&'a str]),
    Int4(&'c [i32]),
    Int8(&'c [i64]),
    Numeric(&'c [Decimal]),
}

impl Slice<'_, '_> {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Slice::Text(v) => v,
            Slice::Int4(v) => v,
            Slice::Int8(v) => v,
            Slice::Numeric(v) => v,
        }
    }
}

/// The rows of `columns` in parts of [`ROWS_PER_STATEMENT`], one statement each, so that a
/// batch of 200,000 changed users is never encoded as one message.
fn parts<'c, 'a>(columns: &'c [Column<'a>]) -> Vec<Vec<Slice<'c, 'a>>> {
    let rows = columns.first().map_or(0, Column::len);
    (0..rows)
        .step_by(ROWS_PER_STATEMENT)
        .map(|start| {
            columns
                .iter()
                .map(|c| c.slice(start..start + ROWS_PER_STATEMENT))
                .collect()
        })
        .collect()
}

/// Appends one row's cells to `columns`, creating each column with its first cell. Every row
/// of a table has the same cells in the same order (the callers above), so the kinds match.
fn push_row<'a>(columns: &mut Vec<Column<'a>>, row: impl IntoIterator<Item = Value<'a>>) {
    for (i, value) in row.into_iter().enumerate() {
        if columns.len() == i {
            columns.push(match value {
                Value::Text(_) => Column::Text(Vec::new()),
                Value::Int4(_) => Column::Int4(Vec::new()),
                Value::Int8(_) => Column::Int8(Vec::new()),
                Value::Numeric(_) => Column::Numeric(Vec::new()),
            });
        }
        match (&mut columns[i], value) {
            (Column::Text(c), Value::Text(v)) => c.push(v),
            (Column::Int4(c), Value::Int4(v)) => c.push(v),
            (Column::Int8(c), Value::Int8(v)) => c.push(v),
            (Column::Numeric(c), Value::Numeric(v)) => c.push(v),
            _ => unreachable!("a state table's rows all have the same cells"),
        }
    }
}

/// `$2::text[], $3::int4[], …` for `columns` ($1 is the source id).
fn placeholders(columns: &[Column<'_>]) -> String {
    let list: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 2, c.sql_type()))
        .collect();
    list.join(", ")
}

/// The source id and the columns, as statement parameters.
fn params<'p>(
    source_id: &'p (dyn ToSql + Sync),
    columns: &'p [Slice<'_, '_>],
) -> Vec<&'p (dyn ToSql + Sync)> {
    std::iter::once(source_id)
        .chain(columns.iter().map(Slice::param))
        .collect()
}

/// Applies loaded rows to the state; a stored row the rules refuse means a hand-edited store.
fn apply(state: &mut State, delta: StateDelta) -> Result<(), StoreError> {
    state
        .apply_delta(delta)
        .map_err(|source| StoreError::bad_value("loading the rules state", source))
}

/// Column `i` of a state row; a value that does not convert (a hand-edited store) is definite.
fn col<'a, T: FromSql<'a>>(r: &'a tokio_postgres::Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(|source| {
        StoreError::bad_value(format!("loading the rules state, column {i}"), source)
    })
}

fn epoch_from_db(e: i32) -> Result<EpochId, StoreError> {
    EpochId::try_from(e)
        .map_err(|_| StoreError::OutOfRange(format!("stored epoch {e} is negative")))
}
