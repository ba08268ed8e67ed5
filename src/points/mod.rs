//! The points rules: a pure, deterministic engine that turns domain events, in
//! commit order, into ledger entries.
//!
//! Pure means no I/O, no clock and no randomness: time is the source's commit
//! time (and trade rows' own timestamps), so replaying the same transactions
//! from the same [`State`] always yields the same entries, which is what lets
//! the daemon restart from a checkpoint and still write each entry exactly
//! once, identified by (commit LSN, [`LedgerEntry::ordinal`]).
//!
//! One call per source transaction: [`Engine::apply_transaction`]. In order it
//! 1. advances stream time to max(stream time, commit time) (never backwards),
//! 2. when that crosses UTC hour boundaries, credits each open position's
//!    holding points for the hours that passed (and at an epoch boundary ends
//!    their segments: one entry per open position, ordered by position id),
//! 3. applies each event at the new stream time, in order.
//!
//! A failing event (overflow, negative price) is reported in
//! [`TxOutcome::errors`] for dead-lettering and leaves no trace: no entries,
//! no state or award-book change, no counter change. See the README section
//! "Points rules" for the rules in plain words, and each submodule for how
//! each rule is evaluated and which ambiguities were resolved how.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::time::{floor_hour, MICROS_PER_HOUR};

mod award;
mod compact;
mod counters;
mod epoch;
mod error;
mod event;
mod holding;
mod ledger;
mod pnl;
mod referral;
mod rules;
mod serde_dec;
mod state;
mod trading;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use award::{
    AddedVolume, Award, AwardBook, AwardedEntry, FillRecord, MemoryAwardBook, TradeFacts,
};
pub use compact::{CompactAward, CompactSide, ShapeError};
pub use counters::{Counters, Rejection};
pub use epoch::{EpochCalendar, EpochId};
pub use error::{EventError, StreamError};
pub use event::{Event, Position, PositionStatus, ReferralLink, Trade, TxEvents};
pub use ledger::{fold_totals, round_points, EntryKind, HoldingCredit, LedgerEntry, Totals};
pub use rules::{
    EpochRules, HoldingRules, PnlRules, ReferralRules, RuleSet, RulesError, Tier, TradingRules,
};
pub use state::{
    FastMap, NameHasher, OpenPositionRow, PositionRow, ReferralRow, State, StateDelta, VolumeRow,
};

/// Most hour boundaries one transaction may cross while positions are open
/// (366 days). Each crossed hour visits every open position, so a corrupt
/// commit timestamp years ahead must stop the stream rather than settle
/// billions of position-hours.
pub const MAX_SETTLED_HOURS_PER_TX: i64 = 366 * 24;

/// Lowercases an address only when needed, because addresses are compared
/// case-insensitively and stored lowercase, and most already are.
pub fn normalize_address(a: &str) -> Cow<'_, str> {
    // Addresses are ASCII in practice: a byte scan, with the Unicode check as the fallback.
    let upper = if a.is_ascii() {
        a.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        a.chars().any(char::is_uppercase)
    };
    if upper {
        Cow::Owned(a.to_lowercase())
    } else {
        Cow::Borrowed(a)
    }
}

/// An event the engine could not use, with its position in
/// [`TxEvents::events`] so the daemon can dead-letter the right row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFailure {
    /// Index of the event; `None` for a failure while settling holding
    /// segments (only possible with a state that was edited by hand).
    pub index: Option<usize>,
    /// What went wrong.
    pub error: EventError,
}

