//! Criterion: the rules engine's CPU per event, on one core.
//!
//! - `rules/trades`: `Engine::apply_transaction` over transactions of 1,000 fills among 10,000
//!   users, two in three of them referred (so most fills also pay a level-1 referral), volumes
//!   growing through the tiers as the benchmark repeats;
//! - `rules/settle_hour`: one transaction crossing an hour boundary (not an epoch's) with 100,000
//!   open positions of as many users: one holding credit per user, no ledger entry.
//!
//! Throughput is reported in events (elements) per second; for `settle_hour`, in positions.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;
use walpoints::points::{
    Engine, Event, MemoryAwardBook, OpenPositionRow, PositionRow, ReferralRow, RuleSet, State,
    StateDelta, Trade, TxEvents,
};
use walpoints::time::MICROS_PER_HOUR;

const USERS: u64 = 10_000;
const FILLS: u64 = 1_000;
/// 2026-03-02 10:00:00 UTC, well inside the default epochs.
const T0: i64 = 1_772_445_600_000_000;

fn address(n: u64) -> String {
    format!("0x{n:040x}")
}

fn referred_state() -> State {
    let mut state = State::new();
    let referrals = (2..=USERS)
        .filter(|u| u % 3 != 1)
        .map(|u| ReferralRow {
            referee: address(u),
            referrer: Some(address(u / 3 + 1)),
        })
        .collect();
    state
        .apply_delta(StateDelta {
            stream_time: Some(T0),
            referrals,
            ..StateDelta::default()
        })
        .expect("a valid state");
    state
}

fn fills(first: u64) -> TxEvents {
    let events = (first..first + FILLS)
        .map(|g| Event::TradeInserted {
            new: Trade {
                id: g.to_string(),
                symbol: "BTC-PERP".into(),
                price: Decimal::new(100_025 + (g as i64 % 4000) * 100, 2),
                amount: Decimal::new(1 + g as i64 % 50, 1),
                taker: address(1 + (g * 7919) % USERS),
                maker: address(1 + (g * 104_729 + 3) % USERS),
                time: Some(T0 + g as i64),
            },
        })
        .collect();
    TxEvents {
        commit_lsn: 1 << 32,
        commit_time: T0 + 1_000_000,
        events,
    }
}

fn bench(c: &mut Criterion) {
    let engine = Engine::new(RuleSet::default()).expect("default rules");

    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(FILLS));
    let mut state = referred_state();
    let tx = fills(0);
    g.bench_function("trades", |b| {
        b.iter_batched(
            MemoryAwardBook::new,
            |mut book| {
                engine
                    .apply_transaction(&mut state, &mut book, &tx)
                    .map(|o| o.entries.len())
            },
            BatchSize::LargeInput,
        )
    });

    const POSITIONS: u64 = 100_000;
    let mut held = State::new();
    held.apply_delta(StateDelta {
        stream_time: Some(T0),
        positions: (0..POSITIONS)
            .map(|p| PositionRow {
                id: format!("a0eebc99-9c0b-4ef8-bb6d-{p:012x}"),
                open: Some(OpenPositionRow {
                    user: address(p),
                    notional: Decimal::new(2_000 + p as i64 % 1000, 0),
                    since: T0 - 1_800_000_000,
                }),
            })
            .collect(),
        ..StateDelta::default()
    })
    .expect("a valid state");
    let next_hour = TxEvents {
        commit_lsn: 2 << 32,
        commit_time: T0 + MICROS_PER_HOUR + 1,
        events: Vec::new(),
    };
    g.throughput(Throughput::Elements(POSITIONS));
    g.bench_function("settle_hour", |b| {
        b.iter_batched(
            || (held.clone(), MemoryAwardBook::new()),
            |(mut state, mut book)| {
                engine
                    .apply_transaction(&mut state, &mut book, &next_hour)
                    .map(|o| o.entries.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
