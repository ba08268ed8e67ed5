//! The operator console: HTML pages at `/` for the people who run the points program, on the
//! same listener and behind the same hardening as the API.
//!
//! | route | page |
//! |---|---|
//! | `GET /` | overview: health and readiness, slot lag with a chart of the last hour, fills per second, dead letters, the rules, the epochs |
//! | `GET /leaderboard?epoch=&address=&cursor=` | an epoch's ranking, paged; `address` finds one user's rank |
//! | `GET /users/{address}?epoch=&cursor=` | one user's points by kind, tier, referrals and ledger entries with their reasons |
//! | `GET /dead-letters` | the newest dead letters: reason, LSN, table, row |
//! | `GET /console.css` | the stylesheet, embedded in the binary |
//!
//! Every figure comes from the points API's own methods ([`super::api`]), so the pages show
//! what `/v1` answers and hold no SQL. Pages are rendered on the server, charts are inline SVG:
//! they work with JavaScript off, and the Content-Security-Policy ([`POLICY`]) allows no
//! script at all and nothing from another origin.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::api::{checked_address, ApiError};
use super::AppState;
use crate::points::EpochId;
use crate::telemetry::LAG_HISTORY;
use crate::time::{format_rfc3339, now_micros};

mod chart;
mod html;

use html::{address_link, esc, grouped, page, url_part, utc, Tab};

/// The console's Content-Security-Policy: its own stylesheet, no script, no frames, forms only
/// to itself. Inline SVG needs nothing more.
pub const POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                          form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Rows per leaderboard and ledger page.
const PAGE: i64 = 50;

/// Dead letters listed on their page.
const DEAD_LETTERS: i64 = 200;

const CSS: &str = include_str!("console.css");

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/leaderboard", get(leaderboard))
        .route("/users/{address}", get(user))
        .route("/dead-letters", get(dead_letters))
        .route("/console.css", get(stylesheet))
}

/// An HTML answer with the console's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    r
}

fn secure(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A failed page: the API's error in words, with the API's status.
fn failed(tab: Tab, e: ApiError) -> Response {
    let status = match &e {
        ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::Store(_) | ApiError::Pool(_) => {
            tracing::warn!(error = %e, "console: store unavailable");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let body = format!(
        "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
        status.canonical_reason().unwrap_or("Error"),
        esc(&e.to_string())
    );
    html(status, page("Error", tab, &body))
}

async fn stylesheet() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response();
    secure(r.headers_mut());
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// The query parameters a page takes; others, or repeated ones, are a 400 as in the API.
fn params(raw: Option<String>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > 2048 {
        return Err(ApiError::BadRequest(
            "bad_query",
            "the query string is too long".into(),
        ));
    }
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::BadRequest(
                "unknown_parameter",
                format!("unknown parameter {k:?}; this page takes {allowed:?}"),
            ));
        }
        if map.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(ApiError::BadRequest(
                "bad_query",
                format!("parameter {k:?} is given twice"),
            ));
        }
    }
    // An empty field of a submitted form means "not given".
    map.retain(|_, v| !v.is_empty());
    Ok(map)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// "epoch 3 · 2026-01-26 00:00:00 UTC to 2026-02-02 00:00:00 UTC"
fn epoch_words(epochs: &Value, epoch: EpochId) -> String {
    let found = epochs["epochs"].as_array().and_then(|l| {
        l.iter()
            .find(|e| e["epoch"].as_u64() == Some(u64::from(epoch)))
    });
    match found {
        Some(e) => format!(
            "epoch {epoch} · {} to {}",
            utc(s(&e["start"])),
            utc(s(&e["end"]))
        ),
        None => format!("epoch {epoch}"),
    }
}

