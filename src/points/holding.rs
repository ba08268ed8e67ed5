//! Holding points: an exact time integral of each open position's notional.
//!
//! Notional = |size| × entry price, a step function of time. Each UTC hour of
//! an open position of notional ≥ `holding.min_notional` earns
//! round(rate_per_day × notional × seconds / 86 400) for the part of the hour
//! it was open at that notional: its **credit**, added to the owner's totals
//! when stream time passes the hour's end (or when the position changes
//! within the hour, for the part before the change).
//!
//! The ledger keeps one row per **segment**, not per hour: a segment runs from
//! a change of the position's notional (or owner) to its next change, its
//! close or delete, or the end of the epoch, whichever comes first. Its points
//! are the sum of the credits of its hours, its basis the exact
//! notional-seconds (duration in µs / 10⁶). So a position open all week at one
//! notional writes one row a week, where hourly rows would be 168 of them (24
//! million rows a day at a million open positions), and the totals still move
//! every hour. Between those moments the credits of a segment that has not
//! ended live only in the totals: totals = sum of the ledger + the credits of
//! the open segments, which [`State::open_segment_credits`] computes.
//!
//! Decisions worth knowing:
//! - A position event happens at stream time (the transaction's commit time,
//!   never earlier than any previous one), so segments never run backwards.
//! - An update that leaves status, owner and notional unchanged (e.g. a mark
//!   price column) does not cut: the step function did not change.
//! - Hourly settlement visits every open position, but only when an hour
//!   boundary is crossed; other transactions touch only the positions they
//!   change. It writes nothing to the state: the open segment starts at
//!   max(`since`, start of the current epoch), so there is nothing to persist
//!   per hour.
//! - A segment's credits are a pure function of its start, end and notional:
//!   its first (partial) hour, its whole hours (all the same credit) and its
//!   last partial hour, so the segment row equals the sum of what was credited
//!   without anything being remembered per hour.
//! - When the rules change between two transactions, the open segments end at
//!   the last settled hour under the rules they were credited by
//!   ([`Engine::begin_transaction_after`]), so no segment mixes two rule sets.
//! - Genesis is on a whole hour and epochs are whole hours; segments before
//!   genesis earn nothing.
//! - Open positions of excluded addresses are not tracked.
//! - An insert of a known id is an upsert; a key change is a delete of the
//!   old id plus an upsert of the new one.
//!
//! [`Engine::begin_transaction_after`]: super::Engine::begin_transaction_after

use std::cmp::max;
use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::epoch::EpochId;
use super::error::EventError;
use super::event::{Position, PositionStatus};
use super::ledger::{round_points, EntryKind, HoldingCredit, LedgerEntry};
use super::normalize_address;
use super::pnl;
use super::state::{OpenPosition, State, UserId};
use super::Ctx;
use crate::time::{floor_hour, MICROS_PER_HOUR};

const SECONDS_PER_DAY: i64 = 86_400;

/// Whether a position of `user` at `notional` earns holding points at all.
fn earns(cx: &Ctx<'_>, user: &str, notional: Decimal) -> bool {
    notional >= cx.rules.holding.min_notional && !cx.is_excluded(user)
}

/// The credit of `[start, end)` inside one hour at `notional`: the one rounding step.
fn credit(cx: &Ctx<'_>, notional: Decimal, start: i64, end: i64) -> Result<Decimal, EventError> {
    if end <= start {
        return Ok(Decimal::ZERO);
    }
    let raw = notional_seconds(notional, start, end)?
        .checked_mul(cx.rules.holding.rate_per_day)
        .and_then(|x| x.checked_div(Decimal::from(SECONDS_PER_DAY)))
        .ok_or(EventError::Overflow("holding points"))?;
    Ok(round_points(raw))
}

/// notional × seconds of `[start, end)`, exact.
fn notional_seconds(notional: Decimal, start: i64, end: i64) -> Result<Decimal, EventError> {
    let micros = end
        .checked_sub(start)
        .ok_or(EventError::Overflow("segment duration"))?;
    let seconds =
        Decimal::try_new(micros, 6).map_err(|_| EventError::Overflow("segment duration"))?;
    notional
        .checked_mul(seconds)
        .ok_or(EventError::Overflow("notional-seconds"))
}

/// The sum of the hourly credits of `[start, end)`: first partial hour, whole hours, last
/// partial hour, each rounded as it was credited.
fn segment_points(
    cx: &Ctx<'_>,
    notional: Decimal,
    start: i64,
    end: i64,
) -> Result<Decimal, EventError> {
    if end <= start {
        return Ok(Decimal::ZERO);
    }
    let first_end = floor_hour(start).saturating_add(MICROS_PER_HOUR);
    if end <= first_end {
        return credit(cx, notional, start, end);
    }
    let last_start = floor_hour(end);
    let whole_hours = (last_start - first_end) / MICROS_PER_HOUR;
    let whole = credit(cx, notional, 0, MICROS_PER_HOUR)?
        .checked_mul(Decimal::from(whole_hours))
        .ok_or(EventError::Overflow("holding points"))?;
    let first = credit(cx, notional, start, first_end)?;
    let last = credit(cx, notional, last_start, end)?;
    first
        .checked_add(whole)
        .and_then(|x| x.checked_add(last))
        .ok_or(EventError::Overflow("holding points"))
}

