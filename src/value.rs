//! Typed conversions of text-format column values (what pgoutput sends: each type's text output
//! function, exactly what `SELECT col::text` prints).
//!
//! The points engine needs exact numbers and instants, so every conversion is strict: a value
//! that cannot be represented exactly (numeric NaN or Infinity, more significant digits than a
//! [`Decimal`] holds, an infinite or BC timestamp, an int out of its type's range) is a
//! [`ValueError`], never a rounded or clamped value. Such an error is definite for the row: the
//! events mapping dead-letters it with the reason.
//!
//! Parsers accept the forms PostgreSQL *prints* (under the session settings walpoints pins:
//! `DateStyle=ISO, MDY`, `TimeZone=UTC`), not every form it accepts as input: anything else
//! means the session is misconfigured or the column is not the type we think, and should be
//! loud.

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::time::{days_from_civil, days_in_month, MICROS_PER_SECOND};

/// Oids of the built-in types walpoints converts (from `pg_type`; stable across PostgreSQL
/// versions). Anything else passes through as text.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `name` (system identifiers)
    pub const NAME: u32 = 19;
    /// `int8` / `bigint`
    pub const INT8: u32 = 20;
    /// `int2` / `smallint`
    pub const INT2: u32 = 21;
    /// `int4` / `integer`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `bpchar` / `char(n)`
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `timestamp` (without time zone)
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `float4` / `real`
    pub const FLOAT4: u32 = 700;
    /// `float8` / `double precision`
    pub const FLOAT8: u32 = 701;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
}

/// A column value converted according to its type oid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4` or `int8`, widened so the engine handles one integer type.
    Int(i64),
    /// `numeric`, `float4` or `float8`, exactly as printed (trailing fractional zeros dropped,
    /// so the scale is the minimal one).
    Numeric(Decimal),
    /// `text`, `varchar`, `bpchar` (with its blank padding) or `name`.
    Text(String),
    /// `uuid`.
    Uuid(Uuid),
    /// `timestamp` or `timestamptz`, as µs since 1970-01-01 00:00:00 UTC (a `timestamp`
    /// without time zone is taken as UTC).
    Timestamp(i64),
    /// Any other type, unconverted: its text output as PostgreSQL printed it.
    Other(String),
}

impl Value {
    /// Converts a text-format value of the type `type_oid` (see [`oid`]), so code that handles
    /// arbitrary columns (e.g. `walpoints tail`, dead-letter rendering) needs one entry point.
    pub fn from_text(type_oid: u32, text: &[u8]) -> Result<Value, ValueError> {
        match type_oid {
            oid::BOOL => boolean(text).map(Value::Bool),
            oid::INT2 => int2(text).map(|v| Value::Int(i64::from(v))),
            oid::INT4 => int4(text).map(|v| Value::Int(i64::from(v))),
            oid::INT8 => int8(text).map(Value::Int),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => {
                utf8(text, "text").map(|s| Value::Text(s.to_owned()))
            }
            oid::NUMERIC => numeric(text).map(Value::Numeric),
            oid::FLOAT4 | oid::FLOAT8 => float(text).map(Value::Numeric),
            oid::TIMESTAMP | oid::TIMESTAMPTZ => timestamp_micros(text).map(Value::Timestamp),
            oid::UUID => uuid(text).map(Value::Uuid),
            _ => utf8(text, "text of an unconverted type").map(|s| Value::Other(s.to_owned())),
        }
    }
}

/// Why a text value could not be converted: which type, what was wrong, and (a bounded prefix
/// of) the offending text, so a dead letter is self-explanatory without carrying a huge value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {type_name} value {text:?}: {kind}")]
pub struct ValueError {
    /// The PostgreSQL type being converted to, e.g. `"numeric"`.
    pub type_name: &'static str,
    /// What was wrong.
    pub kind: ValueErrorKind,
    /// The offending text, lossily decoded and cut to at most [`MAX_QUOTED_CHARS`] characters
    /// (with `…` appended when cut).
    pub text: String,
}

/// How many characters of an offending value a [`ValueError`] quotes.
pub const MAX_QUOTED_CHARS: usize = 64;

