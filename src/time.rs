//! Time as walpoints counts it: `i64` microseconds since 1970-01-01 00:00:00 UTC, everywhere.
//!
//! The one home of every clock helper: the calendar arithmetic (shared by the RFC 3339 parser
//! here and the parser of PostgreSQL's timestamp output), the conversions to and from PostgreSQL's
//! epoch and `SystemTime`, RFC 3339 in and out, `7d`-style durations, UTC hours, and the one
//! function that reads the wall clock, [`now_micros`].
//!
//! The points rules never read a clock: their time is the source's commit time and the trades'
//! own timestamps, so the same WAL always gives the same ledger. [`now_micros`] exists for what
//! humans and probes see (lag, the API's current epoch); the architecture test in `tests/` fails
//! if any other pure module calls it or reads a clock itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds in one second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds in one hour: holding segments are cut on these boundaries.
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SECOND;
/// Microseconds in one day: holding rates are per day.
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Microseconds from the Unix epoch (1970-01-01) to the PostgreSQL epoch (2000-01-01), both
/// UTC: pgoutput timestamps and binary COPY count from the latter.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The wall clock, for lag and ages shown to operators; never for points (see the module doc).
pub fn now_micros() -> i64 {
    micros_of(SystemTime::now())
}

/// A `SystemTime` (a `timestamptz` read from PostgreSQL) as µs since 1970.
pub fn micros_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// µs since 1970 as a `SystemTime` (a `timestamptz` parameter for PostgreSQL).
pub fn system_time(micros: i64) -> SystemTime {
    let d = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A PostgreSQL timestamp (µs since 2000-01-01 UTC) as µs since 1970; `None` only when the
/// result would overflow, which only PostgreSQL's `infinity` sentinel does.
pub fn from_pg_micros(pg_micros: i64) -> Option<i64> {
    pg_micros.checked_add(PG_EPOCH_UNIX_MICROS)
}

/// µs since 1970 as a PostgreSQL timestamp (µs since 2000-01-01 UTC), saturating.
pub fn to_pg_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-01-05T00:00:00.000000Z`; an instant chrono
/// cannot show is written `@<µs>us`.
pub fn format_rfc3339(unix_micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(unix_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("@{unix_micros}us"))
}

/// The start of the UTC hour containing `t`, where holding segments are cut and the engine
/// settles every open position. Saturates at `i64::MIN` rather than overflow.
pub fn floor_hour(t: i64) -> i64 {
    t.saturating_sub(t.rem_euclid(MICROS_PER_HOUR))
}

/// Whether `year` (proleptic Gregorian) has a 29 February.
fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1 to 12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`),
/// exact for every date an `i64` microsecond count can hold.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0i64, |acc, b| {
        acc.checked_mul(10)?.checked_add(i64::from(b - b'0'))
    })
}

/// Parses an RFC 3339 instant (`2026-01-05T00:00:00Z`, optional fraction, `Z` or `±HH:MM`
/// offset) into µs since 1970; `None` when malformed. Fractions finer than a microsecond are
/// rejected rather than truncated, so that two spellings of different instants never hash to
/// the same rules version.
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
    let month = u32::try_from(digits(b.get(5..7)?)?).ok()?;
    let day = u32::try_from(digits(b.get(8..10)?)?).ok()?;
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

/// Parses a duration such as `7d`, `168h`, `1w`, `90m`, `1d12h` into microseconds; `None` when
/// malformed or out of range. Units: `w`, `d`, `h`, `m`, `s`; whole numbers only, because epoch
/// lengths are whole hours.
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
    fn rfc3339_round_trips_through_the_formatter() {
        for micros in [0, 1, 1_767_571_200_000_001, -86_400_000_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339(micros)), Some(micros));
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
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
    fn hours_floor_towards_the_past() {
        assert_eq!(floor_hour(-1), -MICROS_PER_HOUR);
        assert_eq!(floor_hour(MICROS_PER_HOUR + 5), MICROS_PER_HOUR);
        assert_eq!(floor_hour(i64::MIN), i64::MIN);
    }

    #[test]
    fn times_round_trip_through_system_time_and_the_pg_epoch() {
        for m in [0, 1, -1, 1_767_225_600_000_000, -86_400_000_001] {
            assert_eq!(micros_of(system_time(m)), m);
            assert_eq!(from_pg_micros(to_pg_micros(m)), Some(m));
        }
        assert_eq!(from_pg_micros(i64::MAX), None);
    }

    #[test]
    fn civil_days_agree_with_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }
}
