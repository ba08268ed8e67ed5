//! Properties over random event streams (small universes so that ids,
//! addresses, hour and epoch boundaries collide often).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::time::{floor_hour, MICROS_PER_SECOND};

const H: i64 = MICROS_PER_HOUR;
/// 2026-01-05T00:00:00Z.
const G: i64 = 1_767_571_200_000_000;

/// Short epochs and a non-zero level-2 share so every rule is exercised.
const RULES: &str = r#"
excluded_addresses = ["0xA5"]
[epoch]
length = "3h"
[referral]
level2_share = 0.05
[[tiers]]
min_volume = 0
multiplier = 1
[[tiers]]
min_volume = 1000
multiplier = 1.5
[[tiers]]
min_volume = 5000
multiplier = 2
"#;

#[derive(Debug, Clone)]
enum Op {
    Fill {
        price: u32,
        amount: i32,
        taker: u8,
        maker: u8,
        time: Option<i32>,
        upper: bool,
    },
    Correct {
        pick: u8,
        price: u32,
        amount: i32,
        taker: u8,
        maker: u8,
        with_old: bool,
    },
    DeleteTrade {
        pick: u8,
    },
    Pos {
        id: u8,
        user: u8,
        size: i32,
        price: u32,
        open: bool,
        pnl: i32,
        insert: bool,
    },
    DeletePos {
        id: u8,
    },
    Link {
        referee: u8,
        referrer: u8,
        kind: u8,
    },
}

#[derive(Debug, Clone)]
struct TxSpec {
    /// Commit-time step in seconds (may be negative: commit times are not
    /// guaranteed monotonic) plus a sub-second part in micros.
    dt_secs: i32,
    dt_micros: i32,
    ops: Vec<Op>,
}

fn op() -> impl Strategy<Value = Op> {
    let addr = 0u8..6;
    prop_oneof![
        4 => (1u32..5_000, -300i32..300, addr.clone(), addr.clone(), prop::option::of(-10_800i32..3_600), any::<bool>())
            .prop_map(|(price, amount, taker, maker, time, upper)| Op::Fill { price, amount, taker, maker, time, upper }),
        1 => (any::<u8>(), 1u32..5_000, -300i32..300, addr.clone(), addr.clone(), any::<bool>())
            .prop_map(|(pick, price, amount, taker, maker, with_old)| Op::Correct { pick, price, amount, taker, maker, with_old }),
        1 => any::<u8>().prop_map(|pick| Op::DeleteTrade { pick }),
        3 => (0u8..4, addr.clone(), -50i32..50, 0u32..3_000, prop::bool::weighted(0.7), -500i32..500, any::<bool>())
            .prop_map(|(id, user, size, price, open, pnl, insert)| Op::Pos { id, user, size, price, open, pnl, insert }),
        1 => (0u8..4).prop_map(|id| Op::DeletePos { id }),
        2 => (addr.clone(), addr, 0u8..3).prop_map(|(referee, referrer, kind)| Op::Link { referee, referrer, kind }),
    ]
}

fn txs() -> impl Strategy<Value = Vec<TxSpec>> {
    let tx = (
        prop_oneof![6 => 0i32..2_400, 2 => 2_400i32..10_000, 1 => -600i32..0],
        0i32..1_000_000,
        prop::collection::vec(op(), 0..6),
    )
        .prop_map(|(dt_secs, dt_micros, ops)| TxSpec {
            dt_secs,
            dt_micros,
            ops,
        });
    prop::collection::vec(tx, 1..25)
}

fn addr(i: u8, upper: bool) -> String {
    if upper {
        format!("0xA{i}")
    } else {
        format!("0xa{i}")
    }
}

fn dec(units: i64, scale: u32) -> Decimal {
    Decimal::new(units, scale)
}