/// Everything one transaction produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxOutcome {
    /// The transaction's commit LSN, echoed so that (commit LSN, ordinal)
    /// can be formed from the outcome alone.
    pub commit_lsn: u64,
    /// Entries with ordinals 0..n in this order: holding segments ended by a
    /// rules change, then those ended at epoch boundaries (by boundary, then
    /// position id), then each event's entries.
    pub entries: Vec<LedgerEntry>,
    /// Every change of a trade's award, in order; its trading and referral entries are among
    /// `entries` too, from [`FillRecord::first_entry`] on.
    pub fills: Vec<FillRecord>,
    /// Holding points credited to totals as hours passed (per user and epoch) and at position
    /// changes; holding entries among `entries` record segments of those hours.
    pub credits: Vec<HoldingCredit>,
    /// Decision counts for metrics.
    pub counters: Counters,
    /// Events to dead-letter; they contributed nothing.
    pub errors: Vec<EventFailure>,
}

/// The rules engine: a validated rule set plus its version. Immutable and
/// cheap to share; all mutable data lives in [`State`] and the [`AwardBook`].
#[derive(Debug, Clone)]
pub struct Engine {
    rules: RuleSet,
    compiled: rules::Compiled,
    version: Arc<str>,
}

/// Per-call context shared by the rule modules.
pub(crate) struct Ctx<'a> {
    pub(crate) rules: &'a RuleSet,
    pub(crate) compiled: &'a rules::Compiled,
    pub(crate) version: &'a Arc<str>,
    /// Stream time after this transaction's advance: the time of every
    /// position and referral event, and of reversals.
    pub(crate) now: i64,
    pub(crate) counters: Counters,
    /// Award changes so far; `first_entry` holds the index into the call's entries until the
    /// cursor numbers them.
    pub(crate) fills: Vec<FillRecord>,
    /// Holding credits so far.
    pub(crate) credits: Vec<HoldingCredit>,
}

impl Ctx<'_> {
    pub(crate) fn epoch_of(&self, t: i64) -> Option<EpochId> {
        self.compiled.calendar.epoch_of(t)
    }

    pub(crate) fn is_excluded(&self, addr: &str) -> bool {
        !self.compiled.excluded.is_empty() && self.compiled.excluded.contains(addr)
    }

    /// A bare entry; callers fill the optional inputs that apply.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn entry(
        &self,
        user: &str,
        epoch: EpochId,
        kind: EntryKind,
        points: Decimal,
        basis: Decimal,
        multiplier: Decimal,
        rate: Decimal,
        event_time: i64,
    ) -> LedgerEntry {
        LedgerEntry {
            ordinal: 0,
            user: user.to_owned(),
            epoch,
            kind,
            reversal: false,
            points,
            basis,
            multiplier,
            rate,
            position_notional: None,
            trade_id: None,
            position_id: None,
            referee: None,
            segment_start: None,
            event_time,
            rules_version: self.version.clone(),
        }
    }
}

