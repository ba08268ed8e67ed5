//! Per-trade memory for reversals, behind a small trait.
//!
//! A correction or delete must undo exactly what the trade currently earns:
//! every entry of its latest award (referrals included) and the volume it
//! added. That memory grows with every trade ever seen, so it is not part of
//! [`State`](super::State): the daemon can keep it in RAM
//! ([`MemoryAwardBook`]) or answer from its store (ledger rows carry the
//! entries; a small table can carry the trade's inputs), fetching the ids
//! listed by [`TxEvents::trade_ids_to_look_up`](super::TxEvents::trade_ids_to_look_up)
//! before each call.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::epoch::EpochId;
use super::ledger::{EntryKind, LedgerEntry};
use super::serde_dec::dec;

/// The points-relevant columns of a trade as the engine evaluated them:
/// an update that leaves all of these equal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeFacts {
    /// Fill price.
    #[serde(with = "dec")]
    pub price: Decimal,
    /// Fill amount as in the row (sign kept; notional uses |amount|).
    #[serde(with = "dec")]
    pub amount: Decimal,
    /// Taker, lowercase.
    pub taker: String,
    /// Maker, lowercase.
    pub maker: String,
    /// Event time actually used (row time or the commit time).
    pub time: i64,
}

/// One entry of an award, with what a reversal needs to mirror it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwardedEntry {
    /// Earning address, lowercase.
    pub user: String,
    /// Epoch the points were counted in.
    pub epoch: EpochId,
    /// Kind of the entry.
    pub kind: EntryKind,
    /// Points as written.
    #[serde(with = "dec")]
    pub points: Decimal,
    /// Basis as written.
    #[serde(with = "dec")]
    pub basis: Decimal,
    /// Multiplier as written.
    #[serde(with = "dec")]
    pub multiplier: Decimal,
    /// Rate as written.
    #[serde(with = "dec")]
    pub rate: Decimal,
    /// Referee of a referral entry.
    pub referee: Option<String>,
}

impl AwardedEntry {
    /// What the award book keeps of `e`: everything its reversal must mirror.
    pub(crate) fn of(e: &LedgerEntry) -> AwardedEntry {
        AwardedEntry {
            user: e.user.clone(),
            epoch: e.epoch,
            kind: e.kind,
            points: e.points,
            basis: e.basis,
            multiplier: e.multiplier,
            rate: e.rate,
            referee: e.referee.clone(),
        }
    }
}

/// Notional a fill added to each side's epoch volume, so a reversal can
/// take exactly that back out of the same epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedVolume {
    /// Epoch of the fill.
    pub epoch: EpochId,
    /// Notional added to both the taker and the maker.
    #[serde(with = "dec")]
    pub notional: Decimal,
}

/// What a trade currently earns: its inputs, the volume it added to both
/// sides, and its entries. Kept for every trade the engine has seen, even
/// ineligible ones (with no entries), so that correcting a self-trade into
/// a valid fill is awarded while an update of a trade never seen is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// The evaluated inputs.
    pub trade: TradeFacts,
    /// Volume added to the taker's and the maker's epoch volume, when the
    /// fill was eligible.
    pub volume: Option<AddedVolume>,
    /// Entries written for the fill, in ledger order.
    pub entries: Vec<AwardedEntry>,
}

/// One change of a trade's award, in the order the engine made it: what the compact ledger
/// stores as one row per fill (an award written, or the award a correction or delete undid),
/// instead of one row per entry. [`FillRecord::entries`] gives back exactly the entries the
/// engine wrote for it, which is what lets the store keep one row and still answer per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRecord {
    /// Position among the transaction's award changes (0..n): with the commit LSN it
    /// identifies the row forever.
    pub ordinal: u32,
    /// The trade whose award changed.
    pub trade_id: String,
    /// True when `award` is the award being undone (its entries are written negated).
    pub reversal: bool,
    /// Epoch of the fill's time (`None` before genesis: then the award is empty).
    pub epoch: Option<EpochId>,
    /// The award written, or the one undone.
    pub award: Award,
    /// Ordinal of the first of its entries in the transaction (the next entry's ordinal when
    /// it has none).
    pub first_entry: u32,
    /// Event time of its entries: the fill's time for an award, the stream time of the
    /// correction for a reversal.
    pub event_time: i64,
}

impl FillRecord {
    /// The ledger entries this record stands for, exactly as the engine wrote them.
    pub fn entries(&self, rules_version: &std::sync::Arc<str>) -> Vec<LedgerEntry> {
        let sign = if self.reversal {
            Decimal::NEGATIVE_ONE
        } else {
            Decimal::ONE
        };
        self.award
            .entries
            .iter()
            .zip(self.first_entry..)
            .map(|(a, ordinal)| LedgerEntry {
                ordinal,
                user: a.user.clone(),
                epoch: a.epoch,
                kind: a.kind,
                reversal: self.reversal,
                points: a.points * sign,
                basis: a.basis * sign,
                multiplier: a.multiplier,
                rate: a.rate,
                position_notional: None,
                trade_id: Some(self.trade_id.clone()),
                position_id: None,
                referee: a.referee.clone(),
                segment_start: None,
                event_time: self.event_time,
                rules_version: rules_version.clone(),
            })
            .collect()
    }
}

/// Storage for the latest award of each trade id. Implementations must
/// return exactly what was last `put` for an id (until `remove`d), or the
/// reversal would not bring the trade's contribution to zero.
pub trait AwardBook {
    /// The latest award of `trade_id`, if the engine has seen that trade.
    fn get(&self, trade_id: &str) -> Option<Award>;
    /// Records the latest award of `trade_id`, replacing any previous one.
    fn put(&mut self, trade_id: &str, award: Award);
    /// Forgets `trade_id` (after a delete has reversed it).
    fn remove(&mut self, trade_id: &str);
}

/// An [`AwardBook`] in RAM, serializable so tests (and a small deployment)
/// can persist it beside the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryAwardBook {
    awards: BTreeMap<String, Award>,
}

impl MemoryAwardBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of trades remembered, for a memory gauge.
    pub fn len(&self) -> usize {
        self.awards.len()
    }

    /// Whether no trade is remembered.
    pub fn is_empty(&self) -> bool {
        self.awards.is_empty()
    }
}

impl AwardBook for MemoryAwardBook {
    fn get(&self, trade_id: &str) -> Option<Award> {
        self.awards.get(trade_id).cloned()
    }

    fn put(&mut self, trade_id: &str, award: Award) {
        self.awards.insert(trade_id.to_owned(), award);
    }

    fn remove(&mut self, trade_id: &str) {
        self.awards.remove(trade_id);
    }
}