/// The epoch open segments are in with stream time settled up to `settled` (an hour boundary,
/// or a change's time), and where it starts: a position last changed at `since` has its open
/// segment from max(`since`, that start), since segments end at epoch boundaries. `None` before
/// genesis (nothing earns there). The same for every position, so callers ask once per instant.
fn open_epoch(cx: &Ctx<'_>, settled: i64) -> Option<(EpochId, i64)> {
    let epoch = cx.epoch_of(settled)?;
    Some((epoch, cx.compiled.calendar.start_of(epoch)?))
}

/// The ledger row of the segment `[start, end)` of `notional` in `epoch`, if it earns.
#[allow(clippy::too_many_arguments)]
fn segment_entry(
    cx: &Ctx<'_>,
    user: &str,
    position_id: &str,
    notional: Decimal,
    epoch: EpochId,
    start: i64,
    end: i64,
) -> Result<Option<LedgerEntry>, EventError> {
    if end <= start || !earns(cx, user, notional) {
        return Ok(None);
    }
    let points = segment_points(cx, notional, start, end)?;
    let basis = notional_seconds(notional, start, end)?;
    let mut e = cx.entry(
        user,
        epoch,
        EntryKind::Holding,
        points,
        basis,
        Decimal::ONE,
        cx.rules.holding.rate_per_day,
        end,
    );
    e.position_notional = Some(notional);
    e.position_id = Some(position_id.to_owned());
    e.segment_start = Some(start);
    Ok(Some(e))
}

/// Credits every open position's hours that end in `(from_hour, to_hour]`, and at each epoch
/// boundary among them writes the segments that end there (ordered by boundary then position
/// id).
pub(crate) fn settle_hours(
    cx: &mut Ctx<'_>,
    state: &State,
    from_hour: i64,
    to_hour: i64,
    out: &mut Vec<LedgerEntry>,
) -> Vec<EventError> {
    let mut errors = Vec::new();
    let mut credits: BTreeMap<(UserId, EpochId), Decimal> = BTreeMap::new();
    let mut boundary = from_hour.saturating_add(MICROS_PER_HOUR);
    let positions = state.positions_iter();
    while boundary <= to_hour {
        let hour = Hour {
            end: boundary,
            open: open_epoch(cx, boundary - MICROS_PER_HOUR),
            epoch_ends: cx.epoch_of(boundary) != cx.epoch_of(boundary - MICROS_PER_HOUR),
        };
        for &(id, p) in &positions {
            if let Err(e) = settle_hour(cx, state, id, p, &hour, &mut credits, out) {
                errors.push(e);
            }
        }
        match boundary.checked_add(MICROS_PER_HOUR) {
            Some(b) => boundary = b,
            None => break,
        }
    }
    // By user name, then epoch: interned ids depend on the order users were first seen.
    let mut credited: Vec<HoldingCredit> = credits
        .into_iter()
        .filter(|(_, points)| !points.is_zero())
        .map(|((user, epoch), points)| HoldingCredit {
            user: state.user_name(user).to_owned(),
            epoch,
            points,
        })
        .collect();
    credited.sort_unstable_by(|a, b| (&a.user, a.epoch).cmp(&(&b.user, b.epoch)));
    cx.credits.extend(credited);
    errors
}

/// An hour being settled, the same for every position.
struct Hour {
    /// Its end, the boundary stream time passed.
    end: i64,
    /// [`open_epoch`] at its start: `None` before genesis, where nothing earns.
    open: Option<(EpochId, i64)>,
    /// Whether an epoch ends with it, and with it every open segment.
    epoch_ends: bool,
}

/// One open position's `hour`: its credit, and its segment's row when the epoch ends there.
fn settle_hour(
    cx: &mut Ctx<'_>,
    state: &State,
    id: &str,
    p: &OpenPosition,
    hour: &Hour,
    credits: &mut BTreeMap<(UserId, EpochId), Decimal>,
    out: &mut Vec<LedgerEntry>,
) -> Result<(), EventError> {
    let (boundary, hour_start) = (hour.end, hour.end - MICROS_PER_HOUR);
    let user = state.user_name(p.user);
    let Some((epoch, epoch_start)) = hour.open else {
        return Ok(());
    };
    if !earns(cx, user, p.notional) {
        return Ok(());
    }
    let start = max(p.since, epoch_start);
    let c = credit(cx, p.notional, max(start, hour_start), boundary)?;
    let sum = credits.entry((p.user, epoch)).or_default();
    *sum = sum
        .checked_add(c)
        .ok_or(EventError::Overflow("holding points"))?;
    if hour.epoch_ends {
        if let Some(e) = segment_entry(cx, user, id, p.notional, epoch, start, boundary)? {
            cx.counters.holding_segments += 1;
            out.push(e);
        }
    }
    Ok(())
}

