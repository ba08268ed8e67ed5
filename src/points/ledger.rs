//! Ledger entries, the engine's only output, and the fold of entries into
//! per-(user, epoch) totals that the store mirrors.
//!
//! The ledger is append-only: corrections are new, negative entries, never
//! edits, so that (commit LSN, ordinal) identifies an entry forever and
//! totals are always plain sums: of the entries, except that holding points
//! are the sum of hourly [`HoldingCredit`]s (a holding entry records a whole
//! segment, whose hours were credited as they passed).

use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::epoch::EpochId;
use super::error::EventError;
use super::serde_dec::{dec, opt_dec};

/// Rounds an entry's points: 6 decimal places, half away from zero, the one
/// rounding step in the whole engine (volumes and totals are never rounded).
pub fn round_points(v: Decimal) -> Decimal {
    v.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
}

/// What rule produced an entry; also the column the store sums it into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Taker side of a fill.
    TradingTaker,
    /// Maker side of a fill.
    TradingMaker,
    /// Referrer's share of a referee's trading entry.
    ReferralL1,
    /// Referrer's referrer's share.
    ReferralL2,
    /// One holding segment of an open position: a record of hours already credited (see
    /// [`HoldingCredit`]), so it adds nothing to the totals itself.
    Holding,
    /// Share of positive realized PnL on close.
    Pnl,
}

impl EntryKind {
    /// Every kind, in the order the store's columns and metrics list them.
    pub const ALL: [EntryKind; 6] = [
        EntryKind::TradingTaker,
        EntryKind::TradingMaker,
        EntryKind::ReferralL1,
        EntryKind::ReferralL2,
        EntryKind::Holding,
        EntryKind::Pnl,
    ];

    /// Stable text name used in the store and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TradingTaker => "trading_taker",
            EntryKind::TradingMaker => "trading_maker",
            EntryKind::ReferralL1 => "referral_l1",
            EntryKind::ReferralL2 => "referral_l2",
            EntryKind::Holding => "holding",
            EntryKind::Pnl => "pnl",
        }
    }

    /// Trading entries are the ones whose basis is volume.
    pub fn is_trading(self) -> bool {
        matches!(self, EntryKind::TradingTaker | EntryKind::TradingMaker)
    }

    /// Referral entries earn no further referral and add no volume.
    pub fn is_referral(self) -> bool {
        matches!(self, EntryKind::ReferralL1 | EntryKind::ReferralL2)
    }

    /// The position of this kind in [`EntryKind::ALL`], for per-kind sums kept in arrays on
    /// the hot path.
    pub fn index(self) -> usize {
        match self {
            EntryKind::TradingTaker => 0,
            EntryKind::TradingMaker => 1,
            EntryKind::ReferralL1 => 2,
            EntryKind::ReferralL2 => 3,
            EntryKind::Holding => 4,
            EntryKind::Pnl => 5,
        }
    }
}

/// One row of the points ledger, carrying every input that produced it so
/// that an auditor can recompute `points` from the row alone:
///
/// | kind | `basis` | `points` |
/// |---|---|---|
/// | trading_* | fill notional | round(basis × rate × multiplier) |
/// | referral_l* | referee's trading points P | round(basis × rate) |
/// | holding | notional-seconds | round(basis × rate / 86 400) |
/// | pnl | realized PnL | round(basis × rate) |
///
/// A reversal mirrors the entry it undoes with `points` and `basis` negated
/// (so sums of basis still give net volume) and `reversal = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position within the source transaction (0..n); with the commit LSN it
    /// identifies the entry forever, which makes replays idempotent.
    pub ordinal: u32,
    /// Earning address, lowercase.
    pub user: String,
    /// Epoch the points count in.
    pub epoch: EpochId,
    /// Rule that produced the entry.
    pub kind: EntryKind,
    /// True when this entry undoes an earlier one (trade correction/delete).
    pub reversal: bool,
    /// Points, rounded to 6 dp half away from zero.
    #[serde(with = "dec")]
    pub points: Decimal,
    /// The quantity the rate applies to (see the table above).
    #[serde(with = "dec")]
    pub basis: Decimal,
    /// Tier multiplier for trading entries, 1 otherwise.
    #[serde(with = "dec")]
    pub multiplier: Decimal,
    /// The rate or share applied.
    #[serde(with = "dec")]
    pub rate: Decimal,
    /// The position's notional during a holding segment.
    #[serde(with = "opt_dec", default)]
    pub position_notional: Option<Decimal>,
    /// Source fill for trading and referral entries.
    pub trade_id: Option<String>,
    /// Source position for holding and PnL entries.
    pub position_id: Option<String>,
    /// Whose trading points a referral entry shares.
    pub referee: Option<String>,
    /// Start of a holding segment (its end is `event_time`).
    pub segment_start: Option<i64>,
    /// Fill time for trading/referral entries, segment end for holding, the
    /// commit (stream) time for PnL and for reversals.
    pub event_time: i64,
    /// [`RuleSet::version`](super::RuleSet::version) of the rules in force
    /// when the entry was written; shared, as it is the same for every entry.
    pub rules_version: Arc<str>,
}

