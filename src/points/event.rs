//! Domain events: what the daemon maps row changes into before the engine
//! sees them. They carry decoded, typed values only, so that the engine never
//! parses text and every "bad row" decision is made (and dead-lettered) once,
//! at the mapping edge.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::normalize_address;
use super::serde_dec::{dec, opt_dec};

/// One row of `trades` = one fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    /// Primary key of the row, as text; it keys the trade's award for reversals.
    pub id: String,
    /// Market symbol; informational, it does not affect points.
    pub symbol: String,
    /// Fill price; must not be negative.
    #[serde(with = "dec")]
    pub price: Decimal,
    /// Fill amount; its absolute value is used, so either sign convention works.
    #[serde(with = "dec")]
    pub amount: Decimal,
    /// Taker address (any case).
    pub taker: String,
    /// Maker address (any case).
    pub maker: String,
    /// The row's event-time column in microseconds, or `None` when no such
    /// column is configured: then the commit time of the inserting
    /// transaction is used, and an update with `None` keeps the time the
    /// engine remembers (so it does not count as a time change).
    pub time: Option<i64>,
}

/// Status column of a position row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionStatus {
    /// Earning holding points.
    Open,
    /// Closed: holding stops; PnL may be awarded on the transition.
    Closed,
}

/// One row of `positions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Primary key of the row, as text.
    pub id: String,
    /// Owner address (any case).
    pub user: String,
    /// Market symbol; informational.
    pub symbol: String,
    /// Signed size; notional uses |size|.
    #[serde(with = "dec")]
    pub size: Decimal,
    /// Entry price; must not be negative.
    #[serde(with = "dec")]
    pub entry_price: Decimal,
    /// Open or closed.
    pub status: PositionStatus,
    /// Realized PnL, present once closed.
    #[serde(with = "opt_dec", default)]
    pub realized_pnl: Option<Decimal>,
}

/// One row of `referral_relations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralLink {
    /// The referred user (any case).
    pub referee: String,
    /// The user who referred them (any case).
    pub referrer: String,
}

/// A row change, in commit order. Updates carry the old row when the daemon
/// has it (REPLICA IDENTITY FULL or a key change); the engine never depends
/// on it being present, it only uses it as a shortcut or to see key changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    /// A new fill.
    TradeInserted {
        /// The new row.
        new: Trade,
    },
    /// An update of a trade row: a correction when price, amount, taker,
    /// maker or time changed compared with what the engine awarded.
    TradeUpdated {
        /// The previous row, if known.
        old: Option<Trade>,
        /// The row after the update.
        new: Trade,
    },
    /// A deleted trade row: everything it earned is reversed.
    TradeDeleted {
        /// Primary key of the deleted row.
        id: String,
    },
    /// A new position row (an upsert if the engine already knows the id).
    PositionInserted {
        /// The new row.
        new: Position,
    },
    /// An update of a position row.
    PositionUpdated {
        /// The previous row, if known; lets the engine see an open→closed
        /// transition of a position it did not track.
        old: Option<Position>,
        /// The row after the update.
        new: Position,
    },
    /// A deleted position row: holding stops, no PnL.
    PositionDeleted {
        /// Primary key of the deleted row.
        id: String,
    },
    /// A new referral link.
    ReferralInserted {
        /// The new row.
        new: ReferralLink,
    },
    /// An update of a referral row (a rebind when the referrer changes).
    ReferralUpdated {
        /// The previous row, if known.
        old: Option<ReferralLink>,
        /// The row after the update.
        new: ReferralLink,
    },
    /// A deleted referral row: the referee is unbound from then on.
    ReferralDeleted {
        /// The referee of the deleted row.
        referee: String,
        /// Its referrer when the daemon knows it; if given and different
        /// from the binding in force, the delete removes a link that never
        /// took effect and changes nothing.
        referrer: Option<String>,
    },
}

/// All events of one source transaction, applied atomically in one call so
/// that (commit LSN, ordinal) identifies each resulting ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TxEvents {
    /// Commit (or end) LSN of the source transaction, as a plain number.
    pub commit_lsn: u64,
    /// Commit timestamp, microseconds since the Unix epoch (UTC).
    pub commit_time: i64,
    /// The transaction's events in order; may be empty (a heartbeat), which
    /// still advances stream time and settles holding segments.
    pub events: Vec<Event>,
}

impl TxEvents {
    /// Trade ids whose award the engine will look up in this transaction
    /// (updates that may change something, and deletes), so a store-backed [`AwardBook`](super::AwardBook)
    /// can fetch them in one query before the call.
    pub fn trade_ids_to_look_up(&self) -> impl Iterator<Item = &str> {
        self.events.iter().flat_map(|e| {
            let (a, b) = match e {
                Event::TradeUpdated { old: None, new } => (Some(new.id.as_str()), None),
                Event::TradeUpdated { old: Some(o), new } => {
                    if relevant_change(o, new) {
                        (Some(o.id.as_str()), None)
                    } else {
                        (None, None)
                    }
                }
                Event::TradeDeleted { id } => (Some(id.as_str()), None),
                _ => (None, None),
            };
            a.into_iter().chain(b)
        })
    }
}

/// Whether two rows differ in a points-relevant column (case-insensitive
/// addresses, decimal values compared by value).
pub(crate) fn relevant_change(old: &Trade, new: &Trade) -> bool {
    old.id != new.id
        || old.price != new.price
        || old.amount != new.amount
        || old.time != new.time
        || normalize_address(&old.taker) != normalize_address(&new.taker)
        || normalize_address(&old.maker) != normalize_address(&new.maker)
}
