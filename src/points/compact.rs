//! An award in the compact ledger's shape: one row per fill with a slot per party, instead of
//! one row per entry.
//!
//! The engine writes a fill's entries in a fixed order (taker, the taker's level-1 and level-2
//! referrers, maker, the maker's referrers; a referral level may be missing), with the rules'
//! rates, multiplier 1 on referral entries and the side's points as their basis. So the slots
//! below hold everything the entries do, and [`CompactAward::entries`] gives them back
//! exactly; [`CompactAward::of`] refuses an award of any other shape rather than store a row
//! that would read back differently.

use rust_decimal::Decimal;

use super::award::{Award, AwardedEntry};
use super::epoch::EpochId;
use super::ledger::EntryKind;

/// One side of a fill: its own entry and its referrers' shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactSide {
    /// The side's trading points.
    pub points: Decimal,
    /// Its tier multiplier.
    pub multiplier: Decimal,
    /// Its rate (taker or maker).
    pub rate: Decimal,
    /// Level-1 referrer and their points, when that entry was written.
    pub level1: Option<(String, Decimal)>,
    /// Level-2 referrer and their points, when that entry was written.
    pub level2: Option<(String, Decimal)>,
}

/// The entries of one eligible fill, slot by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactAward {
    /// Epoch the entries count in.
    pub epoch: EpochId,
    /// The fill's notional: the basis of both sides' entries.
    pub notional: Decimal,
    /// Taker (the award's `trade.taker`).
    pub taker: CompactSide,
    /// Maker (the award's `trade.maker`).
    pub maker: CompactSide,
    /// Share paid to level-1 referrers (`None` when no level-1 entry was written).
    pub level1_share: Option<Decimal>,
    /// Share paid to level-2 referrers.
    pub level2_share: Option<Decimal>,
}

/// Why an award has no compact form: it would not read back as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trade award of unexpected shape: {0}")]
pub struct ShapeError(String);

impl CompactAward {
    /// The compact form of an eligible award; `Ok(None)` for one that earned nothing.
    pub fn of(award: &Award) -> Result<Option<CompactAward>, ShapeError> {
        let Some(volume) = &award.volume else {
            if award.entries.is_empty() {
                return Ok(None);
            }
            return Err(ShapeError("entries without volume".into()));
        };
        let mut shares: [Option<Decimal>; 2] = [None, None];
        let mut rest = award.entries.as_slice();
        let mut side = |kind: EntryKind, user: &str| -> Result<CompactSide, ShapeError> {
            let Some((own, tail)) = rest.split_first() else {
                return Err(ShapeError(format!("no {} entry", kind.as_str())));
            };
            if own.kind != kind || own.user != user || own.epoch != volume.epoch {
                return Err(ShapeError(format!("expected {} of {user}", kind.as_str())));
            }
            if own.basis != volume.notional || own.referee.is_some() {
                return Err(ShapeError(format!("{} basis", kind.as_str())));
            }
            rest = tail;
            let mut levels: [Option<(String, Decimal)>; 2] = [None, None];
            for (i, level) in [EntryKind::ReferralL1, EntryKind::ReferralL2]
                .into_iter()
                .enumerate()
            {
                let Some((e, tail)) = rest.split_first() else {
                    break;
                };
                if e.kind != level {
                    continue;
                }
                let fits = e.epoch == volume.epoch
                    && e.basis == own.points
                    && e.multiplier == Decimal::ONE
                    && e.referee.as_deref() == Some(user)
                    && shares[i].is_none_or(|s| s == e.rate);
                if !fits {
                    return Err(ShapeError(format!("{} entry of {user}", level.as_str())));
                }
                shares[i] = Some(e.rate);
                levels[i] = Some((e.user.clone(), e.points));
                rest = tail;
            }
            let [level1, level2] = levels;
            Ok(CompactSide {
                points: own.points,
                multiplier: own.multiplier,
                rate: own.rate,
                level1,
                level2,
            })
        };
        let taker = side(EntryKind::TradingTaker, &award.trade.taker)?;
        let maker = side(EntryKind::TradingMaker, &award.trade.maker)?;
        if !rest.is_empty() {
            return Err(ShapeError(format!("{} entries left over", rest.len())));
        }
        Ok(Some(CompactAward {
            epoch: volume.epoch,
            notional: volume.notional,
            taker,
            maker,
            level1_share: shares[0],
            level2_share: shares[1],
        }))
    }

