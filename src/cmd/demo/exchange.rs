//! The synthetic exchange of the demo: a few hundred traders, some of them whales, trade five
//! perpetuals whose prices walk; they refer each other, open, resize and close positions with
//! gains and losses, and now and then trade with themselves. Seeded, so runs repeat but for the
//! timing of commits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use super::DemoError;

/// What the synthetic exchange has done so far, shared with the progress line.
#[derive(Debug, Default)]
pub(super) struct ExchangeStats {
    pub(super) trades: AtomicU64,
    pub(super) self_trades: AtomicU64,
    pub(super) opened: AtomicU64,
    pub(super) resized: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) closed_in_profit: AtomicU64,
    pub(super) referrals: AtomicU64,
}

/// A small deterministic generator (SplitMix64): the same demo every time, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }

    /// A trader index skewed towards low indices (cubed uniform): a few whales trade most.
    fn trader(&mut self) -> usize {
        let u = u128::from(self.below(1_000_000));
        let idx = (TRADERS as u128) * u * u * u / 1_000_000_000_000_000_000;
        usize::try_from(idx).unwrap_or(0).min(TRADERS - 1)
    }
}

/// How many traders the synthetic exchange has.
const TRADERS: usize = 300;

/// The perpetuals traded: symbol, and the starting price as (mantissa, decimals); prices keep
/// those decimals as they walk.
const MARKETS: [(&str, i64, u32); 5] = [
    ("BTC-PERP", 642_500, 1),
    ("ETH-PERP", 312_000, 2),
    ("SOL-PERP", 148_000, 3),
    ("ARB-PERP", 11_800, 4),
    ("DOGE-PERP", 15_000, 5),
];

fn address(i: usize) -> String {
    // A fixed pseudo-random 160-bit-looking address per trader.
    let mut r = Rng(i as u64 ^ 0xD1B5_4A32_D192_ED03);
    format!(
        "0x{:016x}{:016x}{:08x}",
        r.next(),
        r.next(),
        r.next() & 0xFFFF_FFFF
    )
}

/// An open position of the synthetic exchange, by (trader, market).
#[derive(Debug, Clone)]
struct OpenPosition {
    id: String,
    size: Decimal,
    entry: Decimal,
}

/// The synthetic exchange's state between ticks.
struct Market {
    rng: Rng,
    prices: Vec<Decimal>,
    positions: BTreeMap<(usize, usize), OpenPosition>,
    referred: Vec<bool>,
    trades: u64,
}

impl Market {
    fn new() -> Self {
        let prices = MARKETS
            .iter()
            .map(|(_, mantissa, decimals)| Decimal::new(*mantissa, *decimals))
            .collect();
        Market {
            rng: Rng(0x5EED_DE30),
            prices,
            positions: BTreeMap::new(),
            referred: vec![false; TRADERS],
            trades: 0,
        }
    }

    /// Moves market `m`'s price by up to ±0.2 %, at its tick size.
    fn walk(&mut self, m: usize) -> Decimal {
        let step = Decimal::new(i64::try_from(self.rng.below(41)).unwrap_or(20) - 20, 4);
        let p = self.prices[m] * (Decimal::ONE + step);
        let p = p.round_dp(MARKETS[m].2).max(Decimal::new(1, MARKETS[m].2));
        self.prices[m] = p;
        p
    }

    /// A notional between 1 and 900,000 (log-uniform-ish; a few below the 10 minimum).
    fn notional(&mut self) -> Decimal {
        let exponent = if self.rng.chance(30) {
            0
        } else {
            1 + self.rng.below(5)
        };
        Decimal::from(1 + self.rng.below(9)) * Decimal::from(10u64.pow(exponent as u32))
    }

    fn amount(&mut self, m: usize) -> Decimal {
        let a = (self.notional() / self.prices[m]).round_dp(4);
        a.max(Decimal::new(1, 4))
    }
}

