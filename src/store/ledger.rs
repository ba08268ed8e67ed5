//! The compact ledger: one `ledger_fill` row per change of a trade's award, one
//! `ledger_position` row per holding or PnL entry, and the trade awards that corrections read
//! back from `ledger_fill` (the row is the award: [`CompactAward`] gives its entries).
//!
//! The per-entry ledger is the view `walpoints.ledger` over these tables (migration 0003); the
//! totals are folded from the engine's entries before they are compacted, so they equal the
//! view's sums.

use rust_decimal::Decimal;

use super::{copy, epoch_to_db, StoreError, StoreTx};
use crate::lsn::Lsn;
use crate::points::{
    AddedVolume, Award, CompactAward, EntryKind, FillRecord, LedgerEntry, TradeFacts,
};
use crate::time::micros_of;

/// `ledger_fill`'s columns, in the order [`fill_row`] writes them.
const FILL_COLUMNS: &str = "source_id, epoch, commit_lsn, ordinal, first_entry, trade_id, \
     reversal, fill_time, price, amount, taker, maker, notional, taker_points, \
     taker_multiplier, taker_rate, maker_points, maker_multiplier, maker_rate, taker_l1, \
     taker_l1_points, taker_l2, taker_l2_points, maker_l1, maker_l1_points, maker_l2, \
     maker_l2_points, level1_share, level2_share, event_time, commit_time, rules_id";

/// One award change with the transaction it belongs to.
#[derive(Debug)]
pub struct FillRow {
    /// Commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// Its commit time, µs since 1970.
    pub commit_time: i64,
    /// The change.
    pub fill: FillRecord,
}

impl StoreTx<'_> {
    /// Appends award changes to `ledger_fill` (binary COPY).
    pub(super) async fn copy_fills(&self, fills: &[FillRow]) -> Result<(), StoreError> {
        if fills.is_empty() {
            return Ok(());
        }
        let rules_id = self.rules_id()?;
        let mut chunks = copy::Chunks::new();
        for f in fills {
            fill_row(chunks.row(32), self.source_id, rules_id, f)?;
            chunks.flush_if_full();
        }
        self.send_copy(
            &format!("COPY walpoints.ledger_fill ({FILL_COLUMNS}) FROM STDIN (FORMAT binary)"),
            "ledger_fill",
            chunks.finish(),
        )
        .await
    }

    /// Appends holding and PnL entries to `ledger_position` (binary COPY).
    pub(super) async fn copy_position_entries(
        &self,
        entries: &[(Lsn, i64, LedgerEntry)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rules_id = self.rules_id()?;
        let others = self
            .other_rules_ids(entries.iter().map(|(_, _, e)| &*e.rules_version))
            .await?;
        let mut chunks = copy::Chunks::new();
        for (commit_lsn, commit_time, e) in entries {
            let rules_id = others.get(&*e.rules_version).copied().unwrap_or(rules_id);
            let kind = match e.kind {
                EntryKind::Holding => "holding",
                EntryKind::Pnl => "pnl",
                other => {
                    return Err(StoreError::OutOfRange(format!(
                        "a {} entry is not a position entry",
                        other.as_str()
                    )))
                }
            };
            if e.reversal || e.multiplier != Decimal::ONE {
                return Err(StoreError::OutOfRange(format!(
                    "position entry {} of {commit_lsn} is a reversal or has a multiplier",
                    e.ordinal
                )));
            }
            let Some(position_id) = e.position_id.as_deref() else {
                return Err(StoreError::OutOfRange(format!(
                    "position entry {} of {commit_lsn} has no position",
                    e.ordinal
                )));
            };
            let mut row = chunks.row(15);
            row.text(self.source_id);
            row.i32(epoch_to_db(e.epoch)?);
            row.i64(lsn_param(*commit_lsn));
            row.i32(ordinal(e.ordinal)?);
            row.text(kind);
            row.text(&e.user);
            row.text(position_id);
            row.numeric(&e.points)?;
            row.numeric(&e.basis)?;
            row.numeric(&e.rate)?;
            row.opt_numeric(e.position_notional.as_ref())?;
            row.opt_timestamp(e.segment_start);
            row.timestamp(e.event_time);
            row.timestamp(*commit_time);
            row.i16(rules_id);
            chunks.flush_if_full();
        }
        self.send_copy(
            "COPY walpoints.ledger_position (source_id, epoch, commit_lsn, ordinal, kind, \
             user_address, position_id, points, basis, rate, position_notional, segment_start, \
             event_time, commit_time, rules_id) FROM STDIN (FORMAT binary)",
            "ledger_position",
            chunks.finish(),
        )
        .await
    }

    /// The latest awards of `ids`, as this transaction sees them (its own uncommitted rows
    /// included): a trade's newest `ledger_fill` row, unless that row undid its award; for a
    /// store upgraded from 0002, what `trade_award_v1` holds of trades not changed since.
    pub async fn awards(&self, ids: &[String]) -> Result<Vec<(String, Award)>, StoreError> {
        let (mut found, older) = latest_awards(&self.tx, self.source_id, ids, None).await?;
        if !older.is_empty() {
            found.extend(self.awards_before_upgrade(&older).await?);
        }
        Ok(found)
    }

    /// Awards kept by a store made before the journal (0002's `trade_award`, read-only now).
    async fn awards_before_upgrade(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Award)>, StoreError> {
        let rows = self
            .tx
            .query(
                "SELECT trade_id, award FROM walpoints.trade_award_v1 \
                 WHERE source_id = $1 AND trade_id = ANY($2)",
                &[&self.source_id, &ids],
            )
            .await
            .map_err(StoreError::db(
                "read trade awards kept from before the upgrade",
            ))?;
        rows.iter()
            .map(|row| {
                let id: String = row.get(0);
                let json: &str = row.get(1);
                let award: Award = serde_json::from_str(json).map_err(|source| {
                    StoreError::bad_value(format!("walpoints.trade_award_v1 of trade {id}"), source)
                })?;
                Ok((id, award))
            })
            .collect()
    }
}