/// Turns specs into concrete transactions, tracking live trades so that
/// corrections and deletes name real ids and inserts use fresh ones (as a
/// primary key guarantees). Ends with a transaction deleting every live
/// trade and position, so every trade is reversed and every segment settled.
fn build(specs: &[TxSpec]) -> Vec<TxEvents> {
    let mut t = G - 2 * H;
    let mut next_trade = 0u32;
    let mut live: Vec<Trade> = Vec::new();
    let mut out = Vec::new();
    for (n, spec) in specs.iter().enumerate() {
        t += i64::from(spec.dt_secs) * MICROS_PER_SECOND + i64::from(spec.dt_micros);
        let mut events = Vec::new();
        for o in &spec.ops {
            match o.clone() {
                Op::Fill {
                    price,
                    amount,
                    taker,
                    maker,
                    time,
                    upper,
                } => {
                    let tr = Trade {
                        id: format!("t{next_trade}"),
                        symbol: "X".into(),
                        price: dec(i64::from(price), 2),
                        amount: dec(i64::from(amount), 1),
                        taker: addr(taker, upper),
                        maker: addr(maker, !upper),
                        time: time.map(|s| t + i64::from(s) * MICROS_PER_SECOND),
                    };
                    next_trade += 1;
                    live.push(tr.clone());
                    events.push(Event::TradeInserted { new: tr });
                }
                Op::Correct {
                    pick,
                    price,
                    amount,
                    taker,
                    maker,
                    with_old,
                } => {
                    if live.is_empty() {
                        continue;
                    }
                    let k = usize::from(pick) % live.len();
                    let old = live[k].clone();
                    let mut new = old.clone();
                    match pick % 4 {
                        0 => new.price = dec(i64::from(price), 2),
                        1 => new.amount = dec(i64::from(amount), 1),
                        2 => {
                            new.taker = addr(taker, false);
                            new.maker = addr(maker, true);
                        }
                        _ => new.symbol = "Y".into(), // nothing relevant
                    }
                    live[k] = new.clone();
                    events.push(Event::TradeUpdated {
                        old: with_old.then_some(old),
                        new,
                    });
                }
                Op::DeleteTrade { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let k = usize::from(pick) % live.len();
                    let gone = live.remove(k);
                    events.push(Event::TradeDeleted { id: gone.id });
                }
                Op::Pos {
                    id,
                    user,
                    size,
                    price,
                    open,
                    pnl,
                    insert,
                } => {
                    let p = Position {
                        id: format!("p{id}"),
                        user: addr(user, id % 2 == 0),
                        symbol: "X".into(),
                        size: dec(i64::from(size), 1),
                        entry_price: dec(i64::from(price), 1),
                        status: if open {
                            PositionStatus::Open
                        } else {
                            PositionStatus::Closed
                        },
                        realized_pnl: (!open).then(|| dec(i64::from(pnl), 1)),
                    };
                    events.push(if insert {
                        Event::PositionInserted { new: p }
                    } else {
                        Event::PositionUpdated { old: None, new: p }
                    });
                }
                Op::DeletePos { id } => events.push(Event::PositionDeleted {
                    id: format!("p{id}"),
                }),
                Op::Link {
                    referee,
                    referrer,
                    kind,
                } => {
                    let l = ReferralLink {
                        referee: addr(referee, kind == 1),
                        referrer: addr(referrer, false),
                    };
                    events.push(match kind {
                        0 => Event::ReferralInserted { new: l },
                        1 => Event::ReferralUpdated { old: None, new: l },
                        _ => Event::ReferralDeleted {
                            referee: l.referee,
                            referrer: None,
                        },
                    });
                }
            }
        }
        out.push(TxEvents {
            commit_lsn: n as u64 + 1,
            commit_time: t,
            events,
        });
    }
    let mut last = Vec::new();
    for tr in live {
        last.push(Event::TradeDeleted { id: tr.id });
    }
    for id in 0..4 {
        last.push(Event::PositionDeleted {
            id: format!("p{id}"),
        });
    }
    out.push(TxEvents {
        commit_lsn: specs.len() as u64 + 1,
        commit_time: t + H / 3,
        events: last,
    });
    out
}

fn engine() -> Engine {
    Engine::new(toml::from_str(RULES).unwrap()).unwrap()
}

/// Runs transactions, returning each one's entries.
fn run(
    engine: &Engine,
    state: &mut State,
    book: &mut MemoryAwardBook,
    txs: &[TxEvents],
) -> Vec<Vec<LedgerEntry>> {
    run_with_credits(engine, state, book, txs).0
}

/// Runs transactions, returning each one's entries and all their holding credits.
fn run_with_credits(
    engine: &Engine,
    state: &mut State,
    book: &mut MemoryAwardBook,
    txs: &[TxEvents],
) -> (Vec<Vec<LedgerEntry>>, Vec<HoldingCredit>) {
    let mut credits = Vec::new();
    let entries = txs
        .iter()
        .map(|tx| {
            let out = engine.apply_transaction(state, book, tx).unwrap();
            assert!(out.errors.is_empty(), "{:?}", out.errors);
            credits.extend(out.credits);
            out.entries
        })
        .collect();
    (entries, credits)
}