/// Trades until `deadline`, one transaction every few tens of milliseconds; returns the number
/// of trades committed.
pub(super) async fn exchange(
    client: &mut tokio_postgres::Client,
    deadline: Instant,
    stats: &ExchangeStats,
) -> Result<u64, DemoError> {
    let mut market = Market::new();
    // Half of the traders were referred by someone who joined before them.
    let (mut referees, mut referrers) = (Vec::new(), Vec::new());
    for i in 1..TRADERS {
        if market.rng.chance(500) {
            let by = market.rng.trader().min(i - 1);
            referees.push(address(i));
            referrers.push(address(by));
            market.referred[i] = true;
        }
    }
    client
        .execute(
            "INSERT INTO referral_relations (referee_address, referrer_address)
             SELECT * FROM unnest($1::text[], $2::text[])",
            &[&referees, &referrers],
        )
        .await?;
    stats
        .referrals
        .fetch_add(referees.len() as u64, Ordering::Relaxed);
    while Instant::now() < deadline {
        tick(client, &mut market, stats).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(market.trades)
}

/// One exchange transaction: a few fills, maybe a position opened, resized or closed, maybe a
/// new referral link.
async fn tick(
    client: &mut tokio_postgres::Client,
    market: &mut Market,
    stats: &ExchangeStats,
) -> Result<(), DemoError> {
    let tx = client.transaction().await?;
    let fills = 1 + market.rng.below(7);
    let (mut symbols, mut prices, mut amounts, mut takers, mut makers) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut self_trades = 0;
    for _ in 0..fills {
        let m = usize::try_from(market.rng.below(MARKETS.len() as u64)).unwrap_or(0);
        let price = market.walk(m);
        let amount = market.amount(m);
        let taker = market.rng.trader();
        // A self-trade now and then (always the 42nd fill): it earns nothing.
        let maker = if market.trades == 41 || market.rng.chance(2) {
            self_trades += 1;
            taker
        } else {
            let mut maker = market.rng.trader();
            while maker == taker {
                maker = usize::try_from(market.rng.below(TRADERS as u64)).unwrap_or(0);
            }
            maker
        };
        symbols.push(MARKETS[m].0.to_owned());
        prices.push(price.to_string());
        amounts.push(amount.to_string());
        takers.push(address(taker));
        makers.push(address(maker));
        market.trades += 1;
    }
    tx.execute(
        "INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
         SELECT * FROM unnest($1::text[], $2::text[]::numeric[], $3::text[]::numeric[],
                              $4::text[], $5::text[])",
        &[&symbols, &prices, &amounts, &takers, &makers],
    )
    .await?;

    let mut opened = 0;
    if market.rng.chance(300) {
        let key = (
            market.rng.trader(),
            usize::try_from(market.rng.below(MARKETS.len() as u64)).unwrap_or(0),
        );
        if !market.positions.contains_key(&key) {
            let entry = market.prices[key.1];
            let mut size = market.amount(key.1);
            if market.rng.chance(500) {
                size = -size;
            }
            let id: String = tx
                .query_one(
                    "INSERT INTO positions (user_address, symbol, size, entry_price)
                     VALUES ($1, $2, $3::text::numeric, $4::text::numeric) RETURNING id::text",
                    &[
                        &address(key.0),
                        &MARKETS[key.1].0,
                        &size.to_string(),
                        &entry.to_string(),
                    ],
                )
                .await?
                .get(0);
            market
                .positions
                .insert(key, OpenPosition { id, size, entry });
            opened = 1;
        }
    }
    let mut resized = 0;
    if !market.positions.is_empty() && market.rng.chance(200) {
        let n = market.rng.below(market.positions.len() as u64);
        if let Some((&key, _)) = market.positions.iter().nth(n as usize) {
            let price = market.prices[key.1];
            // 50 % to 150 % of the size; a bigger position's entry is the average price.
            let factor = Decimal::new(50 + i64::try_from(market.rng.below(101)).unwrap_or(50), 2);
            if let Some(p) = market.positions.get_mut(&key) {
                let new_size = (p.size * factor).round_dp(4);
                if new_size.abs() > p.size.abs() {
                    let added = new_size - p.size;
                    p.entry = ((p.entry * p.size + price * added) / new_size)
                        .round_dp(MARKETS[key.1].2 + 2);
                }
                if !new_size.is_zero() {
                    p.size = new_size;
                    tx.execute(
                        "UPDATE positions SET size = $2::text::numeric,
                                entry_price = $3::text::numeric, updated_at = now()
                         WHERE id = $1::text::uuid",
                        &[&p.id, &p.size.to_string(), &p.entry.to_string()],
                    )
                    .await?;
                    resized = 1;
                }
            }
        }
    }
    let (mut closed, mut in_profit) = (0, 0);
    if !market.positions.is_empty() && market.rng.chance(200) {
        let n = market.rng.below(market.positions.len() as u64);
        let key = market.positions.keys().nth(n as usize).copied();
        if let Some(p) = key.and_then(|k| market.positions.remove(&k).map(|p| (k, p))) {
            let (key, p) = p;
            let pnl = ((market.prices[key.1] - p.entry) * p.size).round_dp(6);
            tx.execute(
                "UPDATE positions SET status = 'closed', realized_pnl = $2::text::numeric,
                        updated_at = now()
                 WHERE id = $1::text::uuid",
                &[&p.id, &pnl.to_string()],
            )
            .await?;
            closed = 1;
            in_profit = u64::from(pnl > Decimal::ZERO);
        }
    }
    let mut referrals = 0;
    if market.rng.chance(20) {
        let referee = 1 + market.rng.below(TRADERS as u64 - 1) as usize;
        if !market.referred[referee] {
            let referrer = market.rng.trader();
            if referrer != referee {
                tx.execute(
                    "INSERT INTO referral_relations (referee_address, referrer_address)
                     VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&address(referee), &address(referrer)],
                )
                .await?;
                market.referred[referee] = true;
                referrals = 1;
            }
        }
    }
    tx.commit().await?;
    stats.trades.fetch_add(fills, Ordering::Relaxed);
    stats.self_trades.fetch_add(self_trades, Ordering::Relaxed);
    stats.opened.fetch_add(opened, Ordering::Relaxed);
    stats.resized.fetch_add(resized, Ordering::Relaxed);
    stats.closed.fetch_add(closed, Ordering::Relaxed);
    stats
        .closed_in_profit
        .fetch_add(in_profit, Ordering::Relaxed);
    stats.referrals.fetch_add(referrals, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_exchange_is_deterministic() {
        let run = || {
            let mut m = Market::new();
            (0..200)
                .map(|i| {
                    let k = i % MARKETS.len();
                    (m.walk(k), m.amount(k), m.rng.trader())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert_ne!(address(1), address(2));
        assert_eq!(address(7).len(), 42);
    }

    #[test]
    fn traders_are_skewed_but_all_can_trade() {
        let mut rng = Rng(1);
        let mut counts = vec![0u32; TRADERS];
        for _ in 0..100_000 {
            counts[rng.trader()] += 1;
        }
        assert!(counts[0] > counts[TRADERS / 2], "whales trade more");
        assert!(counts.iter().filter(|c| **c > 0).count() > TRADERS / 2);
    }

    #[test]
    fn prices_stay_positive_at_their_tick() {
        let mut m = Market::new();
        for _ in 0..10_000 {
            for (k, (_, _, decimals)) in MARKETS.iter().enumerate() {
                let p = m.walk(k);
                assert!(p > Decimal::ZERO);
                assert!(p.scale() <= *decimals);
            }
        }
    }
}