impl super::Store {
    /// The awards of `ids` as they stood before the transaction at `before` (what the engine
    /// saw when it applied it): `replay` asks this instead of keeping every award in memory.
    pub async fn awards_before(
        &self,
        ids: &[String],
        before: Lsn,
    ) -> Result<Vec<(String, Award)>, StoreError> {
        Ok(
            latest_awards(&self.client, &self.source_id, ids, Some(before))
                .await?
                .0,
        )
    }
}

/// Each trade's newest `ledger_fill` row (older than `before`, if given) as its award, and the
/// ids that have no row at all.
async fn latest_awards(
    db: &impl tokio_postgres::GenericClient,
    source_id: &str,
    ids: &[String],
    before: Option<Lsn>,
) -> Result<(Vec<(String, Award)>, Vec<String>), StoreError> {
    let before = tokio_postgres::types::PgLsn::from(before.map_or(u64::MAX, |l| l.0));
    let rows = db
        .query(
            "SELECT DISTINCT ON (trade_id) trade_id, reversal, epoch, fill_time, price, \
             amount, taker, maker, notional, taker_points, taker_multiplier, taker_rate, \
             maker_points, maker_multiplier, maker_rate, taker_l1, taker_l1_points, taker_l2, \
             taker_l2_points, maker_l1, maker_l1_points, maker_l2, maker_l2_points, \
             level1_share, level2_share \
             FROM walpoints.ledger_fill WHERE source_id = $1 AND trade_id = ANY($2) \
             AND commit_lsn < $3 \
             ORDER BY trade_id, commit_lsn DESC, ordinal DESC",
            &[&source_id, &ids, &before],
        )
        .await
        .map_err(StoreError::db("read trade awards"))?;
    let mut found = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.get(0);
        seen.insert(id.clone());
        if !row.get::<_, bool>(1) {
            found.push((id, award_of(row)?));
        }
    }
    let unseen = ids
        .iter()
        .filter(|id| !seen.contains(*id))
        .cloned()
        .collect();
    Ok((found, unseen))
}