/// Ends the open segments of every position at the last settled hour, under the rules they
/// were credited by (the rules change after this), and starts their next segments there.
/// Everything in them was credited already: this writes ledger rows, no credits.
pub(crate) fn close_segments(
    cx: &mut Ctx<'_>,
    state: &mut State,
    out: &mut Vec<LedgerEntry>,
) -> Vec<EventError> {
    let mut errors = Vec::new();
    let Some(now) = state.stream_time() else {
        return errors;
    };
    let settled = floor_hour(now);
    let open = open_epoch(cx, settled);
    let mut restart: Vec<(String, OpenPosition)> = Vec::new();
    for (id, p) in state.positions_iter() {
        if p.since >= settled {
            continue;
        }
        if let Some((epoch, epoch_start)) = open {
            let start = max(p.since, epoch_start);
            match segment_entry(
                cx,
                state.user_name(p.user),
                id,
                p.notional,
                epoch,
                start,
                settled,
            ) {
                Ok(Some(e)) => {
                    cx.counters.holding_segments += 1;
                    out.push(e);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        restart.push((
            id.to_owned(),
            OpenPosition {
                since: settled,
                ..*p
            },
        ));
    }
    for (id, p) in restart {
        state.put_position(&id, p);
    }
    errors
}

/// The credits of every open segment so far (its hours before the last settled hour), per
/// (user, epoch).
pub(crate) fn open_segment_credits(
    cx: &Ctx<'_>,
    state: &State,
) -> Result<BTreeMap<(String, EpochId), Decimal>, EventError> {
    let mut out: BTreeMap<(String, EpochId), Decimal> = BTreeMap::new();
    let Some(now) = state.stream_time() else {
        return Ok(out);
    };
    let settled = floor_hour(now);
    let Some((epoch, epoch_start)) = open_epoch(cx, settled) else {
        return Ok(out);
    };
    for (_, p) in state.positions_iter() {
        let user = state.user_name(p.user);
        let start = max(p.since, epoch_start);
        if start >= settled || !earns(cx, user, p.notional) {
            continue;
        }
        let points = segment_points(cx, p.notional, start, settled)?;
        if !points.is_zero() {
            let sum = out.entry((user.to_owned(), epoch)).or_default();
            *sum = sum
                .checked_add(points)
                .ok_or(EventError::Overflow("holding points"))?;
        }
    }
    Ok(out)
}

/// What ending a tracked position's open segment at stream time yields: the segment's row and
/// the credit of its last, unsettled part.
fn cut(
    cx: &Ctx<'_>,
    state: &State,
    id: &str,
    p: &OpenPosition,
) -> Result<(Option<LedgerEntry>, Option<HoldingCredit>), EventError> {
    let user = state.user_name(p.user);
    let settled = floor_hour(cx.now);
    let Some((epoch, epoch_start)) = open_epoch(cx, settled) else {
        return Ok((None, None));
    };
    let start = max(p.since, epoch_start);
    let Some(entry) = segment_entry(cx, user, id, p.notional, epoch, start, cx.now)? else {
        return Ok((None, None));
    };
    let last = credit(cx, p.notional, max(start, settled), cx.now)?;
    Ok((
        Some(entry),
        Some(HoldingCredit {
            user: user.to_owned(),
            epoch,
            points: last,
        }),
    ))
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
    let mut credits: Vec<HoldingCredit> = Vec::new();
    let mut stage = |(e, c): (Option<LedgerEntry>, Option<HoldingCredit>)| {
        staged.extend(e);
        credits.extend(c);
    };
    let mut remove_old: Option<&str> = None;
    let mut was_open = inserted || old.is_some_and(|o| o.status == PositionStatus::Open);
    if let Some(o) = old.filter(|o| o.id != new.id) {
        if let Some(p) = state.position(&o.id) {
            stage(cut(cx, state, &o.id, &p)?);
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
                stage(cut(cx, state, &new.id, &p)?);
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
    cx.credits
        .extend(credits.into_iter().filter(|c| !c.points.is_zero()));
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
    let (e, c) = cut(cx, state, id, &p)?;
    state.remove_position(id);
    if let Some(e) = e {
        cx.counters.holding_segments += 1;
        out.push(e);
    }
    cx.credits.extend(c.filter(|c| !c.points.is_zero()));
    Ok(())
}
