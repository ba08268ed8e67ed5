//! An oracle for the store's `user_epoch_points`, independent of walpoints' own code (neither
//! its fold nor its SQL): the ledger's rows, summed here by kind per (user, epoch), against the
//! totals the store keeps.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;

/// One (user, epoch)'s sums, by the ledger's kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    /// `trading_taker` and `trading_maker` points.
    pub trading: Decimal,
    /// `referral_l1` and `referral_l2` points.
    pub referral: Decimal,
    /// `holding` points.
    pub holding: Decimal,
    /// `pnl` points.
    pub pnl: Decimal,
    /// Every entry's points.
    pub total: Decimal,
    /// The basis of the trading entries.
    pub volume: Decimal,
}

impl Sums {
    /// Adds one ledger entry of `kind`.
    fn add(&mut self, kind: &str, points: Decimal, basis: Decimal) {
        let add = |to: &mut Decimal, v: Decimal| {
            *to = to
                .checked_add(v)
                .unwrap_or_else(|| panic!("the ledger's sums overflow a Decimal at {to} + {v}"));
        };
        match kind {
            "trading_taker" | "trading_maker" => {
                add(&mut self.trading, points);
                add(&mut self.volume, basis);
            }
            "referral_l1" | "referral_l2" => add(&mut self.referral, points),
            "holding" => add(&mut self.holding, points),
            "pnl" => add(&mut self.pnl, points),
            other => panic!("a ledger entry of unknown kind {other:?}"),
        }
        add(&mut self.total, points);
    }

    /// With every value normalised (`1.500000` is `1.5`), for comparing and showing.
    fn normalized(self) -> Sums {
        Sums {
            trading: self.trading.normalize(),
            referral: self.referral.normalize(),
            holding: self.holding.normalize(),
            pnl: self.pnl.normalize(),
            total: self.total.normalize(),
            volume: self.volume.normalize(),
        }
    }
}

impl fmt::Display for Sums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trading {} referral {} holding {} pnl {} total {} volume {}",
            self.trading, self.referral, self.holding, self.pnl, self.total, self.volume
        )
    }
}

/// Sums keyed by (user, epoch).
pub type ByUserEpoch = BTreeMap<(String, i32), Sums>;

/// The ledger of every source in the store (they share its totals), summed per (user, epoch).
pub async fn ledger_sums(store: &tokio_postgres::Transaction<'_>) -> ByUserEpoch {
    let rows = store
        .query(
            "SELECT user_address, epoch, kind, points, basis FROM walpoints.ledger",
            &[],
        )
        .await
        .expect("read the ledger");
    let mut sums = ByUserEpoch::new();
    for r in &rows {
        sums.entry((r.get(0), r.get(1)))
            .or_default()
            .add(r.get(2), r.get(3), r.get(4));
    }
    sums
}

/// The holding credits of every source's open segments, per (user, epoch): what the totals hold
/// beyond the ledger until those segments end. Summed here hour by hour (each hour rounded on its
/// own), from the store's open positions, stream time and rules (the walpoints engine uses a
/// closed form instead: first hour, whole hours, last hour).
pub async fn open_segment_credits(store: &tokio_postgres::Transaction<'_>) -> ByUserEpoch {
    const H: i64 = 3_600_000_000;
    let rows = store
        .query(
            "SELECT p.user_address, p.notional, p.since, c.stream_time, r.rules
             FROM walpoints.state_open_position p
             JOIN walpoints.checkpoint c USING (source_id)
             CROSS JOIN LATERAL (
               SELECT rules FROM walpoints.rules WHERE rules_id = (
                 SELECT rules_id FROM walpoints.journal j WHERE j.source_id = p.source_id
                 ORDER BY epoch DESC, commit_lsn DESC, ordinal DESC LIMIT 1)) r
             WHERE c.stream_time IS NOT NULL",
            &[],
        )
        .await
        .expect("read the open positions");
    let mut sums = ByUserEpoch::new();
    for r in &rows {
        let user: String = r.get(0);
        let notional: Decimal = r.get(1);
        let since: i64 = r.get(2);
        let now: i64 = r.get(3);
        let rules: walpoints::points::RuleSet =
            serde_json::from_str(r.get(4)).expect("the recorded rules");
        let excluded = rules
            .excluded_addresses
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case(&user));
        if notional < rules.holding.min_notional || excluded {
            continue;
        }
        let calendar = rules.calendar().expect("the recorded calendar");
        let settled = now - now.rem_euclid(H);
        let Some(epoch) = calendar.epoch_of(settled) else {
            continue;
        };
        let epoch_start = calendar.start_of(epoch).expect("epoch start");
        let mut from = since.max(epoch_start);
        let mut credited = Decimal::ZERO;
        while from < settled {
            let to = (from - from.rem_euclid(H) + H).min(settled);
            let seconds = Decimal::new(to - from, 6);
            let raw = notional * seconds * rules.holding.rate_per_day / Decimal::from(86_400);
            credited +=
                raw.round_dp_with_strategy(6, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            from = to;
        }
        if !credited.is_zero() {
            let s = sums
                .entry((user, i32::try_from(epoch).expect("epoch")))
                .or_default();
            s.holding += credited;
            s.total += credited;
        }
    }
    sums
}

