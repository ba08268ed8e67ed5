//! PnL points: round(pnl.rate × realized PnL) when a position becomes closed
//! with realized PnL > 0, in the epoch of the close (stream time).
//!
//! Decisions worth knowing:
//! - "Becomes closed" = inserted as closed, or updated to closed while the
//!   engine tracked it as open (or the update's old row says open). An
//!   update of an already-closed row (e.g. realized PnL filled in later)
//!   earns nothing: the rule looks at the row that closes the position.
//! - At most once per position id, ever: a position reopened and closed
//!   again in profit is not paid twice. Losses (and zero) earn nothing and
//!   do not use up the position's one payment.
//! - Closes before genesis earn nothing; excluded addresses earn nothing.

use rust_decimal::Decimal;

use super::error::EventError;
use super::ledger::{round_points, EntryKind, LedgerEntry};
use super::Ctx;

/// The PnL entry for a close with `realized_pnl`, if it earns.
pub(crate) fn pnl_entry(
    cx: &Ctx<'_>,
    user: &str,
    position_id: &str,
    realized_pnl: Option<Decimal>,
) -> Result<Option<LedgerEntry>, EventError> {
    let Some(pnl) = realized_pnl.filter(|p| *p > Decimal::ZERO) else {
        return Ok(None);
    };
    let Some(epoch) = cx.epoch_of(cx.now) else {
        return Ok(None);
    };
    let rate = cx.rules.pnl.rate;
    let raw = pnl
        .checked_mul(rate)
        .ok_or(EventError::Overflow("pnl points"))?;
    let mut e = cx.entry(
        user,
        epoch,
        EntryKind::Pnl,
        round_points(raw),
        pnl,
        Decimal::ONE,
        rate,
        cx.now,
    );
    e.position_id = Some(position_id.to_owned());
    Ok(Some(e))
}
