//! Charts drawn on the server as inline SVG: they need no script, so they show with
//! JavaScript off and under a Content-Security-Policy that allows none. Only presentation
//! attributes are used (no `style`), which the policy also allows.

use std::fmt::Write as _;

use super::html::{esc, grouped};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const PAD: f64 = 28.0;

/// A line chart of `points` (x seconds ago from 0 to `span`, y ≥ 0) titled `title`, with its
/// y unit `unit`; an empty series draws an empty frame saying so.
pub(super) fn line(title: &str, unit: &str, span: f64, points: &[(f64, f64)]) -> String {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |ago: f64| PAD + (WIDTH - 2.0 * PAD) * (1.0 - (ago / span).clamp(0.0, 1.0));
    let y = |v: f64| HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * (v / top);
    let mut path = String::new();
    for (i, (ago, v)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(*ago),
            y(*v)
        );
    }
    let body = if points.is_empty() {
        format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"muted\">no samples yet</text>",
            WIDTH / 2.0,
            HEIGHT / 2.0
        )
    } else {
        format!(
            "<path d=\"{}\" fill=\"none\" class=\"series\" stroke-width=\"2\"/>",
            path.trim_end()
        )
    };
    format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"{t}: peak {max:.1} {u}\"><title>{t}</title>\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"{PAD}\" y=\"{ly}\" class=\"muted\">{peak} {u}</text>\
         <text x=\"{PAD}\" y=\"{ay}\" class=\"muted\">{ago}</text>\
         <text x=\"{r}\" y=\"{ay}\" text-anchor=\"end\" class=\"muted\">now</text>{body}</svg>\
         <figcaption>{t}</figcaption></figure>",
        t = esc(title),
        u = esc(unit),
        peak = if top >= 100.0 {
            grouped(&format!("{top:.0}"))
        } else {
            format!("{top:.1}")
        },
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
        ly = PAD - 8.0,
        ay = HEIGHT - 8.0,
        ago = if span >= 3600.0 {
            "1 h ago".to_owned()
        } else {
            format!("{span:.0} s ago")
        },
    )
}

/// Horizontal bars, one per `(label, value, shown)`: `value` sets the length, `shown` is the
/// exact figure printed beside it.
pub(super) fn bars(title: &str, rows: &[(&str, f64, String)]) -> String {
    let row_h = 26.0;
    let label_w = 90.0;
    let height = row_h * rows.len() as f64 + 8.0;
    let max = rows.iter().map(|r| r.1.abs()).fold(0.0_f64, f64::max);
    let mut body = String::new();
    for (i, (label, value, shown)) in rows.iter().enumerate() {
        let y = 4.0 + row_h * i as f64;
        let w = if max > 0.0 {
            (WIDTH - label_w - 150.0) * value.abs() / max
        } else {
            0.0
        };
        let _ = write!(
            body,
            "<text x=\"0\" y=\"{ty}\">{l}</text><rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" \
             height=\"{h}\" class=\"bar\"/><text x=\"{tx:.1}\" y=\"{ty}\">{s}</text>",
            ty = y + 16.0,
            l = esc(label),
            h = row_h - 8.0,
            tx = label_w + w + 6.0,
            s = esc(shown),
        );
    }
    format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-label=\"{t}\"><title>{t}</title>{body}</svg><figcaption>{t}</figcaption></figure>",
        t = esc(title)
    )
}
