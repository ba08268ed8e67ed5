//! Worked examples, one per rule, with the expected points computed by hand
//! and written out literally. The README's "Points rules" example is
//! `readme_worked_example`.

use super::*;
use crate::time::MICROS_PER_SECOND;

const H: i64 = MICROS_PER_HOUR;
const M: i64 = 60 * MICROS_PER_SECOND;
/// 2026-01-05T00:00:00Z, the default genesis.
const G: i64 = 1_767_571_200_000_000;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

struct Harness {
    engine: Engine,
    state: State,
    book: MemoryAwardBook,
    lsn: u64,
    ledger: Vec<LedgerEntry>,
    credits: Vec<HoldingCredit>,
    counters: Counters,
}

impl Harness {
    fn new(toml_text: &str) -> Self {
        let rules: RuleSet = toml::from_str(toml_text).unwrap();
        Self {
            engine: Engine::new(rules).unwrap(),
            state: State::new(),
            book: MemoryAwardBook::new(),
            lsn: 0,
            ledger: Vec::new(),
            credits: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn tx(&mut self, commit_time: i64, events: Vec<Event>) -> TxOutcome {
        self.lsn += 1;
        let tx = TxEvents {
            commit_lsn: self.lsn,
            commit_time,
            events,
        };
        let out = self
            .engine
            .apply_transaction(&mut self.state, &mut self.book, &tx)
            .unwrap();
        self.ledger.extend(out.entries.iter().cloned());
        self.credits.extend(out.credits.iter().cloned());
        self.counters.merge(&out.counters);
        out
    }
}

fn trade(id: &str, price: &str, amount: &str, taker: &str, maker: &str, time: i64) -> Trade {
    Trade {
        id: id.into(),
        symbol: "BTC-PERP".into(),
        price: d(price),
        amount: d(amount),
        taker: taker.into(),
        maker: maker.into(),
        time: Some(time),
    }
}

fn fill(id: &str, price: &str, amount: &str, taker: &str, maker: &str, time: i64) -> Event {
    Event::TradeInserted {
        new: trade(id, price, amount, taker, maker, time),
    }
}

fn link(referee: &str, referrer: &str) -> Event {
    Event::ReferralInserted {
        new: ReferralLink {
            referee: referee.into(),
            referrer: referrer.into(),
        },
    }
}

fn pos(id: &str, user: &str, size: &str, entry: &str, open: bool, pnl: Option<&str>) -> Position {
    Position {
        id: id.into(),
        user: user.into(),
        symbol: "ETH-PERP".into(),
        size: d(size),
        entry_price: d(entry),
        status: if open {
            PositionStatus::Open
        } else {
            PositionStatus::Closed
        },
        realized_pnl: pnl.map(d),
    }
}

/// (user, kind, reversal, points) of each entry, for compact assertions;
/// points compare by value (950.000 = 950).
fn summary(entries: &[LedgerEntry]) -> Vec<(String, EntryKind, bool, Decimal)> {
    entries
        .iter()
        .map(|e| (e.user.clone(), e.kind, e.reversal, e.points))
        .collect()
}

fn s(
    user: &str,
    kind: EntryKind,
    reversal: bool,
    points: &str,
) -> (String, EntryKind, bool, Decimal) {
    (user.into(), kind, reversal, d(points))
}

use EntryKind::*;

#[test]
fn tiers_cross_a_threshold_without_splitting_a_fill() {
    let mut h = Harness::new("");
    // 50,000 × 1.9 = 95,000 notional; both sides at volume 0 → ×1.00.
    // Alice: 95,000 × 0.01 = 950; Bob: 95,000 × 0.005 = 475.
    let out = h.tx(
        G + H,
        vec![fill("1", "50000", "1.9", "0xAlice", "0xBob", G + H)],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "950.000"),
            s("0xbob", TradingMaker, false, "475.0000"),
        ]
    );
    // 10,000 notional; volume before is 95,000 < 100,000 → still ×1.00 even
    // though it ends at 105,000 (a fill is never split).
    let out = h.tx(
        G + 2 * H,
        vec![fill("2", "10000", "1", "0xalice", "0xbob", G + 2 * H)],
    );
    assert_eq!(out.entries[0].points, d("100"));
    assert_eq!(out.entries[0].multiplier, d("1.00"));
    assert_eq!(out.entries[1].points, d("50"));
    // Volume before is now 105,000 ≥ 100,000 → ×1.10. Negative amount: |amount|.
    // 2469 × 0.5 = 1,234.5; Alice 1,234.5 × 0.01 × 1.10 = 13.5795;
    // Bob 1,234.5 × 0.005 × 1.10 = 6.78975.
    let out = h.tx(
        G + 3 * H,
        vec![fill("3", "2469", "-0.5", "0xALICE", "0xBOB", G + 3 * H)],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "13.579500"),
            s("0xbob", TradingMaker, false, "6.789750"),
        ]
    );
    assert_eq!(out.entries[0].multiplier, d("1.10"));
    // Rounding to 6 dp half away from zero: Carol (volume 0) takes
    // 12.3456789: 0.123456789 → 0.123457; Alice (×1.10) makes:
    // 12.3456789 × 0.005 × 1.10 = 0.06790123395 → 0.067901.
    let out = h.tx(
        G + 4 * H,
        vec![fill(
            "4",
            "12.3456789",
            "1",
            "0xcarol",
            "0xalice",
            G + 4 * H,
        )],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xcarol", TradingTaker, false, "0.123457"),
            s("0xalice", TradingMaker, false, "0.067901"),
        ]
    );
    assert_eq!(h.state.volume("0xALICE", 0), d("106246.8456789"));
    assert_eq!(out.entries[0].ordinal, 0);
    assert_eq!(out.entries[1].ordinal, 1);
    assert_eq!(&*out.entries[0].rules_version, RuleSet::default().version());
}

