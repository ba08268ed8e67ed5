//! The stored ledger read back entry by entry in commit order, for `replay --verify`, without
//! the view's sort: the view `walpoints.ledger` is a union of three tables, partitioned by epoch,
//! and `ORDER BY commit_lsn, ordinal` over it sorts the whole season.
//!
//! Each epoch partition of `ledger_fill` and `ledger_position` (and `ledger_v1`, for an upgraded
//! store) is already in (commit LSN, ordinal) order in its primary key once the epoch is fixed,
//! so each is read by its own cursor in key order (an index scan, no sort), and the streams are
//! merged here by (commit LSN, first entry). Compact rows are expanded exactly as the view
//! expands them (same ordinals, the same filter on missing slots), so what comes out is the
//! view's rows in the view's order.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use rust_decimal::Decimal;
use tokio_postgres::types::{FromSql, PgLsn, Type};
use tokio_postgres::{Row, Statement};

use super::{Store, StoreError};
use crate::identifier::quote_literal;
use crate::lsn::Lsn;
use crate::time::micros_of;

/// Rows fetched per cursor round trip.
const FETCH: usize = 20_000;

/// One entry of the stored ledger, as the view `walpoints.ledger` shows it (every column
/// `replay` compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Commit LSN of its transaction.
    pub commit_lsn: u64,
    /// Its ordinal there.
    pub ordinal: i64,
    /// Earning address.
    pub user: String,
    /// Epoch it counts in.
    pub epoch: i64,
    /// Entry kind (`trading_taker`, ...).
    pub kind: Cow<'static, str>,
    /// Whether it undoes an earlier entry.
    pub reversal: bool,
    /// Points.
    pub points: Decimal,
    /// Basis (NULL only where a hand edit emptied a compact row's slot).
    pub basis: Option<Decimal>,
    /// Multiplier (likewise).
    pub multiplier: Option<Decimal>,
    /// Rate (likewise).
    pub rate: Option<Decimal>,
    /// A holding segment's notional.
    pub position_notional: Option<Decimal>,
    /// Source fill.
    pub trade_id: Option<String>,
    /// Source position.
    pub position_id: Option<String>,
    /// Referee of a referral entry.
    pub referee: Option<String>,
    /// Start of a holding segment, µs since 1970.
    pub segment_start: Option<i64>,
    /// Event time, µs since 1970.
    pub event_time: i64,
    /// Rules version.
    pub rules_version: Arc<str>,
}

/// What the stored ledger hands out next: a compact fill row (its entries only expanded when
/// a comparison needs them) or one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredItem {
    /// A `ledger_fill` row with at least one entry in the view.
    Fill(Box<StoredFill>),
    /// A `ledger_position` or `ledger_v1` row.
    Entry(Box<StoredEntry>),
}

/// A `ledger_fill` row, with what the view reads of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFill {
    /// Commit LSN of its transaction.
    pub commit_lsn: u64,
    /// Ordinal of its first entry.
    pub first_entry: i64,
    /// The fill's epoch.
    pub epoch: i64,
    /// The trade.
    pub trade_id: String,
    /// Whether the row undoes an award.
    pub reversal: bool,
    taker: String,
    maker: String,
    notional: Option<Decimal>,
    /// Taker points, multiplier, rate; maker likewise.
    sides: [[Option<Decimal>; 3]; 2],
    /// Taker's level 1, level 2, maker's level 1, level 2: user and points.
    levels: [(Option<String>, Option<Decimal>); 4],
    shares: [Option<Decimal>; 2],
    /// Event time of its entries, µs since 1970.
    pub event_time: i64,
    /// Rules version.
    pub rules_version: Arc<str>,
}

/// One slot of a fill row that is an entry of the view, borrowed from the row.
#[derive(Debug, Clone, Copy)]
pub struct FillSlot<'a> {
    /// Ordinal of the entry.
    pub ordinal: i64,
    /// Its kind.
    pub kind: &'static str,
    /// Whose.
    pub user: &'a str,
    /// Points as the view shows them (negated for a reversal).
    pub points: Decimal,
    /// Basis as the view shows it (negated for a reversal).
    pub basis: Option<Decimal>,
    /// Multiplier.
    pub multiplier: Option<Decimal>,
    /// Rate.
    pub rate: Option<Decimal>,
    /// Referee of a referral slot.
    pub referee: Option<&'a str>,
}

