//! Trading points, tiers, and trade corrections/deletes.
//!
//! Per eligible fill and per side: round(notional × rate × multiplier), the
//! multiplier from the side's epoch volume strictly before the fill; then
//! both sides' volume grows by the notional. Each side's entry is followed by
//! its referral entries (see [`super::referral`]).
//!
//! Decisions worth knowing:
//! - Every trade the engine sees is remembered in the [`AwardBook`], even an
//!   ineligible one (with no entries), so a correction that makes it
//!   eligible is awarded.
//! - An update (or delete) of a trade the book does not know is ignored and
//!   counted: the engine can only correct what it awarded, and awarding an
//!   old, never-seen trade because some other column of its row changed
//!   would pay for activity outside the configured window.
//! - An insert is a new fill and does not consult the book (ids are primary
//!   keys; a re-insert after a delete finds nothing left to reverse).
//! - A correction does not re-tier later fills: it reverses this fill's
//!   entries and volume, and awards the corrected fill with the volumes as
//!   they are now, "at the correction's place in the stream".
//! - Checks run in this order and the first that applies is counted: before
//!   genesis, self-trade, excluded address, below minimum notional.

use rust_decimal::Decimal;

use super::award::{AddedVolume, Award, AwardBook, AwardedEntry, FillRecord, TradeFacts};
use super::epoch::EpochId;
use super::error::EventError;
use super::event::{relevant_change, Trade};
use super::ledger::{round_points, EntryKind, LedgerEntry};
use super::normalize_address;
use super::referral;
use super::state::{State, UserId};
use super::{Ctx, Rejection};

/// Staged volume changes, so an event is evaluated completely before the
/// state changes (a failing event must leave no trace).
#[derive(Default)]
pub(crate) struct Overlay {
    staged: Vec<((UserId, EpochId), Decimal)>,
}

impl Overlay {
    fn get(&self, state: &State, u: UserId, e: EpochId) -> Decimal {
        self.staged
            .iter()
            .rev()
            .find(|(k, _)| *k == (u, e))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| state.volume_of(Some(u), e))
    }

    fn set(&mut self, u: UserId, e: EpochId, v: Decimal) {
        self.staged.push(((u, e), v));
    }

    fn commit(self, state: &mut State) {
        for ((u, e), v) in self.staged {
            state.set_volume(u, e, v);
        }
    }
}

/// The points-relevant inputs of a row: price must not be negative; `time`
/// falls back to `fallback_time` (commit time on insert, the remembered time
/// on update) when the row has no time column.
fn facts_of(t: &Trade, fallback_time: i64) -> Result<TradeFacts, EventError> {
    if t.price.is_sign_negative() && !t.price.is_zero() {
        return Err(EventError::Invalid(format!(
            "trade {}: negative price {}",
            t.id, t.price
        )));
    }
    Ok(TradeFacts {
        price: t.price,
        amount: t.amount,
        taker: normalize_address(&t.taker).into_owned(),
        maker: normalize_address(&t.maker).into_owned(),
        time: t.time.unwrap_or(fallback_time),
    })
}

/// Evaluates one fill against the overlay-adjusted state, pushing its
/// entries to `out` and staging its volume; returns the award to remember.
fn plan_award(
    cx: &mut Ctx<'_>,
    state: &mut State,
    overlay: &mut Overlay,
    trade_id: &str,
    facts: TradeFacts,
    out: &mut Vec<LedgerEntry>,
) -> Result<Award, EventError> {
    let ineligible = |facts: TradeFacts| Award {
        trade: facts,
        volume: None,
        entries: Vec::new(),
    };
    let notional = facts
        .price
        .checked_mul(facts.amount.abs())
        .ok_or(EventError::Overflow("trade notional"))?;
    let Some(epoch) = cx.epoch_of(facts.time) else {
        cx.counters.reject(Rejection::BeforeGenesis);
        return Ok(ineligible(facts));
    };
    if facts.taker == facts.maker {
        cx.counters.reject(Rejection::SelfTrade);
        return Ok(ineligible(facts));
    }
    if cx.is_excluded(&facts.taker) || cx.is_excluded(&facts.maker) {
        cx.counters.reject(Rejection::ExcludedFill);
        return Ok(ineligible(facts));
    }
    if notional < cx.rules.trading.min_notional {
        cx.counters.reject(Rejection::BelowMinNotional);
        return Ok(ineligible(facts));
    }

    let taker = state.intern(&facts.taker)?;
    let maker = state.intern(&facts.maker)?;
    let taker_vol = overlay.get(state, taker, epoch);
    let maker_vol = overlay.get(state, maker, epoch);
    let mut awarded = Vec::new();
    let sides = [
        (
            taker,
            &facts.taker,
            taker_vol,
            EntryKind::TradingTaker,
            cx.rules.trading.taker_rate,
        ),
        (
            maker,
            &facts.maker,
            maker_vol,
            EntryKind::TradingMaker,
            cx.rules.trading.maker_rate,
        ),
    ];
    for (uid, name, vol, kind, rate) in sides {
        let multiplier = cx.rules.multiplier_for(vol);
        let raw = notional
            .checked_mul(rate)
            .and_then(|x| x.checked_mul(multiplier))
            .ok_or(EventError::Overflow("trading points"))?;
        let points = round_points(raw);
        let mut e = cx.entry(
            name, epoch, kind, points, notional, multiplier, rate, facts.time,
        );
        e.trade_id = Some(trade_id.to_owned());
        awarded.push(AwardedEntry::of(&e));
        out.push(e);
        referral::share_entries(
            cx,
            state,
            uid,
            name,
            epoch,
            points,
            trade_id,
            facts.time,
            out,
            &mut awarded,
        )?;
    }
    let new_taker = taker_vol
        .checked_add(notional)
        .ok_or(EventError::Overflow("epoch volume"))?;
    let new_maker = maker_vol
        .checked_add(notional)
        .ok_or(EventError::Overflow("epoch volume"))?;
    overlay.set(taker, epoch, new_taker);
    overlay.set(maker, epoch, new_maker);
    cx.counters.fills_awarded += 1;
    Ok(Award {
        trade: facts,
        volume: Some(AddedVolume { epoch, notional }),
        entries: awarded,
    })
}