#[test]
fn self_trade_excluded_below_minimum_and_before_genesis_earn_nothing() {
    let mut h = Harness::new(r#"excluded_addresses = ["0xLIQUIDATOR"]"#);
    let out = h.tx(
        G + H,
        vec![
            fill("1", "100", "5", "0xAA", "0xaa", G + H), // self-trade
            fill("2", "100", "5", "0xaa", "0xliquidator", G + H), // excluded
            fill("3", "9.99", "1", "0xaa", "0xbb", G + H), // 9.99 < 10
            fill("4", "100", "5", "0xaa", "0xbb", G - 1), // before genesis
            fill("5", "10", "1", "0xaa", "0xbb", G + H),  // exactly 10: eligible
        ],
    );
    assert_eq!(out.counters.rejected(Rejection::SelfTrade), 1);
    assert_eq!(out.counters.rejected(Rejection::ExcludedFill), 1);
    assert_eq!(out.counters.rejected(Rejection::BelowMinNotional), 1);
    assert_eq!(out.counters.rejected(Rejection::BeforeGenesis), 1);
    assert_eq!(out.counters.fills_awarded, 1);
    // Only fill 5: 10 × 0.01 = 0.1 and 10 × 0.005 = 0.05.
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xaa", TradingTaker, false, "0.100"),
            s("0xbb", TradingMaker, false, "0.0500"),
        ]
    );
    assert_eq!(out.entries[0].trade_id.as_deref(), Some("5"));
    assert_eq!(h.state.volume("0xaa", 0), d("10"));
}

#[test]
fn level1_and_level2_referrals() {
    let mut h = Harness::new("[referral]\nlevel2_share = 0.05");
    // A fill before the link earns no referral points.
    let out = h.tx(
        G + H,
        vec![fill("0", "100", "1", "0xalice", "0xdave", G + H)],
    );
    assert_eq!(out.entries.len(), 2);
    // Bob referred Alice; Carol referred Bob.
    h.tx(
        G + H,
        vec![link("0xAlice", "0xBob"), link("0xbob", "0xcarol")],
    );
    assert_eq!(h.state.referrer_of("0xALICE"), Some("0xbob"));
    // 2,000 × 10 = 20,000: Alice P = 200; Bob 10% = 20; Carol 5% = 10.
    // Dave (maker) has no referrer: 20,000 × 0.005 = 100.
    let out = h.tx(
        G + 2 * H,
        vec![fill("1", "2000", "10", "0xalice", "0xdave", G + 2 * H)],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "200.00"),
            s("0xbob", ReferralL1, false, "20.0000"),
            s("0xcarol", ReferralL2, false, "10.0000"),
            s("0xdave", TradingMaker, false, "100.000"),
        ]
    );
    assert_eq!(out.entries[1].referee.as_deref(), Some("0xalice"));
    assert_eq!(out.entries[1].basis, d("200"));
    assert_eq!(out.entries[2].rate, d("0.05"));
    // Referral shares use P as rounded: 12.3456789 × 0.01 = 0.123456789 →
    // P = 0.123457; Bob 0.0123457 → 0.012346; Carol 0.00617285 → 0.006173.
    let out = h.tx(
        G + 2 * H,
        vec![fill("2", "12.3456789", "1", "0xalice", "0xdave", G + 2 * H)],
    );
    assert_eq!(out.entries[1].points.to_string(), "0.012346");
    assert_eq!(out.entries[2].points.to_string(), "0.006173");
    // Referral points add no volume and earn no referral points.
    assert_eq!(h.state.volume("0xbob", 0), Decimal::ZERO);
}

#[test]
fn level2_share_zero_writes_no_entry() {
    let mut h = Harness::new("");
    h.tx(G, vec![link("0xa", "0xb"), link("0xb", "0xc")]);
    let out = h.tx(G + H, vec![fill("1", "100", "1", "0xa", "0xz", G + H)]);
    // 100 × 0.01 = 1; Bob 0.1; nothing for Carol.
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xa", TradingTaker, false, "1.00"),
            s("0xb", ReferralL1, false, "0.1000"),
            s("0xz", TradingMaker, false, "0.500"),
        ]
    );
}