impl StoredFill {
    /// The row's entries as the view's lateral VALUES make them: slots in the order taker,
    /// taker's level 1 and 2, maker, maker's level 1 and 2; a slot is an entry when it has both
    /// a user and points; its ordinal counts the referrers present before it.
    pub fn slots(&self) -> impl Iterator<Item = FillSlot<'_>> {
        let present = |i: usize| i64::from(self.levels[i].0.is_some());
        let (t1, t2, m1) = (present(0), present(1), present(2));
        let sign = |d: Decimal| if self.reversal { -d } else { d };
        let side = |s: usize| self.sides[s];
        let one = Some(Decimal::ONE);
        // Level i: 0, 1 the taker's, 2, 3 the maker's; its basis is the referee's points.
        let level = |i: usize, k: i64, kind: &'static str| {
            let (user, points) = &self.levels[i];
            let referee = if i < 2 {
                self.taker.as_str()
            } else {
                self.maker.as_str()
            };
            let basis = side(i / 2)[0];
            (
                k,
                kind,
                user.as_deref(),
                *points,
                basis,
                one,
                self.shares[i % 2],
                Some(referee),
            )
        };
        let slots = [
            (
                0,
                "trading_taker",
                Some(self.taker.as_str()),
                side(0)[0],
                self.notional,
                side(0)[1],
                side(0)[2],
                None,
            ),
            level(0, 1, "referral_l1"),
            level(1, 1 + t1, "referral_l2"),
            (
                1 + t1 + t2,
                "trading_maker",
                Some(self.maker.as_str()),
                side(1)[0],
                self.notional,
                side(1)[1],
                side(1)[2],
                None,
            ),
            level(2, 2 + t1 + t2, "referral_l1"),
            level(3, 2 + t1 + t2 + m1, "referral_l2"),
        ];
        let first = self.first_entry;
        slots.into_iter().filter_map(
            move |(k, kind, user, points, basis, multiplier, rate, referee)| {
                Some(FillSlot {
                    ordinal: first + k,
                    kind,
                    user: user?,
                    points: sign(points?),
                    basis: basis.map(sign),
                    multiplier,
                    rate,
                    referee,
                })
            },
        )
    }

    /// The row's entries, owned.
    pub fn entries(&self) -> Vec<StoredEntry> {
        self.slots()
            .map(|s| StoredEntry {
                commit_lsn: self.commit_lsn,
                ordinal: s.ordinal,
                user: s.user.to_owned(),
                epoch: self.epoch,
                kind: Cow::Borrowed(s.kind),
                reversal: self.reversal,
                points: s.points,
                basis: s.basis,
                multiplier: s.multiplier,
                rate: s.rate,
                position_notional: None,
                trade_id: Some(self.trade_id.clone()),
                position_id: None,
                referee: s.referee.map(str::to_owned),
                segment_start: None,
                event_time: self.event_time,
                rules_version: self.rules_version.clone(),
            })
            .collect()
    }
}

/// Which table a cursor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Fill,
    Position,
    V1,
}

/// One cursor and the rows it fetched and has not handed out yet.
struct Cursor {
    table: Table,
    fetch: Statement,
    rows: VecDeque<Row>,
    done: bool,
}

/// A source's stored ledger entries in (commit LSN, ordinal) order, read in one transaction of
/// the connection (the caller opens it, in the snapshot it compares against).
pub struct StoredLedger<'a> {
    store: &'a Store,
    cursors: Vec<Cursor>,
    /// (commit LSN, first ordinal of the row, cursor) of each cursor's next row.
    heads: BinaryHeap<Reverse<(u64, i64, usize)>>,
    versions: BTreeMap<i16, Arc<str>>,
    /// The item of the row being handed out.
    pending: Option<StoredItem>,
}

