//! The referral graph and referral points.
//!
//! A link binds a referee to a referrer for fills that come after it in the
//! stream. When a user earns a trading entry of P points (as rounded), their
//! referrer earns round(P × level1_share) and the referrer's referrer
//! round(P × level2_share), in the fill's epoch; a zero share writes no entry.
//!
//! Decisions worth knowing:
//! - The first binding stands: a link naming another referrer for a bound
//!   referee (insert or update) is ignored and counted, unless
//!   `referral.allow_rebind`. Re-sending the same link changes nothing.
//! - Self-referrals and links that would close a cycle (walking up from the
//!   new referrer reaches the referee) are rejected and counted, so the graph
//!   is always a forest and walks always end.
//! - A delete unbinds the referee from then on; when the deleted row names a
//!   referrer other than the one in force (a link that was ignored), the
//!   delete changes nothing.
//! - Excluded addresses never earn referral points (they earn nothing at all).

use rust_decimal::Decimal;

use super::award::AwardedEntry;
use super::epoch::EpochId;
use super::error::EventError;
use super::event::ReferralLink;
use super::ledger::{round_points, EntryKind, LedgerEntry};
use super::normalize_address;
use super::state::{State, UserId};
use super::{Ctx, Rejection};

/// Pushes the referral entries that `points` of `referee` earn upwards.
#[allow(clippy::too_many_arguments)]
pub(crate) fn share_entries(
    cx: &Ctx<'_>,
    state: &State,
    referee: UserId,
    referee_name: &str,
    epoch: EpochId,
    points: Decimal,
    trade_id: &str,
    time: i64,
    out: &mut Vec<LedgerEntry>,
    awarded: &mut Vec<AwardedEntry>,
) -> Result<(), EventError> {
    let Some(l1) = state.referrer_id(referee) else {
        return Ok(());
    };
    let levels = [
        (
            Some(l1),
            EntryKind::ReferralL1,
            cx.rules.referral.level1_share,
        ),
        (
            state.referrer_id(l1),
            EntryKind::ReferralL2,
            cx.rules.referral.level2_share,
        ),
    ];
    for (who, kind, share) in levels {
        let Some(who) = who else { break };
        if share.is_zero() {
            continue;
        }
        let name = state.user_name(who);
        if cx.is_excluded(name) {
            continue;
        }
        let raw = points
            .checked_mul(share)
            .ok_or(EventError::Overflow("referral points"))?;
        let mut e = cx.entry(
            name,
            epoch,
            kind,
            round_points(raw),
            points,
            Decimal::ONE,
            share,
            time,
        );
        e.trade_id = Some(trade_id.to_owned());
        e.referee = Some(referee_name.to_owned());
        awarded.push(AwardedEntry::of(&e));
        out.push(e);
    }
    Ok(())
}

/// Whether binding `referee` → `referrer` would close a cycle: walking up
/// from the referrer reaches the referee. The walk is capped by the number
/// of links, so even a hand-edited cyclic state cannot loop forever.
fn would_cycle(state: &State, referee: UserId, referrer: UserId) -> bool {
    let mut x = referrer;
    for _ in 0..=state.referral_links() {
        match state.referrer_id(x) {
            Some(up) if up == referee => return true,
            Some(up) => x = up,
            None => return false,
        }
    }
    true
}

/// An inserted or updated link row.
pub(crate) fn on_link(
    cx: &mut Ctx<'_>,
    state: &mut State,
    old: Option<&ReferralLink>,
    new: &ReferralLink,
) -> Result<(), EventError> {
    let referee = normalize_address(&new.referee);
    let referrer = normalize_address(&new.referrer);
    // Interning first: it is the only fallible step, and must precede any change.
    let ids = if referee == referrer {
        None
    } else {
        Some((state.intern(&referee)?, state.intern(&referrer)?))
    };
    if let Some(o) = old {
        if normalize_address(&o.referee) != referee {
            // The key moved: the old referee's row is gone.
            on_unlink(cx, state, &o.referee, Some(&o.referrer));
        }
    }
    let Some((a, b)) = ids else {
        cx.counters.reject(Rejection::ReferralSelf);
        return Ok(());
    };
    match state.referrer_id(a) {
        Some(cur) if cur == b => return Ok(()),
        Some(_) if !cx.rules.referral.allow_rebind => {
            cx.counters.reject(Rejection::ReferralRebindIgnored);
            return Ok(());
        }
        _ => {}
    }
    if would_cycle(state, a, b) {
        cx.counters.reject(Rejection::ReferralCycle);
        return Ok(());
    }
    state.set_referrer(a, Some(b));
    cx.counters.referrals_bound += 1;
    Ok(())
}

/// A deleted link row.
pub(crate) fn on_unlink(
    cx: &mut Ctx<'_>,
    state: &mut State,
    referee: &str,
    referrer: Option<&str>,
) {
    let Some(a) = state.user_id(&normalize_address(referee)) else {
        return;
    };
    let Some(cur) = state.referrer_id(a) else {
        return;
    };
    if let Some(r) = referrer {
        if normalize_address(r) != state.user_name(cur) {
            return;
        }
    }
    state.set_referrer(a, None);
    cx.counters.referrals_unbound += 1;
}