#[test]
fn rejected_self_referral_cycle_and_rebind() {
    let mut h = Harness::new("");
    let out = h.tx(
        G,
        vec![
            link("0xA", "0xa"), // self
            link("0xa", "0xb"), // a ← b
            link("0xb", "0xc"), // b ← c
            link("0xc", "0xA"), // c ← a would close a → b → c → a
            link("0xa", "0xd"), // rebind: ignored, first binding stands
            link("0xa", "0xb"), // same link again: no-op
        ],
    );
    assert_eq!(out.counters.rejected(Rejection::ReferralSelf), 1);
    assert_eq!(out.counters.rejected(Rejection::ReferralCycle), 1);
    assert_eq!(out.counters.rejected(Rejection::ReferralRebindIgnored), 1);
    assert_eq!(out.counters.referrals_bound, 2);
    assert_eq!(h.state.referrer_of("0xa"), Some("0xb"));
    assert_eq!(h.state.referrer_of("0xc"), None);
    // Update changing the referrer: also ignored without allow_rebind.
    let out = h.tx(
        G,
        vec![Event::ReferralUpdated {
            old: None,
            new: ReferralLink {
                referee: "0xa".into(),
                referrer: "0xe".into(),
            },
        }],
    );
    assert_eq!(out.counters.rejected(Rejection::ReferralRebindIgnored), 1);
    // A delete naming a referrer that is not in force changes nothing;
    // the real one unbinds from then on.
    h.tx(
        G,
        vec![Event::ReferralDeleted {
            referee: "0xa".into(),
            referrer: Some("0xd".into()),
        }],
    );
    assert_eq!(h.state.referrer_of("0xa"), Some("0xb"));
    let out = h.tx(
        G,
        vec![Event::ReferralDeleted {
            referee: "0xA".into(),
            referrer: None,
        }],
    );
    assert_eq!(out.counters.referrals_unbound, 1);
    assert_eq!(h.state.referrer_of("0xa"), None);
    let out = h.tx(G + H, vec![fill("1", "100", "1", "0xa", "0xz", G + H)]);
    assert_eq!(out.entries.len(), 2, "no referral after the unbind");
}

#[test]
fn rebind_allowed_when_configured() {
    let mut h = Harness::new("[referral]\nallow_rebind = true");
    h.tx(G, vec![link("0xa", "0xb"), link("0xa", "0xd")]);
    assert_eq!(h.state.referrer_of("0xa"), Some("0xd"));
    // Still no cycles: d ← a would close a → d → a.
    let out = h.tx(G, vec![link("0xd", "0xa")]);
    assert_eq!(out.counters.rejected(Rejection::ReferralCycle), 1);
}