const FILL_COLUMNS: &str = "commit_lsn, first_entry, epoch, trade_id, reversal, taker, maker, \
     notional, taker_points, taker_multiplier, taker_rate, maker_points, maker_multiplier, \
     maker_rate, taker_l1, taker_l1_points, taker_l2, taker_l2_points, maker_l1, \
     maker_l1_points, maker_l2, maker_l2_points, level1_share, level2_share, event_time, rules_id";

const POSITION_COLUMNS: &str = "commit_lsn, ordinal, epoch, kind::text, user_address, \
     position_id, points, basis, rate, position_notional, segment_start, event_time, rules_id";

const V1_COLUMNS: &str = "commit_lsn, ordinal, epoch, kind, user_address, reversal, points, \
     basis, multiplier, rate, position_notional, trade_id, position_id, referee, segment_start, \
     event_time, rules_version";

impl Store {
    /// Declares the cursors over this source's stored ledger up to `until` (only epoch `epoch`
    /// when given) inside the transaction the connection has open.
    pub async fn stored_ledger(
        &self,
        until: Lsn,
        epoch: Option<i32>,
    ) -> Result<StoredLedger<'_>, StoreError> {
        let versions = self
            .client
            .query("SELECT rules_id, version FROM walpoints.rules", &[])
            .await
            .map_err(StoreError::db("read walpoints.rules"))?
            .iter()
            .map(|r| (r.get::<_, i16>(0), Arc::from(r.get::<_, &str>(1))))
            .collect();
        let source = quote_literal(&self.source_id);
        let until = format!("'{until}'");
        let mut declared = Vec::new();
        for (table, name, columns, key) in [
            (Table::Fill, "ledger_fill", FILL_COLUMNS, "ordinal"),
            (
                Table::Position,
                "ledger_position",
                POSITION_COLUMNS,
                "ordinal",
            ),
        ] {
            for e in self.epochs_of(name, epoch).await? {
                declared.push((
                    table,
                    format!(
                        "SELECT {columns} FROM walpoints.{name} WHERE source_id = {source} \
                         AND epoch = {e} AND commit_lsn <= {until} ORDER BY commit_lsn, {key}"
                    ),
                ));
            }
        }
        let has_v1: bool = self
            .client
            .query_one("SELECT to_regclass('walpoints.ledger_v1') IS NOT NULL", &[])
            .await
            .map_err(StoreError::db("look for ledger_v1"))?
            .get(0);
        if has_v1 {
            let only = epoch.map_or(String::new(), |e| format!("AND epoch = {e}"));
            declared.push((
                Table::V1,
                format!(
                    "SELECT {V1_COLUMNS} FROM walpoints.ledger_v1 WHERE source_id = {source} \
                     AND commit_lsn <= {until} {only} ORDER BY commit_lsn, ordinal"
                ),
            ));
        }
        let mut cursors = Vec::with_capacity(declared.len());
        for (i, (table, query)) in declared.into_iter().enumerate() {
            self.client
                .batch_execute(&format!(
                    "DECLARE walpoints_replay_{i} NO SCROLL CURSOR FOR {query}"
                ))
                .await
                .map_err(StoreError::db("declare a ledger cursor"))?;
            let fetch = self
                .client
                .prepare(&format!("FETCH {FETCH} FROM walpoints_replay_{i}"))
                .await
                .map_err(StoreError::db("prepare a ledger fetch"))?;
            cursors.push(Cursor {
                table,
                fetch,
                rows: VecDeque::new(),
                done: false,
            });
        }
        let mut ledger = StoredLedger {
            store: self,
            cursors,
            heads: BinaryHeap::new(),
            versions,
            pending: None,
        };
        for i in 0..ledger.cursors.len() {
            ledger.push_head(i).await?;
        }
        Ok(ledger)
    }

    /// The distinct epochs of this source's rows in `table` (`only`, if given and present), by
    /// a loose index scan of the primary key: one probe per epoch.
    async fn epochs_of(&self, table: &str, only: Option<i32>) -> Result<Vec<i32>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "WITH RECURSIVE e(epoch) AS ( \
                       SELECT min(epoch) FROM walpoints.{table} WHERE source_id = $1 \
                       UNION ALL \
                       SELECT (SELECT min(epoch) FROM walpoints.{table} \
                               WHERE source_id = $1 AND epoch > e.epoch) \
                       FROM e WHERE e.epoch IS NOT NULL) \
                     SELECT epoch FROM e WHERE epoch IS NOT NULL \
                       AND ($2::int IS NULL OR epoch = $2)"
                ),
                &[&self.source_id, &only],
            )
            .await
            .map_err(StoreError::db("list the ledger's epochs"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// A `numeric` decoded straight from PostgreSQL's base-10000 digits into a Decimal's mantissa
/// (rust_decimal's own decoder divides per digit, which a season's dozen numerics per row
/// feel); anything this does not cover exactly (NaN, more than 28 decimals, more than 36
/// digits) goes through rust_decimal's.
struct Num(Decimal);

impl<'a> FromSql<'a> for Num {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match fast_numeric(raw) {
            Some(d) => Ok(Num(d)),
            None => Decimal::from_sql(ty, raw).map(Num),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <Decimal as FromSql>::accepts(ty)
    }
}

/// Binary `numeric`: ndigits, weight, sign, dscale (16 bits each), then the base-10000 digits.
fn fast_numeric(raw: &[u8]) -> Option<Decimal> {
    let word = |i: usize| Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]));
    let n = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = u32::from(word(6)?);
    if n > 9 || raw.len() != 8 + 2 * n || dscale > 28 || (sign != 0 && sign != 0x4000) {
        return None;
    }
    let mut acc: i128 = 0;
    for i in 0..n {
        let d = word(8 + 2 * i)?;
        if d > 9999 {
            return None;
        }
        acc = acc * 10_000 + i128::from(d);
    }
    // The last digit counts 10000^(weight - n + 1); the mantissa counts 10^-dscale.
    let exp10 = 4 * (weight - i32::try_from(n).ok()? + 1) + i32::try_from(dscale).ok()?;
    let m = if acc == 0 {
        0
    } else if exp10 >= 0 {
        acc.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)?
    } else {
        let p = 10i128.checked_pow(u32::try_from(-exp10).ok()?)?;
        if acc % p != 0 {
            return None;
        }
        acc / p
    };
    let m = if sign == 0x4000 { -m } else { m };
    Decimal::try_from_i128_with_scale(m, dscale).ok()
}