/// The reason a conversion failed; matchable so callers can treat e.g. NaN differently from a
/// syntax error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueErrorKind {
    /// The bytes are not UTF-8 (walpoints requires a UTF8-encoded source database).
    #[error("not valid UTF-8")]
    InvalidUtf8,
    /// Not in the form PostgreSQL prints for this type; says what was expected.
    #[error("not in PostgreSQL's output form: {0}")]
    Syntax(&'static str),
    /// A well-formed value outside the target type's range (e.g. `int2` above 32767, or a
    /// timestamp beyond what i64 microseconds since 1970 can hold).
    #[error("out of range")]
    OutOfRange,
    /// numeric `NaN`.
    #[error("NaN is not a number walpoints can use")]
    NotANumber,
    /// numeric or timestamp `Infinity` / `-Infinity` / `infinity` / `-infinity`.
    #[error("infinite values are not supported")]
    Infinite,
    /// A numeric whose exact value a `Decimal` cannot hold (converting would round).
    #[error("cannot be held exactly by a Decimal: {0}")]
    Inexact(&'static str),
    /// A timestamp before the common era (printed with a ` BC` suffix).
    #[error("BC dates are not supported")]
    BcDate,
}

fn error(type_name: &'static str, kind: ValueErrorKind, text: &[u8]) -> ValueError {
    // Decode at most 4 bytes per quoted character, then cut by characters.
    let head = &text[..text.len().min(MAX_QUOTED_CHARS * 4)];
    let lossy = String::from_utf8_lossy(head);
    let mut quoted: String = lossy.chars().take(MAX_QUOTED_CHARS).collect();
    if head.len() < text.len() || lossy.chars().nth(MAX_QUOTED_CHARS).is_some() {
        quoted.push('…');
    }
    ValueError {
        type_name,
        kind,
        text: quoted,
    }
}

fn utf8<'a>(text: &'a [u8], type_name: &'static str) -> Result<&'a str, ValueError> {
    std::str::from_utf8(text).map_err(|_| error(type_name, ValueErrorKind::InvalidUtf8, text))
}

/// A text-like value (`text`, `varchar`, `bpchar`, `name`) as `&str`, borrowed from the message
/// so a mapping that only compares or copies it pays no allocation.
pub fn text<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<&str, ValueError> {
    utf8(text.as_ref(), "text")
}

/// A `bool`, which PostgreSQL prints as `t` or `f`.
pub fn boolean<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<bool, ValueError> {
    match text.as_ref() {
        b"t" => Ok(true),
        b"f" => Ok(false),
        other => Err(error(
            "bool",
            ValueErrorKind::Syntax("expected t or f"),
            other,
        )),
    }
}

/// An `int2` (`smallint`).
pub fn int2<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<i16, ValueError> {
    let v = integer(text.as_ref(), "int2")?;
    i16::try_from(v).map_err(|_| error("int2", ValueErrorKind::OutOfRange, text.as_ref()))
}

/// An `int4` (`integer`).
pub fn int4<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<i32, ValueError> {
    let v = integer(text.as_ref(), "int4")?;
    i32::try_from(v).map_err(|_| error("int4", ValueErrorKind::OutOfRange, text.as_ref()))
}

/// An `int8` (`bigint`).
pub fn int8<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<i64, ValueError> {
    integer(text.as_ref(), "int8")
}

/// Parses `-?[0-9]+` into i64; range errors are reported against `type_name`.
fn integer(text: &[u8], type_name: &'static str) -> Result<i64, ValueError> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(error(
            type_name,
            ValueErrorKind::Syntax("expected an optional '-' and decimal digits"),
            text,
        ));
    }
    let negative = digits.len() != text.len();
    let mut acc: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        // Accumulate towards the sign so i64::MIN parses.
        acc = acc
            .checked_mul(10)
            .and_then(|a| {
                if negative {
                    a.checked_sub(d)
                } else {
                    a.checked_add(d)
                }
            })
            .ok_or_else(|| error(type_name, ValueErrorKind::OutOfRange, text))?;
    }
    Ok(acc)
}

/// A `uuid`, which PostgreSQL prints as 36 lowercase hyphenated hex characters.
pub fn uuid<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Uuid, ValueError> {
    let text = text.as_ref();
    if text.len() != 36 {
        return Err(error(
            "uuid",
            ValueErrorKind::Syntax("expected 8-4-4-4-12 hexadecimal digits"),
            text,
        ));
    }
    Uuid::try_parse_ascii(text).map_err(|_| {
        error(
            "uuid",
            ValueErrorKind::Syntax("expected 8-4-4-4-12 hexadecimal digits"),
            text,
        )
    })
}

/// The largest mantissa a [`Decimal`] holds: 2^96 - 1.
const DECIMAL_MAX_MANTISSA: u128 = (1 << 96) - 1;
/// The largest scale (fractional digits) a [`Decimal`] holds.
const DECIMAL_MAX_SCALE: usize = 28;

