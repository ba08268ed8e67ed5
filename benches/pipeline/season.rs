//! Season: a store holding a season of earlier epochs (20,000,000 journaled fills at scale 1),
//! and what it costs to have it: `walpoints replay --verify` of the whole store, and the points
//! API's latency against it while `walpoints run` serves.
//!
//! The season is generated, not streamed (draining 20,000,000 fills through the source would
//! take most of an hour): the bench runs the very engine `run` and `replay` use over generated
//! transactions (referral links first, then fills among skewed users: a few hundred market
//! makers on most fills, takers drawn towards a whale head) and writes what `run` would have
//! written for them — journal rows, `ledger_fill` rows, `user_batch` postings per store batch of
//! 1,000 transactions, `user_epoch_points` and a checkpoint — with text COPY into the store, as
//! a second source (`season`) beside the one `walpoints setup` made. So `replay --verify` must
//! find the store equal to its replay (the bench fails otherwise), and the API serves both
//! sources' figures, as it would for a store shared by two exchanges.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::SinkExt;
use rust_decimal::Decimal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_postgres::Client;
use walpoints::lsn::Lsn;
use walpoints::points::{
    Award, AwardBook, CompactAward, Engine, Event, ReferralLink, RuleSet, State, Totals, Trade,
    TxEvents,
};

use crate::lab::{connect, Daemon, Lab};
use crate::Plan;

/// The generated source's id.
pub const SEASON_SOURCE: &str = "season";
/// Fills per generated source transaction.
const FILLS_PER_TX: u64 = 10;
/// Source transactions per store batch (one posting per user and batch).
const TX_PER_BATCH: u64 = 1_000;
/// Past epochs the season spans.
const EPOCHS: u32 = 12;
/// Market makers: the maker of most fills.
const MAKERS: u64 = 300;
/// Bytes of COPY text buffered per table before it is sent.
const FLUSH: usize = 1 << 20;

/// An award book that knows nothing: the season holds inserts only, which never consult it.
struct NoBook;

impl AwardBook for NoBook {
    fn get(&self, _: &str) -> Option<Award> {
        None
    }
    fn put(&mut self, _: &str, _: Award) {}
    fn remove(&mut self, _: &str) {}
}

/// splitmix64: a deterministic stream, so every run builds the same season.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn address(i: u64) -> String {
    format!("0x{i:040x}")
}

/// One COPY ... FROM STDIN (text) on its own connection, fed in chunks.
struct CopyIn {
    sink: std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>,
    buf: String,
    rows: u64,
    _client: Client,
}

impl CopyIn {
    async fn open(url: &str, statement: &str) -> Result<CopyIn> {
        let client = connect(url).await?;
        client.batch_execute("SET synchronous_commit = off").await?;
        let sink = client.copy_in::<_, Bytes>(statement).await?;
        Ok(CopyIn {
            sink: Box::pin(sink),
            buf: String::with_capacity(FLUSH + 4096),
            rows: 0,
            _client: client,
        })
    }

    async fn row_done(&mut self) -> Result<()> {
        self.rows += 1;
        if self.buf.len() >= FLUSH {
            let chunk = std::mem::replace(&mut self.buf, String::with_capacity(FLUSH + 4096));
            self.sink.send(Bytes::from(chunk)).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.sink.send(Bytes::from(chunk)).await?;
        }
        self.sink.as_mut().finish().await?;
        Ok(self.rows)
    }
}

fn opt_dec(buf: &mut String, d: Option<&Decimal>) {
    match d {
        Some(d) => {
            let _ = write!(buf, "{d}");
        }
        None => buf.push_str("\\N"),
    }
}

fn opt_text(buf: &mut String, s: Option<&str>) {
    buf.push_str(s.unwrap_or("\\N"));
}

/// What building the season took and holds.
pub struct Season {
    /// Fills journaled.
    pub fills: u64,
    /// Source transactions.
    pub transactions: u64,
    /// Ledger entries (the view's rows) of the season.
    pub entries: u64,
    /// Users.
    pub users: u64,
    /// (user, epoch) totals.
    pub totals: u64,
    /// Epochs it spans.
    pub epochs: (u32, u32),
    /// Wall time to generate and load it (ANALYZE and VACUUM included).
    pub took: Duration,
}