#[test]
fn position_opened_resized_closed_in_profit_across_hour_and_epoch() {
    let mut h = Harness::new("");
    // 2026-01-12T00:00:00Z. Open at 23:30 on the last day of epoch 0: 2 × 1,000 = 2,000 notional.
    let epoch1 = G + 168 * H;
    let out = h.tx(
        epoch1 - 30 * M,
        vec![Event::PositionInserted {
            new: pos("p1", "0xAlice", "2", "1000", true, None),
        }],
    );
    assert!(
        out.entries.is_empty(),
        "a segment is written once it has ended"
    );
    // A heartbeat at 00:10 crosses the hour (and epoch) boundary:
    // [23:30, 00:00) = 1,800 s × 2,000 = 3,600,000 notional-seconds;
    // 0.002 × 3,600,000 / 86,400 = 0.08333… → 0.083333, in epoch 0.
    let out = h.tx(epoch1 + 10 * M, vec![]);
    assert_eq!(
        summary(&out.entries),
        vec![s("0xalice", Holding, false, "0.083333")]
    );
    let e = &out.entries[0];
    assert_eq!(
        (e.epoch, e.basis, e.segment_start, e.event_time),
        (0, d("3600000"), Some(epoch1 - 30 * M), epoch1)
    );
    assert_eq!(e.position_notional, Some(d("2000")));
    // Resize at 00:20 to 3 × 1,000 = 3,000: [00:00, 00:20) = 1,200 s × 2,000
    // = 2,400,000 → 0.002 × 2,400,000 / 86,400 = 0.05555… → 0.055556, epoch 1.
    let out = h.tx(
        epoch1 + 20 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p1", "0xalice", "-3", "1000", true, None),
        }],
    );
    assert_eq!(
        summary(&out.entries),
        vec![s("0xalice", Holding, false, "0.055556")]
    );
    assert_eq!(out.entries[0].epoch, 1);
    // An update that changes nothing points-relevant does not cut.
    let out = h.tx(
        epoch1 + 30 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p1", "0xALICE", "3", "1000.0", true, None),
        }],
    );
    assert!(out.entries.is_empty());
    // Close at 01:05 with realized PnL 150. First the 01:00 boundary credits
    // [00:20, 01:00) = 2,400 s × 3,000 = 7,200,000 → 0.1666… → 0.166667, and
    // writes nothing (the segment goes on); then the close cuts the segment
    // [00:20, 01:05): its last part [01:00, 01:05) = 300 s × 3,000 = 900,000 →
    // 0.0208333… → 0.020833 is credited, and its row holds both hours' credits,
    // 0.187500; then PnL 150 × 0.05 = 7.5.
    let out = h.tx(
        epoch1 + H + 5 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p1", "0xalice", "0", "1000", false, Some("150")),
        }],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", Holding, false, "0.187500"),
            s("0xalice", Pnl, false, "7.50"),
        ]
    );
    let e = &out.entries[0];
    assert_eq!(
        (e.basis, e.segment_start, e.event_time),
        (d("8100000"), Some(epoch1 + 20 * M), epoch1 + H + 5 * M)
    );
    let credited: Vec<Decimal> = out.credits.iter().map(|c| c.points).collect();
    assert_eq!(credited, vec![d("0.166667"), d("0.020833")]);
    assert_eq!(
        out.entries.iter().map(|e| e.ordinal).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert_eq!(out.entries[1].epoch, 1);
    assert_eq!(h.state.open_positions(), 0);
    // Exact integral: 14,100,000 notional-seconds × 0.002 / 86,400 =
    // 0.3263888…; the three segments, like the four credits, sum to 0.326389.
    let holding: Decimal = h
        .ledger
        .iter()
        .filter(|e| e.kind == Holding)
        .map(|e| e.points)
        .sum();
    assert_eq!(holding, d("0.326389"));
    let credited: Decimal = h.credits.iter().map(|c| c.points).sum();
    assert_eq!(credited, d("0.326389"));
    let totals = fold_totals(&h.ledger, &h.credits).unwrap();
    assert_eq!(
        totals[&("0xalice".to_string(), 0)].holding_points,
        d("0.083333")
    );
    assert_eq!(
        totals[&("0xalice".to_string(), 1)].holding_points,
        d("0.243056")
    );
    assert_eq!(totals[&("0xalice".to_string(), 1)].pnl_points, d("7.5"));
    assert_eq!(
        totals[&("0xalice".to_string(), 1)].total_points,
        d("7.743056")
    );
    // Nothing more is written for it.
    assert!(h.tx(epoch1 + 5 * H, vec![]).entries.is_empty());
}

#[test]
fn close_at_a_loss_earns_no_pnl_and_pnl_is_paid_once() {
    let mut h = Harness::new("");
    h.tx(
        G,
        vec![Event::PositionInserted {
            new: pos("p1", "0xbob", "1", "100", true, None),
        }],
    );
    // Closed at a loss half an hour later: holding 1,800 s × 100 = 180,000
    // → 0.002 × 180,000 / 86,400 = 0.0041666… → 0.004167; no PnL.
    let out = h.tx(
        G + 30 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p1", "0xbob", "1", "100", false, Some("-50")),
        }],
    );
    assert_eq!(
        summary(&out.entries),
        vec![s("0xbob", Holding, false, "0.004167")]
    );
    assert!(!h.state.pnl_paid("p1"));
    // An update of an already-closed row earns nothing.
    let out = h.tx(
        G + 40 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p1", "0xbob", "1", "100", false, Some("80")),
        }],
    );
    assert!(out.entries.is_empty());
    // Inserted as closed in profit: 20 × 0.05 = 1; a second close of the
    // same id (re-insert) is not paid again.
    let p2 = || Event::PositionInserted {
        new: pos("p2", "0xbob", "0", "100", false, Some("20")),
    };
    let out = h.tx(G + 50 * M, vec![p2()]);
    assert_eq!(summary(&out.entries), vec![s("0xbob", Pnl, false, "1.00")]);
    let out = h.tx(G + 55 * M, vec![p2()]);
    assert!(out.entries.is_empty());
    // Below min notional (5 × 1 = 5 < 10): no holding entries.
    h.tx(
        G + H,
        vec![Event::PositionInserted {
            new: pos("p3", "0xbob", "5", "1", true, None),
        }],
    );
    let out = h.tx(G + 3 * H, vec![Event::PositionDeleted { id: "p3".into() }]);
    assert!(out.entries.is_empty());
}

