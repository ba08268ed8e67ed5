//! Time arithmetic: epochs, UTC hour boundaries, and the two textual time
//! formats the rules accept (RFC 3339 instants and `7d`-style durations).
//!
//! Why hand-written instead of a date library: the engine reads no clock and
//! needs only UTC microsecond arithmetic, so a few dozen lines keep the
//! dependency set (and the rules-version hash inputs) small and fully ours.

/// Microseconds in one second; time everywhere is i64 microseconds since the
/// Unix epoch (UTC), so every constant is spelled in those units.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds in one hour: holding segments are cut on these boundaries.
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SECOND;
/// Microseconds in one day: holding rates are per day.
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Epoch number: the index of the rules' fixed-length period since genesis.
///
/// `u32` is enough for any `i64` instant because epochs are at least one hour
/// long (validated), and it keeps the per-(user, epoch) state small.
pub type EpochId = u32;

/// The start of the UTC hour containing `t`, because holding segments are cut
/// there and hour boundaries are where the engine settles every open position.
/// Saturates at `i64::MIN` rather than overflow for absurd instants.
pub fn floor_hour(t: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(MICROS_PER_HOUR))
}

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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), exact for every date an i64 microsecond count can hold.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0i64, |acc, b| {
        acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

/// Parses an RFC 3339 instant (`2026-01-05T00:00:00Z`, optional fraction,
/// `Z` or `±HH:MM` offset) into UTC microseconds; `None` when malformed.
/// Fractions finer than a microsecond are rejected rather than truncated so
/// that two spellings of different instants never hash to the same rules.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 20 {
        return None;
    }
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let year = digits(b.get(0..4)?)?;
    let month = digits(b.get(5..7)?)?;
    let day = digits(b.get(8..10)?)?;
    let hour = digits(b.get(11..13)?)?;
    let minute = digits(b.get(14..16)?)?;
    let second = digits(b.get(17..19)?)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut rest = b.get(19..)?;
    let mut micros = 0i64;
    if rest.first() == Some(&b'.') {
        let frac_len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac_len == 0 || frac_len > 6 {
            return None;
        }
        let frac = digits(&rest[1..=frac_len])?;
        micros = frac * 10i64.pow(6 - frac_len as u32);
        rest = &rest[1 + frac_len..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2])?;
            let om = digits(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(MICROS_PER_SECOND)?.checked_add(micros)
}

/// Parses a duration such as `7d`, `168h`, `1w`, `90m`, `1d12h` into
/// microseconds; `None` when malformed or out of range. Units: `w`, `d`,
/// `h`, `m`, `s`. Whole numbers only, because epoch lengths are whole hours.
pub fn parse_duration(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = digits(&b[start..i])?;
        let unit = match b.get(i)? {
            b'w' => 7 * MICROS_PER_DAY,
            b'd' => MICROS_PER_DAY,
            b'h' => MICROS_PER_HOUR,
            b'm' => 60 * MICROS_PER_SECOND,
            b's' => MICROS_PER_SECOND,
            _ => return None,
        };
        i += 1;
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // 2026-01-05T00:00:00Z = 1767571200 s.
        assert_eq!(
            parse_rfc3339("2026-01-05T00:00:00Z"),
            Some(1_767_571_200_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-01-05T01:00:00+01:00"),
            Some(1_767_571_200_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-01-04T23:30:00.5-00:30"),
            Some(1_767_571_200_500_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-01-05 00:00:00"), None);
        assert_eq!(parse_rfc3339("2026-01-05T00:00:00.1234567Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2026-01-05T24:00:00Z"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Some(7 * MICROS_PER_DAY));
        assert_eq!(parse_duration("168h"), Some(7 * MICROS_PER_DAY));
        assert_eq!(parse_duration("1w"), Some(7 * MICROS_PER_DAY));
        assert_eq!(parse_duration("1d12h"), Some(36 * MICROS_PER_HOUR));
        assert_eq!(parse_duration("90m"), Some(90 * 60 * MICROS_PER_SECOND));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("99999999999999999w"), None);
    }

    #[test]
    fn epochs_and_hours() {
        let cal = EpochCalendar::new(1_000 * MICROS_PER_HOUR, 168 * MICROS_PER_HOUR).unwrap();
        assert_eq!(cal.epoch_of(1_000 * MICROS_PER_HOUR - 1), None);
        assert_eq!(cal.epoch_of(1_000 * MICROS_PER_HOUR), Some(0));
        assert_eq!(cal.epoch_of(1_168 * MICROS_PER_HOUR - 1), Some(0));
        assert_eq!(cal.epoch_of(1_168 * MICROS_PER_HOUR), Some(1));
        assert_eq!(cal.start_of(1), Some(1_168 * MICROS_PER_HOUR));
        assert!(cal.epoch_of(i64::MAX).is_some());
        assert_eq!(cal.epoch_of(i64::MIN), None);
        assert_eq!(floor_hour(-1), -MICROS_PER_HOUR);
        assert_eq!(floor_hour(MICROS_PER_HOUR + 5), MICROS_PER_HOUR);
        assert_eq!(floor_hour(i64::MIN), i64::MIN);
    }
}
