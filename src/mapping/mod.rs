//! Row changes → domain inputs, through the column mapping of `walpoints.toml` `[columns]`.
//!
//! This is the one place where a row's text values become typed [`Event`]s, so every "bad row"
//! decision is made here, once: a row that cannot be used becomes a [`RowRejected`] (definite
//! for the row: the daemon dead-letters it with its LSN and goes on), while a followed table
//! that lost a mapped column is a [`MappingError`] (definite for the stream: the daemon stops
//! and tells the operator what to fix).
//!
//! The module is pure (no I/O, no clock), so the same mapping serves the replication stream
//! ([`Mapper::map`]) and the initial snapshot ([`Mapper::map_snapshot_row`]).

use serde_json::{json, Map, Value as Json};

use crate::changes::{Op, RowChange};
use crate::dead_letter::Reason;
use crate::identifier::TableName;
use crate::pgoutput::Relation;
use crate::points::{Event, Position, PositionStatus, ReferralLink, Trade};

mod rejected;
mod row;
mod settings;

pub use rejected::{row_json, RowRejected};
pub use row::MAX_KEY_BYTES;
pub use settings::{Columns, Tables};

use rejected::{reject_change, ROW_VALUE_CHARS};
use row::{clip, key, Fault, Row, DETAIL_VALUE_CHARS};

/// Which followed table a relation is; the engine's rules differ per table, and a truncate
/// policy or a metric needs to say which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableKind {
    /// `[tables] trades`: one row per fill.
    Trades,
    /// `[tables] positions`: one row per position.
    Positions,
    /// `[tables] referral_relations`: one row per referee.
    Referrals,
}

impl TableKind {
    /// All kinds, in the order of `[tables]`, so callers (e.g. the snapshot) can iterate them.
    pub const ALL: [TableKind; 3] = [
        TableKind::Trades,
        TableKind::Positions,
        TableKind::Referrals,
    ];

    /// The `[tables]` key naming this table, used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Trades => "trades",
            TableKind::Positions => "positions",
            TableKind::Referrals => "referral_relations",
        }
    }

    /// The position of this table in [`TableKind::ALL`], for per-table counts kept in arrays.
    pub fn index(self) -> usize {
        match self {
            TableKind::Trades => 0,
            TableKind::Positions => 1,
            TableKind::Referrals => 2,
        }
    }
}

/// The outcome of mapping one row change that could be used.
// Not boxed: a `Mapped` lives only until its event is moved into the transaction's event list,
// and boxing would cost an allocation per row.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// A domain event for the engine.
    Event(Event),
    /// An update that moved a row's key, as two events in this order (a referral row whose
    /// referee changed: the old referee is unbound, then the new row links).
    KeyMoved(Event, Event),
    /// A TRUNCATE of a followed table (the daemon applies its truncate policy).
    Truncate(TableKind),
    /// A change of a table walpoints does not follow.
    Ignored,
}

/// A followed table whose shape no longer fits the mapping: definite for the stream, because
/// every later row of that table would be rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// Mapped columns are not in the table (renamed, dropped, or misnamed in the config).
    #[error(
        "table {table} has no column {} (mapped by {}): set those keys in walpoints.toml \
         [columns] (or WALPOINTS_COLUMNS_*) to columns the table has, or restore the column in \
         the source table, then restart walpoints (changes written while the column was missing \
         are decoded without it, so only a config fix covers them)",
        .columns.join(", "),
        .keys.join(", ")
    )]
    MissingColumn {
        /// The table, as `schema.name`.
        table: String,
        /// The missing column names.
        columns: Vec<String>,
        /// The config keys that map them, e.g. `columns.trades_price`.
        keys: Vec<String>,
    },
}

/// The column mapping resolved against the config; built once at start so mapping a row does
/// no parsing of configuration.
#[derive(Debug, Clone)]
pub struct Mapper {
    /// The followed tables by [`TableKind::index`]; `None` when the config name does not parse
    /// (config validation rejects that, so it then simply follows nothing).
    tables: [Option<TableName>; 3],
    cols: Columns,
    /// Status values, trimmed and lowercased.
    open: Vec<String>,
    closed: Vec<String>,
}

impl Mapper {
    /// Resolves the table names and normalizes the status values once.
    pub fn new(tables: &Tables, columns: &Columns) -> Mapper {
        let norm = |v: &[String]| v.iter().map(|s| s.trim().to_lowercase()).collect();
        Mapper {
            tables: [
                tables.trades.parse().ok(),
                tables.positions.parse().ok(),
                tables.referral_relations.parse().ok(),
            ],
            cols: columns.clone(),
            open: norm(&columns.positions_open_values),
            closed: norm(&columns.positions_closed_values),
        }
    }

    /// The `[columns]` mapping as configured.
    pub fn columns(&self) -> &Columns {
        &self.cols
    }

    /// Which followed table `rel` is (by schema and name), or `None` for any other table.
    pub fn table_of(&self, rel: &Relation) -> Option<TableKind> {
        TableKind::ALL.into_iter().find(|k| {
            self.tables[k.index()]
                .as_ref()
                .is_some_and(|t| t.schema == rel.schema() && t.name == rel.name)
        })
    }

