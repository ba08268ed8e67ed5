//! Holding points: an exact time integral of each open position's notional.
//!
//! Notional = |size| × entry price, a step function of time. The integral is
//! cut into segments at every change of the position's notional (or owner),
//! at its close or delete, and at every UTC hour boundary; each segment of
//! notional ≥ `holding.min_notional` and positive duration becomes one entry:
//! round(rate_per_day × notional × seconds / 86 400), with the exact
//! notional-seconds (duration in µs / 10⁶) recorded as its basis.
//!
//! Decisions worth knowing:
//! - A position event happens at stream time (the transaction's commit time,
//!   never earlier than any previous one), so segments never run backwards.
//! - An update that leaves status, owner and notional unchanged (e.g. a mark
//!   price column) does not cut: the step function did not change.
//! - A segment is written once it has ended: at the position's next change,
//!   or when stream time passes the hour boundary. Hourly settlement visits
//!   every open position, but only when an hour boundary is crossed; other
//!   transactions touch only the positions they change. It writes nothing to
//!   the state: the current segment starts at max(last change, start of the
//!   current stream hour), so there is nothing to persist per hour.
//! - Genesis is on a whole hour and epochs are whole hours, so a segment
//!   (inside one hour) never crosses an epoch boundary; segments before
//!   genesis earn nothing.
//! - Open positions of excluded addresses are not tracked.
//! - An insert of a known id is an upsert; a key change is a delete of the
//!   old id plus an upsert of the new one.

use std::cmp::max;

use rust_decimal::Decimal;

use super::error::EventError;
use super::event::{Position, PositionStatus};
use super::ledger::{round_points, EntryKind, LedgerEntry};
use super::normalize_address;
use super::pnl;
use super::state::{OpenPosition, State};
use super::Ctx;
use crate::time::{floor_hour, MICROS_PER_HOUR};

const SECONDS_PER_DAY: i64 = 86_400;

/// The entry for one segment `[start, end)` of `notional`, if it earns.
pub(crate) fn segment_entry(
    cx: &Ctx<'_>,
    user: &str,
    position_id: &str,
    notional: Decimal,
    start: i64,
    end: i64,
) -> Result<Option<LedgerEntry>, EventError> {
    if end <= start || notional < cx.rules.holding.min_notional || cx.is_excluded(user) {
        return Ok(None);
    }
    let Some(epoch) = cx.epoch_of(start) else {
        return Ok(None);
    };
    let micros = end
        .checked_sub(start)
        .ok_or(EventError::Overflow("segment duration"))?;
    let seconds =
        Decimal::try_new(micros, 6).map_err(|_| EventError::Overflow("segment duration"))?;
    let notional_seconds = notional
        .checked_mul(seconds)
        .ok_or(EventError::Overflow("notional-seconds"))?;
    let rate = cx.rules.holding.rate_per_day;
    let raw = notional_seconds
        .checked_mul(rate)
        .and_then(|x| x.checked_div(Decimal::from(SECONDS_PER_DAY)))
        .ok_or(EventError::Overflow("holding points"))?;
    let mut e = cx.entry(
        user,
        epoch,
        EntryKind::Holding,
        round_points(raw),
        notional_seconds,
        Decimal::ONE,
        rate,
        end,
    );
    e.position_notional = Some(notional);
    e.position_id = Some(position_id.to_owned());
    e.segment_start = Some(start);
    Ok(Some(e))
}