/// A user's sums for one epoch. The store keeps exactly these columns equal
/// to the ledger's sums; [`fold_totals`] is the reference definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ points of trading_taker and trading_maker entries.
    #[serde(with = "dec")]
    pub trading_points: Decimal,
    /// Σ points of referral entries.
    #[serde(with = "dec")]
    pub referral_points: Decimal,
    /// Σ points of holding entries.
    #[serde(with = "dec")]
    pub holding_points: Decimal,
    /// Σ points of PnL entries.
    #[serde(with = "dec")]
    pub pnl_points: Decimal,
    /// Σ points of all entries.
    #[serde(with = "dec")]
    pub total_points: Decimal,
    /// Σ basis of trading entries: the eligible volume the tiers use.
    #[serde(with = "dec")]
    pub trading_volume: Decimal,
}

fn add(a: &mut Decimal, b: Decimal) -> Result<(), EventError> {
    *a = a
        .checked_add(b)
        .ok_or(EventError::Overflow("points totals"))?;
    Ok(())
}

impl Totals {
    /// The columns of `user_epoch_points`, in its order, so the store's writer and replay's
    /// comparison list them in one place.
    pub fn columns(&self) -> [Decimal; 6] {
        [
            self.trading_points,
            self.referral_points,
            self.holding_points,
            self.pnl_points,
            self.total_points,
            self.trading_volume,
        ]
    }

    /// Adds one entry, so totals can be maintained incrementally per batch.
    pub fn add_entry(&mut self, e: &LedgerEntry) -> Result<(), EventError> {
        match e.kind {
            EntryKind::TradingTaker | EntryKind::TradingMaker => {
                add(&mut self.trading_points, e.points)?;
                add(&mut self.trading_volume, e.basis)?;
            }
            EntryKind::ReferralL1 | EntryKind::ReferralL2 => {
                add(&mut self.referral_points, e.points)?
            }
            // Its hours were credited as they passed.
            EntryKind::Holding => return Ok(()),
            EntryKind::Pnl => add(&mut self.pnl_points, e.points)?,
        }
        add(&mut self.total_points, e.points)
    }

    /// Adds holding points credited for an hour (or the part of one) that passed.
    pub fn add_credit(&mut self, c: &HoldingCredit) -> Result<(), EventError> {
        self.add_holding(c.points)
    }

    /// Adds holding points credited (the store sums a batch's credits per user first).
    pub fn add_holding(&mut self, points: Decimal) -> Result<(), EventError> {
        add(&mut self.holding_points, points)?;
        add(&mut self.total_points, points)
    }

    /// Adds another set of totals (e.g. a batch's delta onto stored totals).
    pub fn merge(&mut self, o: &Totals) -> Result<(), EventError> {
        add(&mut self.trading_points, o.trading_points)?;
        add(&mut self.referral_points, o.referral_points)?;
        add(&mut self.holding_points, o.holding_points)?;
        add(&mut self.pnl_points, o.pnl_points)?;
        add(&mut self.total_points, o.total_points)?;
        add(&mut self.trading_volume, o.trading_volume)
    }
}

/// Holding points earned by one user in one epoch as an hour (or the part of one before a
/// change) passed. Credits go to the totals only: the ledger keeps one row per segment of
/// hours instead of one per hour, and the segment's points are the sum of its credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldingCredit {
    /// Owner address, lowercase.
    pub user: String,
    /// Epoch of the hour.
    pub epoch: EpochId,
    /// Points credited.
    #[serde(with = "dec")]
    pub points: Decimal,
}

/// Folds entries and holding credits into per-(user, epoch) totals: the definition of
/// "totals" that the store's `user_epoch_points` table must always equal.
pub fn fold_totals<'a>(
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
    credits: impl IntoIterator<Item = &'a HoldingCredit>,
) -> Result<BTreeMap<(String, EpochId), Totals>, EventError> {
    let mut out: BTreeMap<(String, EpochId), Totals> = BTreeMap::new();
    for e in entries {
        out.entry((e.user.clone(), e.epoch))
            .or_default()
            .add_entry(e)?;
    }
    for c in credits {
        out.entry((c.user.clone(), c.epoch))
            .or_default()
            .add_credit(c)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_away_from_zero_at_6dp() {
        let r = |s: &str| round_points(s.parse().unwrap()).to_string();
        assert_eq!(r("0.0000005"), "0.000001");
        assert_eq!(r("-0.0000005"), "-0.000001");
        assert_eq!(r("0.00000049"), "0.000000");
        assert_eq!(r("1.2345675"), "1.234568");
    }

    #[test]
    fn kind_names_match_serde_and_indexes_match_all() {
        for (i, k) in EntryKind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