fn lsn_of(r: &Row) -> u64 {
    u64::from(r.get::<_, PgLsn>(0))
}

impl StoredLedger<'_> {
    /// The next item, `None` after the last; fill rows without entries are skipped, as the
    /// view has no row for them.
    pub async fn next(&mut self) -> Result<Option<StoredItem>, StoreError> {
        loop {
            if let Some(item) = self.pending.take() {
                return Ok(Some(item));
            }
            let Some(Reverse((_, _, i))) = self.heads.pop() else {
                return Ok(None);
            };
            let row = self.cursors[i]
                .rows
                .pop_front()
                .ok_or_else(|| StoreError::Schema("a ledger cursor lost its head".into()))?;
            let table = self.cursors[i].table;
            self.expand(table, &row)?;
            self.push_head(i).await?;
        }
    }

    /// Puts cursor `i`'s next row (fetching more when needed) on the heap.
    async fn push_head(&mut self, i: usize) -> Result<(), StoreError> {
        let c = &mut self.cursors[i];
        if c.rows.is_empty() && !c.done {
            let rows = self
                .store
                .client
                .query(&c.fetch, &[])
                .await
                .map_err(StoreError::db("read the ledger"))?;
            c.done = rows.len() < FETCH;
            c.rows.extend(rows);
        }
        if let Some(r) = c.rows.front() {
            let first: i32 = r.get(1);
            self.heads.push(Reverse((lsn_of(r), i64::from(first), i)));
        }
        Ok(())
    }

    fn version(&self, id: i16) -> Result<Arc<str>, StoreError> {
        self.versions.get(&id).cloned().ok_or_else(|| {
            StoreError::OutOfRange(format!(
                "ledger row names rules {id}, which walpoints.rules does not hold"
            ))
        })
    }

    /// The view's rows for one stored row, into `pending`.
    fn expand(&mut self, table: Table, r: &Row) -> Result<(), StoreError> {
        let ts = |i: usize| r.get::<_, Option<std::time::SystemTime>>(i).map(micros_of);
        let commit_lsn = lsn_of(r);
        match table {
            Table::V1 => {
                self.pending = Some(StoredItem::Entry(Box::new(StoredEntry {
                    commit_lsn,
                    ordinal: i64::from(r.get::<_, i32>(1)),
                    epoch: i64::from(r.get::<_, i32>(2)),
                    kind: Cow::Owned(r.get(3)),
                    user: r.get(4),
                    reversal: r.get(5),
                    points: r.get(6),
                    basis: r.get(7),
                    multiplier: r.get(8),
                    rate: r.get(9),
                    position_notional: r.get(10),
                    trade_id: r.get(11),
                    position_id: r.get(12),
                    referee: r.get(13),
                    segment_start: ts(14),
                    event_time: ts(15).unwrap_or_default(),
                    rules_version: Arc::from(r.get::<_, &str>(16)),
                })));
            }
            Table::Position => {
                let kind: &str = r.get(3);
                self.pending = Some(StoredItem::Entry(Box::new(StoredEntry {
                    commit_lsn,
                    ordinal: i64::from(r.get::<_, i32>(1)),
                    epoch: i64::from(r.get::<_, i32>(2)),
                    kind: match kind {
                        "holding" => Cow::Borrowed("holding"),
                        "pnl" => Cow::Borrowed("pnl"),
                        other => Cow::Owned(other.to_owned()),
                    },
                    user: r.get(4),
                    reversal: false,
                    points: r.get(6),
                    basis: r.get(7),
                    multiplier: Some(Decimal::ONE),
                    rate: r.get(8),
                    position_notional: r.get(9),
                    trade_id: None,
                    position_id: Some(r.get(5)),
                    referee: None,
                    segment_start: ts(10),
                    event_time: ts(11).unwrap_or_default(),
                    rules_version: self.version(r.get(12))?,
                })));
            }
            Table::Fill => self.expand_fill(commit_lsn, r)?,
        }
        Ok(())
    }

    /// A `ledger_fill` row, kept compact (skipped when the view has no entry for it).
    fn expand_fill(&mut self, commit_lsn: u64, r: &Row) -> Result<(), StoreError> {
        let dec = |i: usize| r.get::<_, Option<Num>>(i).map(|n| n.0);
        let fill = StoredFill {
            commit_lsn,
            first_entry: i64::from(r.get::<_, i32>(1)),
            epoch: i64::from(r.get::<_, i32>(2)),
            trade_id: r.get(3),
            reversal: r.get(4),
            taker: r.get(5),
            maker: r.get(6),
            notional: dec(7),
            sides: [[dec(8), dec(9), dec(10)], [dec(11), dec(12), dec(13)]],
            levels: [
                (r.get(14), dec(15)),
                (r.get(16), dec(17)),
                (r.get(18), dec(19)),
                (r.get(20), dec(21)),
            ],
            shares: [dec(22), dec(23)],
            event_time: micros_of(r.get(24)),
            rules_version: self.version(r.get(25))?,
        };
        if fill.slots().next().is_some() {
            self.pending = Some(StoredItem::Fill(Box::new(fill)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::types::ToSql;

    #[test]
    fn the_fast_numeric_decoder_reads_what_rust_decimal_writes() {
        for text in [
            "0",
            "1",
            "-1",
            "0.000001",
            "10",
            "10000",
            "123456.789",
            "-0.5",
            "1.10",
            "600",
            "79228162514264337593543950335",
            "-7922816251426433759354395.0335",
            "0.0000000000000000000000000001",
            "-42.000100",
            "100000000",
            "3.3",
            "12345678901234567890.123456",
        ] {
            let d: Decimal = text.parse().unwrap();
            let mut buf = bytes::BytesMut::new();
            d.to_sql(&Type::NUMERIC, &mut buf).unwrap();
            let fast = fast_numeric(&buf);
            let slow = Decimal::from_sql(&Type::NUMERIC, &buf).unwrap();
            assert_eq!(fast, Some(slow), "{text}");
            assert_eq!(fast.unwrap().to_string(), slow.to_string(), "{text}");
        }
    }
}
