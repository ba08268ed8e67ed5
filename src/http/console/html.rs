//! The pieces every console page is made of: escaping, number and time formatting, the page
//! frame. Plain `format!` and one escaping function: four pages do not need a template engine.

use std::fmt::Write as _;

use crate::points::EpochId;

/// `text` safe inside HTML text and double-quoted attributes.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded for a query string or a path segment.
pub(super) fn url_part(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A decimal string as stored ("60000.000000") with thousands separators and every stored
/// decimal kept ("60,000.000000"); anything that is not a plain decimal is shown escaped as is.
pub(super) fn grouped(decimal: &str) -> String {
    let (sign, rest) = match decimal.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", decimal),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()))
    {
        return esc(decimal);
    }
    let mut out = String::from(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// An RFC 3339 UTC time ("2026-01-05T10:00:00.123456Z") as people read it
/// ("2026-01-05 10:00:00 UTC").
pub(super) fn utc(rfc3339: &str) -> String {
    let t = rfc3339.trim_end_matches('Z').replacen('T', " ", 1);
    let t = t.split_once('.').map_or(t.as_str(), |(s, _)| s);
    format!("{} UTC", esc(t))
}

/// An address as a link to its user page, in a monospace `<code>` that is easy to select and
/// copy whole.
pub(super) fn address_link(address: &str, epoch: EpochId) -> String {
    format!(
        "<a class=\"addr\" href=\"/users/{}?epoch={epoch}\"><code>{}</code></a>",
        url_part(address),
        esc(address)
    )
}

/// Which page a frame shows, so the navigation marks it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    Overview,
    Leaderboard,
    Users,
    DeadLetters,
}

/// A whole page: the head (stylesheet from the binary, no script), the navigation and `body`.
pub(super) fn page(title: &str, tab: Tab, body: &str) -> String {
    let mut nav = String::new();
    for (t, href, label) in [
        (Tab::Overview, "/", "Overview"),
        (Tab::Leaderboard, "/leaderboard", "Leaderboard"),
        (Tab::DeadLetters, "/dead-letters", "Dead letters"),
    ] {
        let current = if t == tab {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · walpoints</title><link rel=\"stylesheet\" href=\"/console.css\">\
         <link rel=\"icon\" href=\"data:,\"></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><span class=\"brand\">walpoints</span><nav aria-label=\"Console\">{nav}</nav>\
         <form class=\"find\" action=\"/leaderboard\" method=\"get\" role=\"search\">\
         <label for=\"find\">Find a user</label>\
         <input id=\"find\" name=\"address\" placeholder=\"address\" autocomplete=\"off\" required>\
         <button>Find</button></form></header>\
         <main id=\"main\">{body}</main>\
         <footer>Read-only console of walpoints · figures from the points API (<a href=\"/v1/epochs\">/v1</a>) · \
         <a href=\"/metrics\">/metrics</a></footer></body></html>\n",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_keeps_every_decimal_and_groups_thousands() {
        assert_eq!(grouped("60000.000000"), "60,000.000000");
        assert_eq!(grouped("-1234567.5"), "-1,234,567.5");
        assert_eq!(grouped("999"), "999");
        assert_eq!(grouped("0.000000"), "0.000000");
        assert_eq!(grouped("1000"), "1,000");
        assert_eq!(grouped("<b>"), "&lt;b&gt;");
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(url_part("a b&c"), "a+b%26c");
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(
            utc("2026-01-05T10:00:00.123456Z"),
            "2026-01-05 10:00:00 UTC"
        );
        assert_eq!(utc("2026-01-05T10:00:00Z"), "2026-01-05 10:00:00 UTC");
    }
}