#[test]
fn trade_correction_and_delete_reverse_exactly() {
    let mut h = Harness::new("");
    h.tx(G, vec![link("0xbob", "0xcarol")]);
    // 100 × 10 = 1,000: Alice 10, Bob 5, Carol (Bob's referrer) 0.5.
    let out = h.tx(
        G + H,
        vec![fill("t1", "100", "10", "0xalice", "0xbob", G + H)],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "10.00"),
            s("0xbob", TradingMaker, false, "5.000"),
            s("0xcarol", ReferralL1, false, "0.5000"),
        ]
    );
    // Correction: amount 10 → 20. Everything is reversed (at the
    // correction's commit time), then the 2,000 fill is awarded anew.
    let out = h.tx(
        G + 2 * H,
        vec![Event::TradeUpdated {
            old: None,
            new: trade("t1", "100", "20", "0xalice", "0xbob", G + H),
        }],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, true, "-10.00"),
            s("0xbob", TradingMaker, true, "-5.000"),
            s("0xcarol", ReferralL1, true, "-0.5000"),
            s("0xalice", TradingTaker, false, "20.00"),
            s("0xbob", TradingMaker, false, "10.000"),
            s("0xcarol", ReferralL1, false, "1.0000"),
        ]
    );
    assert_eq!(out.entries[0].event_time, G + 2 * H);
    assert_eq!(out.entries[0].basis, d("-1000"));
    assert_eq!(out.entries[3].event_time, G + H);
    assert_eq!(out.counters.trade_corrections, 1);
    assert_eq!(h.state.volume("0xalice", 0), d("2000"));
    // A symbol-only update changes nothing.
    let mut t = trade("t1", "100", "20", "0xALICE", "0xbob", G + H);
    t.symbol = "ETH-PERP".into();
    let out = h.tx(G + 2 * H, vec![Event::TradeUpdated { old: None, new: t }]);
    assert!(out.entries.is_empty());
    assert_eq!(out.counters.trade_updates_unchanged, 1);
    // Delete: only reverses the latest award.
    let out = h.tx(G + 3 * H, vec![Event::TradeDeleted { id: "t1".into() }]);
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, true, "-20.00"),
            s("0xbob", TradingMaker, true, "-10.000"),
            s("0xcarol", ReferralL1, true, "-1.0000"),
        ]
    );
    assert_eq!(h.state.volume("0xalice", 0), Decimal::ZERO);
    assert_eq!(h.state.volume("0xbob", 0), Decimal::ZERO);
    let net: Decimal = h
        .ledger
        .iter()
        .filter(|e| e.trade_id.as_deref() == Some("t1"))
        .map(|e| e.points)
        .sum();
    assert_eq!(net, Decimal::ZERO);
    assert!(h.book.is_empty());
}

#[test]
fn correcting_an_ineligible_fill_awards_it_and_unknown_trades_are_ignored() {
    let mut h = Harness::new("");
    // Self-trade: nothing, but remembered.
    h.tx(G + H, vec![fill("t1", "100", "1", "0xa", "0xA", G + H)]);
    let out = h.tx(
        G + H,
        vec![Event::TradeUpdated {
            old: None,
            new: trade("t1", "100", "1", "0xa", "0xb", G + H),
        }],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xa", TradingTaker, false, "1.00"),
            s("0xb", TradingMaker, false, "0.500")
        ]
    );
    // Never-seen trades: an update is ignored, a delete has nothing to reverse.
    let out = h.tx(
        G + H,
        vec![
            Event::TradeUpdated {
                old: None,
                new: trade("t9", "100", "1", "0xa", "0xb", G + H),
            },
            Event::TradeDeleted { id: "t8".into() },
        ],
    );
    assert!(out.entries.is_empty());
    assert_eq!(out.counters.rejected(Rejection::UnknownTradeUpdate), 1);
    assert_eq!(out.counters.rejected(Rejection::UnknownTradeDelete), 1);
}

#[test]
fn trade_without_time_column_uses_commit_time_and_keeps_it() {
    let mut h = Harness::new("");
    let mut t = trade("t1", "100", "1", "0xa", "0xb", 0);
    t.time = None;
    let out = h.tx(G + H, vec![Event::TradeInserted { new: t.clone() }]);
    assert_eq!(out.entries[0].event_time, G + H);
    // A later update with no time column and the same values: unchanged.
    let out = h.tx(G + 2 * H, vec![Event::TradeUpdated { old: None, new: t }]);
    assert!(out.entries.is_empty());
    assert_eq!(out.counters.trade_updates_unchanged, 1);
}

#[test]
fn a_bad_event_is_reported_and_leaves_no_trace() {
    let mut h = Harness::new("");
    let huge = "79228162514264337593543950335"; // Decimal::MAX
    let out = h.tx(
        G + H,
        vec![
            fill("t1", "-1", "1", "0xa", "0xb", G + H),
            fill("t2", huge, "2", "0xa", "0xb", G + H),
            Event::PositionInserted {
                new: pos("p1", "0xa", huge, "1", true, None),
            },
            fill("t3", "100", "1", "0xa", "0xb", G + H),
        ],
    );
    let idx: Vec<_> = out.errors.iter().map(|f| f.index).collect();
    assert_eq!(idx, vec![Some(0), Some(1), Some(2)]);
    assert!(matches!(out.errors[0].error, EventError::Invalid(_)));
    assert!(matches!(out.errors[1].error, EventError::Overflow(_)));
    assert_eq!(out.counters.events_failed, 3);
    assert_eq!(out.entries.len(), 2);
    assert_eq!(out.entries[0].ordinal, 0);
    assert_eq!(h.state.volume("0xa", 0), d("100"));
    assert_eq!(h.state.open_positions(), 0);
    assert_eq!(h.book.len(), 1);
}