/// Generates the season into the store `walpoints setup` made (its rules already recorded).
pub async fn build(lab: &Lab, store: &Client, fills: u64, users: u64) -> Result<Season> {
    let started = Instant::now();
    let rules_row = store
        .query_one(
            "SELECT rules_id, rules FROM walpoints.rules ORDER BY rules_id DESC LIMIT 1",
            &[],
        )
        .await
        .context("no recorded rules: run walpoints setup first")?;
    let rules_id: i16 = rules_row.get(0);
    let rules: RuleSet = serde_json::from_str(rules_row.get(1))?;
    let engine = Engine::new(rules.clone())?;
    let calendar = engine.calendar();
    let now = walpoints::time::now_micros();
    let current = calendar
        .epoch_of(now)
        .context("the bench runs after the rules' genesis")?;
    if current < EPOCHS {
        bail!("the season needs {EPOCHS} epochs before the current one ({current})");
    }
    let (first_epoch, last_epoch) = (current - EPOCHS, current - 1);
    for e in first_epoch..=last_epoch {
        store
            .execute(
                "SELECT walpoints.ensure_epoch_partitions($1)",
                &[&(e as i32)],
            )
            .await?;
    }
    let span_start = calendar.start_of(first_epoch).context("epoch start")?;
    let span_end = calendar.start_of(current).context("epoch start")?;
    let transactions = fills.div_ceil(FILLS_PER_TX);
    let step = (span_end - span_start - 1_000_000) / (transactions as i64 + 1);

    let url = lab.url("walpoints");
    let mut journal = CopyIn::open(
        &url,
        "COPY walpoints.journal (source_id, epoch, commit_lsn, ordinal, commit_time, rules_id, \
         input, id, symbol, price, amount, taker, maker, trade_time, user_address, size, \
         entry_price, is_open, realized_pnl, referrer) FROM STDIN",
    )
    .await?;
    let mut ledger = CopyIn::open(
        &url,
        "COPY walpoints.ledger_fill (source_id, epoch, commit_lsn, ordinal, first_entry, \
         trade_id, reversal, fill_time, price, amount, taker, maker, notional, taker_points, \
         taker_multiplier, taker_rate, maker_points, maker_multiplier, maker_rate, taker_l1, \
         taker_l1_points, taker_l2, taker_l2_points, maker_l1, maker_l1_points, maker_l2, \
         maker_l2_points, level1_share, level2_share, event_time, commit_time, rules_id) \
         FROM STDIN",
    )
    .await?;
    let mut postings = CopyIn::open(
        &url,
        "COPY walpoints.user_batch (user_address, epoch, source_id, first_lsn, last_lsn, \
         commit_lsns) FROM STDIN",
    )
    .await?;

    let mut rng = Rng(0x5EA5_0A11);
    let mut state = State::new();
    let mut totals: HashMap<(String, u32), Totals> = HashMap::new();
    let mut batch: BTreeMap<(String, u32), Vec<Lsn>> = BTreeMap::new();
    let mut batch_range: Option<(Lsn, Lsn)> = None;
    let mut entries = 0u64;
    let mut lsn = 0x1_0000_0000u64;
    let mut commit_time = span_start;
    let mut trade_id = 0u64;
    let mut tx_count = 0u64;

    // Transaction 0: the referral links (a quarter of the users, referred by earlier ones).
    let mut links = Vec::new();
    for i in (1_000..users).step_by(4) {
        links.push(Event::ReferralInserted {
            new: ReferralLink {
                referee: address(i),
                referrer: address(i / 7),
            },
        });
    }
    let mut txs: u64 = 0;
    while txs <= transactions {
        let events = if txs == 0 {
            std::mem::take(&mut links)
        } else {
            let n = FILLS_PER_TX.min(fills - (txs - 1) * FILLS_PER_TX);
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                trade_id += 1;
                // Takers towards a whale head (index ~ users · u³), makers mostly the book's.
                let taker = ((rng.unit().powi(3)) * users as f64) as u64;
                let maker = if rng.below(10) < 7 {
                    rng.below(MAKERS)
                } else {
                    (rng.unit().powi(2) * users as f64) as u64
                };
                let price = Decimal::new(10_000 + rng.below(6_000_000) as i64, 2);
                let amount = Decimal::new(1 + rng.below(20_000) as i64, 3);
                let amount = if rng.below(2) == 0 { amount } else { -amount };
                v.push(Event::TradeInserted {
                    new: Trade {
                        id: trade_id.to_string(),
                        symbol: if rng.below(3) == 0 {
                            "ETH-PERP"
                        } else {
                            "BTC-PERP"
                        }
                        .into(),
                        price,
                        amount,
                        taker: address(taker),
                        maker: address(maker),
                        time: Some(commit_time),
                    },
                });
            }
            v
        };
        let tx = TxEvents {
            commit_lsn: lsn,
            commit_time,
            events,
        };
        let outcome = engine.apply_transaction(&mut state, &mut NoBook, &tx)?;
        if !outcome.errors.is_empty() {
            bail!(
                "the generated season failed in the engine: {:?}",
                outcome.errors
            );
        }
        let lsn_text = Lsn(lsn).to_string();
        let time_text = walpoints::time::format_rfc3339(commit_time);
        let stream_epoch = state
            .stream_time()
            .and_then(|t| calendar.epoch_of(t))
            .map_or(-1, |e| e as i64);
        // Journal rows.
        for (ordinal, ev) in tx.events.iter().enumerate() {
            let b = &mut journal.buf;
            let _ = write!(
                b,
                "{SEASON_SOURCE}\t{stream_epoch}\t{lsn_text}\t{ordinal}\t{time_text}\t{rules_id}\t"
            );
            match ev {
                Event::TradeInserted { new: t } => {
                    let _ = writeln!(
                        b,
                        "trade_inserted\t{}\t{}\t{}\t{}\t{}\t{}\t{time_text}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N",
                        t.id, t.symbol, t.price, t.amount, t.taker, t.maker
                    );
                }
                Event::ReferralInserted { new: r } => {
                    let _ = writeln!(
                        b,
                        "referral_inserted\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t{}",
                        r.referee, r.referrer
                    );
                }
                other => bail!("the season generates no {other:?}"),
            }
            journal.row_done().await?;
        }
        // Compact ledger rows, as the store's writer lays them out.
        for f in &outcome.fills {
            let a = &f.award;
            let compact = CompactAward::of(a)?;
            let b = &mut ledger.buf;
            let _ = write!(
                b,
                "{SEASON_SOURCE}\t{}\t{lsn_text}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
                f.epoch.map_or(-1, |e| e as i64),
                f.ordinal,
                f.first_entry,
                f.trade_id,
                if f.reversal { 't' } else { 'f' },
                walpoints::time::format_rfc3339(a.trade.time),
                a.trade.price,
                a.trade.amount,
                a.trade.taker,
                a.trade.maker,
            );
            match &compact {
                None => b.push_str(&"\\N\t".repeat(17)),
                Some(c) => {
                    let _ = write!(b, "{}\t", c.notional);
                    for side in [&c.taker, &c.maker] {
                        let _ = write!(b, "{}\t{}\t{}\t", side.points, side.multiplier, side.rate);
                    }
                    for side in [&c.taker, &c.maker] {
                        for level in [&side.level1, &side.level2] {
                            opt_text(b, level.as_ref().map(|(who, _)| who.as_str()));
                            b.push('\t');
                            opt_dec(b, level.as_ref().map(|(_, p)| p));
                            b.push('\t');
                        }
                    }
                    opt_dec(b, c.level1_share.as_ref());
                    b.push('\t');
                    opt_dec(b, c.level2_share.as_ref());
                    b.push('\t');
                }
            }
            let _ = writeln!(
                b,
                "{}\t{time_text}\t{rules_id}",
                walpoints::time::format_rfc3339(f.event_time)
            );
            ledger.row_done().await?;
        }
        // Totals and this batch's postings.
        for e in &outcome.entries {
            entries += 1;
            let key = (e.user.clone(), e.epoch);
            let lsns = batch.entry(key).or_default();
            if lsns.last() != Some(&Lsn(lsn)) {
                lsns.push(Lsn(lsn));
            }
            match totals.get_mut(&(e.user.clone(), e.epoch)) {
                Some(t) => t.add_entry(e)?,
                None => {
                    let mut t = Totals::default();
                    t.add_entry(e)?;
                    totals.insert((e.user.clone(), e.epoch), t);
                }
            }
        }
        let range = batch_range.get_or_insert((Lsn(lsn), Lsn(lsn)));
        range.1 = Lsn(lsn);
        tx_count += 1;
        txs += 1;
        if tx_count.is_multiple_of(TX_PER_BATCH) || txs > transactions {
            if let Some((first, last)) = batch_range.take() {
                for ((user, epoch), lsns) in std::mem::take(&mut batch) {
                    let b = &mut postings.buf;
                    let _ = write!(b, "{user}\t{epoch}\t{SEASON_SOURCE}\t{first}\t{last}\t{{");
                    for (i, l) in lsns.iter().enumerate() {
                        if i > 0 {
                            b.push(',');
                        }
                        let _ = write!(b, "{l}");
                    }
                    b.push_str("}\n");
                    postings.row_done().await?;
                }
            }
        }
        lsn += 0x1000;
        commit_time += step;
        if tx_count.is_multiple_of(100_000) {
            eprintln!(
                "season: {tx_count} / {} transactions generated ({:.0} s)",
                transactions + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let last_lsn = Lsn(lsn - 0x1000);
    let last_time = commit_time - step;
    let journal_rows = journal.finish().await?;
    let ledger_rows = ledger.finish().await?;
    postings.finish().await?;
    eprintln!(
        "season: {journal_rows} journal rows, {ledger_rows} ledger_fill rows loaded ({:.0} s)",
        started.elapsed().as_secs_f64()
    );

    let mut points = CopyIn::open(
        &url,
        "COPY walpoints.user_epoch_points (user_address, epoch, trading_points, \
         referral_points, holding_points, pnl_points, total_points, trading_volume) FROM STDIN",
    )
    .await?;
    let n_totals = totals.len() as u64;
    for ((user, epoch), t) in totals {
        let _ = writeln!(
            points.buf,
            "{user}\t{epoch}\t{}\t{}\t{}\t{}\t{}\t{}",
            t.trading_points,
            t.referral_points,
            t.holding_points,
            t.pnl_points,
            t.total_points,
            t.trading_volume
        );
        points.row_done().await?;
    }
    points.finish().await?;
    // Totals loaded by COPY, not by the batch writer: count their rank buckets the way the
    // upgrade to them does.
    store
        .batch_execute("SELECT walpoints.rebuild_rank_buckets()")
        .await?;

    let default = store
        .query_one(
            "SELECT system_id, publication, rules_version FROM walpoints.checkpoint \
             WHERE source_id = 'default'",
            &[],
        )
        .await?;
    store
        .execute(
            "INSERT INTO walpoints.checkpoint (source_id, slot_name, publication, system_id, \
             consistent_point, snapshot_time, lsn, commit_time, stream_time, transactions, \
             rules_version) VALUES ($1, 'season_archive', $2, $3, '0/1', $4::text::timestamptz, \
             $5::text::pg_lsn, $6::text::timestamptz, $7, $8, $9)",
            &[
                &SEASON_SOURCE,
                &default.get::<_, String>(1),
                &default.get::<_, String>(0),
                &walpoints::time::format_rfc3339(span_start),
                &last_lsn.to_string(),
                &walpoints::time::format_rfc3339(last_time),
                &state.stream_time(),
                &(tx_count as i64),
                &default.get::<_, String>(2),
            ],
        )
        .await?;
    // Autovacuum would get there; the bench does not wait for it (index-only scans need the
    // visibility map).
    for sql in [
        "VACUUM ANALYZE walpoints.user_epoch_points, walpoints.user_batch, walpoints.rank_bucket",
        "ANALYZE walpoints.journal, walpoints.ledger_fill",
        "CHECKPOINT",
    ] {
        store.batch_execute(sql).await?;
    }
    let n_users: i64 = store
        .query_one(
            "SELECT count(DISTINCT user_address) FROM walpoints.user_epoch_points",
            &[],
        )
        .await?
        .get(0);
    Ok(Season {
        fills,
        transactions: tx_count,
        entries,
        users: n_users as u64,
        totals: n_totals,
        epochs: (first_epoch, last_epoch),
        took: started.elapsed(),
    })
}

/// A minimal keep-alive HTTP/1.1 client: GETs, Content-Length bodies (what the API sends).
struct Http {
    stream: BufReader<tokio::net::TcpStream>,
}

impl Http {
    async fn connect(port: u16) -> Result<Http> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream: BufReader::new(stream),
        })
    }

    /// GET `path`: (status, body).
    async fn get(&mut self, path: &str) -> Result<(u16, String)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8(body)?))
    }
}