/// Writes one `ledger_fill` row.
fn fill_row(
    mut row: copy::Row<'_>,
    source_id: &str,
    rules_id: i16,
    f: &FillRow,
) -> Result<(), StoreError> {
    let r = &f.fill;
    let a = &r.award;
    let compact = CompactAward::of(a).map_err(|source| {
        StoreError::bad_value(format!("the award of trade {}", r.trade_id), source)
    })?;
    row.text(source_id);
    row.i32(r.epoch.map(epoch_to_db).transpose()?.unwrap_or(-1));
    row.i64(lsn_param(f.commit_lsn));
    row.i32(ordinal(r.ordinal)?);
    row.i32(ordinal(r.first_entry)?);
    row.text(&r.trade_id);
    row.bool(r.reversal);
    row.timestamp(a.trade.time);
    row.numeric(&a.trade.price)?;
    row.numeric(&a.trade.amount)?;
    row.text(&a.trade.taker);
    row.text(&a.trade.maker);
    match &compact {
        None => {
            for _ in 0..17 {
                row.null();
            }
        }
        Some(c) => {
            row.numeric(&c.notional)?;
            for side in [&c.taker, &c.maker] {
                row.numeric(&side.points)?;
                row.numeric(&side.multiplier)?;
                row.numeric(&side.rate)?;
            }
            for side in [&c.taker, &c.maker] {
                for level in [&side.level1, &side.level2] {
                    row.opt_text(level.as_ref().map(|(who, _)| who.as_str()));
                    row.opt_numeric(level.as_ref().map(|(_, p)| p))?;
                }
            }
            row.opt_numeric(c.level1_share.as_ref())?;
            row.opt_numeric(c.level2_share.as_ref())?;
        }
    }
    row.timestamp(r.event_time);
    row.timestamp(f.commit_time);
    row.i16(rules_id);
    Ok(())
}

/// The award a `ledger_fill` row stands for (columns as [`StoreTx::awards`] selects them).
fn award_of(row: &tokio_postgres::Row) -> Result<Award, StoreError> {
    let id: String = row.get(0);
    let bad = |what: &str| StoreError::OutOfRange(format!("ledger_fill of trade {id}: {what}"));
    let epoch: i32 = row.get(2);
    let dec = |i: usize| row.get::<_, Option<Decimal>>(i);
    let trade = TradeFacts {
        price: row.get(4),
        amount: row.get(5),
        taker: row.get(6),
        maker: row.get(7),
        time: micros_of(row.get(3)),
    };
    let Some(notional) = dec(8) else {
        return Ok(Award {
            trade,
            volume: None,
            entries: Vec::new(),
        });
    };
    let epoch = u32::try_from(epoch).map_err(|_| bad("eligible before genesis"))?;
    let need = |i: usize| dec(i).ok_or_else(|| bad("a side without points"));
    let level = |who: usize| -> Option<(String, Decimal)> {
        let user: Option<String> = row.get(who);
        Some((user?, dec(who + 1)?))
    };
    let compact = CompactAward {
        epoch,
        notional,
        taker: crate::points::CompactSide {
            points: need(9)?,
            multiplier: need(10)?,
            rate: need(11)?,
            level1: level(15),
            level2: level(17),
        },
        maker: crate::points::CompactSide {
            points: need(12)?,
            multiplier: need(13)?,
            rate: need(14)?,
            level1: level(19),
            level2: level(21),
        },
        level1_share: dec(23),
        level2_share: dec(24),
    };
    let entries = compact.entries(&trade.taker, &trade.maker);
    Ok(Award {
        trade,
        volume: Some(AddedVolume { epoch, notional }),
        entries,
    })
}

fn ordinal(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::OutOfRange(format!("ordinal {n} too big")))
}

/// A `pg_lsn` as binary COPY writes it.
pub(super) fn lsn_param(lsn: Lsn) -> i64 {
    i64::try_from(lsn.0).unwrap_or(i64::MAX)
}