/// Reference holding integral, computed without hours or segments: per
/// position, Σ notional × open duration over time ≥ genesis while notional
/// ≥ min notional and the owner is not excluded, in notional-seconds.
fn reference_holding(txs: &[TxEvents]) -> BTreeMap<String, Decimal> {
    let min = Decimal::from(10);
    let mut open: BTreeMap<String, (Decimal, bool, i64)> = BTreeMap::new(); // notional, earns, since
    let mut acc: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut now: Option<i64> = None;
    let mut close = |id: &str, open: &mut BTreeMap<String, (Decimal, bool, i64)>, now: i64| {
        if let Some((n, earns, since)) = open.remove(id) {
            let from = since.max(G);
            if earns && now > from {
                *acc.entry(id.to_string()).or_default() += n * Decimal::new(now - from, 6);
            }
        }
    };
    for tx in txs {
        let t = now.map_or(tx.commit_time, |p| p.max(tx.commit_time));
        now = Some(t);
        for e in &tx.events {
            match e {
                Event::PositionInserted { new } | Event::PositionUpdated { new, .. } => {
                    close(&new.id, &mut open, t);
                    if new.status == PositionStatus::Open {
                        let n = new.size.abs() * new.entry_price;
                        let earns = n >= min && !new.user.eq_ignore_ascii_case("0xa5");
                        open.insert(new.id.clone(), (n, earns, t));
                    }
                }
                Event::PositionDeleted { id } => close(id, &mut open, t),
                _ => {}
            }
        }
    }
    acc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Holding points of a position = 0.002 × Σ notional × duration (days),
    /// within half a unit of the 6th decimal per hour credited; and the credits
    /// (what the totals got) sum to the segments (what the ledger keeps).
    #[test]
    fn holding_equals_the_exact_integral(specs in txs()) {
        let txs = build(&specs);
        let eng = engine();
        let (per_tx, credits) = run_with_credits(&eng, &mut State::new(), &mut MemoryAwardBook::new(), &txs);
        let ledger: Vec<LedgerEntry> = per_tx.concat();
        let expected = reference_holding(&txs);
        let mut got: BTreeMap<String, (Decimal, Decimal, u32)> = BTreeMap::new();
        for e in ledger.iter().filter(|e| e.kind == EntryKind::Holding) {
            let g = got.entry(e.position_id.clone().unwrap()).or_default();
            g.0 += e.points;
            g.1 += e.basis;
            // One rounding per hour the segment touches.
            let start = e.segment_start.unwrap();
            let hours = (floor_hour(e.event_time - 1) - floor_hour(start)) / MICROS_PER_HOUR + 1;
            g.2 += u32::try_from(hours).unwrap();
            // Segments never straddle an epoch boundary.
            prop_assert_eq!(eng.epoch_of(start), Some(e.epoch));
            prop_assert_eq!(eng.epoch_of(e.event_time - 1), Some(e.epoch));
        }
        // Every position is deleted at the end: no segment is open, so credits = segments.
        let segments: Decimal = ledger.iter().filter(|e| e.kind == EntryKind::Holding).map(|e| e.points).sum();
        prop_assert_eq!(credits.iter().map(|c| c.points).sum::<Decimal>(), segments);
        let ids: std::collections::BTreeSet<_> = expected.keys().chain(got.keys()).cloned().collect();
        for id in ids {
            let exact_ns = expected.get(&id).copied().unwrap_or_default();
            let (points, ns, n) = got.get(&id).copied().unwrap_or_default();
            prop_assert_eq!(ns, exact_ns, "notional-seconds of {}", id);
            let exact = Decimal::new(2, 3) * exact_ns / Decimal::from(86_400);
            let tol = Decimal::new(5, 7) * Decimal::from(n) + Decimal::new(1, 20);
            prop_assert!((points - exact).abs() <= tol, "{}: {} vs {}", id, points, exact);
        }
    }

    /// The sum of a user's entries, plus the credits of their still-open holding
    /// segments, equals their totals, whether folded at once or merged per
    /// transaction, and their trading volume equals the engine's epoch volume
    /// (checked before the final deletes, so segments are open).
    #[test]
    fn entries_sum_to_totals(specs in txs()) {
        let mut txs = build(&specs);
        txs.pop();
        let eng = engine();
        let mut state = State::new();
        let mut merged: BTreeMap<(String, EpochId), Totals> = BTreeMap::new();
        let mut all: Vec<LedgerEntry> = Vec::new();
        let mut credits: Vec<HoldingCredit> = Vec::new();
        let mut book = MemoryAwardBook::new();
        for tx in &txs {
            let (entries, c) = run_with_credits(&eng, &mut state, &mut book, std::slice::from_ref(tx));
            for (k, t) in fold_totals(&entries[0], &c).unwrap() {
                merged.entry(k).or_default().merge(&t).unwrap();
            }
            all.extend(entries.concat());
            credits.extend(c);
        }
        let folded = fold_totals(&all, &credits).unwrap();
        prop_assert_eq!(&folded, &merged);
        let open = eng.open_segment_credits(&state).unwrap();
        for ((user, epoch), t) in &folded {
            let mine = |e: &&LedgerEntry| &e.user == user && e.epoch == *epoch;
            let holding: Decimal = all.iter().filter(mine).filter(|e| e.kind == EntryKind::Holding).map(|e| e.points).sum();
            let others: Decimal = all.iter().filter(mine).filter(|e| e.kind != EntryKind::Holding).map(|e| e.points).sum();
            let still_open = open.get(&(user.clone(), *epoch)).copied().unwrap_or_default();
            prop_assert_eq!(t.holding_points, holding + still_open);
            prop_assert_eq!(t.total_points, others + holding + still_open);
            prop_assert_eq!(
                t.total_points,
                t.trading_points + t.referral_points + t.holding_points + t.pnl_points
            );
            prop_assert_eq!(t.trading_volume, state.volume(user, *epoch));
        }
        for row in state.to_delta().volumes {
            prop_assert!(folded.contains_key(&(row.user.clone(), row.epoch)), "volume without entries");
        }
    }

    /// Splitting the stream anywhere, persisting state and award book
    /// (JSON, and separately as drained deltas), and resuming gives the
    /// same ledger as an uninterrupted run.
    #[test]
    fn split_persist_resume_is_identical(specs in txs(), split in any::<prop::sample::Index>()) {
        let txs = build(&specs);
        let eng = engine();
        let (whole, whole_credits) = run_with_credits(&eng, &mut State::new(), &mut MemoryAwardBook::new(), &txs);
        let k = split.index(txs.len() + 1);

        let mut state = State::new();
        state.enable_change_tracking();
        let mut book = MemoryAwardBook::new();
        let mut from_deltas = State::new();
        let mut first = Vec::new();
        let mut first_credits = Vec::new();
        for tx in &txs[..k] {
            let (e, c) = run_with_credits(&eng, &mut state, &mut book, std::slice::from_ref(tx));
            first.extend(e);
            first_credits.extend(c);
            from_deltas.apply_delta(state.drain_delta()).unwrap();
        }
        let state_json = serde_json::to_string(&state).unwrap();
        let book_json = serde_json::to_string(&book).unwrap();
        drop((state, book));

        let mut st: State = serde_json::from_str(&state_json).unwrap();
        let mut bk: MemoryAwardBook = serde_json::from_str(&book_json).unwrap();
        let mut resumed = first.clone();
        let (rest, rest_credits) = run_with_credits(&eng, &mut st, &mut bk, &txs[k..]);
        resumed.extend(rest);
        prop_assert_eq!(&resumed, &whole);
        first_credits.extend(rest_credits);
        prop_assert_eq!(&first_credits, &whole_credits);

        let mut bk2: MemoryAwardBook = serde_json::from_str(&book_json).unwrap();
        let mut via_deltas = first;
        via_deltas.extend(run(&eng, &mut from_deltas, &mut bk2, &txs[k..]));
        prop_assert_eq!(&via_deltas, &whole);
    }

    /// After every trade is deleted, each trade's entries sum to exactly
    /// zero (points and basis) and no volume remains.
    #[test]
    fn reversals_net_to_exactly_zero(specs in txs()) {
        let txs = build(&specs);
        let mut state = State::new();
        let mut book = MemoryAwardBook::new();
        let ledger = run(&engine(), &mut state, &mut book, &txs).concat();
        let mut net: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
        for e in &ledger {
            if let Some(id) = &e.trade_id {
                let n = net.entry(id).or_default();
                n.0 += e.points;
                n.1 += e.basis;
            }
        }
        for (id, (points, basis)) in net {
            prop_assert!(points.is_zero() && basis.is_zero(), "{}: {} {}", id, points, basis);
        }
        prop_assert!(state.to_delta().volumes.is_empty());
        prop_assert!(book.is_empty());
        prop_assert_eq!(state.open_positions(), 0);
    }
}