    /// The award's entries, in the order the engine wrote them; `taker` and `maker` are the
    /// award's parties.
    pub fn entries(&self, taker: &str, maker: &str) -> Vec<AwardedEntry> {
        let mut out = Vec::with_capacity(6);
        for (side, user, kind) in [
            (&self.taker, taker, EntryKind::TradingTaker),
            (&self.maker, maker, EntryKind::TradingMaker),
        ] {
            out.push(AwardedEntry {
                user: user.to_owned(),
                epoch: self.epoch,
                kind,
                points: side.points,
                basis: self.notional,
                multiplier: side.multiplier,
                rate: side.rate,
                referee: None,
            });
            for (level, kind, share) in [
                (&side.level1, EntryKind::ReferralL1, self.level1_share),
                (&side.level2, EntryKind::ReferralL2, self.level2_share),
            ] {
                if let Some((who, points)) = level {
                    out.push(AwardedEntry {
                        user: who.clone(),
                        epoch: self.epoch,
                        kind,
                        points: *points,
                        basis: side.points,
                        multiplier: Decimal::ONE,
                        rate: share.unwrap_or_default(),
                        referee: Some(user.to_owned()),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::points::{AddedVolume, TradeFacts};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn entry(user: &str, kind: EntryKind, points: &str, basis: &str, rate: &str) -> AwardedEntry {
        let referee = match kind {
            EntryKind::ReferralL1 | EntryKind::ReferralL2 => Some(
                if user.starts_with("0xt") {
                    "0xtaker"
                } else {
                    "0xmaker"
                }
                .to_owned(),
            ),
            _ => None,
        };
        AwardedEntry {
            user: user.into(),
            epoch: 3,
            kind,
            points: d(points),
            basis: d(basis),
            multiplier: if kind.is_trading() {
                d("1.1")
            } else {
                Decimal::ONE
            },
            rate: d(rate),
            referee,
        }
    }

    fn award(entries: Vec<AwardedEntry>) -> Award {
        Award {
            trade: TradeFacts {
                price: d("100"),
                amount: d("-6"),
                taker: "0xtaker".into(),
                maker: "0xmaker".into(),
                time: 7,
            },
            volume: Some(AddedVolume {
                epoch: 3,
                notional: d("600"),
            }),
            entries,
        }
    }

    #[test]
    fn every_referral_layout_reads_back_exactly() {
        use EntryKind::*;
        let layouts: Vec<Vec<AwardedEntry>> = vec![
            vec![
                entry("0xtaker", TradingTaker, "6.6", "600", "0.01"),
                entry("0xmaker", TradingMaker, "3.3", "600", "0.005"),
            ],
            vec![
                entry("0xtaker", TradingTaker, "6.6", "600", "0.01"),
                entry("0xtref1", ReferralL1, "0.66", "6.6", "0.1"),
                entry("0xtref2", ReferralL2, "0.33", "6.6", "0.05"),
                entry("0xmaker", TradingMaker, "3.3", "600", "0.005"),
                entry("0xmref2", ReferralL2, "0.165", "3.3", "0.05"),
            ],
            vec![
                entry("0xtaker", TradingTaker, "6.6", "600", "0.01"),
                entry("0xmaker", TradingMaker, "3.3", "600", "0.005"),
                entry("0xmref1", ReferralL1, "0.33", "3.3", "0.1"),
            ],
        ];
        for entries in layouts {
            let a = award(entries.clone());
            let c = CompactAward::of(&a).unwrap().unwrap();
            assert_eq!(c.entries("0xtaker", "0xmaker"), entries);
        }
    }

    #[test]
    fn an_empty_award_has_no_slots_and_odd_shapes_are_refused() {
        let mut a = award(Vec::new());
        a.volume = None;
        assert_eq!(CompactAward::of(&a), Ok(None));
        let wrong = award(vec![entry(
            "0xmaker",
            EntryKind::TradingMaker,
            "3.3",
            "600",
            "0.005",
        )]);
        assert!(CompactAward::of(&wrong).is_err());
    }
}
