//! What the rules decided besides writing entries, counted per transaction for metrics and logs.
//!
//! [`Rejection`] is the one list of inputs the rules refuse to pay on purpose (a self-trade, a
//! referral cycle, …): the rules count them, telemetry exports them as
//! `walpoints_rejected_total{reason}` (every reason from the first scrape), and
//! `tests/readme.rs` keeps the README's table of them equal to [`Rejection::ALL`].

use serde::{Deserialize, Serialize};

/// An input that earns nothing by rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// A fill with taker = maker.
    SelfTrade,
    /// A fill involving an excluded (system) address.
    ExcludedFill,
    /// A fill below `trading.min_notional`.
    BelowMinNotional,
    /// A fill timed before genesis.
    BeforeGenesis,
    /// An update of a trade the engine never saw.
    UnknownTradeUpdate,
    /// A delete of a trade the engine never saw.
    UnknownTradeDelete,
    /// A referral link with referee = referrer.
    ReferralSelf,
    /// A referral link that would close a cycle.
    ReferralCycle,
    /// A second referrer for a bound referee without `referral.allow_rebind`.
    ReferralRebindIgnored,
}

impl Rejection {
    /// Every rejection, in the order the README lists them.
    pub const ALL: [Rejection; 9] = [
        Rejection::SelfTrade,
        Rejection::ExcludedFill,
        Rejection::BelowMinNotional,
        Rejection::BeforeGenesis,
        Rejection::UnknownTradeUpdate,
        Rejection::UnknownTradeDelete,
        Rejection::ReferralSelf,
        Rejection::ReferralCycle,
        Rejection::ReferralRebindIgnored,
    ];

    /// The stable label of `walpoints_rejected_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::SelfTrade => "self_trades",
            Rejection::ExcludedFill => "excluded_fills",
            Rejection::BelowMinNotional => "below_min_notional",
            Rejection::BeforeGenesis => "before_genesis",
            Rejection::UnknownTradeUpdate => "unknown_trade_updates",
            Rejection::UnknownTradeDelete => "unknown_trade_deletes",
            Rejection::ReferralSelf => "referral_rejected_self",
            Rejection::ReferralCycle => "referral_rejected_cycle",
            Rejection::ReferralRebindIgnored => "referral_rebind_ignored",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Per-transaction counts of decisions that produce no entry (or are worth a metric), so the
/// daemon can expose them without re-deriving the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Eligible fills awarded (fresh or as a correction).
    pub fills_awarded: u64,
    /// Inputs refused by rule, by [`Rejection::index`].
    rejected: [u64; Rejection::ALL.len()],
    /// Trade updates that changed a points-relevant column.
    pub trade_corrections: u64,
    /// Trade deletes that reversed an award.
    pub trade_deletes: u64,
    /// Trade updates that changed nothing points-relevant.
    pub trade_updates_unchanged: u64,
    /// Referral links that took effect (bind or allowed rebind).
    pub referrals_bound: u64,
    /// Referees unbound by a delete.
    pub referrals_unbound: u64,
    /// Holding entries written.
    pub holding_segments: u64,
    /// PnL entries written.
    pub pnl_awards: u64,
    /// Events reported in [`super::TxOutcome::errors`].
    pub events_failed: u64,
}

impl Counters {
    /// Counts one input refused by rule.
    pub fn reject(&mut self, why: Rejection) {
        self.rejected[why.index()] += 1;
    }

    /// How many inputs were refused for `why`.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why.index()]
    }

    /// Adds another transaction's counters (saturating), for batch totals.
    pub fn merge(&mut self, o: &Counters) {
        let f = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        f(&mut self.fills_awarded, o.fills_awarded);
        for (a, b) in self.rejected.iter_mut().zip(o.rejected) {
            f(a, b);
        }
        f(&mut self.trade_corrections, o.trade_corrections);
        f(&mut self.trade_deletes, o.trade_deletes);
        f(&mut self.trade_updates_unchanged, o.trade_updates_unchanged);
        f(&mut self.referrals_bound, o.referrals_bound);
        f(&mut self.referrals_unbound, o.referrals_unbound);
        f(&mut self.holding_segments, o.holding_segments);
        f(&mut self.pnl_awards, o.pnl_awards);
        f(&mut self.events_failed, o.events_failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_its_own_slot_and_label() {
        let mut c = Counters::default();
        for (i, r) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            for _ in 0..=i {
                c.reject(r);
            }
        }
        let mut merged = c;
        merged.merge(&c);
        for (i, r) in Rejection::ALL.into_iter().enumerate() {
            assert_eq!(merged.rejected(r), 2 * (i as u64 + 1), "{}", r.as_str());
        }
        let mut labels: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::ALL.len());
    }
}