proptest! {
    /// The compact ledger's promise: a transaction's fill records expand to exactly its
    /// trading and referral entries (same order, ordinals and values), and every other entry
    /// is a holding or PnL entry.
    #[test]
    fn fill_records_expand_to_the_trading_entries(specs in txs()) {
        let txs = build(&specs);
        let engine = engine();
        let version: std::sync::Arc<str> = engine.version().into();
        let mut state = State::new();
        let mut book = MemoryAwardBook::new();
        for tx in &txs {
            let out = engine.apply_transaction(&mut state, &mut book, tx).unwrap();
            let expanded: Vec<LedgerEntry> =
                out.fills.iter().flat_map(|f| f.entries(&version)).collect();
            let trading: Vec<LedgerEntry> = out
                .entries
                .iter()
                .filter(|e| e.kind.is_trading() || e.kind.is_referral())
                .cloned()
                .collect();
            prop_assert_eq!(expanded, trading);
            for f in &out.fills {
                let compact = crate::points::CompactAward::of(&f.award);
                prop_assert!(compact.is_ok(), "{:?}", compact);
                let back = compact
                    .unwrap()
                    .map(|c| c.entries(&f.award.trade.taker, &f.award.trade.maker))
                    .unwrap_or_default();
                prop_assert_eq!(&back, &f.award.entries);
            }
        }
    }
}