/// Stages the reversal of `prev`: mirrored negative entries (time = now)
/// and the volume it added taken back out of its epoch.
fn plan_reversal(
    cx: &Ctx<'_>,
    state: &mut State,
    overlay: &mut Overlay,
    trade_id: &str,
    prev: &Award,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    for a in &prev.entries {
        let mut e = cx.entry(
            &a.user,
            a.epoch,
            a.kind,
            -a.points,
            -a.basis,
            a.multiplier,
            a.rate,
            cx.now,
        );
        e.reversal = true;
        e.trade_id = Some(trade_id.to_owned());
        e.referee = a.referee.clone();
        out.push(e);
    }
    if let Some(v) = &prev.volume {
        for side in [&prev.trade.taker, &prev.trade.maker] {
            let u = state.intern(side)?;
            let cur = overlay.get(state, u, v.epoch);
            let next = cur
                .checked_sub(v.notional)
                .ok_or(EventError::Overflow("epoch volume"))?;
            overlay.set(u, v.epoch, next);
        }
    }
    Ok(())
}

/// Notes one award change for the compact ledger; `start` is the index of its first entry in
/// this call's output.
fn record(
    cx: &mut Ctx<'_>,
    trade_id: &str,
    reversal: bool,
    award: &Award,
    start: usize,
    time: i64,
) {
    let epoch = award
        .volume
        .as_ref()
        .map(|v| v.epoch)
        .or_else(|| cx.epoch_of(award.trade.time));
    cx.fills.push(FillRecord {
        ordinal: 0,
        trade_id: trade_id.to_owned(),
        reversal,
        epoch,
        award: award.clone(),
        first_entry: u32::try_from(start).unwrap_or(u32::MAX),
        event_time: time,
    });
}

/// A new fill.
pub(crate) fn on_insert<B: AwardBook + ?Sized>(
    cx: &mut Ctx<'_>,
    state: &mut State,
    book: &mut B,
    t: &Trade,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    let facts = facts_of(t, cx.now)?;
    let mut overlay = Overlay::default();
    let start = out.len();
    let award = plan_award(cx, state, &mut overlay, &t.id, facts, out)?;
    overlay.commit(state);
    record(cx, &t.id, false, &award, start, award.trade.time);
    book.put(&t.id, award);
    Ok(())
}

/// An update of a trade row: nothing, or reverse-and-award.
pub(crate) fn on_update<B: AwardBook + ?Sized>(
    cx: &mut Ctx<'_>,
    state: &mut State,
    book: &mut B,
    old: Option<&Trade>,
    new: &Trade,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    if let Some(o) = old {
        if !relevant_change(o, new) {
            cx.counters.trade_updates_unchanged += 1;
            return Ok(());
        }
    }
    // The id whose award is being corrected: the old key if the key changed.
    let prev_id = old.map_or(new.id.as_str(), |o| o.id.as_str());
    let Some(prev) = book.get(prev_id) else {
        cx.counters.reject(Rejection::UnknownTradeUpdate);
        return Ok(());
    };
    let facts = facts_of(new, prev.trade.time)?;
    if prev_id == new.id && facts == prev.trade {
        cx.counters.trade_updates_unchanged += 1;
        return Ok(());
    }
    let mut overlay = Overlay::default();
    let reversed_from = out.len();
    plan_reversal(cx, state, &mut overlay, prev_id, &prev, out)?;
    let awarded_from = out.len();
    let award = plan_award(cx, state, &mut overlay, &new.id, facts, out)?;
    overlay.commit(state);
    let now = cx.now;
    record(cx, prev_id, true, &prev, reversed_from, now);
    record(cx, &new.id, false, &award, awarded_from, award.trade.time);
    if prev_id != new.id {
        book.remove(prev_id);
    }
    book.put(&new.id, award);
    cx.counters.trade_corrections += 1;
    Ok(())
}

/// A deleted trade row: reverse only.
pub(crate) fn on_delete<B: AwardBook + ?Sized>(
    cx: &mut Ctx<'_>,
    state: &mut State,
    book: &mut B,
    id: &str,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    let Some(prev) = book.get(id) else {
        cx.counters.reject(Rejection::UnknownTradeDelete);
        return Ok(());
    };
    let mut overlay = Overlay::default();
    let start = out.len();
    plan_reversal(cx, state, &mut overlay, id, &prev, out)?;
    overlay.commit(state);
    let now = cx.now;
    record(cx, id, true, &prev, start, now);
    book.remove(id);
    cx.counters.trade_deletes += 1;
    Ok(())
}
