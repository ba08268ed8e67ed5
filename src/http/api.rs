//! The read-only points API, for the exchange's backend and its users.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/epochs` | every started epoch with its start and end, and which is current |
//! | `GET /v1/users/{address}?epoch=N` | points by kind, volume, tier and the next one, rank, referrer, referee count, the time the figures stand at |
//! | `GET /v1/users/{address}/ledger?epoch=N&limit=&cursor=` | the user's entries, newest first, keyset-paginated |
//! | `GET /v1/leaderboard?epoch=N&limit=&cursor=` | users by total points; ties share a rank; excluded addresses never appear |
//!
//! `epoch` defaults to the current epoch (by the wall clock: "this week"). Amounts are decimal
//! strings, exactly as stored. Bad input (a malformed address, an epoch that has not started, a
//! limit above [`MAX_LIMIT`], a cursor this API did not hand out, an unknown parameter) is a 400
//! with `{"error": code, "message": text}`; an unknown user is zeros, not an error; a store that
//! cannot be reached is a 503. Reads go to the store only, through a read-only pool.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::pool::{self, Pool};
use super::AppState;
use super::HttpError;
use crate::config::ConnUrl;
use crate::pg::connect::ConnectError;
use crate::points::{normalize_address, EpochCalendar, EpochId, RuleSet, Tier};
use crate::time::{format_rfc3339, micros_of, now_micros};

/// The largest page a client may ask for.
pub const MAX_LIMIT: i64 = 1000;
/// The page size when none is asked for.
const DEFAULT_LIMIT: i64 = 100;
/// Longest address accepted (the seed schema's addresses are 42 characters).
const MAX_ADDRESS_LEN: usize = 128;

/// An API failure, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; the message says how.
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// A store query failed (the store is down, restarting or too slow); try again.
    #[error("the store is unavailable: {}", crate::pg::connect::error_text(.0))]
    Store(#[from] tokio_postgres::Error),
    /// No store connection could be had from the pool in time; try again.
    #[error("the store is unavailable: {0}")]
    Pool(#[from] deadpool::managed::PoolError<ConnectError>),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(code, _) => (StatusCode::BAD_REQUEST, *code),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Store(_) | ApiError::Pool(_) => {
                tracing::warn!(error = %self, "api: store unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
        };
        (
            status,
            Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(code, message.into())
}

/// What the API needs: the read pool and the parts of the rules that shape answers.
pub struct Api {
    pool: Pool,
    rules: RuleSet,
    calendar: EpochCalendar,
    tiers: Vec<Tier>,
    excluded: Vec<String>,
}

impl Api {
    /// The API over the store at `store_url` with a pool of `pool_size` connections, answering
    /// by `rules` (the epoch calendar, the tiers, the excluded addresses). Connections open
    /// lazily, so a store that is down now is not fatal.
    pub fn new(rules: &RuleSet, store_url: ConnUrl, pool_size: usize) -> Result<Api, HttpError> {
        let calendar = rules.calendar().map_err(HttpError::Calendar)?;
        let mut excluded: Vec<String> = rules
            .excluded_addresses
            .iter()
            .map(|a| normalize_address(a.trim()).into_owned())
            .collect();
        excluded.sort();
        excluded.dedup();
        Ok(Api {
            pool: pool::pool(store_url, pool_size).map_err(HttpError::Pool)?,
            rules: rules.clone(),
            calendar,
            tiers: rules.tiers.clone(),
            excluded,
        })
    }

    async fn client(&self) -> Result<deadpool::managed::Object<pool::StoreConnections>, ApiError> {
        self.pool.get().await.map_err(ApiError::from)
    }

    fn current_epoch(&self) -> Option<EpochId> {
        self.calendar.epoch_of(now_micros())
    }

    /// The `epoch` parameter, or the current epoch; one that has not started is out of range.
    fn epoch(&self, q: &Params) -> Result<EpochId, ApiError> {
        self.epoch_param(q.get("epoch"))
    }

    /// The rules the figures are computed by, for the console's overview.
    pub(super) fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// An `epoch` parameter as given (or none: the current epoch), checked as the API checks it.
    pub(super) fn epoch_param(&self, text: Option<&str>) -> Result<EpochId, ApiError> {
        let current = self.current_epoch().ok_or_else(|| {
            bad(
                "epoch_out_of_range",
                "no epoch has started yet (epoch.genesis is in the future)",
            )
        })?;
        match text {
            None => Ok(current),
            Some(text) => match text.parse::<EpochId>() {
                Ok(e) if e <= current => Ok(e),
                _ => Err(bad(
                    "epoch_out_of_range",
                    format!("epoch {text:?} is out of range: epochs 0 to {current} have started"),
                )),
            },
        }
    }

    /// The body of `GET /v1/epochs`.
    pub(super) fn epochs_json(&self) -> Value {
        let current = self.current_epoch();
        let list: Vec<Value> = match current {
            Some(c) => (0..=c).map(|e| self.epoch_json(e, current)).collect(),
            None => Vec::new(),
        };
        json!({ "current": current, "epochs": list })
    }

    /// The newest `limit` dead letters (any source), newest first, and how many there are:
    /// the console's dead-letter page.
    pub(super) async fn dead_letters_json(&self, limit: i64) -> Result<Value, ApiError> {
        let db = self.client().await?;
        let total: i64 = db
            .query_one("SELECT count(*) FROM walpoints.dead_letter", &[])
            .await?
            .get(0);
        let rows = db
            .query(
                "SELECT source_id, lsn::text, table_name, op, reason, detail, row::text, at \
                 FROM walpoints.dead_letter ORDER BY lsn DESC, seq DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        let entries: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "source_id": r.get::<_, String>(0),
                    "lsn": r.get::<_, String>(1),
                    "table": r.get::<_, String>(2),
                    "op": r.get::<_, String>(3),
                    "reason": r.get::<_, String>(4),
                    "detail": r.get::<_, Option<String>>(5),
                    "row": r.get::<_, Option<String>>(6),
                    "at": r.get::<_, Option<std::time::SystemTime>>(7)
                        .map(|t| format_rfc3339(micros_of(t))),
                })
            })
            .collect();
        Ok(json!({ "total": total, "entries": entries }))
    }

    fn epoch_json(&self, epoch: EpochId, current: Option<EpochId>) -> Value {
        let start = self.calendar.start_of(epoch);
        let end = start.and_then(|s| s.checked_add(self.calendar.length()));
        json!({
            "epoch": epoch,
            "start": start.map(format_rfc3339),
            "end": end.map(format_rfc3339),
            "current": Some(epoch) == current,
        })
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/epochs", get(epochs))
        .route("/v1/users/{address}", get(user))
        .route("/v1/users/{address}/ledger", get(ledger))
        .route("/v1/leaderboard", get(leaderboard))
}