fn any_decimal() -> impl Strategy<Value = Decimal> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
        0u32..=28,
    )
        .prop_map(|(lo, mid, hi, neg, scale)| Decimal::from_parts(lo, mid, hi, neg, scale))
}

fn any_event() -> impl Strategy<Value = Event> {
    let a = prop_oneof![Just("0xA".to_string()), Just("0xa".to_string()), ".{0,3}"];
    let id = prop_oneof![Just("1".to_string()), ".{0,2}"];
    let time = prop::option::of(any::<i64>());
    prop_oneof![
        (
            id.clone(),
            any_decimal(),
            any_decimal(),
            a.clone(),
            a.clone(),
            time
        )
            .prop_map(
                |(id, price, amount, taker, maker, time)| Event::TradeInserted {
                    new: Trade {
                        id,
                        symbol: String::new(),
                        price,
                        amount,
                        taker,
                        maker,
                        time
                    },
                }
            ),
        (id.clone(), any_decimal(), a.clone(), a.clone()).prop_map(|(id, amount, taker, maker)| {
            Event::TradeUpdated {
                old: None,
                new: Trade {
                    id,
                    symbol: String::new(),
                    price: Decimal::ONE,
                    amount,
                    taker,
                    maker,
                    time: None,
                },
            }
        }),
        id.clone().prop_map(|id| Event::TradeDeleted { id }),
        (
            id.clone(),
            a.clone(),
            any_decimal(),
            any_decimal(),
            any::<bool>(),
            prop::option::of(any_decimal())
        )
            .prop_map(|(id, user, size, entry_price, open, realized_pnl)| {
                Event::PositionUpdated {
                    old: None,
                    new: Position {
                        id,
                        user,
                        symbol: String::new(),
                        size,
                        entry_price,
                        status: if open {
                            PositionStatus::Open
                        } else {
                            PositionStatus::Closed
                        },
                        realized_pnl,
                    },
                }
            }),
        id.prop_map(|id| Event::PositionDeleted { id }),
        (a.clone(), a).prop_map(|(referee, referrer)| Event::ReferralInserted {
            new: ReferralLink { referee, referrer },
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Nothing panics on any input: extreme decimals, instants and strings
    /// either evaluate or come back as typed errors.
    #[test]
    fn no_input_panics(
        txs in prop::collection::vec((prop_oneof![any::<i64>(), (G - 10 * H)..(G + 10 * H)], prop::collection::vec(any_event(), 0..5)), 1..8),
        rate in any_decimal(),
    ) {
        let mut rules = RuleSet::default();
        rules.trading.taker_rate = rate.abs();
        let Ok(eng) = Engine::new(rules) else { return Ok(()) };
        let mut state = State::new();
        let mut book = MemoryAwardBook::new();
        for (commit_time, events) in txs {
            let tx = TxEvents { commit_lsn: 1, commit_time, events };
            let (mut st2, mut bk2) = (state.clone(), book.clone());
            let Ok(out) = eng.apply_transaction(&mut state, &mut book, &tx) else { continue };
            // A failed event leaves no trace: the same transaction without
            // it gives the same entries, state and award book.
            let failed: Vec<usize> = out.errors.iter().filter_map(|f| f.index).collect();
            let kept = TxEvents {
                events: tx.events.iter().enumerate().filter(|(i, _)| !failed.contains(i)).map(|(_, e)| e.clone()).collect(),
                ..tx.clone()
            };
            let out2 = eng.apply_transaction(&mut st2, &mut bk2, &kept).unwrap();
            prop_assert!(out2.errors.is_empty());
            prop_assert_eq!(&out2.entries, &out.entries);
            prop_assert_eq!(st2.to_delta(), state.to_delta());
            prop_assert_eq!(&bk2, &book);
        }
        let json = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.to_delta(), state.to_delta());
    }
}