/// A `numeric`, exactly.
///
/// Accepts what PostgreSQL prints: an optional `-`, digits, optionally `.` and digits. Trailing
/// fractional zeros are insignificant and dropped first, so a `numeric(38,18)` column printing
/// `123456789012.500000000000000000` (30 digits) converts exactly to `123456789012.5`. Only a
/// value whose significant digits truly exceed a `Decimal` (mantissa above 2^96 - 1, or more
/// than 28 fractional digits) is an error, as are `NaN` and `±Infinity`.
pub fn numeric<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Decimal, ValueError> {
    let text = text.as_ref();
    let fail = |kind| error("numeric", kind, text);
    match text {
        b"NaN" => return Err(fail(ValueErrorKind::NotANumber)),
        b"Infinity" | b"-Infinity" => return Err(fail(ValueErrorKind::Infinite)),
        _ => {}
    }
    let syntax = || fail(ValueErrorKind::Syntax("expected -?digits[.digits]"));
    let unsigned = text.strip_prefix(b"-").unwrap_or(text);
    let negative = unsigned.len() != text.len();
    let (int, frac) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let (int, rest) = unsigned.split_at(dot);
            (int, rest.get(1..).unwrap_or_default())
        }
        None => (unsigned, &[][..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let has_dot = int.len() != unsigned.len();
    if int.is_empty() || !all_digits(int) || (has_dot && frac.is_empty()) || !all_digits(frac) {
        return Err(syntax());
    }

    exact(negative, int, frac, 0, fail)
}

/// A `float4` (`real`) or `float8` (`double precision`), as the exact decimal its text output
/// spells.
///
/// PostgreSQL prints floats as the shortest digits that read back to the same binary value
/// (`extra_float_digits` ≥ 1, the default since PostgreSQL 12), switching to an exponent for
/// very small or large magnitudes: a fill price of 0.00000123 arrives as `1.23e-06`. Those
/// printed digits are what the exchange wrote, so they are taken exactly (not the binary
/// value's longer expansion). Accepts `-?digits[.digits][e(+|-)digits]`; `NaN`, `±Infinity`
/// and a value a `Decimal` cannot hold exactly (`1e+300`, `1e-300`) are errors.
pub fn float<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Decimal, ValueError> {
    let text = text.as_ref();
    let fail = |kind| error("float8", kind, text);
    match text {
        b"NaN" => return Err(fail(ValueErrorKind::NotANumber)),
        b"Infinity" | b"-Infinity" => return Err(fail(ValueErrorKind::Infinite)),
        _ => {}
    }
    let syntax = || {
        fail(ValueErrorKind::Syntax(
            "expected -?digits[.digits][e(+|-)digits]",
        ))
    };
    let (mantissa, exponent) = match text.iter().position(|&b| b == b'e' || b == b'E') {
        Some(e) => (&text[..e], Some(&text[e + 1..])),
        None => (text, None),
    };
    let exponent: i32 = match exponent {
        None => 0,
        Some(exp) => {
            let (negative, digits) = match exp {
                [b'-', rest @ ..] => (true, rest),
                [b'+', rest @ ..] => (false, rest),
                rest => (false, rest),
            };
            if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(syntax());
            }
            let magnitude = digits
                .iter()
                .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
            if negative {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let unsigned = mantissa.strip_prefix(b"-").unwrap_or(mantissa);
    let negative = unsigned.len() != mantissa.len();
    let (int, frac) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => (&unsigned[..dot], &unsigned[dot + 1..]),
        None => (unsigned, &[][..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let has_dot = int.len() != unsigned.len();
    if int.is_empty() || !all_digits(int) || (has_dot && frac.is_empty()) || !all_digits(frac) {
        return Err(syntax());
    }
    exact(negative, int, frac, exponent, fail)
}

/// A number of any type walpoints reads as a decimal (`numeric`, `float4`/`float8`,
/// `int2`/`int4`/`int8`), from its text output. The setup and startup checks guarantee a
/// mapped amount or price column has one of these types, and a snapshot row carries no type
/// oid, so the forms are told apart by their text: an exponent or a `NaN`/`Infinity` spelling
/// is a float's, anything else is read as `numeric` (integers are a subset of its form).
pub fn decimal<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<Decimal, ValueError> {
    let text = text.as_ref();
    if text.iter().any(|&b| b == b'e' || b == b'E') {
        float(text)
    } else {
        numeric(text)
    }
}

/// The exact `Decimal` of `±int.frac × 10^exponent` (digits already checked), or why none
/// holds it.
fn exact(
    negative: bool,
    int: &[u8],
    frac: &[u8],
    exponent: i32,
    fail: impl Fn(ValueErrorKind) -> ValueError,
) -> Result<Decimal, ValueError> {
    // Significant digits: no leading zeros, no trailing zeros; what the trailing zeros stood
    // for moves into the power of ten.
    let int = trim_start_zeros(int);
    let (digits, frac_len): (Vec<u8>, usize) = if int.is_empty() {
        (trim_start_zeros(frac).to_vec(), frac.len())
    } else {
        (int.iter().chain(frac).copied().collect(), frac.len())
    };
    let trimmed = trim_end_zeros(&digits);
    // value = digits(trimmed) × 10^power
    let power = i64::from(exponent) - frac_len as i64 + (digits.len() - trimmed.len()) as i64;
    if trimmed.is_empty() {
        return Ok(Decimal::ZERO);
    }
    if power < -(DECIMAL_MAX_SCALE as i64) {
        return Err(fail(ValueErrorKind::Inexact(
            "more than 28 significant fractional digits",
        )));
    }
    let too_many = || {
        fail(ValueErrorKind::Inexact(
            "more significant digits than a 96-bit mantissa",
        ))
    };
    let push = |m: u128, d: u128| {
        m.checked_mul(10)
            .and_then(|m| m.checked_add(d))
            .filter(|&m| m <= DECIMAL_MAX_MANTISSA)
    };
    let mut mantissa: u128 = 0;
    for &d in trimmed {
        mantissa = push(mantissa, u128::from(d - b'0')).ok_or_else(too_many)?;
    }
    let scale = if power > 0 {
        for _ in 0..power {
            mantissa = push(mantissa, 0).ok_or_else(too_many)?;
        }
        0
    } else {
        // -28 <= power <= 0, so the cast is lossless.
        (-power) as u32
    };
    let signed = i128::try_from(mantissa).map_err(|_| fail(ValueErrorKind::OutOfRange))?;
    let signed = if negative { -signed } else { signed };
    Decimal::try_from_i128_with_scale(signed, scale).map_err(|_| fail(ValueErrorKind::OutOfRange))
}

fn trim_end_zeros(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b'0'] = s {
        s = rest;
    }
    s
}

fn trim_start_zeros(mut s: &[u8]) -> &[u8] {
    while let [b'0', rest @ ..] = s {
        s = rest;
    }
    s
}

const SECONDS_PER_DAY: i64 = 86_400;
/// PostgreSQL rejects UTC offsets beyond ±15:59:59, so it never prints one.
const MAX_OFFSET_HOURS: u32 = 15;

/// A `timestamp` or `timestamptz` as µs since 1970-01-01 00:00:00 UTC.
///
/// Accepts the ISO output form: `YYYY-MM-DD HH:MM:SS[.f{1,6}][±HH[:MM[:SS]]]` (years may have
/// more than four digits). With an offset, the local time is converted to UTC; without one
/// (`timestamp` without time zone) it is taken as UTC. `infinity`, `-infinity` and BC dates are
/// errors, because no instant on the ledger's timeline corresponds to them.
pub fn timestamp_micros<T: AsRef<[u8]> + ?Sized>(text: &T) -> Result<i64, ValueError> {
    let text = text.as_ref();
    parse_timestamp(text).map_err(|kind| error("timestamp", kind, text))
}

/// A cursor over timestamp text; each method consumes a fixed piece of the ISO form.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), ValueErrorKind> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(ValueErrorKind::Syntax(what))
        }
    }

    /// Consumes a run of `min..=max` ASCII digits; returns their value and count.
    fn digits(
        &mut self,
        min: usize,
        max: usize,
        what: &'static str,
    ) -> Result<(u32, usize), ValueErrorKind> {
        let mut value: u32 = 0;
        let mut n = 0;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            if n == max {
                return Err(ValueErrorKind::Syntax(what));
            }
            value = value * 10 + u32::from(d - b'0');
            n += 1;
            self.i += 1;
        }
        if n < min {
            return Err(ValueErrorKind::Syntax(what));
        }
        Ok((value, n))
    }

    fn two(&mut self, what: &'static str) -> Result<u32, ValueErrorKind> {
        Ok(self.digits(2, 2, what)?.0)
    }
}

