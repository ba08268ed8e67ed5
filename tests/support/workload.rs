//! For the fault tests: the checks every faulted run of [`super::daemon::workload`] must pass
//! besides ledger equality.

use std::time::Duration;

use super::daemon::{assert_same_ledger, fence, Walpoints};
use super::{Running, TestDb};

/// No gap and no duplicate: every trade id in `1..=trades` of [`super::daemon::workload`] that is not a
/// self-trade has exactly one taker award in `wp`'s store, and the totals equal the ledger's
/// sums.
pub async fn assert_each_trade_once(wp: &Walpoints<'_>, trades: i64) {
    let store = wp.store().await;
    let row = store
        .query_one(
            "WITH t AS (SELECT trade_id, count(*) AS n FROM walpoints.ledger
                 WHERE source_id = $1 AND kind = 'trading_taker' AND NOT reversal GROUP BY 1)
             SELECT (SELECT count(*) FROM t WHERE n <> 1),
                    (SELECT count(*) FROM generate_series(1, $2::bigint) g
                       WHERE (g * 7919) % 1000 <> (g * 104729 + 3) % 1000
                         AND NOT EXISTS (SELECT 1 FROM t WHERE t.trade_id = g::text))",
            &[&wp.id, &trades],
        )
        .await
        .expect("count the awards per trade");
    let (doubled, missing): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(doubled, 0, "trades awarded more than once");
    assert_eq!(missing, 0, "trades never awarded");
    wp.assert_totals_match_ledger().await;
}

/// Fences `db`, waits until both `steady` and `disturbed` have stored everything before the
/// fence, and checks that `disturbed`'s ledger equals `steady`'s (at least `min_entries` long),
/// with every trade of `1..=trades` awarded once.
pub async fn assert_same_as_undisturbed(
    db: &TestDb,
    (steady, steady_run): (&Walpoints<'_>, &Running),
    (disturbed, disturbed_run): (&Walpoints<'_>, &Running),
    min_entries: usize,
    trades: i64,
) {
    let until = fence(&db.client().await).await;
    for (wp, running) in [(steady, steady_run), (disturbed, disturbed_run)] {
        wp.wait_for(until, Duration::from_secs(180), running).await;
    }
    let expected = steady.ledger().await;
    assert!(expected.len() > min_entries, "{} entries", expected.len());
    assert_same_ledger(&disturbed.ledger().await, &expected, "the undisturbed run");
    assert_each_trade_once(disturbed, trades).await;
}