#[test]
fn stream_time_never_goes_backwards_and_heartbeats_settle() {
    let mut h = Harness::new("");
    h.tx(
        G + 10 * M,
        vec![Event::PositionInserted {
            new: pos("p1", "0xa", "1", "360", true, None),
        }],
    );
    // A commit time earlier than stream time is treated as stream time.
    let out = h.tx(G + 5 * M, vec![]);
    assert!(out.entries.is_empty());
    assert_eq!(h.state.stream_time(), Some(G + 10 * M));
    // Heartbeats crossing two hours credit 50 min and 60 min of 360, one
    // credit for the user and epoch, and write no entry (the segment goes on):
    // 3,000 s × 360 = 1,080,000 → 0.025; 3,600 s × 360 = 1,296,000 → 0.03.
    let out = h.tx(G + 2 * H + M, vec![]);
    assert!(out.entries.is_empty());
    assert_eq!(
        out.credits,
        vec![HoldingCredit {
            user: "0xa".into(),
            epoch: 0,
            points: d("0.055")
        }]
    );
    // A corrupt jump years ahead is refused and changes nothing.
    let before = serde_json::to_string(&h.state).unwrap();
    let err = h
        .engine
        .apply_transaction(
            &mut h.state,
            &mut h.book,
            &TxEvents {
                commit_lsn: 99,
                commit_time: G + 400 * 24 * H,
                events: vec![],
            },
        )
        .unwrap_err();
    assert!(matches!(err, StreamError::TimeJump { .. }));
    assert_eq!(serde_json::to_string(&h.state).unwrap(), before);
}

