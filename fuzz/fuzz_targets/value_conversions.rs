//! Fuzzes the text-value conversions of `walpoints::value` (what every column of every row goes
//! through) and address normalization.
//!
//! Properties, beyond "no input panics":
//! - a numeric that converts re-converts from its own `Decimal` text to the same value (the
//!   conversion is exact, never rounded);
//! - an integer that converts re-converts from its decimal text to the same value, and the
//!   int2/int4 results agree with int8's;
//! - `normalize_address` is idempotent;
//! - every error renders, and quotes at most `MAX_QUOTED_CHARS` characters of the value (plus
//!   the `…` marker), so a 1 MB value cannot bloat a dead letter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walpoints::points::normalize_address;
use walpoints::value::{self, oid, Value, ValueError, MAX_QUOTED_CHARS};

const OIDS: [u32; 13] = [
    oid::BOOL,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::BPCHAR,
    oid::VARCHAR,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::NUMERIC,
    oid::UUID,
    114, // json: an unconverted type, passed through as text
];

fn check_error(e: &ValueError) {
    let _ = e.to_string();
    let quoted = e.text.chars().count();
    assert!(
        quoted <= MAX_QUOTED_CHARS + 1,
        "an error quotes {quoted} characters"
    );
}

fn check<T>(r: Result<T, ValueError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            check_error(&e);
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let type_oid = OIDS[usize::from(selector) % OIDS.len()];
    check(Value::from_text(type_oid, text));

    if let Some(d) = check(value::numeric(text)) {
        let again = value::numeric(d.to_string().as_str());
        assert_eq!(
            again,
            Ok(d),
            "numeric {d} does not re-convert from its own text"
        );
    }
    let i8v = check(value::int8(text));
    if let Some(v) = i8v {
        assert_eq!(value::int8(v.to_string().as_str()), Ok(v));
    }
    if let Some(v) = check(value::int4(text)) {
        assert_eq!(i8v, Some(i64::from(v)));
    }
    if let Some(v) = check(value::int2(text)) {
        assert_eq!(i8v, Some(i64::from(v)));
    }
    check(value::boolean(text));
    check(value::uuid(text));
    check(value::timestamp_micros(text));
    if let Some(s) = check(value::text(text)) {
        let once = normalize_address(s);
        let twice = normalize_address(&once);
        assert_eq!(once, twice, "normalize_address is not idempotent");
    }
});
