//! Errors of rule evaluation, split by what the daemon must do with them.

use crate::dead_letter::Reason;

/// A problem with one event: the daemon dead-letters that event and goes on.
/// The engine guarantees the failed event changed neither the state nor the
/// award book and contributed no ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A value so large that a Decimal computation overflowed; the row is
    /// unusable for points rather than a reason to stop the stream.
    #[error("decimal overflow computing {0}")]
    Overflow(&'static str),
    /// A value the rules cannot use (e.g. a negative price).
    #[error("invalid value: {0}")]
    Invalid(String),
}

impl EventError {
    /// The dead-letter reason of the event's row.
    pub fn reason(&self) -> Reason {
        match self {
            EventError::Overflow(_) => Reason::Overflow,
            EventError::Invalid(_) => Reason::InvalidValue,
        }
    }
}

/// A problem with the transaction as a whole; definite for the stream. The
/// state is left exactly as before the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The commit time jumped further ahead than any real outage could
    /// explain while positions were open; settling every hour in between
    /// would write an unbounded number of holding entries, so the daemon
    /// should stop and let an operator look at the source's clock.
    #[error(
        "stream time jumps {hours} hours (from {from} to {to} µs) with {open_positions} open \
         positions; more than the limit of {limit} hours. Check the source's commit timestamps"
    )]
    TimeJump {
        /// Stream time before the transaction.
        from: i64,
        /// The transaction's commit time.
        to: i64,
        /// Hour boundaries that would be crossed.
        hours: i64,
        /// Open positions that would each get one entry per hour.
        open_positions: usize,
        /// The limit, [`MAX_SETTLED_HOURS_PER_TX`](super::MAX_SETTLED_HOURS_PER_TX).
        limit: i64,
    },
}