#[test]
fn segments_end_at_epoch_boundaries_ordered_by_boundary_then_position_id() {
    // Epochs of 2 hours: a transaction 5 hours on crosses the boundaries at 2 h and 4 h.
    let mut h = Harness::new("[epoch]\nlength = \"2h\"");
    h.tx(
        G,
        vec![
            Event::PositionInserted {
                new: pos("b", "0xa", "1", "100", true, None),
            },
            Event::PositionInserted {
                new: pos("a", "0xb", "1", "100", true, None),
            },
        ],
    );
    let out = h.tx(G + 5 * H, vec![]);
    let ids: Vec<_> = out
        .entries
        .iter()
        .map(|e| {
            (
                e.epoch,
                e.segment_start,
                e.event_time,
                e.position_id.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (0, Some(G), G + 2 * H, "a".to_string()),
            (0, Some(G), G + 2 * H, "b".to_string()),
            (1, Some(G + 2 * H), G + 4 * H, "a".to_string()),
            (1, Some(G + 2 * H), G + 4 * H, "b".to_string()),
        ]
    );
    // 100 for 2 hours: 2 × round(0.002 × 360,000 / 86,400) = 2 × 0.008333.
    assert!(out.entries.iter().all(|e| e.points == d("0.016666")));
    // Five hours credited per user, in three epochs: 2 + 2 + 1.
    let credited: Vec<_> = out
        .credits
        .iter()
        .map(|c| (c.user.as_str(), c.epoch, c.points))
        .collect();
    assert_eq!(
        credited,
        vec![
            ("0xa", 0, d("0.016666")),
            ("0xa", 1, d("0.016666")),
            ("0xa", 2, d("0.008333")),
            ("0xb", 0, d("0.016666")),
            ("0xb", 1, d("0.016666")),
            ("0xb", 2, d("0.008333")),
        ]
    );
    // What the totals hold beyond the ledger: the open segments' credits.
    let open = h.engine.open_segment_credits(&h.state).unwrap();
    assert_eq!(open[&("0xa".to_string(), 2)], d("0.008333"));
    assert_eq!(open.len(), 2);
}

#[test]
fn a_rules_change_ends_the_open_segments_under_the_old_rules() {
    let mut h = Harness::new("");
    h.tx(
        G + 30 * M,
        vec![Event::PositionInserted {
            new: pos("p1", "0xa", "1", "360", true, None),
        }],
    );
    // Credited under the default rate (0.002 a day): [00:30, 01:00) and [01:00, 02:00) of 360:
    // 0.015 + 0.03.
    h.tx(G + 2 * H + 10 * M, vec![]);
    // Now the rate doubles. The first transaction under the new rules writes the segment the
    // old rules credited, [00:30, 02:00) = 0.045, and the next segment starts at 02:00.
    let old = h.engine.clone();
    let rules: RuleSet = toml::from_str("[holding]\nrate_per_day = 0.004").unwrap();
    h.engine = Engine::new(rules).unwrap();
    h.lsn += 1;
    let tx = TxEvents {
        commit_lsn: h.lsn,
        commit_time: G + 3 * H + 30 * M,
        events: vec![Event::PositionDeleted { id: "p1".into() }],
    };
    let out = h
        .engine
        .apply_transaction_after(Some(&old), &mut h.state, &mut h.book, &tx)
        .unwrap();
    let segments: Vec<_> = out
        .entries
        .iter()
        .map(|e| (e.segment_start, e.event_time, e.points, e.rate))
        .collect();
    // Then [02:00, 03:30) under the new rate: 0.06 + 0.03.
    assert_eq!(
        segments,
        vec![
            (Some(G + 30 * M), G + 2 * H, d("0.045"), d("0.002")),
            (Some(G + 2 * H), G + 3 * H + 30 * M, d("0.09"), d("0.004")),
        ]
    );
    let credited: Vec<Decimal> = out.credits.iter().map(|c| c.points).collect();
    assert_eq!(credited, vec![d("0.06"), d("0.03")]);
    // The same rules as before change nothing.
    let mut again = Harness::new("");
    again.tx(
        G,
        vec![Event::PositionInserted {
            new: pos("p1", "0xa", "1", "360", true, None),
        }],
    );
    let same = again.engine.clone();
    let tx = TxEvents {
        commit_lsn: 9,
        commit_time: G + 2 * H,
        events: vec![],
    };
    let out = again
        .engine
        .apply_transaction_after(Some(&same), &mut again.state, &mut again.book, &tx)
        .unwrap();
    assert!(out.entries.is_empty());
}

#[test]
fn state_delta_round_trip_matches_full_state() {
    let mut h = Harness::new("");
    h.state.enable_change_tracking();
    let mut rebuilt = State::new();
    h.tx(
        G,
        vec![
            link("0xa", "0xb"),
            Event::PositionInserted {
                new: pos("p", "0xa", "1", "100", true, None),
            },
        ],
    );
    rebuilt.apply_delta(h.state.drain_delta()).unwrap();
    h.tx(G + H, vec![fill("t", "100", "1", "0xa", "0xc", G + H)]);
    rebuilt.apply_delta(h.state.drain_delta()).unwrap();
    h.tx(
        G + 2 * H,
        vec![
            Event::PositionUpdated {
                old: None,
                new: pos("p", "0xa", "1", "100", false, Some("5")),
            },
            Event::ReferralDeleted {
                referee: "0xa".into(),
                referrer: None,
            },
        ],
    );
    let delta = h.state.drain_delta();
    assert!(delta
        .positions
        .iter()
        .any(|p| p.id == "p" && p.open.is_none()));
    assert_eq!(delta.pnl_paid, vec!["p".to_string()]);
    rebuilt.apply_delta(delta).unwrap();
    assert!(h.state.drain_delta().is_empty());
    assert_eq!(rebuilt.to_delta(), h.state.to_delta());
}

/// The example in README-points.md, "Points rules".
#[test]
fn readme_worked_example() {
    let mut h = Harness::new("");
    h.tx(G, vec![link("0xalice", "0xbob")]);
    // Mon 2026-01-05 10:00 UTC: Alice buys 2 BTC-PERP at 30,000 from Carol.
    let out = h.tx(
        G + 10 * H,
        vec![fill("1", "30000", "2", "0xalice", "0xcarol", G + 10 * H)],
    );
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "600.00"),
            s("0xbob", ReferralL1, false, "60.0000"),
            s("0xcarol", TradingMaker, false, "300.000"),
        ]
    );
    // 10:30 Alice opens a 60,000 position; 12:30 she closes it, +1,000 PnL.
    h.tx(
        G + 10 * H + 30 * M,
        vec![Event::PositionInserted {
            new: pos("p", "0xalice", "2", "30000", true, None),
        }],
    );
    let out = h.tx(
        G + 12 * H + 30 * M,
        vec![Event::PositionUpdated {
            old: None,
            new: pos("p", "0xalice", "0", "30000", false, Some("1000")),
        }],
    );
    // Credited: [10:30,11:00) 1,800 s → 0.002 × 60,000 × 1,800 / 86,400 = 2.5;
    // [11:00,12:00) → 5; [12:00,12:30) → 2.5. One segment entry of 10; PnL
    // 1,000 × 0.05 = 50.
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", Holding, false, "10"),
            s("0xalice", Pnl, false, "50")
        ]
    );
    // The two hours passed in one transaction: one credit for Alice's epoch 0.
    let credited: Vec<Decimal> = h.credits.iter().map(|c| c.points).collect();
    assert_eq!(credited, vec![d("7.5"), d("2.5")]);
    // Alice's second fill, 150,000 notional, is still at ×1.00 (60,000 before);
    // her third, at 210,000 before it, gets ×1.10: 10,000 × 0.01 × 1.1 = 110.
    h.tx(
        G + 13 * H,
        vec![fill("2", "30000", "5", "0xalice", "0xcarol", G + 13 * H)],
    );
    let out = h.tx(
        G + 14 * H,
        vec![fill("3", "10000", "1", "0xalice", "0xcarol", G + 14 * H)],
    );
    // Carol also had 210,000 before it: 10,000 × 0.005 × 1.1 = 55.
    assert_eq!(
        summary(&out.entries),
        vec![
            s("0xalice", TradingTaker, false, "110"),
            s("0xbob", ReferralL1, false, "11"),
            s("0xcarol", TradingMaker, false, "55"),
        ]
    );
    let totals = fold_totals(&h.ledger, &h.credits).unwrap();
    let alice = &totals[&("0xalice".to_string(), 0)];
    // 600 + 1,500 + 110 trading, 10 holding, 50 PnL.
    assert_eq!(alice.trading_points, d("2210"));
    assert_eq!(alice.holding_points, d("10"));
    assert_eq!(alice.pnl_points, d("50"));
    assert_eq!(alice.total_points, d("2270"));
    assert_eq!(alice.trading_volume, d("220000"));
    // Bob: 10% of 600 + 1,500 + 110.
    assert_eq!(totals[&("0xbob".to_string(), 0)].referral_points, d("221"));
    // Carol: 300 + 750 + 55.
    let carol = &totals[&("0xcarol".to_string(), 0)];
    assert_eq!(carol.trading_points, d("1105"));
    assert_eq!(carol.trading_volume, d("220000"));
}