/// A form choosing the epoch of `action` (a GET, so it works without script).
fn epoch_picker(epochs: &Value, epoch: EpochId, action: &str) -> String {
    let mut options = String::new();
    for e in epochs["epochs"].as_array().into_iter().flatten().rev() {
        let n = e["epoch"].as_u64().unwrap_or(0);
        let _ = write!(
            options,
            "<option value=\"{n}\"{}>epoch {n}{}</option>",
            if n == u64::from(epoch) {
                " selected"
            } else {
                ""
            },
            if e["current"].as_bool() == Some(true) {
                " (current)"
            } else {
                ""
            }
        );
    }
    format!(
        "<form class=\"picker\" action=\"{}\" method=\"get\"><label for=\"epoch\">Epoch</label>\
         <select id=\"epoch\" name=\"epoch\">{options}</select><button>Show</button></form>",
        esc(action)
    )
}

async fn overview(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    if let Err(e) = params(q, &[]) {
        return failed(Tab::Overview, e);
    }
    let t = &st.telemetry;
    let api = &st.api;
    let mut b = String::from("<h1>Overview</h1>");
    // Health: from the process itself, so it shows even when the store is down.
    let (ready_class, ready) = match t.ready() {
        Ok(_) => (
            "ok",
            "Ready: streaming, slot read recently, lag under the thresholds".to_owned(),
        ),
        Err(reason) => ("bad", format!("Not ready: {reason}")),
    };
    let history = t.lag_history();
    let now = now_micros();
    let last = history.last();
    let fills_per_second = match history.as_slice() {
        [.., a, z] if z.at_micros > a.at_micros => {
            let span = (z.at_micros - a.at_micros) as f64 / 1e6;
            Some(z.fills.saturating_sub(a.fills) as f64 / span)
        }
        _ => None,
    };
    let _ = write!(
        b,
        "<section aria-labelledby=\"health\"><h2 id=\"health\">Health</h2><dl class=\"facts\">\
         <dt>Process</dt><dd>alive, {}</dd><dt>Readiness</dt><dd class=\"{ready_class}\" id=\"readiness\">{}</dd>\
         <dt>Slot lag</dt><dd id=\"lag-bytes\">{}</dd><dt>Replication lag</dt><dd id=\"lag-seconds\">{}</dd>\
         <dt>Fills per second</dt><dd id=\"fills-per-second\">{}</dd>",
        esc(&t.phase_text()),
        esc(&ready),
        last.map_or("not read yet".into(), |l| format!("{} bytes", grouped(&l.lag_bytes.to_string()))),
        last.and_then(|l| l.lag_seconds)
            .map_or("no checkpoint yet".into(), |s| format!("{s:.1} s")),
        fills_per_second.map_or("not measured yet".into(), |f| format!("{f:.1} (between the last two slot polls)")),
    );
    match api.dead_letters_json(0).await {
        Ok(d) => {
            let _ = write!(
                b,
                "<dt>Dead letters</dt><dd id=\"dead-letters\"><a href=\"/dead-letters\">{}</a></dd>",
                grouped(&d["total"].to_string())
            );
        }
        Err(e) => {
            let _ = write!(
                b,
                "<dt>Dead letters</dt><dd class=\"bad\">{}</dd>",
                esc(&e.to_string())
            );
        }
    }
    b.push_str("</dl>");
    let span = LAG_HISTORY.as_secs_f64();
    let ago = |at: i64| (now - at) as f64 / 1e6;
    let bytes: Vec<(f64, f64)> = history
        .iter()
        .map(|s| (ago(s.at_micros), s.lag_bytes as f64))
        .collect();
    let seconds: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|s| s.lag_seconds.map(|l| (ago(s.at_micros), l)))
        .collect();
    let _ = write!(
        b,
        "<div class=\"charts\">{}{}</div><p class=\"muted\">{} slot polls in the last hour, kept in \
         this process's memory (a restart starts the chart afresh).</p></section>",
        chart::line("Slot lag, bytes, last hour", "B", span, &bytes),
        chart::line("Replication lag, seconds, last hour", "s", span, &seconds),
        history.len()
    );
    // The rules.
    let r = api.rules();
    let mut tiers = String::new();
    for (i, tier) in r.tiers.iter().enumerate() {
        let _ = write!(
            tiers,
            "<tr><td>{i}</td><td class=\"num\">{}</td><td class=\"num\">× {}</td></tr>",
            grouped(&tier.min_volume.to_string()),
            esc(&tier.multiplier.to_string())
        );
    }
    let excluded = if r.excluded_addresses.is_empty() {
        "none".to_owned()
    } else {
        r.excluded_addresses
            .iter()
            .map(|a| format!("<code>{}</code>", esc(a)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        b,
        "<section aria-labelledby=\"rules\"><h2 id=\"rules\">Rules in force</h2><dl class=\"facts\">\
         <dt>Epochs</dt><dd>{} long from {}</dd>\
         <dt>Trading</dt><dd>taker {} and maker {} per unit of notional, fills from {} notional</dd>\
         <dt>Referral</dt><dd>level 1 {} and level 2 {} of the referee's trading points; rebinding {}</dd>\
         <dt>Holding</dt><dd>{} per unit of notional per day, positions from {} notional</dd>\
         <dt>PnL</dt><dd>{} of positive realized PnL</dd><dt>Excluded</dt><dd>{excluded}</dd></dl>\
         <table><caption>Volume tiers</caption><thead><tr><th scope=\"col\">Tier</th>\
         <th scope=\"col\">From epoch volume</th><th scope=\"col\">Multiplier</th></tr></thead>\
         <tbody>{tiers}</tbody></table></section>",
        esc(&r.epoch.length),
        utc(&r.epoch.genesis),
        r.trading.taker_rate,
        r.trading.maker_rate,
        grouped(&r.trading.min_notional.to_string()),
        r.referral.level1_share,
        r.referral.level2_share,
        if r.referral.allow_rebind { "allowed" } else { "refused" },
        r.holding.rate_per_day,
        grouped(&r.holding.min_notional.to_string()),
        r.pnl.rate,
    );
    // The epochs, newest first.
    let epochs = api.epochs_json();
    let mut rows = String::new();
    let now_text = format_rfc3339(now);
    for e in epochs["epochs"].as_array().into_iter().flatten().rev() {
        let n = e["epoch"].as_u64().unwrap_or(0);
        let state = if e["current"].as_bool() == Some(true) {
            "current"
        } else if s(&e["end"]) <= now_text.as_str() {
            "ended"
        } else {
            "started"
        };
        let _ = write!(
            rows,
            "<tr><td><a href=\"/leaderboard?epoch={n}\">epoch {n}</a></td><td>{}</td><td>{}</td><td>{state}</td></tr>",
            utc(s(&e["start"])),
            utc(s(&e["end"]))
        );
    }
    let _ = write!(
        b,
        "<section aria-labelledby=\"epochs\"><h2 id=\"epochs\">Epochs</h2><div class=\"scroll\"><table>\
         <thead><tr><th scope=\"col\">Epoch</th><th scope=\"col\">Start</th><th scope=\"col\">End</th>\
         <th scope=\"col\">State</th></tr></thead><tbody>{rows}</tbody></table></div></section>"
    );
    html(StatusCode::OK, page("Overview", Tab::Overview, &b))
}

const KINDS: [(&str, &str); 4] = [
    ("trading", "Trading"),
    ("referral", "Referral"),
    ("holding", "Holding"),
    ("pnl", "PnL"),
];

async fn leaderboard(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    match leaderboard_page(&st, q).await {
        Ok(body) => html(StatusCode::OK, page("Leaderboard", Tab::Leaderboard, &body)),
        Err(e) => failed(Tab::Leaderboard, e),
    }
}

async fn leaderboard_page(st: &AppState, q: Option<String>) -> Result<String, ApiError> {
    let q = params(q, &["epoch", "cursor", "address"])?;
    let api = &st.api;
    let epoch = api.epoch_param(q.get("epoch").map(String::as_str))?;
    let epochs = api.epochs_json();
    let mut b = format!(
        "<h1>Leaderboard</h1><p class=\"muted\" id=\"epoch-words\">{}</p>{}",
        epoch_words(&epochs, epoch),
        epoch_picker(&epochs, epoch, "/leaderboard")
    );
    let _ = write!(
        b,
        "<form class=\"search\" action=\"/leaderboard\" method=\"get\" role=\"search\">\
         <input type=\"hidden\" name=\"epoch\" value=\"{epoch}\"><label for=\"address\">Address</label>\
         <input id=\"address\" name=\"address\" value=\"{}\" autocomplete=\"off\" required>\
         <button>Search</button></form>",
        esc(q.get("address").map_or("", String::as_str))
    );
    if let Some(raw) = q.get("address") {
        let address = checked_address(raw.trim())?;
        let u = api.user_json(&address, epoch).await?;
        let rank = match u["rank"].as_i64() {
            Some(r) => format!("rank <strong>{r}</strong>"),
            None if u["excluded"].as_bool() == Some(true) => "excluded from the ranking".into(),
            None => "not ranked (no points this epoch)".into(),
        };
        let _ = write!(
            b,
            "<p class=\"found\" id=\"found\">{}: {rank}, {} points. <a href=\"/users/{}?epoch={epoch}\">Their page</a>.</p>",
            address_link(&address, epoch),
            grouped(s(&u["points"]["total"])),
            url_part(&address)
        );
    }
    let board = api
        .leaderboard_json(epoch, PAGE, q.get("cursor").map(String::as_str))
        .await?;
    let mut rows = String::new();
    for e in board["entries"].as_array().into_iter().flatten() {
        let address = s(&e["address"]);
        let _ = write!(
            rows,
            "<tr><td class=\"num\">{}</td><td>{}</td>",
            e["rank"],
            address_link(address, epoch)
        );
        for (k, _) in KINDS {
            let _ = write!(
                rows,
                "<td class=\"num kind\">{}</td>",
                grouped(s(&e["points"][k]))
            );
        }
        let _ = write!(
            rows,
            "<td class=\"num total\">{}</td><td class=\"num\">{}</td></tr>",
            grouped(s(&e["points"]["total"])),
            grouped(s(&e["trading_volume"]))
        );
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"8\">Nobody has points in this epoch yet.</td></tr>".into();
    }
    let mut head = String::from("<th scope=\"col\">Rank</th><th scope=\"col\">Address</th>");
    for (_, label) in KINDS {
        let _ = write!(head, "<th scope=\"col\" class=\"num kind\">{label}</th>");
    }
    head.push_str(
        "<th scope=\"col\" class=\"num\">Total</th><th scope=\"col\" class=\"num\">Volume</th>",
    );
    let _ = write!(
        b,
        "<div class=\"scroll\"><table id=\"board\"><caption>Users by total points; ties share a rank. \
         Figures as of {}.</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>",
        board["as_of"].as_str().map_or("no checkpoint yet".into(), utc)
    );
    b.push_str("<nav class=\"pages\" aria-label=\"Pages\">");
    if q.contains_key("cursor") {
        let _ = write!(
            b,
            "<a href=\"/leaderboard?epoch={epoch}\" rel=\"first\">First page</a>"
        );
    }
    if let Some(next) = board["next_cursor"].as_str() {
        let _ = write!(
            b,
            "<a href=\"/leaderboard?epoch={epoch}&amp;cursor={}\" rel=\"next\" id=\"next\">Next page</a>",
            url_part(next)
        );
    }
    b.push_str("</nav>");
    Ok(b)
}

async fn user(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let address = match path {
        Ok(Path(a)) => a,
        Err(e) => {
            return failed(
                Tab::Users,
                ApiError::BadRequest("bad_address", e.body_text()),
            )
        }
    };
    match user_page(&st, &address, q).await {
        Ok(body) => html(StatusCode::OK, page(&address, Tab::Users, &body)),
        Err(e) => failed(Tab::Users, e),
    }
}

/// Why a ledger entry has its points, in words ("60,000 notional × 0.01 taker rate × 1.10 tier").
fn reason(e: &Value) -> String {
    let basis = grouped(s(&e["basis"]));
    let rate = esc(s(&e["rate"]));
    let mult = esc(s(&e["multiplier"]));
    let words = match s(&e["kind"]) {
        "trading_taker" => format!("{basis} notional × {rate} taker rate × {mult} tier"),
        "trading_maker" => format!("{basis} notional × {rate} maker rate × {mult} tier"),
        "referral_l1" | "referral_l2" => format!(
            "{basis} trading points of referee <code>{}</code> × {rate} level {} share",
            esc(s(&e["referee"])),
            if s(&e["kind"]) == "referral_l1" { 1 } else { 2 }
        ),
        "holding" => format!(
            "{basis} notional-seconds ({} notional held) × {rate} per day ÷ 86,400",
            grouped(s(&e["position_notional"]))
        ),
        "pnl" => format!("{basis} realized PnL × {rate} PnL rate"),
        other => format!("{} × {rate}", esc(other)),
    };
    if e["reversal"].as_bool() == Some(true) {
        format!("reversal: {words}")
    } else {
        words
    }
}

async fn user_page(st: &AppState, raw: &str, q: Option<String>) -> Result<String, ApiError> {
    let q = params(q, &["epoch", "cursor"])?;
    let api = &st.api;
    let address = checked_address(raw)?;
    let epoch = api.epoch_param(q.get("epoch").map(String::as_str))?;
    let epochs = api.epochs_json();
    let u = api.user_json(&address, epoch).await?;
    let ledger = api
        .ledger_json(&address, epoch, PAGE, q.get("cursor").map(String::as_str))
        .await?;
    let mut b = format!(
        "<h1>User <code class=\"addr\" id=\"address\">{}</code></h1><p class=\"muted\" id=\"epoch-words\">{}</p>{}",
        esc(&address),
        epoch_words(&epochs, epoch),
        epoch_picker(&epochs, epoch, &format!("/users/{}", url_part(&address)))
    );
    let rank = match u["rank"].as_i64() {
        Some(r) => format!(
            "<a href=\"/leaderboard?epoch={epoch}&amp;address={}\">{r}</a>",
            url_part(&address)
        ),
        None if u["excluded"].as_bool() == Some(true) => "excluded".into(),
        None => "not ranked".into(),
    };
    let tier = match u["tier"].as_object() {
        Some(t) => format!("{} (× {})", t["level"], esc(s(&t["multiplier"]))),
        None => "none".into(),
    };
    let next = match u["next_tier"].as_object() {
        Some(t) => format!(
            "tier {} (× {}) from {} volume: <span id=\"volume-needed\">{}</span> more",
            t["level"],
            esc(s(&t["multiplier"])),
            grouped(s(&t["min_volume"])),
            grouped(s(&t["volume_needed"]))
        ),
        None => "already at the top tier".into(),
    };
    let referrer = match u["referrer"].as_str() {
        Some(r) => address_link(r, epoch),
        None => "none".into(),
    };
    let _ = write!(
        b,
        "<dl class=\"facts\" id=\"summary\"><dt>Total points</dt><dd class=\"num\" id=\"total\">{}</dd>\
         <dt>Rank</dt><dd id=\"rank\">{rank}</dd><dt>Epoch volume</dt><dd class=\"num\" id=\"volume\">{}</dd>\
         <dt>Tier</dt><dd id=\"tier\">{tier}</dd><dt>Next tier</dt><dd>{next}</dd>\
         <dt>Referrer</dt><dd id=\"referrer\">{referrer}</dd><dt>Referees</dt><dd id=\"referees\">{}</dd>\
         <dt>Figures as of</dt><dd>{}</dd></dl>",
        grouped(s(&u["points"]["total"])),
        grouped(s(&u["trading_volume"])),
        u["referees"],
        u["as_of"].as_str().map_or("no checkpoint yet".into(), utc)
    );
    let bars: Vec<(&str, f64, String)> = KINDS
        .iter()
        .map(|(k, label)| {
            let text = s(&u["points"][*k]);
            (*label, text.parse::<f64>().unwrap_or(0.0), grouped(text))
        })
        .collect();
    let mut kinds = String::new();
    for (k, label) in KINDS {
        let _ = write!(
            kinds,
            "<tr><th scope=\"row\">{label}</th><td class=\"num\" id=\"points-{k}\">{}</td></tr>",
            grouped(s(&u["points"][k]))
        );
    }
    let _ = write!(
        b,
        "<section aria-labelledby=\"kinds\"><h2 id=\"kinds\">Points by kind in epoch {epoch}</h2>{}\
         <table><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\" class=\"num\">Points</th></tr></thead>\
         <tbody>{kinds}</tbody></table></section>",
        chart::bars(&format!("Points by kind, epoch {epoch}"), &bars)
    );
    let mut rows = String::new();
    for e in ledger["entries"].as_array().into_iter().flatten() {
        let what = match (e["trade_id"].as_str(), e["position_id"].as_str()) {
            (Some(t), _) => format!("trade {}", esc(t)),
            (None, Some(p)) => format!("position {}", esc(p)),
            _ => String::new(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{what}</td><td><code class=\"lsn\">{}</code></td></tr>",
            e["event_time"].as_str().map_or(String::new(), utc),
            esc(s(&e["kind"])),
            grouped(s(&e["points"])),
            reason(e),
            esc(s(&e["commit_lsn"]))
        );
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"6\">No entries in this epoch.</td></tr>".into();
    }
    let _ = write!(
        b,
        "<section aria-labelledby=\"ledger\"><h2 id=\"ledger\">Ledger entries, newest first</h2>\
         <div class=\"scroll\"><table id=\"entries\"><thead><tr><th scope=\"col\">Time</th>\
         <th scope=\"col\">Kind</th><th scope=\"col\" class=\"num\">Points</th><th scope=\"col\">Why</th>\
         <th scope=\"col\">Of</th><th scope=\"col\">LSN</th></tr></thead><tbody>{rows}</tbody></table></div>\
         <nav class=\"pages\" aria-label=\"Pages\">"
    );
    let base = format!("/users/{}?epoch={epoch}", url_part(&address));
    if q.contains_key("cursor") {
        let _ = write!(b, "<a href=\"{base}\" rel=\"first\">Newest entries</a>");
    }
    if let Some(next) = ledger["next_cursor"].as_str() {
        let _ = write!(
            b,
            "<a href=\"{base}&amp;cursor={}\" rel=\"next\" id=\"next\">Older entries</a>",
            url_part(next)
        );
    }
    b.push_str("</nav></section>");
    Ok(b)
}

async fn dead_letters(State(st): State<AppState>, RawQuery(q): RawQuery) -> Response {
    if let Err(e) = params(q, &[]) {
        return failed(Tab::DeadLetters, e);
    }
    let d = match st.api.dead_letters_json(DEAD_LETTERS).await {
        Ok(d) => d,
        Err(e) => return failed(Tab::DeadLetters, e),
    };
    let mut rows = String::new();
    for e in d["entries"].as_array().into_iter().flatten() {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td><code class=\"lsn\">{}</code></td><td>{} {}</td><td>{}</td><td><code class=\"row\">{}</code></td><td>{}</td></tr>",
            esc(s(&e["reason"])),
            esc(s(&e["detail"])),
            esc(s(&e["lsn"])),
            esc(s(&e["table"])),
            esc(s(&e["op"])),
            esc(s(&e["source_id"])),
            esc(s(&e["row"])),
            e["at"].as_str().map_or(String::new(), utc),
        );
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"7\">No dead letters: every row was understood.</td></tr>".into();
    }
    let body = format!(
        "<h1>Dead letters</h1><p id=\"dead-total\">{} in all; the newest {DEAD_LETTERS} are listed. \
         README \"Dead letters\" says what each reason means and what to do.</p>\
         <div class=\"scroll\"><table id=\"dead\"><thead><tr><th scope=\"col\">Reason</th>\
         <th scope=\"col\">Detail</th><th scope=\"col\">LSN</th><th scope=\"col\">Table</th>\
         <th scope=\"col\">Source</th><th scope=\"col\">Row</th><th scope=\"col\">Written</th></tr></thead>\
         <tbody>{rows}</tbody></table></div>",
        grouped(&d["total"].to_string())
    );
    html(
        StatusCode::OK,
        page("Dead letters", Tab::DeadLetters, &body),
    )
}