    /// Checks that every mapped column of a followed table exists in `rel`; called whenever a
    /// Relation arrives or changes, so a dropped or renamed column stops the stream at once
    /// instead of dead-lettering every later row.
    pub fn check_relation(&self, rel: &Relation) -> Result<(), MappingError> {
        let Some(kind) = self.table_of(rel) else {
            return Ok(());
        };
        let (keys, columns): (Vec<String>, Vec<String>) = self
            .mapped(kind)
            .into_iter()
            .filter(|(_, col)| rel.column_index(col).is_none())
            .map(|(key, col)| (format!("columns.{key}"), col.to_owned()))
            .unzip();
        if columns.is_empty() {
            Ok(())
        } else {
            Err(MappingError::MissingColumn {
                table: format!("{}.{}", rel.schema(), rel.name),
                columns,
                keys,
            })
        }
    }

    /// Maps one change. `Ok(Mapped::Ignored)` for tables we don't follow.
    pub fn map(&self, change: &RowChange) -> Result<Mapped, RowRejected> {
        let Some(kind) = self.table_of(&change.relation) else {
            return Ok(Mapped::Ignored);
        };
        self.map_followed(kind, change)
            .map_err(|fault| reject_change(change, fault))
    }

    /// For the initial snapshot: the column names to SELECT, in this order, for a table. The
    /// caller selects each as `col::text` and passes the texts to [`Mapper::map_snapshot_row`]
    /// in the same order, so the snapshot is read exactly like the stream.
    pub fn snapshot_columns(&self, table: TableKind) -> Vec<&str> {
        self.mapped(table).into_iter().map(|(_, c)| c).collect()
    }

    /// Maps one snapshot row (texts in [`Mapper::snapshot_columns`] order, NULL = `None`) to
    /// the Insert event the row would have produced on the stream.
    pub fn map_snapshot_row(
        &self,
        table: TableKind,
        texts: &[Option<&str>],
    ) -> Result<Event, RowRejected> {
        let names = self.snapshot_columns(table);
        let row = Row::Texts {
            names: &names,
            texts,
        };
        self.insert_event(table, &row).map_err(|fault| {
            let values = names
                .iter()
                .zip(texts)
                .map(|(n, t)| {
                    let v = t.map_or(Json::Null, |t| {
                        Json::String(clip(t, ROW_VALUE_CHARS).into())
                    });
                    ((*n).to_owned(), v)
                })
                .collect::<Map<_, _>>();
            let name = self.tables[table.index()].as_ref().map_or_else(
                || table.as_str().to_owned(),
                |t| format!("{}.{}", t.schema, t.name),
            );
            RowRejected {
                table: name,
                op: Op::Insert.as_str(),
                reason: fault.reason,
                detail: fault.detail,
                row: json!({ "new": values }),
            }
        })
    }

    /// The mapped columns of `table` whose PostgreSQL type is constrained, as (config key,
    /// column name, what it must hold), so the startup checks can refuse a column walpoints
    /// would only dead-letter row by row (a `money` amount, a `text` price). Ids, addresses,
    /// symbols and statuses are read as their text output, which every type has.
    pub fn typed_columns(&self, table: TableKind) -> Vec<(&'static str, &str, ColumnKind)> {
        self.mapped(table)
            .into_iter()
            .filter_map(|(key, col)| {
                let kind = match key {
                    "trades_price"
                    | "trades_amount"
                    | "positions_size"
                    | "positions_entry_price"
                    | "positions_realized_pnl" => ColumnKind::Number,
                    "trades_time" => ColumnKind::Timestamp,
                    _ => return None,
                };
                Some((key, col, kind))
            })
            .collect()
    }

    /// The mapped columns of a table as (config key, column name), in snapshot order.
    fn mapped(&self, kind: TableKind) -> Vec<(&'static str, &str)> {
        let c = &self.cols;
        let mut v = match kind {
            TableKind::Trades => vec![
                ("trades_id", c.trades_id.as_str()),
                ("trades_symbol", &c.trades_symbol),
                ("trades_price", &c.trades_price),
                ("trades_amount", &c.trades_amount),
                ("trades_taker", &c.trades_taker),
                ("trades_maker", &c.trades_maker),
            ],
            TableKind::Positions => vec![
                ("positions_id", c.positions_id.as_str()),
                ("positions_user", &c.positions_user),
                ("positions_symbol", &c.positions_symbol),
                ("positions_size", &c.positions_size),
                ("positions_entry_price", &c.positions_entry_price),
                ("positions_status", &c.positions_status),
                ("positions_realized_pnl", &c.positions_realized_pnl),
            ],
            TableKind::Referrals => vec![
                ("referrals_referee", c.referrals_referee.as_str()),
                ("referrals_referrer", &c.referrals_referrer),
            ],
        };
        if kind == TableKind::Trades && !c.trades_time.is_empty() {
            v.push(("trades_time", &c.trades_time));
        }
        v
    }