/// `ledger` plus `more`, per (user, epoch).
pub fn plus(mut ledger: ByUserEpoch, more: &ByUserEpoch) -> ByUserEpoch {
    for (k, m) in more {
        let s = ledger.entry(k.clone()).or_default();
        s.holding += m.holding;
        s.total += m.total;
    }
    ledger
}

/// The store's `user_epoch_points`, per (user, epoch).
pub async fn stored_totals(store: &tokio_postgres::Transaction<'_>) -> ByUserEpoch {
    store
        .query(
            "SELECT user_address, epoch, trading_points, referral_points, holding_points, \
             pnl_points, total_points, trading_volume FROM walpoints.user_epoch_points",
            &[],
        )
        .await
        .expect("read user_epoch_points")
        .iter()
        .map(|r| {
            let sums = Sums {
                trading: r.get(2),
                referral: r.get(3),
                holding: r.get(4),
                pnl: r.get(5),
                total: r.get(6),
                volume: r.get(7),
            };
            ((r.get(0), r.get(1)), sums)
        })
        .collect()
}

/// Fails the test, naming the first (user, epoch)s that differ, unless `stored` equals
/// `ledger` by value; a (user, epoch) on one side only is compared with zeros.
pub fn assert_same_totals(stored: &ByUserEpoch, ledger: &ByUserEpoch) {
    let zero = Sums::default();
    let mut keys: Vec<&(String, i32)> = stored.keys().chain(ledger.keys()).collect();
    keys.sort();
    keys.dedup();
    let compared = keys.len();
    let differ: Vec<String> = keys
        .into_iter()
        .filter_map(|key| {
            let got = stored.get(key).copied().unwrap_or(zero).normalized();
            let want = ledger.get(key).copied().unwrap_or(zero).normalized();
            (got != want).then(|| {
                format!(
                    "  {} epoch {}:\n    user_epoch_points {}{}\n    ledger's sums     {}{}",
                    key.0,
                    key.1,
                    got,
                    if stored.contains_key(key) {
                        ""
                    } else {
                        " (no row)"
                    },
                    want,
                    if ledger.contains_key(key) {
                        ""
                    } else {
                        " (no entry)"
                    },
                )
            })
        })
        .collect();
    assert!(
        differ.is_empty(),
        "user_epoch_points differs from the ledger for {} of {} (user, epoch)s; the first:\n{}",
        differ.len(),
        compared,
        differ[..differ.len().min(10)].join("\n")
    );
}

/// The oracle itself, on rows made up here.
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn key(user: &str, epoch: i32) -> (String, i32) {
        (user.to_owned(), epoch)
    }

    /// The ledger rows of one (user, epoch), summed.
    fn fold(entries: &[(&str, &str, &str)]) -> Sums {
        let mut sums = Sums::default();
        for (kind, points, basis) in entries {
            sums.add(kind, d(points), d(basis));
        }
        sums
    }

    #[test]
    fn entries_are_summed_by_kind_and_volume_is_the_trading_basis() {
        let sums = fold(&[
            ("trading_taker", "2.000000", "200"),
            ("trading_maker", "1.5", "300"),
            ("trading_taker", "-2", "-200"),
            ("referral_l1", "0.2", "2"),
            ("referral_l2", "0.05", "2"),
            ("holding", "0.001", "1000"),
            ("pnl", "0.5", "10"),
        ]);
        assert_eq!(
            sums,
            Sums {
                trading: d("1.5"),
                referral: d("0.25"),
                holding: d("0.001"),
                pnl: d("0.5"),
                total: d("2.251"),
                volume: d("300"),
            }
        );
    }

    #[test]
    #[should_panic(expected = "unknown kind \"bonus\"")]
    fn an_unknown_kind_fails() {
        fold(&[("bonus", "1", "1")]);
    }

    #[test]
    fn a_row_of_zeros_matches_no_entries_and_the_scale_does_not_count() {
        let ledger = ByUserEpoch::from([(key("0xa", 3), fold(&[("pnl", "1.5", "7")]))]);
        let stored = ByUserEpoch::from([
            (
                key("0xa", 3),
                Sums {
                    pnl: d("1.500000"),
                    total: d("1.500000"),
                    ..Sums::default()
                },
            ),
            (key("0xgone", 3), Sums::default()),
        ]);
        assert_same_totals(&stored, &ledger);
    }

    #[test]
    #[should_panic(expected = "0xa epoch 3")]
    fn a_total_that_differs_is_named() {
        let ledger = ByUserEpoch::from([(key("0xa", 3), fold(&[("trading_taker", "2", "200")]))]);
        let mut stored = ledger.clone();
        stored.get_mut(&key("0xa", 3)).unwrap().volume = d("201");
        assert_same_totals(&stored, &ledger);
    }

    #[test]
    #[should_panic(expected = "0xb epoch 4")]
    fn entries_without_a_totals_row_are_named() {
        let ledger = ByUserEpoch::from([(key("0xb", 4), fold(&[("holding", "1", "1")]))]);
        assert_same_totals(&ByUserEpoch::new(), &ledger);
    }
}