/// p50 and p99 of `path` over `n` sequential requests (after a few to warm up).
async fn latency(http: &mut Http, path: &str, n: usize) -> Result<(Duration, Duration)> {
    for _ in 0..5 {
        let (status, body) = http.get(path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
    }
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, _) = http.get(path).await?;
        took.push(t.elapsed());
        if status != 200 {
            bail!("GET {path}: {status}");
        }
    }
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    Ok((pct(0.50), pct(0.99)))
}

fn next_cursor(body: &str) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v["next_cursor"].as_str().map(str::to_owned))
}

/// Follows `pages` next_cursors from `first` (a path with `?...`); the deepest cursor found.
async fn deep_cursor(http: &mut Http, first: &str, pages: usize) -> Result<(String, usize)> {
    let mut cursor: Option<String> = None;
    let mut walked = 0;
    for _ in 0..pages {
        let path = match &cursor {
            None => first.to_owned(),
            Some(c) => format!("{first}&cursor={c}"),
        };
        let (status, body) = http.get(&path).await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        match next_cursor(&body)? {
            Some(c) => {
                cursor = Some(c);
                walked += 1;
            }
            None => break,
        }
    }
    Ok((cursor.context("no second page")?, walked))
}

/// Builds the season, replays it, and measures the API against it.
pub async fn run(lab: &Lab, plan: &Plan) -> Result<()> {
    let fills = plan.sized(20_000_000, 20_000);
    let users = plan.sized(500_000, 2_000);
    lab.reset("trades, positions, referral_relations").await?;
    lab.walpoints_once(&["setup"], "season-setup")?;
    let store = lab.store().await?;
    let season = build(lab, &store, fills, users).await?;
    let sizes: Vec<(String, String)> = store
        .query(
            "SELECT t, pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM \
             (VALUES ('journal'), ('ledger_fill'), ('user_batch'), ('user_epoch_points')) v(t) \
             JOIN pg_class c ON c.relname = v.t OR c.relname LIKE v.t || '\\_e%' \
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'walpoints' \
             GROUP BY t ORDER BY t",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    println!(
        "\n## Season-sized store\n\n\
         Generated with the engine and loaded by COPY: {} fills in {} source transactions \
         over epochs {}–{} ({} ledger entries, {} users, {} user-epoch totals) in {:.0} s. \
         Sizes: {}.\n",
        season.fills,
        season.transactions,
        season.epochs.0,
        season.epochs.1,
        season.entries,
        season.users,
        season.totals,
        season.took.as_secs_f64(),
        sizes
            .iter()
            .map(|(t, s)| format!("{t} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // (a) replay --verify of the whole store.
    let started = Instant::now();
    let out = lab
        .walpoints(&["replay", "--verify"], "season-replay")?
        .stdout(Stdio::piped())
        .output()?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "replay --verify of the season exited {:?}: {stdout}; see {}",
            out.status.code(),
            lab.log_path("season-replay")
        );
    }
    println!(
        "| store | `replay --verify` wall time | fills/s |\n|---|---:|---:|\n\
         | {} fills, {} entries | {:.1} s | {:.0} |\n\n{}",
        season.fills,
        season.entries,
        took.as_secs_f64(),
        season.fills as f64 / took.as_secs_f64(),
        stdout.trim()
    );

    // (b) the points API against it, `walpoints run` serving.
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut cmd = lab.walpoints(&["run"], "season-run")?;
    cmd.env("WALPOINTS_HTTP_LISTEN", format!("127.0.0.1:{port}"));
    let mut daemon = Daemon::spawn(cmd, lab.log_path("season-run"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut http = loop {
        match Http::connect(port).await {
            Ok(h) => break h,
            Err(_) if Instant::now() < deadline => {
                daemon.check_alive()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let epoch = (season.epochs.0 + season.epochs.1) / 2;
    let n = plan.sized(500, 100) as usize;
    // The whale (most entries), a user in the middle of the ranking, one near its end.
    let ranked: Vec<String> = store
        .query(
            "SELECT user_address FROM walpoints.user_epoch_points WHERE epoch = $1 \
             ORDER BY total_points DESC",
            &[&(epoch as i32)],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (whale, middle, tail) = (
        ranked[0].clone(),
        ranked[ranked.len() / 2].clone(),
        ranked[ranked.len() - 1].clone(),
    );
    let ledger = format!("/v1/users/{whale}/ledger?epoch={epoch}");
    let (ledger_cursor, ledger_pages) =
        deep_cursor(&mut http, &format!("{ledger}&limit=1000"), 50).await?;
    let board = format!("/v1/leaderboard?epoch={epoch}");
    let board_pages = (ranked.len() / 1000).saturating_sub(1).max(1);
    let (board_cursor, board_walked) =
        deep_cursor(&mut http, &format!("{board}&limit=1000"), board_pages).await?;
    let cases = [
        (
            "`/v1/users/{a}/ledger` first page (whale)".to_owned(),
            ledger.clone(),
        ),
        (
            format!("`/v1/users/{{a}}/ledger` page after {ledger_pages} × 1,000 entries (whale)"),
            format!("{ledger}&cursor={ledger_cursor}"),
        ),
        ("`/v1/leaderboard` first page".to_owned(), board.clone()),
        (
            format!("`/v1/leaderboard` page after rank {}", board_walked * 1000),
            format!("{board}&cursor={board_cursor}"),
        ),
        (
            "`/v1/users/{a}` (whale, rank 1)".to_owned(),
            format!("/v1/users/{whale}?epoch={epoch}"),
        ),
        (
            format!("`/v1/users/{{a}}` (rank {})", ranked.len() / 2 + 1),
            format!("/v1/users/{middle}?epoch={epoch}"),
        ),
        (
            format!("`/v1/users/{{a}}` (rank {}, last)", ranked.len()),
            format!("/v1/users/{tail}?epoch={epoch}"),
        ),
    ];
    let mut table = format!(
        "\n| request (epoch {epoch}: {} ranked users; {n} sequential requests each) | p50 | p99 |\n\
         |---|---:|---:|\n",
        ranked.len()
    );
    for (name, path) in &cases {
        let (p50, p99) = latency(&mut http, path, n).await?;
        let _ = writeln!(
            table,
            "| {name} | {:.1} ms | {:.1} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    println!("{table}");
    daemon.stop()?;
    // For looking at the store by hand (EXPLAIN, another replay): the server stays up until
    // the file named by WALPOINTS_BENCH_SEASON_HOLD is removed.
    if let Some(hold) = std::env::var_os("WALPOINTS_BENCH_SEASON_HOLD") {
        std::fs::write(&hold, lab.url("walpoints"))?;
        eprintln!(
            "season: holding the server ({}) until {} is removed",
            lab.url("walpoints"),
            std::path::Path::new(&hold).display()
        );
        while std::path::Path::new(&hold).exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}
