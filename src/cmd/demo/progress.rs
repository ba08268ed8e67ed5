//! The demo's one refreshing progress line on stderr: trades per second, the daemon's lag and
//! the points awarded so far.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};

use super::exchange::ExchangeStats;
use super::DemoError;
use crate::lsn::Lsn;

/// The one refreshing progress line (stderr): trades/s, lag, points awarded so far. On a
/// terminal it is redrawn in place; otherwise a plain line every few seconds.
pub(super) struct Progress<'a> {
    store: &'a tokio_postgres::Client,
    source: &'a tokio_postgres::Client,
    source_id: &'a str,
    stats: Arc<ExchangeStats>,
    tty: bool,
    last: Option<(Instant, u64)>,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl<'a> Progress<'a> {
    pub(super) fn new(
        store: &'a tokio_postgres::Client,
        source: &'a tokio_postgres::Client,
        source_id: &'a str,
        stats: Arc<ExchangeStats>,
    ) -> Self {
        Progress {
            store,
            source,
            source_id,
            stats,
            tty: std::io::stderr().is_terminal(),
            last: None,
            last_plain: None,
            drawn: false,
        }
    }

    /// The store's checkpoint for the demo's source.
    pub(super) async fn checkpoint(&self) -> Result<Lsn, DemoError> {
        let text: String = self
            .store
            .query_one(
                "SELECT lsn::text FROM walpoints.checkpoint WHERE source_id = $1",
                &[&self.source_id],
            )
            .await?
            .get(0);
        Ok(text.parse()?)
    }

    /// Redraws the line; a failed query only skips this refresh.
    pub(super) async fn show(&mut self, started: Instant) {
        let now = Instant::now();
        if !self.tty
            && self
                .last_plain
                .is_some_and(|t| now - t < Duration::from_secs(5))
        {
            return;
        }
        let Ok(line) = self.line(started, now).await else {
            return;
        };
        if self.tty {
            eprint!("\r{line:<100}");
            self.drawn = true;
        } else {
            eprintln!("walpoints demo: {line}");
            self.last_plain = Some(now);
        }
    }

    async fn line(&mut self, started: Instant, now: Instant) -> Result<String, DemoError> {
        let current: String = self
            .source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let current: Lsn = current.parse().unwrap_or(Lsn::ZERO);
        let row = self
            .store
            .query_one(
                "SELECT c.lsn::text,
                        (extract(epoch FROM clock_timestamp() - c.commit_time) * 1000)::int8,
                        (SELECT coalesce(sum(total_points), 0) FROM walpoints.user_epoch_points)::text
                 FROM walpoints.checkpoint c WHERE c.source_id = $1",
                &[&self.source_id],
            )
            .await?;
        let checkpoint: Lsn = row.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO);
        let behind = current.0.saturating_sub(checkpoint.0);
        // Behind by some bytes: the lag in time is how old the newest commit in the store is.
        let lag_ms = if behind == 0 {
            0
        } else {
            row.get::<_, i64>(1).max(0)
        };
        let points: Decimal = row.get::<_, String>(2).parse().unwrap_or_default();
        let points = points.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        let trades = self.stats.trades.load(Ordering::Relaxed);
        let rate = match self.last {
            Some((t, n)) if now > t => {
                let ms = u64::try_from((now - t).as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                trades.saturating_sub(n).saturating_mul(1000) / ms
            }
            _ => 0,
        };
        self.last = Some((now, trades));
        Ok(format!(
            "{:>3} s  {trades} trades ({rate}/s)  lag {} / {}.{:01} s  points awarded {points}",
            (now - started).as_secs(),
            bytes(behind),
            lag_ms / 1000,
            (lag_ms % 1000) / 100,
        ))
    }

    /// Ends the refreshing line so the next output starts on a line of its own.
    pub(super) fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{} kB", n / 1_024),
        _ => format!("{} MB", n / 1_048_576),
    }
}
