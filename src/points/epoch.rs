//! Epochs: the rules' fixed-length periods since genesis, which partition volumes (tiers) and
//! totals. Time itself (µs since 1970, UTC hours, parsing) lives in [`crate::time`].

/// Epoch number: the index of the rules' fixed-length period since genesis.
///
/// `u32` is enough for any `i64` instant because epochs are at least one hour
/// long (validated), and it keeps the per-(user, epoch) state small.
pub type EpochId = u32;

/// A validated epoch calendar, so that "which epoch" is computed one way
/// everywhere (fills, holding segments, PnL, reversals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochCalendar {
    genesis: i64,
    length: i64,
}

impl EpochCalendar {
    /// Both arguments in microseconds; `length` must be positive (the rules
    /// validation guarantees a positive whole number of hours).
    pub fn new(genesis: i64, length: i64) -> Option<Self> {
        (length > 0).then_some(Self { genesis, length })
    }

    /// First instant of epoch 0: activity before it earns nothing.
    pub fn genesis(&self) -> i64 {
        self.genesis
    }

    /// Epoch length in microseconds.
    pub fn length(&self) -> i64 {
        self.length
    }

    /// epoch(t) = floor((t − genesis) / length), or `None` before genesis,
    /// because pre-genesis activity earns nothing and must be told apart.
    pub fn epoch_of(&self, t: i64) -> Option<EpochId> {
        if t < self.genesis {
            return None;
        }
        // i128 so that extreme instants cannot overflow the subtraction.
        let idx = (i128::from(t) - i128::from(self.genesis)) / i128::from(self.length);
        EpochId::try_from(idx).ok()
    }

    /// First instant of `epoch`, for documentation and tests of boundaries.
    pub fn start_of(&self, epoch: EpochId) -> Option<i64> {
        i64::from(epoch)
            .checked_mul(self.length)?
            .checked_add(self.genesis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MICROS_PER_HOUR;

    #[test]
    fn epochs_start_at_genesis_and_last_their_length() {
        let cal = EpochCalendar::new(1_000 * MICROS_PER_HOUR, 168 * MICROS_PER_HOUR).unwrap();
        assert_eq!(cal.epoch_of(1_000 * MICROS_PER_HOUR - 1), None);
        assert_eq!(cal.epoch_of(1_000 * MICROS_PER_HOUR), Some(0));
        assert_eq!(cal.epoch_of(1_168 * MICROS_PER_HOUR - 1), Some(0));
        assert_eq!(cal.epoch_of(1_168 * MICROS_PER_HOUR), Some(1));
        assert_eq!(cal.start_of(1), Some(1_168 * MICROS_PER_HOUR));
        assert!(cal.epoch_of(i64::MAX).is_some());
        assert_eq!(cal.epoch_of(i64::MIN), None);
    }
}