fn parse_timestamp(text: &[u8]) -> Result<i64, ValueErrorKind> {
    use ValueErrorKind::{BcDate, Infinite, OutOfRange, Syntax};
    match text {
        b"infinity" | b"-infinity" => return Err(Infinite),
        t if t.ends_with(b" BC") => return Err(BcDate),
        _ => {}
    }
    let mut c = Cursor { s: text, i: 0 };
    // PostgreSQL's largest year is 294276: at most six digits.
    let (year, _) = c.digits(4, 6, "expected a year of 4 to 6 digits")?;
    c.expect(b'-', "expected '-' after the year")?;
    let month = c.two("expected a 2-digit month")?;
    c.expect(b'-', "expected '-' after the month")?;
    let day = c.two("expected a 2-digit day")?;
    c.expect(b' ', "expected ' ' between date and time")?;
    let hour = c.two("expected a 2-digit hour")?;
    c.expect(b':', "expected ':' after the hour")?;
    let minute = c.two("expected 2-digit minutes")?;
    c.expect(b':', "expected ':' after the minutes")?;
    let second = c.two("expected 2-digit seconds")?;
    let mut micros: u32 = 0;
    if c.peek() == Some(b'.') {
        c.i += 1;
        let (frac, n) = c.digits(1, 6, "expected 1 to 6 fractional second digits")?;
        micros = frac * 10u32.pow(6 - n as u32);
    }
    let mut offset_seconds: i64 = 0;
    if let Some(sign @ (b'+' | b'-')) = c.peek() {
        c.i += 1;
        let hh = c.two("expected a 2-digit offset hour")?;
        let mut mm = 0;
        let mut ss = 0;
        if c.peek() == Some(b':') {
            c.i += 1;
            mm = c.two("expected 2-digit offset minutes")?;
            if c.peek() == Some(b':') {
                c.i += 1;
                ss = c.two("expected 2-digit offset seconds")?;
            }
        }
        if hh > MAX_OFFSET_HOURS || mm > 59 || ss > 59 {
            return Err(Syntax("UTC offset out of range"));
        }
        let magnitude = i64::from(hh * 3600 + mm * 60 + ss);
        offset_seconds = if sign == b'-' { -magnitude } else { magnitude };
    }
    if c.i != text.len() {
        return Err(Syntax("unexpected text after the timestamp"));
    }
    if year == 0 {
        return Err(Syntax("year 0 does not exist"));
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return Err(Syntax("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(Syntax("no such time of day"));
    }
    let days = days_from_civil(i64::from(year), month, day);
    let local_seconds = i64::from(hour * 3600 + minute * 60 + second);
    days.checked_mul(SECONDS_PER_DAY)
        .and_then(|s| s.checked_add(local_seconds))
        .and_then(|s| s.checked_sub(offset_seconds))
        .and_then(|s| s.checked_mul(MICROS_PER_SECOND))
        .and_then(|us| us.checked_add(i64::from(micros)))
        .ok_or(OutOfRange)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{DateTime, FixedOffset};
    use proptest::prelude::*;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn numeric_accepts_postgres_output() {
        for (text, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("42", "42"),
            ("-42", "-42"),
            ("1.50", "1.5"),
            ("0.000", "0"),
            ("-0.5", "-0.5"),
            ("007.100", "7.1"),
            ("123456789012.500000000000000000", "123456789012.5"),
            ("-123456789012.500000000000000000", "-123456789012.5"),
            ("0.000000000000000001", "0.000000000000000001"),
            (
                "0.0000000000000000000000000001",
                "0.0000000000000000000000000001",
            ),
            (
                "0.00000000000000000000000000010000",
                "0.0000000000000000000000000001",
            ),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
            (
                "-79228162514264337593543950335.000",
                "-79228162514264337593543950335",
            ),
            (
                "7.9228162514264337593543950335",
                "7.9228162514264337593543950335",
            ),
            (
                "10000000000000000000000000000",
                "10000000000000000000000000000",
            ),
            (
                "1.0000000000000000000000000001",
                "1.0000000000000000000000000001",
            ),
        ] {
            assert_eq!(numeric(text), Ok(dec(want)), "{text}");
        }
        // The scale is the minimal one.
        assert_eq!(numeric("1.500").unwrap().scale(), 1);
        assert_eq!(numeric("100").unwrap().scale(), 0);
    }

    #[test]
    fn numeric_rejects_what_decimal_cannot_hold_exactly() {
        use ValueErrorKind::*;
        for (text, kind) in [
            ("NaN", NotANumber),
            ("Infinity", Infinite),
            ("-Infinity", Infinite),
            (
                "79228162514264337593543950336",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
            (
                "100000000000000000000000000000",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
            (
                "99999999999999999999.999999999999999999",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
            (
                "0.00000000000000000000000000001",
                Inexact("more than 28 significant fractional digits"),
            ),
            (
                "8.0000000000000000000000000001",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
        ] {
            assert_eq!(numeric(text).map_err(|e| e.kind), Err(kind), "{text}");
        }
        for text in [
            "", "-", ".", "1.", ".5", "+1", "1e5", "1.2.3", " 1", "1 ", "--1", "nan", "1,5",
            "0x10", "١",
        ] {
            assert!(
                matches!(numeric(text).map_err(|e| e.kind), Err(Syntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn float_output_converts_exactly() {
        for (text, want) in [
            ("1.23e-06", "0.00000123"),
            ("1.23E-06", "0.00000123"),
            ("-1.23e-06", "-0.00000123"),
            ("0.5", "0.5"),
            ("-0", "0"),
            ("0", "0"),
            ("42", "42"),
            ("65000.25", "65000.25"),
            ("1e+20", "100000000000000000000"),
            ("1.5e+20", "150000000000000000000"),
            ("2.5e2", "250"),
            ("1e-28", "0.0000000000000000000000000001"),
            ("1.7976931348623157e+10", "17976931348.623157"),
            ("3.4028235e+38", "340282350000000000000000000000000000000"),
            ("0.1", "0.1"),
            ("1.000e-3", "0.001"),
        ] {
            match float(text) {
                Ok(got) => assert_eq!(got, dec(want), "{text}"),
                Err(e) => {
                    // 3.4e38 is beyond a Decimal: the one case here that must fail.
                    assert_eq!(text, "3.4028235e+38", "{text}: {e}");
                    assert_eq!(
                        e.kind,
                        ValueErrorKind::Inexact("more significant digits than a 96-bit mantissa")
                    );
                }
            }
        }
        assert_eq!(float("1.23e-06").unwrap().scale(), 8);
        assert_eq!(decimal("1.23e-06"), Ok(dec("0.00000123")));
        assert_eq!(decimal("12.50"), Ok(dec("12.5")));
        assert_eq!(
            Value::from_text(oid::FLOAT8, b"1.23e-06"),
            Ok(Value::Numeric(dec("0.00000123")))
        );
    }

    #[test]
    fn float_rejects_what_decimal_cannot_hold() {
        use ValueErrorKind::*;
        for (text, kind) in [
            ("NaN", NotANumber),
            ("Infinity", Infinite),
            ("-Infinity", Infinite),
            (
                "1e+300",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
            (
                "1.7976931348623157e+308",
                Inexact("more significant digits than a 96-bit mantissa"),
            ),
            (
                "1e-300",
                Inexact("more than 28 significant fractional digits"),
            ),
            (
                "5e-324",
                Inexact("more than 28 significant fractional digits"),
            ),
            (
                "1.5e-28",
                Inexact("more than 28 significant fractional digits"),
            ),
        ] {
            assert_eq!(float(text).map_err(|e| e.kind), Err(kind), "{text}");
            assert_eq!(decimal(text).map_err(|e| e.kind), Err(kind), "{text}");
        }
        for text in [
            "", "e5", "1e", "1e+", "1e-", "1.e5", ".5e1", "1e5.5", "1e99999", "+1", "1 e5", "1ee5",
            "inf", "nan", "--1e5",
        ] {
            assert!(
                matches!(float(text).map_err(|e| e.kind), Err(Syntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn integers_have_their_type_ranges() {
        assert_eq!(int2("32767"), Ok(32767));
        assert_eq!(int2("-32768"), Ok(-32768));
        assert_eq!(int2("32768").unwrap_err().kind, ValueErrorKind::OutOfRange);
        assert_eq!(int4("-2147483648"), Ok(i32::MIN));
        assert_eq!(
            int4("2147483648").unwrap_err().kind,
            ValueErrorKind::OutOfRange
        );
        assert_eq!(int8("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(int8("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(
            int8("9223372036854775808").unwrap_err().kind,
            ValueErrorKind::OutOfRange
        );
        assert_eq!(int8("-0"), Ok(0));
        for bad in ["", "-", "+1", "1.0", " 1", "1a", "٣"] {
            assert!(
                matches!(
                    int8(bad).map_err(|e| e.kind),
                    Err(ValueErrorKind::Syntax(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            Value::from_text(oid::INT2, b"-7"),
            Ok(Value::Int(-7)),
            "int2 widens"
        );
        assert_eq!(
            Value::from_text(oid::INT4, b"99999999999")
                .unwrap_err()
                .type_name,
            "int4"
        );
    }

    #[test]
    fn bool_text_uuid() {
        assert_eq!(boolean("t"), Ok(true));
        assert_eq!(boolean("f"), Ok(false));
        assert!(boolean("true").is_err());
        assert_eq!(text(b"h\xc3\xa9"), Ok("hé"));
        assert_eq!(text(b"\xff").unwrap_err().kind, ValueErrorKind::InvalidUtf8);
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(uuid(u), Ok(Uuid::parse_str(u).unwrap()));
        assert!(uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
        assert!(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g").is_err());
        assert_eq!(
            Value::from_text(oid::BPCHAR, b"ab  "),
            Ok(Value::Text("ab  ".into()))
        );
        assert_eq!(
            Value::from_text(oid::NAME, b"public"),
            Ok(Value::Text("public".into()))
        );
        assert_eq!(
            Value::from_text(3802, b"{\"a\": 1}"),
            Ok(Value::Other("{\"a\": 1}".into()))
        );
        assert_eq!(
            Value::from_text(3802, b"\xff").unwrap_err().kind,
            ValueErrorKind::InvalidUtf8
        );
        assert_eq!(
            Value::from_text(oid::UUID, u.as_bytes()),
            Ok(Value::Uuid(Uuid::parse_str(u).unwrap()))
        );
        assert_eq!(Value::from_text(oid::BOOL, b"t"), Ok(Value::Bool(true)));
        assert_eq!(
            Value::from_text(oid::NUMERIC, b"1.50"),
            Ok(Value::Numeric(dec("1.5")))
        );
    }

    /// µs since the Unix epoch of a UTC civil time, computed independently with chrono.
    fn chrono_micros(s: &str) -> i64 {
        DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z")
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn timestamps_in_iso_output_form() {
        assert_eq!(timestamp_micros("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(timestamp_micros("1970-01-01 00:00:00+00"), Ok(0));
        assert_eq!(
            timestamp_micros("2000-01-01 00:00:00+00"),
            Ok(946_684_800_000_000)
        );
        assert_eq!(
            timestamp_micros("2026-01-05 12:34:56.123456+00"),
            Ok(chrono_micros("2026-01-05 12:34:56.123456+00:00"))
        );
        assert_eq!(
            timestamp_micros("2026-01-05 12:34:56.1+00"),
            Ok(chrono_micros("2026-01-05 12:34:56.100000+00:00"))
        );
        assert_eq!(
            timestamp_micros("2026-01-05 18:04:56+05:30"),
            timestamp_micros("2026-01-05 12:34:56+00")
        );
        assert_eq!(
            timestamp_micros("2026-01-05 04:34:56-08"),
            timestamp_micros("2026-01-05 12:34:56")
        );
        assert_eq!(
            timestamp_micros("2026-01-05 18:05:11+05:30:15"),
            timestamp_micros("2026-01-05 12:34:56+00")
        );
        assert_eq!(timestamp_micros("1969-12-31 23:59:59.999999+00"), Ok(-1));
        assert_eq!(
            timestamp_micros("0001-01-01 00:00:00"),
            Ok(-62_135_596_800_000_000)
        );
        assert_eq!(
            timestamp_micros("2024-02-29 00:00:00"),
            Ok(chrono_micros("2024-02-29 00:00:00+00:00"))
        );
        assert_eq!(
            timestamp_micros("10000-01-01 00:00:00"),
            Ok(253_402_300_800_000_000)
        );
        assert_eq!(
            timestamp_micros("200000-01-01 00:00:00"),
            Ok(chrono_micros("+200000-01-01 00:00:00+00:00"))
        );
        // PostgreSQL's last representable instant is beyond i64 microseconds since 1970.
        assert_eq!(
            timestamp_micros("294276-12-31 23:59:59.999999+00")
                .unwrap_err()
                .kind,
            ValueErrorKind::OutOfRange
        );
        assert_eq!(
            Value::from_text(oid::TIMESTAMPTZ, b"1970-01-01 00:00:01+00"),
            Ok(Value::Timestamp(1_000_000))
        );
        assert_eq!(
            Value::from_text(oid::TIMESTAMP, b"1970-01-01 00:00:01"),
            Ok(Value::Timestamp(1_000_000))
        );
    }

    #[test]
    fn timestamps_rejected() {
        use ValueErrorKind::*;
        for (text, kind) in [
            ("infinity", Infinite),
            ("-infinity", Infinite),
            ("0044-03-15 12:00:00 BC", BcDate),
            ("0044-03-15 12:00:00+00 BC", BcDate),
        ] {
            assert_eq!(
                timestamp_micros(text).map_err(|e| e.kind),
                Err(kind),
                "{text}"
            );
        }
        for text in [
            "",
            "2026-01-05",
            "2026-01-05T12:34:56",
            "2026-01-05 12:34",
            "2026-01-05 12:34:56.",
            "2026-01-05 12:34:56.1234567",
            "2026-01-05 12:34:56 +00",
            "2026-01-05 12:34:56+0",
            "2026-01-05 12:34:56+0530",
            "2026-01-05 12:34:56+16",
            "2026-01-05 12:34:56+05:60",
            "2026-01-05 12:34:56+05:30:",
            "2026-02-29 00:00:00",
            "1900-02-29 00:00:00",
            "2026-13-01 00:00:00",
            "2026-00-01 00:00:00",
            "2026-01-00 00:00:00",
            "2026-04-31 00:00:00",
            "2026-01-05 24:00:00",
            "2026-01-05 12:60:00",
            "2026-01-05 12:00:60",
            "0000-01-01 00:00:00",
            "126-01-05 12:34:56",
            "1234567-01-05 12:34:56",
            "01/05/2026 12:34:56",
            "2026-01-05 12:34:56+00 ",
            "２026-01-05 12:34:56",
        ] {
            assert!(
                matches!(timestamp_micros(text).map_err(|e| e.kind), Err(Syntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let huge = "9".repeat(1 << 20);
        let e = numeric(&huge).unwrap_err();
        assert_eq!(e.type_name, "numeric");
        assert_eq!(e.text.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(e.text.ends_with('…'));
        assert!(e.to_string().len() < 300);
        let e = numeric("NaN").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid numeric value \"NaN\": NaN is not a number walpoints can use"
        );
        // Invalid UTF-8 is quoted lossily, not a panic.
        let e = Value::from_text(oid::TEXT, b"ab\xffcd").unwrap_err();
        assert_eq!(e.text, "ab\u{fffd}cd");
        // Multi-byte characters are counted as characters and never split.
        let e = text(&[&"é".repeat(100).into_bytes()[..], b"\xff"].concat()).unwrap_err();
        assert_eq!(e.text, format!("{}…", "é".repeat(64)));
    }

    /// PostgreSQL's ISO rendering of an instant at a UTC offset: fraction with trailing zeros
    /// trimmed, offset as ±HH[:MM[:SS]].
    fn pg_render(micros: i64, offset_seconds: i32) -> String {
        let off = FixedOffset::east_opt(offset_seconds).unwrap();
        let t = DateTime::from_timestamp_micros(micros)
            .unwrap()
            .with_timezone(&off);
        let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
        let frac = micros.rem_euclid(1_000_000);
        if frac != 0 {
            let digits = format!("{frac:06}");
            s.push('.');
            s.push_str(digits.trim_end_matches('0'));
        }
        let sign = if offset_seconds < 0 { '-' } else { '+' };
        let a = offset_seconds.unsigned_abs();
        s.push_str(&format!("{sign}{:02}", a / 3600));
        if !a.is_multiple_of(3600) {
            s.push_str(&format!(":{:02}", a / 60 % 60));
            if !a.is_multiple_of(60) {
                s.push_str(&format!(":{:02}", a % 60));
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48),
                                    oid in prop_oneof![Just(16u32), Just(19), Just(20), Just(21),
                                        Just(23), Just(25), Just(1042), Just(1043), Just(1114),
                                        Just(1184), Just(1700), Just(700), Just(701), Just(2950), any::<u32>()]) {
            let _ = Value::from_text(oid, &bytes);
        }

        #[test]
        fn shaped_text_never_panics(s in "-?[0-9]{0,40}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{0,6})?|[0-9 :.+-]{0,40}|\
                                           [0-9]{4,7}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,7})?([+-][0-9]{2}(:[0-9]{2}){0,2})?") {
            let _ = numeric(&s);
            let _ = decimal(&s);
            let _ = timestamp_micros(&s);
            let _ = int2(&s);
            let _ = int8(&s);
        }

        #[test]
        fn decimal_round_trip(lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(),
                              negative in any::<bool>(), scale in 0u32..=28) {
            let d = Decimal::from_parts(lo, mid, hi, negative, scale);
            prop_assert_eq!(numeric(&d.to_string()), Ok(d));
        }

        #[test]
        fn numeric_ok_means_exact(int in "[0-9]{1,32}", frac in proptest::option::of("[0-9]{1,32}"),
                                  negative in any::<bool>()) {
            let text = format!("{}{}{}", if negative { "-" } else { "" }, int,
                               frac.as_deref().map(|f| format!(".{f}")).unwrap_or_default());
            if let Ok(d) = numeric(&text) {
                // The decimal prints back to the same significant digits.
                let canon = |s: &str| {
                    let (sign, s) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
                    let (i, f) = s.split_once('.').unwrap_or((s, ""));
                    let i = i.trim_start_matches('0');
                    let f = f.trim_end_matches('0');
                    if i.is_empty() && f.is_empty() { return "0".to_owned(); }
                    format!("{sign}{i}.{f}")
                };
                prop_assert_eq!(canon(&d.to_string()), canon(&text));
            } else {
                let sig = int.trim_start_matches('0').len()
                    + frac.as_deref().unwrap_or("").trim_end_matches('0').len();
                prop_assert!(sig >= 29, "rejected {} with {} significant digits", text, sig);
            }
        }

        #[test]
        fn timestamp_agrees_with_chrono(
            // 0001-01-02 .. 9999-12-30, so every offset keeps the local date within 4-digit years.
            micros in -62_135_510_400_000_000i64..253_402_214_400_000_000,
            offset in prop_oneof![Just(0i32), -57_599i32..=57_599, (-15i32..=15).prop_map(|h| h * 3600),
                                  (-15i32..=15, 0i32..60).prop_map(|(h, m)| h * 3600 + m * 60)],
        ) {
            let text = pg_render(micros, offset);
            prop_assert_eq!(timestamp_micros(&text), Ok(micros), "{}", text);
        }
    }
}