/// Query parameters, checked against the names a route accepts.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: Option<String>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut map = HashMap::new();
        let raw = raw.unwrap_or_default();
        if raw.len() > 2048 {
            return Err(bad("bad_query", "the query string is too long"));
        }
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(bad(
                    "unknown_parameter",
                    format!("unknown parameter {k:?}; this route takes {allowed:?}"),
                ));
            }
            if map.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(bad("bad_query", format!("parameter {k:?} is given twice")));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn limit(&self) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(bad(
                    "bad_limit",
                    format!("limit {text:?} must be a whole number from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }
}

/// Checks and normalizes an address: 1-128 printable ASCII characters without spaces,
/// compared lowercase (as the rules store it).
fn address(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(raw) = path.map_err(|e| bad("bad_address", e.body_text()))?;
    checked_address(&raw)
}

/// An address as the API checks and normalizes it (see [`address`]).
pub(super) fn checked_address(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ADDRESS_LEN
        && raw.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(bad(
            "bad_address",
            format!(
                "malformed address: expected 1 to {MAX_ADDRESS_LEN} printable characters without spaces"
            ),
        ));
    }
    Ok(normalize_address(raw).into_owned())
}

/// Whether decimal text `a` is less than `b` (both as PostgreSQL prints numerics); unparsable
/// text is never less, so the caller counts instead.
fn below(a: &str, b: &str) -> bool {
    match (a.parse::<Decimal>(), b.parse::<Decimal>()) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// Cursors are opaque to clients: the hex of a tagged key of the last row served.
fn encode_cursor(tag: char, parts: &[&str]) -> String {
    let mut text = String::from(tag);
    for p in parts {
        text.push('\u{1f}');
        text.push_str(p);
    }
    hex::encode(text)
}

fn decode_cursor(tag: char, raw: &str, n: usize) -> Result<Vec<String>, ApiError> {
    let unknown = || {
        bad(
            "bad_cursor",
            "unknown cursor: pass back a next_cursor exactly as received",
        )
    };
    let bytes = hex::decode(raw).map_err(|_| unknown())?;
    let text = String::from_utf8(bytes).map_err(|_| unknown())?;
    let mut parts = text.split('\u{1f}');
    if parts.next() != Some(tag.encode_utf8(&mut [0; 4]) as &str) {
        return Err(unknown());
    }
    let parts: Vec<String> = parts.map(str::to_owned).collect();
    // A forged cursor must not reach the store as text PostgreSQL refuses (a 5xx), only as 400.
    if parts.len() != n || parts.iter().any(|p| p.contains('\0')) {
        return Err(unknown());
    }
    Ok(parts)
}

/// The parameters of a paged route: the epoch, the page size and the cursor (decoded by the
/// route, which knows its shape).
fn paging(api: &Api, raw: Option<String>) -> Result<(EpochId, i64, Option<String>), ApiError> {
    let q = Params::parse(raw, &["epoch", "limit", "cursor"])?;
    let epoch = api.epoch(&q)?;
    let limit = q.limit()?;
    Ok((epoch, limit, q.get("cursor").map(str::to_owned)))
}

async fn epochs(State(s): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    Params::parse(q, &[])?;
    Ok(Json(s.api.epochs_json()).into_response())
}

async fn user(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let address = address(path)?;
    let q = Params::parse(q, &["epoch"])?;
    let epoch = s.api.epoch(&q)?;
    Ok(Json(s.api.user_json(&address, epoch).await?).into_response())
}

impl Api {
    /// The body of `GET /v1/users/{address}` for a checked `address` (see [`Api::address`]):
    /// the console shows exactly these figures.
    pub(super) async fn user_json(&self, address: &str, epoch: EpochId) -> Result<Value, ApiError> {
        let address = address.to_owned();
        let api = self;
        let db = api.client().await?;
        let epoch_i = i32::try_from(epoch).unwrap_or(i32::MAX);
        let row = db
            .query_opt(
                "SELECT trading_points::text, referral_points::text, holding_points::text, \
                    pnl_points::text, total_points::text, trading_volume::text, \
                    total_points > 0 \
             FROM walpoints.user_epoch_points WHERE user_address = $1 AND epoch = $2",
                &[&address, &epoch_i],
            )
            .await?;
        let zero = "0.000000".to_owned();
        let (points, volume, positive) = match &row {
            Some(r) => (
                [0, 1, 2, 3, 4].map(|i| r.get::<_, String>(i)),
                r.get::<_, String>(5),
                r.get::<_, bool>(6),
            ),
            None => ([0; 5].map(|_| zero.clone()), "0".to_owned(), false),
        };
        let excluded = api.excluded.binary_search(&address).is_ok();
        let rank: Option<i64> = if positive && !excluded {
            let r = db
                .query_one(
                    "SELECT 1 + walpoints.users_ahead($1, $2::text::numeric, $3)",
                    &[&epoch_i, &points[4], &api.excluded],
                )
                .await?;
            Some(r.get(0))
        } else {
            None
        };
        let referrer: Option<String> = db
            .query_opt(
                "SELECT referrer FROM walpoints.state_referral WHERE referee = $1 \
             ORDER BY source_id LIMIT 1",
                &[&address],
            )
            .await?
            .map(|r| r.get(0));
        let referees: i64 = db
            .query_one(
                "SELECT count(DISTINCT referee) FROM walpoints.state_referral WHERE referrer = $1",
                &[&address],
            )
            .await?
            .get(0);
        let as_of = as_of(&db).await?;
        let vol: Decimal = volume.parse().unwrap_or(Decimal::MAX);
        let level = api
            .tiers
            .iter()
            .rposition(|t| vol >= t.min_volume)
            .unwrap_or(0);
        let tier = api.tiers.get(level).map(|t| {
        json!({ "level": level, "min_volume": t.min_volume.to_string(), "multiplier": t.multiplier.to_string() })
    });
        let next_tier = api.tiers.get(level + 1).map(|t| {
            json!({
                "level": level + 1,
                "min_volume": t.min_volume.to_string(),
                "multiplier": t.multiplier.to_string(),
                "volume_needed": (t.min_volume - vol).max(Decimal::ZERO).to_string(),
            })
        });
        let [trading, referral, holding, pnl, total] = points;
        Ok(json!({
            "address": address,
            "epoch": epoch,
            "points": { "trading": trading, "referral": referral, "holding": holding, "pnl": pnl, "total": total },
            "trading_volume": volume,
            "tier": tier,
            "next_tier": next_tier,
            "rank": rank,
            "excluded": excluded,
            "referrer": referrer,
            "referees": referees,
            "as_of": as_of,
        }))
    }
}

/// The commit time the store's figures stand at: the oldest checkpoint of the sources
/// sharing the store (everything every source committed up to then is counted).
async fn as_of(db: &tokio_postgres::Client) -> Result<Option<String>, ApiError> {
    let row = db
        .query_one("SELECT min(commit_time) FROM walpoints.checkpoint", &[])
        .await?;
    Ok(row
        .get::<_, Option<std::time::SystemTime>>(0)
        .map(|t| format_rfc3339(micros_of(t))))
}

async fn ledger(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let address = address(path)?;
    let (epoch, limit, cursor) = paging(&s.api, q)?;
    Ok(Json(
        s.api
            .ledger_json(&address, epoch, limit, cursor.as_deref())
            .await?,
    )
    .into_response())
}

impl Api {
    /// The body of `GET /v1/users/{address}/ledger`: one page of a checked `address`'s entries
    /// after `cursor` (a `next_cursor` handed out before).
    pub(super) async fn ledger_json(
        &self,
        address: &str,
        epoch: EpochId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Value, ApiError> {
        let api = self;
        let after = cursor.map(|c| decode_cursor('L', c, 3)).transpose()?;
        let after = match after {
            None => None,
            Some(p) => {
                let lsn: crate::lsn::Lsn = p[0]
                    .parse()
                    .map_err(|_| bad("bad_cursor", "unknown cursor"))?;
                let ordinal: i32 = p[1]
                    .parse()
                    .map_err(|_| bad("bad_cursor", "unknown cursor"))?;
                Some((lsn.to_string(), ordinal, p[2].clone()))
            }
        };
        let db = api.client().await?;
        let epoch_i = i32::try_from(epoch).unwrap_or(i32::MAX);
        // commit_lsn is selected as text: ORDER BY names the table's column (l.), not the output.
        let columns = "source_id, commit_lsn::text, ordinal, kind, reversal, points::text, \
                   basis::text, multiplier::text, rate::text, position_notional::text, trade_id, \
                   position_id, referee, segment_start, event_time, commit_time, rules_version";
        // The user's postings (newest batches first) name the commit LSNs of their entries:
        // each holds at least one, so limit + 2 postings and limit + 2 LSNs are enough (one
        // batch may straddle the cursor), and each LSN is an exact probe of the ledger's keys.
        // `OFFSET 0` keeps the probe a subquery run per LSN: flattened, the planner may hash
        // join the LSNs against a scan of the whole epoch's partition (seconds at a season).
        let (cursor_lsn, cursor_ordinal, cursor_source) = match &after {
            Some((lsn, ordinal, source)) => (Some(lsn.clone()), *ordinal, source.clone()),
            None => (None, 0, String::new()),
        };
        let rows = db
            .query(
                &format!(
                    "WITH b AS (SELECT source_id, commit_lsns FROM walpoints.user_batch \
                       WHERE user_address = $1 AND epoch = $2 \
                         AND ($4::text IS NULL OR first_lsn <= $4::text::pg_lsn) \
                       ORDER BY last_lsn DESC, source_id DESC LIMIT $3::int8 + 1), \
                     k AS (SELECT b.source_id, x.lsn FROM b, unnest(b.commit_lsns) AS x(lsn) \
                       WHERE $4::text IS NULL OR x.lsn <= $4::text::pg_lsn \
                       ORDER BY x.lsn DESC, b.source_id DESC LIMIT $3::int8 + 1) \
                     SELECT {columns} FROM (SELECT e.* FROM k CROSS JOIN LATERAL ( \
                       SELECT * FROM walpoints.ledger v WHERE v.source_id = k.source_id \
                         AND v.epoch = $2 AND v.commit_lsn = k.lsn AND v.user_address = $1 \
                         OFFSET 0) e) l \
                     WHERE $4::text IS NULL \
                        OR (l.commit_lsn, l.ordinal, l.source_id) < ($4::text::pg_lsn, $5, $6) \
                     ORDER BY l.commit_lsn DESC, l.ordinal DESC, l.source_id DESC LIMIT $3::int8"
                ),
                &[
                    &address,
                    &epoch_i,
                    &(limit + 1),
                    &cursor_lsn,
                    &cursor_ordinal,
                    &cursor_source,
                ],
            )
            .await?;
        let more = rows.len() as i64 > limit;
        let time = |t: Option<std::time::SystemTime>| t.map(|t| format_rfc3339(micros_of(t)));
        let entries: Vec<Value> = rows
            .iter()
            .take(limit as usize)
            .map(|r| {
                json!({
                    "source_id": r.get::<_, String>(0),
                    "commit_lsn": r.get::<_, String>(1),
                    "ordinal": r.get::<_, i32>(2),
                    "kind": r.get::<_, String>(3),
                    "reversal": r.get::<_, bool>(4),
                    "points": r.get::<_, String>(5),
                    "basis": r.get::<_, String>(6),
                    "multiplier": r.get::<_, String>(7),
                    "rate": r.get::<_, String>(8),
                    "position_notional": r.get::<_, Option<String>>(9),
                    "trade_id": r.get::<_, Option<String>>(10),
                    "position_id": r.get::<_, Option<String>>(11),
                    "referee": r.get::<_, Option<String>>(12),
                    "segment_start": time(r.get(13)),
                    "event_time": time(r.get(14)),
                    "commit_time": time(r.get(15)),
                    "rules_version": r.get::<_, String>(16),
                })
            })
            .collect();
        let next_cursor = more
            .then(|| rows.get(limit as usize - 1))
            .flatten()
            .map(|r| {
                let ordinal = r.get::<_, i32>(2).to_string();
                encode_cursor(
                    'L',
                    &[&r.get::<_, String>(1), &ordinal, &r.get::<_, String>(0)],
                )
            });
        Ok(json!({
            "address": address,
            "epoch": epoch,
            "entries": entries,
            "next_cursor": next_cursor,
        }))
    }
}

async fn leaderboard(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (epoch, limit, cursor) = paging(&s.api, q)?;
    Ok(Json(
        s.api
            .leaderboard_json(epoch, limit, cursor.as_deref())
            .await?,
    )
    .into_response())
}

impl Api {
    /// The body of `GET /v1/leaderboard`: one page of `epoch`'s ranking after `cursor`.
    pub(super) async fn leaderboard_json(
        &self,
        epoch: EpochId,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Value, ApiError> {
        let api = self;
        let after = cursor.map(|c| decode_cursor('B', c, 2)).transpose()?;
        let after = match after {
            None => None,
            Some(p) => {
                // Only what PostgreSQL's numeric output looks like: Decimal alone also takes "1_0".
                let plain = p[0]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
                if !plain || p[0].parse::<Decimal>().is_err() {
                    return Err(bad("bad_cursor", "unknown cursor"));
                }
                Some((p[0].clone(), p[1].clone()))
            }
        };
        let db = api.client().await?;
        let epoch_i = i32::try_from(epoch).unwrap_or(i32::MAX);
        let eligible = "epoch = $1 AND total_points > 0 AND user_address <> ALL($2)";
        // Selected as text, so ORDER BY must name the table's columns (u.), not these outputs.
        let columns = "user_address, trading_points::text, referral_points::text, \
                   holding_points::text, pnl_points::text, total_points::text, \
                   trading_volume::text";
        let (rows, before_page) = match &after {
            None => (
                db.query(
                    &format!(
                        "SELECT {columns} FROM walpoints.user_epoch_points u WHERE {eligible} \
                     ORDER BY u.total_points DESC, u.user_address LIMIT $3"
                    ),
                    &[&epoch_i, &api.excluded, &(limit + 1)],
                )
                .await?,
                0i64,
            ),
            Some((total, addr)) => {
                // The page after the cursor, as two index ranges that each start at the cursor
                // (the rest of its tie, then fewer points): one `OR` of the two would be read
                // from the top of the ranking, every row before the cursor filtered out.
                let rows = db
                    .query(
                        &format!(
                            "SELECT * FROM (\
                             (SELECT {columns}, u.total_points AS by_points \
                              FROM walpoints.user_epoch_points u \
                              WHERE {eligible} AND u.total_points = $3::text::numeric \
                              AND u.user_address > $4 ORDER BY u.user_address LIMIT $5) \
                             UNION ALL \
                             (SELECT {columns}, u.total_points AS by_points \
                              FROM walpoints.user_epoch_points u \
                              WHERE {eligible} AND u.total_points < $3::text::numeric \
                              ORDER BY u.total_points DESC, u.user_address LIMIT $5)) page \
                             ORDER BY by_points DESC, user_address LIMIT $5"
                        ),
                        &[&epoch_i, &api.excluded, total, addr, &(limit + 1)],
                    )
                    .await?;
                // The rows before the cursor: those with more points, counted from the rank
                // buckets, and the cursor's tie up to its address, an index range (`NOT keyset`
                // in one count is an OR the planner answers by reading the whole epoch).
                let before: i64 = db
                    .query_one(
                        &format!(
                            "SELECT walpoints.users_ahead($1, $3::text::numeric, $2) \
                             + (SELECT count(*) FROM walpoints.user_epoch_points \
                             WHERE {eligible} AND total_points = $3::text::numeric \
                             AND user_address <= $4)"
                        ),
                        &[&epoch_i, &api.excluded, total, addr],
                    )
                    .await?
                    .get(0);
                (rows, before)
            }
        };
        let more = rows.len() as i64 > limit;
        let page: Vec<_> = rows.iter().take(limit as usize).collect();
        // Competition ranking ("1, 1, 3"): a row's rank is 1 + the number of rows with more points.
        let mut entries = Vec::with_capacity(page.len());
        let mut prev: Option<(String, i64)> = None;
        for (i, r) in page.iter().enumerate() {
            let total: String = r.get(5);
            let rank = match &prev {
                Some((t, rank)) if *t == total => *rank,
                Some(_) => before_page + i as i64 + 1,
                // Below the cursor's total, every user before the page has more points and no
                // other has: the count just made is the rank (a tie needs its own count).
                None if after.as_ref().is_some_and(|(t, _)| below(&total, t)) => before_page + 1,
                None => db
                    .query_one(
                        "SELECT 1 + walpoints.users_ahead($1, $3::text::numeric, $2)",
                        &[&epoch_i, &api.excluded, &total],
                    )
                    .await?
                    .get(0),
            };
            entries.push(json!({
                "rank": rank,
                "address": r.get::<_, String>(0),
                "points": {
                    "trading": r.get::<_, String>(1),
                    "referral": r.get::<_, String>(2),
                    "holding": r.get::<_, String>(3),
                    "pnl": r.get::<_, String>(4),
                    "total": total,
                },
                "trading_volume": r.get::<_, String>(6),
            }));
            prev = Some((total, rank));
        }
        let next_cursor = more
            .then(|| page.last())
            .flatten()
            .map(|r| encode_cursor('B', &[&r.get::<_, String>(5), &r.get::<_, String>(0)]));
        let as_of = as_of(&db).await?;
        Ok(json!({
            "epoch": epoch,
            "entries": entries,
            "next_cursor": next_cursor,
            "as_of": as_of,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_strangers() {
        let c = encode_cursor('L', &["0/16B3A28", "3", "default"]);
        assert_eq!(
            decode_cursor('L', &c, 3).unwrap(),
            vec!["0/16B3A28", "3", "default"]
        );
        assert!(decode_cursor('B', &c, 3).is_err(), "another route's cursor");
        assert!(decode_cursor('L', &c, 2).is_err(), "wrong arity");
        assert!(decode_cursor('L', "zz", 3).is_err(), "not hex");
        assert!(decode_cursor('L', "", 3).is_err(), "empty");
        let nul = encode_cursor('L', &["0/1", "3", "a\0b"]);
        assert!(
            decode_cursor('L', &nul, 3).is_err(),
            "NUL, which PostgreSQL refuses"
        );
    }

    #[test]
    fn params_refuse_unknown_and_repeated_names() {
        assert!(Params::parse(Some("epoch=1".into()), &["epoch"]).is_ok());
        assert!(Params::parse(Some("epok=1".into()), &["epoch"]).is_err());
        assert!(Params::parse(Some("epoch=1&epoch=2".into()), &["epoch"]).is_err());
        assert!(Params::parse(None, &[]).is_ok());
    }

    #[test]
    fn limits_stay_between_1_and_1000() {
        let p = |s: &str| Params::parse(Some(s.into()), &["limit"]).unwrap().limit();
        assert_eq!(p("limit=1000").unwrap(), 1000);
        assert!(p("limit=1001").is_err());
        assert!(p("limit=0").is_err());
        assert!(p("limit=-5").is_err());
        assert!(p("limit=ten").is_err());
        assert_eq!(
            Params::parse(None, &["limit"]).unwrap().limit().unwrap(),
            100
        );
    }
}