/// A transaction fed to the engine in chunks (as the daemon does with big
/// ones) gives exactly the entries, ordinals, counters and failures of the
/// same transaction applied whole.
#[test]
fn a_transaction_in_chunks_equals_it_whole() {
    let mut events = vec![
        link("0xb", "0xa"),
        link("0xc", "0xb"),
        Event::PositionInserted {
            new: pos("p1", "0xa", "2", "100", true, None),
        },
    ];
    for i in 0..40 {
        let taker = ["0xa", "0xb", "0xc", "0xd"][i % 4];
        let maker = ["0xd", "0xc", "0xa", "0xb"][i % 4];
        events.push(fill(
            &format!("t{i}"),
            "1000",
            "30",
            taker,
            maker,
            G + 2 * H,
        ));
        if i % 9 == 4 {
            // A negative price fails and must leave no trace in either run.
            events.push(fill(&format!("bad{i}"), "-1", "1", taker, maker, G + 2 * H));
        }
        if i % 7 == 3 {
            events.push(Event::TradeDeleted {
                id: format!("t{}", i - 2),
            });
        }
    }
    let toml = "[referral]\nlevel2_share = 0.05\n";
    let mut whole = Harness::new(toml);
    whole.tx(
        G + H,
        vec![Event::PositionInserted {
            new: pos("p0", "0xd", "1", "50", true, None),
        }],
    );
    let expected = whole.tx(G + 3 * H + 5, events.clone());

    for chunk in [1, 3, 7, 100] {
        let mut h = Harness::new(toml);
        h.tx(
            G + H,
            vec![Event::PositionInserted {
                new: pos("p0", "0xd", "1", "50", true, None),
            }],
        );
        let (mut cursor, mut got) = h
            .engine
            .begin_transaction(&mut h.state, 2, G + 3 * H + 5)
            .unwrap();
        for (k, part) in events.chunks(chunk).enumerate() {
            let out = h
                .engine
                .apply_events(&mut cursor, &mut h.state, &mut h.book, part);
            got.entries.extend(out.entries);
            got.fills.extend(out.fills);
            got.credits.extend(out.credits);
            got.counters.merge(&out.counters);
            got.errors.extend(out.errors.into_iter().map(|mut f| {
                f.index = f.index.map(|i| i + k * chunk);
                f
            }));
        }
        assert_eq!(got, expected, "chunks of {chunk}");
    }
}

/// Open positions live in a dense table whose removals move the last slot:
/// every id must still find its own position after any mix of puts and
/// removals, and settlement must still see them in id order.
#[test]
fn positions_survive_removals_in_any_order() {
    let mut state = State::new();
    let row = |i: u32| PositionRow {
        id: format!("p{i:03}"),
        open: Some(OpenPositionRow {
            user: format!("0x{i}"),
            notional: Decimal::from(i + 1),
            since: i64::from(i),
        }),
    };
    let gone = |i: u32| PositionRow {
        id: format!("p{i:03}"),
        open: None,
    };
    let apply = |state: &mut State, positions: Vec<PositionRow>| {
        state
            .apply_delta(StateDelta {
                positions,
                ..StateDelta::default()
            })
            .unwrap();
    };
    apply(&mut state, (0..60).map(row).collect());
    apply(
        &mut state,
        (0..60).filter(|i| i % 3 == 0).map(gone).collect(),
    );
    apply(
        &mut state,
        (0..60).filter(|i| i % 6 == 0).map(row).collect(),
    );
    apply(&mut state, vec![gone(59), gone(1), gone(58)]);
    for i in 0..60u32 {
        let open = i % 3 != 0 || i % 6 == 0;
        let open = open && ![59, 1, 58].contains(&i);
        assert_eq!(
            state.open_position(&format!("p{i:03}")),
            row(i).open.filter(|_| open),
            "p{i:03}"
        );
    }
    let ids: Vec<String> = state
        .to_delta()
        .positions
        .into_iter()
        .map(|p| p.id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), state.open_positions());
}
