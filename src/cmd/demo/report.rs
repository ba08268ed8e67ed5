//! What the demo prints at the end: the epoch's leaderboard with the per-kind breakdown, the
//! totals, and with `--keep` how to query the cluster and the daemon it leaves running.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::exchange::ExchangeStats;
use super::DemoError;
use crate::testing::PgCluster;

/// Prints the newest epoch's top 10 with the per-kind breakdown; returns the ledger's size.
pub(super) async fn print_leaderboard(
    store: &tokio_postgres::Client,
    out: &mut impl Write,
) -> Result<i64, DemoError> {
    let entries: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger", &[])
        .await?
        .get(0);
    let rows = store
        .query(
            // Qualified names in ORDER BY: the bare `total_points` would be the text column.
            "SELECT u.epoch, rank() OVER (ORDER BY u.total_points DESC)::int, u.user_address,
                    u.total_points::text, u.trading_points::text, u.referral_points::text,
                    u.holding_points::text, u.pnl_points::text, u.trading_volume::text
             FROM walpoints.user_epoch_points u
             WHERE u.epoch = (SELECT max(epoch) FROM walpoints.user_epoch_points)
             ORDER BY u.total_points DESC, u.user_address LIMIT 10",
            &[],
        )
        .await?;
    let epoch: i32 = rows.first().map_or(0, |r| r.get(0));
    writeln!(out)?;
    writeln!(out, "epoch {epoch} leaderboard ({entries} ledger entries)")?;
    writeln!(
        out,
        "{:>4}  {:<42} {:>16} {:>16} {:>14} {:>12} {:>12} {:>20}",
        "rank", "user", "total", "trading", "referral", "holding", "pnl", "volume"
    )?;
    for r in &rows {
        let t = |i: usize| r.get::<_, String>(i);
        writeln!(
            out,
            "{:>4}  {:<42} {:>16} {:>16} {:>14} {:>12} {:>12} {:>20}",
            r.get::<_, i32>(1),
            t(2),
            t(3),
            t(4),
            t(5),
            t(6),
            t(7),
            t(8)
        )?;
    }
    if rows.is_empty() {
        writeln!(
            out,
            "      (nobody earned points: is the clock before the epoch genesis?)"
        )?;
    }
    Ok(entries)
}

/// Prints what the exchange did and what the store holds: points by kind, dead letters.
pub(super) async fn print_totals(
    store: &tokio_postgres::Client,
    stats: &ExchangeStats,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    writeln!(out)?;
    writeln!(
        out,
        "exchange: {} trades ({} self-trades), {} positions opened, {} resized, {} closed \
         ({} in profit), {} referral links",
        n(&stats.trades),
        n(&stats.self_trades),
        n(&stats.opened),
        n(&stats.resized),
        n(&stats.closed),
        n(&stats.closed_in_profit),
        n(&stats.referrals)
    )?;
    let row = store
        .query_one(
            // Points from the totals: a holding segment still open is credited there but has
            // no ledger row yet.
            "SELECT (SELECT count(*) FROM walpoints.ledger),
                    coalesce(sum(trading_points), 0)::text,
                    coalesce(sum(referral_points), 0)::text,
                    coalesce(sum(holding_points), 0)::text,
                    coalesce(sum(pnl_points), 0)::text,
                    coalesce(sum(total_points), 0)::text,
                    (SELECT count(*) FROM walpoints.dead_letter)
             FROM walpoints.user_epoch_points",
            &[],
        )
        .await?;
    writeln!(
        out,
        "ledger: {} entries; points trading {}, referral {}, holding {}, pnl {}, \
         total {}; {} dead letters",
        row.get::<_, i64>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3),
        row.get::<_, String>(4),
        row.get::<_, String>(5),
        row.get::<_, i64>(6)
    )?;
    Ok(())
}

/// With `--keep`: where everything is and how to look at it (`http_listen`: the address the
/// daemon's HTTP server is bound to).
pub(super) fn print_how_to_query(
    cluster: &PgCluster,
    http_listen: Option<&str>,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let store = cluster.url("walpoints");
    let source = cluster.url("exchange");
    let psql = cluster.binaries().program("psql");
    let psql = if psql.is_file() {
        psql.display().to_string()
    } else {
        "psql".to_owned()
    };
    writeln!(out)?;
    writeln!(
        out,
        "The daemon keeps streaming (the synthetic exchange has stopped); Ctrl-C stops it and \
         removes the cluster."
    )?;
    writeln!(out, "  source: {source}")?;
    writeln!(out, "  store:  {store}")?;
    writeln!(out, "  data directory: {}", cluster.data_dir().display())?;
    writeln!(out, "Query the store:")?;
    writeln!(
        out,
        "  {psql} '{store}' -c 'SELECT user_address, epoch, total_points, trading_volume \
         FROM walpoints.user_epoch_points ORDER BY total_points DESC LIMIT 10'"
    )?;
    writeln!(
        out,
        "  {psql} '{store}' -c 'SELECT kind, count(*), sum(points) FROM walpoints.ledger \
         GROUP BY kind'"
    )?;
    writeln!(out, "Trade yourself and watch the points arrive:")?;
    writeln!(
        out,
        "  {psql} '{source}' -c \"INSERT INTO trades (symbol, price, amount, taker_address, \
         maker_address) VALUES ('BTC-PERP', 60000, 1, '0xyou', '0xthem')\""
    )?;
    writeln!(out, "Check the points against the business tables:")?;
    writeln!(out, "  walpoints --source-url '{source}' verify")?;
    if let Some(listen) = http_listen {
        writeln!(out, "Open the operator console in a browser (read-only):")?;
        writeln!(out, "  http://{listen}/")?;
        writeln!(out, "Ask the HTTP API (read-only, on the store):")?;
        writeln!(out, "  curl http://{listen}/v1/leaderboard?limit=10")?;
        writeln!(out, "  curl http://{listen}/v1/users/0xyou")?;
        writeln!(out, "  curl http://{listen}/v1/users/0xyou/ledger?limit=5")?;
        writeln!(out, "  curl http://{listen}/v1/epochs")?;
        writeln!(out, "Watch it like an operator:")?;
        writeln!(out, "  curl http://{listen}/metrics")?;
        writeln!(out, "  curl http://{listen}/readyz")?;
        writeln!(out, "  walpoints --source-url '{source}' status")?;
    }
    Ok(())
}