    fn map_followed(&self, kind: TableKind, change: &RowChange) -> Result<Mapped, Fault> {
        let rel = &*change.relation;
        let new = |fallback| {
            let tuple = change.new.as_ref().ok_or_else(|| {
                Fault::new(
                    Reason::MissingTuple,
                    format!("{} without a new row", change.op.as_str()),
                )
            })?;
            Ok::<_, Fault>(Row::Tuple {
                rel,
                tuple,
                fallback,
            })
        };
        // The full old row (REPLICA IDENTITY FULL), if sent.
        let old = change.old.as_ref().map(|tuple| Row::Tuple {
            rel,
            tuple,
            fallback: None,
        });
        let event = match change.op {
            Op::Truncate => return Ok(Mapped::Truncate(kind)),
            Op::Insert => self.insert_event(kind, &new(None)?)?,
            // Unchanged TOAST values of the new row are taken from the full old row. The old
            // row is only a hint to the engine, so one that does not map is simply left out.
            Op::Update => {
                let new = new(change.old.as_ref())?;
                // Under the default replica identity an update that changes the key carries the
                // old key only (no full old row): the engine still has to see the key move, or
                // the old id's award or open position would stay behind.
                let moved_from = |col: &str| match (&change.old, &change.key) {
                    (None, Some(_)) => key(change, col).ok(),
                    _ => None,
                };
                match kind {
                    TableKind::Trades => {
                        let new = self.trade(&new)?;
                        let old = match moved_from(&self.cols.trades_id) {
                            Some(id) => Some(Trade { id, ..new.clone() }),
                            None => old.and_then(|o| self.trade(&o).ok()),
                        };
                        Event::TradeUpdated { new, old }
                    }
                    TableKind::Positions => {
                        let new = self.position(&new)?;
                        let old = match moved_from(&self.cols.positions_id) {
                            Some(id) => Some(Position { id, ..new.clone() }),
                            None => old.and_then(|o| self.position(&o).ok()),
                        };
                        Event::PositionUpdated { new, old }
                    }
                    TableKind::Referrals => {
                        let new = self.referral(&new)?;
                        if let Some(referee) = moved_from(&self.cols.referrals_referee) {
                            // The old referee's row is gone: unbind it, then link the new one.
                            return Ok(Mapped::KeyMoved(
                                Event::ReferralDeleted {
                                    referee,
                                    referrer: None,
                                },
                                Event::ReferralInserted { new },
                            ));
                        }
                        Event::ReferralUpdated {
                            new,
                            old: old.and_then(|o| self.referral(&o).ok()),
                        }
                    }
                }
            }
            Op::Delete => match kind {
                TableKind::Trades => Event::TradeDeleted {
                    id: key(change, &self.cols.trades_id)?,
                },
                TableKind::Positions => Event::PositionDeleted {
                    id: key(change, &self.cols.positions_id)?,
                },
                TableKind::Referrals => Event::ReferralDeleted {
                    referee: key(change, &self.cols.referrals_referee)?,
                    referrer: old.and_then(|o| o.string(&self.cols.referrals_referrer).ok()),
                },
            },
        };
        Ok(Mapped::Event(event))
    }

    fn insert_event(&self, kind: TableKind, row: &Row<'_>) -> Result<Event, Fault> {
        Ok(match kind {
            TableKind::Trades => Event::TradeInserted {
                new: self.trade(row)?,
            },
            TableKind::Positions => Event::PositionInserted {
                new: self.position(row)?,
            },
            TableKind::Referrals => Event::ReferralInserted {
                new: self.referral(row)?,
            },
        })
    }

    // Symbols are informational (they earn nothing), so a NULL one becomes "" rather than
    // costing a fill or a position its points.
    fn trade(&self, row: &Row<'_>) -> Result<Trade, Fault> {
        let c = &self.cols;
        Ok(Trade {
            id: row.key_string(&c.trades_id)?,
            symbol: row.opt_string(&c.trades_symbol)?.unwrap_or_default(),
            price: row.price(&c.trades_price)?,
            amount: row.decimal(&c.trades_amount)?,
            taker: row.key_string(&c.trades_taker)?,
            maker: row.key_string(&c.trades_maker)?,
            time: match c.trades_time.as_str() {
                "" => None,
                col => Some(row.timestamp(col)?),
            },
        })
    }

    fn position(&self, row: &Row<'_>) -> Result<Position, Fault> {
        let c = &self.cols;
        Ok(Position {
            id: row.key_string(&c.positions_id)?,
            user: row.key_string(&c.positions_user)?,
            symbol: row.opt_string(&c.positions_symbol)?.unwrap_or_default(),
            size: row.decimal(&c.positions_size)?,
            entry_price: row.price(&c.positions_entry_price)?,
            status: self.status(row)?,
            realized_pnl: row.opt_decimal(&c.positions_realized_pnl)?,
        })
    }