impl Engine {
    /// Validates the rules and precomputes what evaluation needs; the error
    /// names the bad key.
    pub fn new(rules: RuleSet) -> Result<Self, RulesError> {
        let compiled = rules.compile()?;
        let version = Arc::from(rules.version());
        Ok(Self {
            rules,
            compiled,
            version,
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The rules version stamped on every entry.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The epoch of an instant, `None` before genesis; for the daemon's API.
    pub fn epoch_of(&self, t: i64) -> Option<EpochId> {
        self.compiled.calendar.epoch_of(t)
    }

    /// The epoch calendar.
    pub fn calendar(&self) -> EpochCalendar {
        self.compiled.calendar
    }

    /// Applies one source transaction. Returns `Err` only for a problem with
    /// the transaction as a whole ([`StreamError`]), leaving the state and
    /// book untouched; per-event problems are in [`TxOutcome::errors`].
    pub fn apply_transaction<B: AwardBook + ?Sized>(
        &self,
        state: &mut State,
        book: &mut B,
        tx: &TxEvents,
    ) -> Result<TxOutcome, StreamError> {
        self.apply_transaction_after(None, state, book, tx)
    }

    /// [`Engine::apply_transaction`] for a transaction that follows one run under `previous`
    /// rules (see [`Engine::begin_transaction_after`]).
    pub fn apply_transaction_after<B: AwardBook + ?Sized>(
        &self,
        previous: Option<&Engine>,
        state: &mut State,
        book: &mut B,
        tx: &TxEvents,
    ) -> Result<TxOutcome, StreamError> {
        let (mut cursor, mut outcome) =
            self.begin_transaction_after(previous, state, tx.commit_lsn, tx.commit_time)?;
        let events = self.apply_events(&mut cursor, state, book, &tx.events);
        outcome.entries.extend(events.entries);
        outcome.fills.extend(events.fills);
        outcome.credits.extend(events.credits);
        outcome.counters.merge(&events.counters);
        outcome.errors.extend(events.errors);
        Ok(outcome)
    }

    /// Starts a source transaction whose events will come in chunks (a huge
    /// transaction need not be held in memory): advances stream time and
    /// settles the hours it crosses. Feeding every event to
    /// [`Engine::apply_events`] after this gives exactly the entries, in the
    /// same order with the same ordinals, that [`Engine::apply_transaction`]
    /// gives for the whole transaction.
    pub fn begin_transaction(
        &self,
        state: &mut State,
        commit_lsn: u64,
        commit_time: i64,
    ) -> Result<(TxCursor, TxOutcome), StreamError> {
        self.begin_transaction_after(None, state, commit_lsn, commit_time)
    }

    /// [`Engine::begin_transaction`] for the first transaction under these rules after
    /// transactions under `previous` (a rules change at a restart): the open holding segments
    /// end at the last settled hour under the rules they were credited by, as this
    /// transaction's first entries, so that a segment's row always equals its credits.
    /// `previous` equal to these rules (or `None`) changes nothing.
    pub fn begin_transaction_after(
        &self,
        previous: Option<&Engine>,
        state: &mut State,
        commit_lsn: u64,
        commit_time: i64,
    ) -> Result<(TxCursor, TxOutcome), StreamError> {
        let prev = state.stream_time();
        let now = prev.map_or(commit_time, |p| p.max(commit_time));
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        let mut closing = Counters::default();
        if let Some(old) = previous.filter(|old| old.version != self.version) {
            let mut cx = old.ctx(prev.unwrap_or(now));
            for error in holding::close_segments(&mut cx, state, &mut entries) {
                errors.push(EventFailure { index: None, error });
            }
            closing = cx.counters;
        }
        let mut cx = self.ctx(now);
        cx.counters.merge(&closing);

        if let Some(p) = prev {
            let (from_hour, to_hour) = (floor_hour(p), floor_hour(now));
            if to_hour > from_hour && state.open_positions() > 0 {
                let hours =
                    (i128::from(to_hour) - i128::from(from_hour)) / i128::from(MICROS_PER_HOUR);
                if hours > i128::from(MAX_SETTLED_HOURS_PER_TX) {
                    return Err(StreamError::TimeJump {
                        from: p,
                        to: commit_time,
                        hours: i64::try_from(hours).unwrap_or(i64::MAX),
                        open_positions: state.open_positions(),
                        limit: MAX_SETTLED_HOURS_PER_TX,
                    });
                }
                for error in holding::settle_hours(&mut cx, state, from_hour, to_hour, &mut entries)
                {
                    errors.push(EventFailure { index: None, error });
                }
            }
        }
        state.set_stream_time(now);
        let mut cursor = TxCursor {
            commit_lsn,
            now,
            next_ordinal: 0,
            next_fill: 0,
        };
        cursor.number(&mut entries);
        Ok((
            cursor,
            TxOutcome {
                commit_lsn,
                entries,
                fills: Vec::new(),
                credits: cx.credits,
                counters: cx.counters,
                errors,
            },
        ))
    }

    /// Applies the next events of a transaction started with
    /// [`Engine::begin_transaction`]; failure indexes are positions in
    /// `events`.
    pub fn apply_events<B: AwardBook + ?Sized>(
        &self,
        cursor: &mut TxCursor,
        state: &mut State,
        book: &mut B,
        events: &[Event],
    ) -> TxOutcome {
        let mut cx = self.ctx(cursor.now);
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let mark = entries.len();
            let fills_mark = cx.fills.len();
            let credits_mark = cx.credits.len();
            let saved = cx.counters;
            let r = match ev {
                Event::TradeInserted { new } => {
                    trading::on_insert(&mut cx, state, book, new, &mut entries)
                }
                Event::TradeUpdated { old, new } => {
                    trading::on_update(&mut cx, state, book, old.as_ref(), new, &mut entries)
                }
                Event::TradeDeleted { id } => {
                    trading::on_delete(&mut cx, state, book, id, &mut entries)
                }
                Event::PositionInserted { new } => {
                    holding::on_position(&mut cx, state, None, new, true, &mut entries)
                }
                Event::PositionUpdated { old, new } => {
                    holding::on_position(&mut cx, state, old.as_ref(), new, false, &mut entries)
                }
                Event::PositionDeleted { id } => {
                    holding::on_position_deleted(&mut cx, state, id, &mut entries)
                }
                Event::ReferralInserted { new } => referral::on_link(&mut cx, state, None, new),
                Event::ReferralUpdated { old, new } => {
                    referral::on_link(&mut cx, state, old.as_ref(), new)
                }
                Event::ReferralDeleted { referee, referrer } => {
                    referral::on_unlink(&mut cx, state, referee, referrer.as_deref());
                    Ok(())
                }
            };
            if let Err(error) = r {
                entries.truncate(mark);
                cx.fills.truncate(fills_mark);
                cx.credits.truncate(credits_mark);
                cx.counters = saved;
                cx.counters.events_failed += 1;
                errors.push(EventFailure {
                    index: Some(i),
                    error,
                });
            }
        }
        let base = cursor.next_ordinal;
        cursor.number(&mut entries);
        let mut fills = std::mem::take(&mut cx.fills);
        for f in &mut fills {
            f.first_entry = base.saturating_add(f.first_entry);
            f.ordinal = cursor.next_fill;
            cursor.next_fill = cursor.next_fill.saturating_add(1);
        }
        TxOutcome {
            commit_lsn: cursor.commit_lsn,
            entries,
            fills,
            credits: std::mem::take(&mut cx.credits),
            counters: cx.counters,
            errors,
        }
    }

    fn ctx(&self, now: i64) -> Ctx<'_> {
        Ctx {
            rules: &self.rules,
            compiled: &self.compiled,
            version: &self.version,
            now,
            counters: Counters::default(),
            fills: Vec::new(),
            credits: Vec::new(),
        }
    }

    /// The holding points credited to the open segments of `state`'s positions, per (user,
    /// epoch): what the totals hold beyond the ledger's sums until those segments end (see
    /// [`fold_totals`]). Computed from the positions alone, as the segments' rows will be.
    pub fn open_segment_credits(
        &self,
        state: &State,
    ) -> Result<BTreeMap<(String, EpochId), Decimal>, EventError> {
        holding::open_segment_credits(&self.ctx(state.stream_time().unwrap_or(0)), state)
    }
}

/// Where a transaction fed to the engine in chunks stands: its stream time
/// and the next entry's ordinal.
#[derive(Debug, Clone)]
pub struct TxCursor {
    commit_lsn: u64,
    now: i64,
    next_ordinal: u32,
    next_fill: u32,
}

impl TxCursor {
    /// The transaction's stream time: max(stream time before it, its commit time). The
    /// journal files the transaction's inputs under this time's epoch.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Numbers `entries` on from the last one numbered.
    fn number(&mut self, entries: &mut [LedgerEntry]) {
        for e in entries {
            e.ordinal = self.next_ordinal;
            self.next_ordinal = self.next_ordinal.saturating_add(1);
        }
    }
}