/// Ends every open position's segment at each hour boundary in
/// `(from_hour, to_hour]`, ordered by boundary then position id.
pub(crate) fn settle_hours(
    cx: &mut Ctx<'_>,
    state: &State,
    from_hour: i64,
    to_hour: i64,
    out: &mut Vec<LedgerEntry>,
) -> Vec<EventError> {
    let mut errors = Vec::new();
    let mut boundary = from_hour.saturating_add(MICROS_PER_HOUR);
    let positions = state.positions_iter();
    while boundary <= to_hour {
        let hour_start = boundary - MICROS_PER_HOUR;
        for &(id, p) in &positions {
            let start = max(p.since, hour_start);
            match segment_entry(cx, state.user_name(p.user), id, p.notional, start, boundary) {
                Ok(Some(e)) => {
                    cx.counters.holding_segments += 1;
                    out.push(e);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        match boundary.checked_add(MICROS_PER_HOUR) {
            Some(b) => boundary = b,
            None => break,
        }
    }
    errors
}

/// Ends the current segment of a tracked position at stream time.
fn cut(
    cx: &Ctx<'_>,
    state: &State,
    id: &str,
    p: &OpenPosition,
) -> Result<Option<LedgerEntry>, EventError> {
    let start = max(p.since, floor_hour(cx.now));
    segment_entry(cx, state.user_name(p.user), id, p.notional, start, cx.now)
}

/// An inserted or updated position row.
pub(crate) fn on_position(
    cx: &mut Ctx<'_>,
    state: &mut State,
    old: Option<&Position>,
    new: &Position,
    inserted: bool,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    if new.entry_price.is_sign_negative() && !new.entry_price.is_zero() {
        return Err(EventError::Invalid(format!(
            "position {}: negative entry price {}",
            new.id, new.entry_price
        )));
    }
    let notional = new
        .size
        .abs()
        .checked_mul(new.entry_price)
        .ok_or(EventError::Overflow("position notional"))?;
    // A full hour of this notional must be computable, so that hourly
    // settlement (which cannot reject an event) never overflows.
    notional
        .checked_mul(Decimal::from(3_600))
        .and_then(|x| x.checked_mul(cx.rules.holding.rate_per_day))
        .ok_or(EventError::Overflow("holding points"))?;
    let user = normalize_address(&new.user);
    let excluded = cx.is_excluded(&user);
    let uid = state.intern(&user)?;

    let mut staged: Vec<LedgerEntry> = Vec::new();
    let mut remove_old: Option<&str> = None;
    let mut was_open = inserted || old.is_some_and(|o| o.status == PositionStatus::Open);
    if let Some(o) = old.filter(|o| o.id != new.id) {
        if let Some(p) = state.position(&o.id) {
            staged.extend(cut(cx, state, &o.id, &p)?);
            remove_old = Some(&o.id);
            was_open = true;
        }
    }

    let new_open = new.status == PositionStatus::Open && !excluded;
    let existing = state.position(&new.id);
    let mut put: Option<OpenPosition> = None;
    let mut remove_new = false;
    match existing {
        Some(p) => {
            was_open = true;
            let unchanged = new_open && p.user == uid && p.notional == notional;
            if !unchanged {
                staged.extend(cut(cx, state, &new.id, &p)?);
                if new_open {
                    put = Some(OpenPosition {
                        user: uid,
                        notional,
                        since: cx.now,
                    });
                } else {
                    remove_new = true;
                }
            }
        }
        None if new_open => {
            put = Some(OpenPosition {
                user: uid,
                notional,
                since: cx.now,
            })
        }
        None => {}
    }

    let mut pay_pnl = false;
    if new.status == PositionStatus::Closed && was_open && !excluded && !state.pnl_paid(&new.id) {
        if let Some(e) = pnl::pnl_entry(cx, &user, &new.id, new.realized_pnl)? {
            staged.push(e);
            pay_pnl = true;
        }
    }

    // Commit: nothing below can fail.
    if let Some(id) = remove_old {
        state.remove_position(id);
    }
    if let Some(p) = put {
        state.put_position(&new.id, p);
    }
    if remove_new {
        state.remove_position(&new.id);
    }
    if pay_pnl {
        state.mark_pnl_paid(&new.id);
        cx.counters.pnl_awards += 1;
    }
    for e in staged {
        if e.kind == EntryKind::Holding {
            cx.counters.holding_segments += 1;
        }
        out.push(e);
    }
    Ok(())
}

/// A deleted position row: the segment ends, no PnL.
pub(crate) fn on_position_deleted(
    cx: &mut Ctx<'_>,
    state: &mut State,
    id: &str,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    let Some(p) = state.position(id) else {
        return Ok(());
    };
    let e = cut(cx, state, id, &p)?;
    state.remove_position(id);
    if let Some(e) = e {
        cx.counters.holding_segments += 1;
        out.push(e);
    }
    Ok(())
}