    fn status(&self, row: &Row<'_>) -> Result<PositionStatus, Fault> {
        let col = &self.cols.positions_status;
        let raw = row.string(col)?;
        let s = raw.trim().to_lowercase();
        if self.open.contains(&s) {
            Ok(PositionStatus::Open)
        } else if self.closed.contains(&s) {
            Ok(PositionStatus::Closed)
        } else {
            Err(Fault::new(
                Reason::UnknownStatus,
                format!(
                    "column {col:?}: status {:?} is neither open {:?} nor closed {:?} \
                     (see columns.positions_open_values / positions_closed_values)",
                    clip(&raw, DETAIL_VALUE_CHARS),
                    self.cols.positions_open_values,
                    self.cols.positions_closed_values
                ),
            ))
        }
    }

    fn referral(&self, row: &Row<'_>) -> Result<ReferralLink, Fault> {
        Ok(ReferralLink {
            referee: row.key_string(&self.cols.referrals_referee)?,
            referrer: row.key_string(&self.cols.referrals_referrer)?,
        })
    }
}

/// What a mapped column must hold, for the startup type check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// An amount or price: read exactly as a decimal.
    Number,
    /// A fill time.
    Timestamp,
}

impl ColumnKind {
    /// The base types (`pg_type.typname`, a domain resolved to its base) whose text output
    /// walpoints converts for this kind: `numeric` and the floats exactly as printed, the
    /// integers as they are.
    pub const fn accepted(self) -> &'static [&'static str] {
        match self {
            ColumnKind::Number => &["numeric", "float4", "float8", "int2", "int4", "int8"],
            ColumnKind::Timestamp => &["timestamptz", "timestamp"],
        }
    }

    /// Whether a column of base type `typname` can hold this kind.
    pub fn accepts(self, typname: &str) -> bool {
        self.accepted().contains(&typname)
    }

    /// What the kind is, for a refusal message.
    pub const fn as_str(self) -> &'static str {
        match self {
            ColumnKind::Number => "a number",
            ColumnKind::Timestamp => "a timestamp",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::{Column, ColumnValue, ReplicaIdentity, TupleData};
    use crate::value;

    const TRADE_COLS: &str = "id symbol price amount taker_address maker_address created_at memo";
    const POSITION_COLS: &str = "id user_address symbol size entry_price status realized_pnl";
    const T0: &str = "2026-01-05 12:34:56+00";
    const T0_MICROS: i64 = 1_767_616_496_000_000;
    const POSITION_ID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

    /// A relation with space-separated column names; the mapping reads values by name only,
    /// so every column is `text`.
    fn relation(schema: &str, name: &str, columns: &str) -> Arc<Relation> {
        let column = |name: &str| Column {
            part_of_key: false,
            name: name.into(),
            type_oid: value::oid::TEXT,
            type_modifier: -1,
        };
        Arc::new(Relation {
            oid: 16_400,
            namespace: schema.into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns.split_whitespace().map(column).collect(),
        })
    }

    fn trades_rel() -> Arc<Relation> {
        relation("public", "trades", TRADE_COLS)
    }

    fn positions_rel() -> Arc<Relation> {
        relation("public", "positions", POSITION_COLS)
    }

    fn referrals_rel() -> Arc<Relation> {
        relation(
            "public",
            "referral_relations",
            "referee_address referrer_address",
        )
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A tuple written like a COPY line: values separated by `|`, `\N` for NULL.
    fn tuple(line: &str) -> TupleData {
        let value = |v| match v {
            "\\N" => ColumnValue::Null,
            v => text(v),
        };
        let columns = line.split('|').map(value).collect();
        TupleData { columns }
    }

    /// `t` with column `i` replaced by `v`.
    fn with(mut t: TupleData, i: usize, v: ColumnValue) -> TupleData {
        t.columns[i] = v;
        t
    }

    fn change(rel: &Arc<Relation>, op: Op, new: Option<TupleData>) -> RowChange {
        let (lsn, relation, old, key) = (Lsn(0x1_0000), rel.clone(), None, None);
        RowChange {
            lsn,
            relation,
            op,
            new,
            old,
            key,
        }
    }

    fn insert(rel: &Arc<Relation>, new: TupleData) -> RowChange {
        change(rel, Op::Insert, Some(new))
    }

    fn update(rel: &Arc<Relation>, new: TupleData, old: Option<TupleData>) -> RowChange {
        let c = change(rel, Op::Update, Some(new));
        RowChange { old, ..c }
    }

    fn delete(rel: &Arc<Relation>, old: Option<TupleData>, key: Option<TupleData>) -> RowChange {
        let c = change(rel, Op::Delete, None);
        RowChange { old, key, ..c }
    }

    fn trade_row(price: &str) -> TupleData {
        tuple(&format!("7|BTC-USD|{price}|-0.5|0xTaker|0xmaker|{T0}|\\N"))
    }

    fn trade(price: &str) -> Trade {
        Trade {
            id: "7".into(),
            symbol: "BTC-USD".into(),
            price: price.parse().unwrap(),
            amount: "-0.5".parse().unwrap(),
            taker: "0xTaker".into(),
            maker: "0xmaker".into(),
            time: Some(T0_MICROS),
        }
    }

    fn position_row(status: &str, pnl: &str) -> TupleData {
        tuple(&format!(
            "{POSITION_ID}|0xUser|ETH-USD|-2|3000.50|{status}|{pnl}"
        ))
    }

    fn position(status: PositionStatus, pnl: Option<&str>) -> Position {
        Position {
            id: POSITION_ID.into(),
            user: "0xUser".into(),
            symbol: "ETH-USD".into(),
            size: "-2".parse().unwrap(),
            entry_price: "3000.5".parse().unwrap(),
            status,
            realized_pnl: pnl.map(|p| p.parse().unwrap()),
        }
    }

    fn link(referee: &str, referrer: &str) -> ReferralLink {
        let (referee, referrer) = (referee.into(), referrer.into());
        ReferralLink { referee, referrer }
    }

    fn mapper() -> Mapper {
        Mapper::new(&Tables::default(), &Columns::default())
    }

    fn event(m: &Mapper, c: &RowChange) -> Event {
        match m.map(c) {
            Ok(Mapped::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn rejected(m: &Mapper, c: &RowChange) -> RowRejected {
        match m.map(c) {
            Err(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// Asserts `c` is rejected with `reason` and a detail containing `detail`.
    fn assert_rejected(m: &Mapper, c: RowChange, reason: &str, detail: &str) {
        let r = rejected(m, &c);
        assert_eq!((r.reason.as_str(), r.op), (reason, c.op.as_str()), "{r}");
        assert!(r.detail.contains(detail), "{r}");
    }

    #[test]
    fn table_indexes_match_all() {
        for (i, table) in TableKind::ALL.into_iter().enumerate() {
            assert_eq!(table.index(), i, "{}", table.as_str());
        }
    }

    #[test]
    fn trades_insert_update_delete() {
        let (m, rel) = (mapper(), trades_rel());
        assert_eq!(m.table_of(&rel), Some(TableKind::Trades));
        let new = trade("100.5");
        assert_eq!(
            event(&m, &insert(&rel, trade_row("100.50"))),
            Event::TradeInserted { new }
        );
        // The old image is given only when the full old row (REPLICA IDENTITY FULL) maps.
        for (old_row, old) in [
            (None, None),
            (Some(trade_row("100")), Some(trade("100"))),
            (Some(trade_row("NaN")), None),
        ] {
            let new = trade("101");
            let e = event(&m, &update(&rel, trade_row("101"), old_row));
            assert_eq!(e, Event::TradeUpdated { old, new });
        }
        let id = "7".to_owned();
        let key = tuple("7|\\N|\\N|\\N|\\N|\\N|\\N|\\N");
        assert_eq!(
            event(&m, &delete(&rel, None, Some(key))),
            Event::TradeDeleted { id }
        );
        let id = "7".to_owned();
        let e = event(&m, &delete(&rel, Some(trade_row("1")), None));
        assert_eq!(e, Event::TradeDeleted { id });
    }

    #[test]
    fn positions_insert_update_delete() {
        let (m, rel) = (mapper(), positions_rel());
        let new = position(PositionStatus::Open, None);
        let e = event(&m, &insert(&rel, position_row(" Open ", "\\N")));
        assert_eq!(e, Event::PositionInserted { new });
        let old_row = Some(position_row("open", "\\N"));
        let e = event(&m, &update(&rel, position_row("CLOSED", "12.5"), old_row));
        let old = Some(position(PositionStatus::Open, None));
        let new = position(PositionStatus::Closed, Some("12.5"));
        assert_eq!(e, Event::PositionUpdated { old, new });
        // A key tuple shorter than the relation is read by position, never indexed blindly.
        let id = POSITION_ID.to_owned();
        let e = event(&m, &delete(&rel, None, Some(tuple(POSITION_ID))));
        assert_eq!(e, Event::PositionDeleted { id });
    }

    #[test]
    fn referrals_insert_update_delete() {
        let (m, rel) = (mapper(), referrals_rel());
        let new = link("0xA", "0xB");
        assert_eq!(
            event(&m, &insert(&rel, tuple("0xA|0xB"))),
            Event::ReferralInserted { new }
        );
        let (old, new) = (Some(link("0xA", "0xB")), link("0xA", "0xC"));
        let e = event(&m, &update(&rel, tuple("0xA|0xC"), Some(tuple("0xA|0xB"))));
        assert_eq!(e, Event::ReferralUpdated { old, new });
        // The referrer of a deleted link is known only from the full old row.
        for (old, key, referrer) in [
            (None, Some(tuple("0xA|\\N")), None),
            (Some(tuple("0xA|0xB")), None, Some("0xB".to_owned())),
        ] {
            let referee = "0xA".to_owned();
            let e = event(&m, &delete(&rel, old, key));
            assert_eq!(e, Event::ReferralDeleted { referee, referrer });
        }
    }

    #[test]
    fn custom_names_and_no_time_column() {
        let trades = "exchange.fills".to_owned();
        let tables = Tables {
            trades,
            ..Tables::default()
        };
        let columns = Columns {
            trades_id: "fill_id".into(),
            trades_symbol: "market".into(),
            trades_price: "px".into(),
            trades_amount: "qty".into(),
            trades_taker: "buyer".into(),
            trades_maker: "seller".into(),
            trades_time: String::new(),
            positions_open_values: vec!["ACTIVE".into()],
            positions_closed_values: vec!["settled".into(), "Liquidated".into()],
            ..Columns::default()
        };
        let m = Mapper::new(&tables, &columns);
        let cols = ["fill_id", "market", "px", "qty", "buyer", "seller"];
        assert_eq!(m.snapshot_columns(TableKind::Trades), cols);
        let fills = relation("exchange", "fills", &cols.join(" "));
        assert_eq!(m.check_relation(&fills), Ok(()));
        // The default-named table is not followed any more.
        assert_eq!(m.table_of(&trades_rel()), None);
        let e = event(&m, &insert(&fills, tuple("f1|\\N|2|3|b|s")));
        let (id, symbol, taker, maker) = ("f1".into(), String::new(), "b".into(), "s".into());
        let (price, amount, time) = (2.into(), 3.into(), None);
        let new = Trade {
            id,
            symbol,
            price,
            amount,
            taker,
            maker,
            time,
        };
        assert_eq!(e, Event::TradeInserted { new });
        let rel = positions_rel();
        for (status, want) in [
            ("liquidated ", PositionStatus::Closed),
            ("active", PositionStatus::Open),
        ] {
            let new = position(want, None);
            let e = event(&m, &insert(&rel, position_row(status, "\\N")));
            assert_eq!(e, Event::PositionInserted { new });
        }
        let c = insert(&rel, position_row("open", "\\N"));
        assert_rejected(
            &m,
            c,
            "unknown_status",
            "\"open\" is neither open [\"ACTIVE\"]",
        );
    }

    #[test]
    fn an_update_that_moves_the_key_shows_the_old_key() {
        let (m, trades, referrals) = (mapper(), trades_rel(), referrals_rel());
        // Default replica identity: the key tuple has the old id, every other column NULL.
        let old_key = tuple("6|\\N|\\N|\\N|\\N|\\N|\\N|\\N");
        let moved = RowChange {
            key: Some(old_key),
            ..update(&trades, trade_row("100"), None)
        };
        let new = trade("100");
        let old = Some(Trade {
            id: "6".into(),
            ..new.clone()
        });
        assert_eq!(event(&m, &moved), Event::TradeUpdated { old, new });

        let moved = RowChange {
            key: Some(tuple("0xold|\\N")),
            ..update(&referrals, tuple("0xnew|0xboss"), None)
        };
        let new = ReferralLink {
            referee: "0xnew".into(),
            referrer: "0xboss".into(),
        };
        let deleted = Event::ReferralDeleted {
            referee: "0xold".into(),
            referrer: None,
        };
        assert_eq!(
            m.map(&moved),
            Ok(Mapped::KeyMoved(deleted, Event::ReferralInserted { new }))
        );
    }

    #[test]
    fn a_float_printed_with_an_exponent_maps_to_its_exact_decimal() {
        let (m, trades) = (mapper(), trades_rel());
        let got = m.map(&insert(&trades, trade_row("1.23e-06")));
        match got {
            Ok(Mapped::Event(Event::TradeInserted { new })) => {
                assert_eq!(new.price, "0.00000123".parse().unwrap());
            }
            other => panic!("expected the trade, got {other:?}"),
        }
    }

    #[test]
    fn each_rejection_reason() {
        let (m, trades, positions) = (mapper(), trades_rel(), positions_rel());
        let ins = |row| insert(&trades, row);
        let set = |i, v| ins(with(trade_row("1"), i, v));
        let null = || ColumnValue::Null;
        assert_rejected(&m, set(2, null()), "null_value", "column \"price\" is NULL");
        assert_rejected(
            &m,
            set(4, null()),
            "null_value",
            "\"taker_address\" is NULL",
        );
        assert_rejected(
            &m,
            ins(trade_row("NaN")),
            "bad_value",
            "NaN is not a number",
        );
        assert_rejected(
            &m,
            ins(trade_row("1,5")),
            "bad_value",
            "\"price\": invalid numeric",
        );
        assert_rejected(
            &m,
            ins(trade_row("1e+300")),
            "bad_value",
            "\"price\": invalid float8",
        );
        assert_rejected(
            &m,
            set(3, text("abc")),
            "bad_value",
            "\"amount\": invalid numeric",
        );
        assert_rejected(
            &m,
            set(6, text("soon")),
            "bad_value",
            "\"created_at\": invalid",
        );
        let binary = ColumnValue::Binary(Bytes::from_static(b"\x01"));
        assert_rejected(&m, set(4, binary), "bad_value", "binary format");
        let not_utf8 = ColumnValue::Text(Bytes::from_static(b"\xff"));
        assert_rejected(&m, set(4, not_utf8), "bad_value", "not valid UTF-8");
        assert_rejected(
            &m,
            ins(trade_row("-0.01")),
            "negative_price",
            "negative price -0.01",
        );
        let pos = |row| insert(&positions, row);
        assert_rejected(
            &m,
            pos(position_row("open", "x")),
            "bad_value",
            "\"realized_pnl\"",
        );
        assert_rejected(
            &m,
            pos(position_row("pending", "\\N")),
            "unknown_status",
            "\"pending\"",
        );
        let row = with(position_row("open", "\\N"), 4, text("-1"));
        assert_rejected(&m, pos(row), "negative_price", "\"entry_price\"");
        assert_rejected(
            &m,
            delete(&trades, None, None),
            "missing_key",
            "key column \"id\"",
        );
        let null_key = delete(&trades, None, Some(tuple("\\N")));
        assert_rejected(&m, null_key, "missing_key", "key column \"id\"");
        let no_tuple = change(&trades, Op::Update, None);
        assert_rejected(&m, no_tuple, "missing_tuple", "update without a new row");
        let only_id = insert(&relation("public", "trades", "id"), tuple("1"));
        assert_rejected(
            &m,
            only_id,
            "missing_column",
            "column \"symbol\" is not in the row",
        );
        // Zero is a price, and "-0" is zero.
        assert!(m.map(&ins(trade_row("0"))).is_ok());
        assert!(m.map(&ins(trade_row("-0"))).is_ok());
        // The dead letter shows what arrived, and only the parts that arrived.
        let r = rejected(&m, &ins(trade_row("-1")));
        let msg = "public.trades insert: column \"price\": negative price -1";
        assert_eq!(r.to_string(), msg);
        assert_eq!(r.row["new"]["price"], "-1");
        assert_eq!(r.row["new"]["memo"], Json::Null);
        assert!(r.row.get("old").is_none() && r.row.get("key").is_none());
        let r = rejected(&m, &delete(&trades, None, Some(tuple("\\N"))));
        assert_eq!(r.row, json!({"key": {"id": null}}));
    }

    #[test]
    fn an_id_or_address_longer_than_the_store_can_index_is_rejected() {
        let (m, trades, referrals) = (mapper(), trades_rel(), referrals_rel());
        let long = "0x".to_owned() + &"ab".repeat(MAX_KEY_BYTES);
        let at_limit = "a".repeat(MAX_KEY_BYTES);
        let set = |i, v: &str| insert(&trades, with(trade_row("1"), i, text(v)));
        assert!(m.map(&set(4, &at_limit)).is_ok());
        for i in [0, 4, 5] {
            let r = rejected(&m, &set(i, &long));
            assert_eq!(r.reason.as_str(), "too_long", "{r}");
            assert!(r.detail.contains("2050 bytes"), "{r}");
            assert!(r.detail.len() < 1_000, "the detail quotes a bounded prefix");
        }
        let link = |a: &str, b: &str| insert(&referrals, tuple(&format!("{a}|{b}")));
        assert_eq!(
            rejected(&m, &link(&long, "0xa")).reason.as_str(),
            "too_long"
        );
        assert_eq!(
            rejected(&m, &link("0xa", &long)).reason.as_str(),
            "too_long"
        );
        let del = delete(&trades, None, Some(tuple(&long)));
        assert_eq!(rejected(&m, &del).reason.as_str(), "too_long");
        // A long symbol is only information: the fill is still mapped.
        assert!(m.map(&set(1, &long)).is_ok());
    }

    #[test]
    fn unchanged_toast_falls_back_to_the_full_old_row() {
        let (m, rel) = (mapper(), trades_rel());
        let toasted = with(trade_row("2"), 4, ColumnValue::UnchangedToast);
        let e = event(&m, &update(&rel, toasted.clone(), Some(trade_row("1"))));
        let (old, new) = (Some(trade("1")), trade("2"));
        assert_eq!(e, Event::TradeUpdated { old, new });
        let r = rejected(&m, &update(&rel, toasted, None));
        assert_eq!(r.reason.as_str(), "unchanged_toast");
        assert!(r.detail.contains("\"taker_address\""), "{r}");
        assert_eq!(
            r.row["new"]["taker_address"],
            json!({"unchanged_toast": true})
        );
        // An unchanged TOAST value in a column walpoints does not map does not matter.
        let toasted = with(trade_row("2"), 7, ColumnValue::UnchangedToast);
        assert!(m.map(&update(&rel, toasted, None)).is_ok());
    }

    #[test]
    fn other_tables_ignored_and_truncate() {
        let m = mapper();
        let orders = relation("public", "orders", "id");
        for rel in [orders, relation("archive", "trades", TRADE_COLS)] {
            assert_eq!(m.table_of(&rel), None);
            assert_eq!(m.check_relation(&rel), Ok(()));
            for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
                let c = change(&rel, op, Some(tuple("x")));
                assert_eq!(m.map(&c), Ok(Mapped::Ignored));
            }
        }
        let rels = [trades_rel(), positions_rel(), referrals_rel()];
        for (rel, kind) in rels.iter().zip(TableKind::ALL) {
            let c = change(rel, Op::Truncate, None);
            assert_eq!(m.map(&c), Ok(Mapped::Truncate(kind)));
        }
        let names = TableKind::ALL.map(TableKind::as_str);
        assert_eq!(names, ["trades", "positions", "referral_relations"]);
    }

    #[test]
    fn snapshot_rows_map_like_inserts() {
        let m = mapper();
        let trade_cols: Vec<_> = TRADE_COLS.split_whitespace().take(7).collect();
        assert_eq!(m.snapshot_columns(TableKind::Trades), trade_cols);
        let position_cols: Vec<_> = POSITION_COLS.split_whitespace().collect();
        assert_eq!(m.snapshot_columns(TableKind::Positions), position_cols);
        let line = format!("7|BTC-USD|100.5|-0.5|0xTaker|0xmaker|{T0}");
        let texts: Vec<_> = line.split('|').map(Some).collect();
        let new = trade("100.5");
        let e = m.map_snapshot_row(TableKind::Trades, &texts);
        assert_eq!(e, Ok(Event::TradeInserted { new }));
        let new = link("a", "b");
        let e = m.map_snapshot_row(TableKind::Referrals, &[Some("a"), Some("b")]);
        assert_eq!(e, Ok(Event::ReferralInserted { new }));
        let r = m.map_snapshot_row(TableKind::Positions, &[Some("x"), None]);
        let r = r.unwrap_err();
        assert_eq!((r.table.as_str(), r.op), ("public.positions", "insert"));
        assert_eq!(r.reason.as_str(), "null_value");
        assert_eq!(r.row, json!({"new": {"id": "x", "user_address": null}}));
        // Too few texts is a missing column, not a panic.
        let r = m.map_snapshot_row(TableKind::Trades, &texts[..3]);
        assert_eq!(r.unwrap_err().reason.as_str(), "missing_column");
    }

    #[test]
    fn check_relation_names_missing_columns() {
        let m = mapper();
        assert_eq!(m.check_relation(&trades_rel()), Ok(()));
        let rel = relation("public", "trades", "id symbol amount memo");
        let e = m.check_relation(&rel).unwrap_err();
        let MappingError::MissingColumn {
            table,
            columns,
            keys,
        } = &e;
        assert_eq!(table, "public.trades");
        let missing = ["price", "taker_address", "maker_address", "created_at"];
        assert_eq!(columns, &missing);
        assert_eq!(keys[0], "columns.trades_price");
        let msg = e.to_string();
        let head = "table public.trades has no column price, taker_address";
        assert!(msg.starts_with(head), "{msg}");
        assert!(
            msg.contains("columns.trades_price, columns.trades_taker"),
            "{msg}"
        );
        assert!(msg.contains("walpoints.toml") && msg.contains("restore the column"));
    }

    #[test]
    fn huge_values_are_cut_in_the_dead_letter() {
        let m = mapper();
        let huge = "é".repeat(1 << 20);
        let row = with(with(trade_row("1"), 4, text(&huge)), 2, ColumnValue::Null);
        let r = rejected(&m, &insert(&trades_rel(), row));
        let kept = r.row["new"]["taker_address"].as_str().unwrap();
        assert_eq!(kept.chars().count(), ROW_VALUE_CHARS + 1);
        assert!(kept.ends_with('…'));
        assert!(serde_json::to_string(&r.row).unwrap().len() < 4_000);
        // A huge status is quoted briefly in the detail.
        let row = with(position_row("open", "\\N"), 5, text(&"x".repeat(1 << 20)));
        let r = rejected(&m, &insert(&positions_rel(), row));
        assert_eq!(r.reason.as_str(), "unknown_status");
        assert!(r.detail.len() < 400, "{}", r.detail.len());
        assert_eq!(clip("héllo", 2), "hé…");
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = ColumnValue> {
        use proptest::prelude::*;
        let text =
            "[-0-9a-zA-Z .:+]{0,12}|\\PC{0,8}".prop_map(|s: String| ColumnValue::Text(s.into()));
        let bytes = proptest::collection::vec(any::<u8>(), 0..6);
        let binary = bytes.prop_map(|b| ColumnValue::Binary(b.into()));
        prop_oneof![
            Just(ColumnValue::Null),
            Just(ColumnValue::UnchangedToast),
            text,
            binary
        ]
    }

    proptest::proptest! {
        /// Any tuples, of any length, under any op, map or reject: never a panic.
        #[test]
        fn never_panics(
            table in 0usize..4,
            op in 0usize..4,
            tuples in proptest::collection::vec(
                proptest::option::of(proptest::collection::vec(arb_value(), 0..10)), 3),
        ) {
            let rels = [trades_rel(), positions_rel(), referrals_rel(), relation("x", "y", "id")];
            let ops = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];
            let t = |i: usize| tuples[i].clone().map(|columns| TupleData { columns });
            let c = change(&rels[table], ops[op], t(0));
            let _ = mapper().map(&RowChange { old: t(1), key: t(2), ..c });
            let texts: Vec<Option<&str>> = vec![Some("1"); op * 2];
            let _ = mapper().map_snapshot_row(TableKind::ALL[table % 3], &texts);
        }
    }
}
