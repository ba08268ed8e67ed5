//! The exchange's side: users with referrals, trades committed in transactions of a given size,
//! open positions. Generated inside the server (one statement per transaction, committed by a
//! `DO` loop), so the workload itself costs little client time and the WAL is what a real
//! exchange would write.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

/// Distinct traders of the drain and live workloads.
pub const USERS: u64 = 10_000;

/// A 42-character address for user number `n` (an SQL expression).
pub fn address(n: &str) -> String {
    format!("'0x' || lpad(to_hex(({n})::bigint), 40, '0')")
}

/// Binds two of every three users to a referrer with a smaller number (no cycles), so that
/// most trading entries also earn a level-1 referral entry.
pub async fn seed_referrals(exchange: &Client, users: u64) -> Result<()> {
    exchange
        .batch_execute(&format!(
            "INSERT INTO referral_relations (referee_address, referrer_address) \
             SELECT {}, {} FROM generate_series(2, {users}) u WHERE u % 3 <> 1",
            address("u"),
            address("u / 3 + 1"),
        ))
        .await?;
    Ok(())
}

/// The trade columns for series value `g`: taker and maker drawn from `users` (a self-trade now
/// and then), prices 1,000–4,999.25, amounts 0.1–5.0, so that notionals of ~100–25,000 move
/// busy users through the volume tiers.
fn trade_select(users: u64) -> String {
    format!(
        "SELECT 'BTC-PERP', 1000.25 + g % 4000, 0.1 * (1 + g % 50), {}, {}",
        address(&format!("1 + (g * 7919) % {users}")),
        address(&format!("1 + (g * 104729 + 3) % {users}")),
    )
}

/// Commits `transactions` transactions of `rows` trades each, numbering series values from
/// `first`; returns how long the server took.
pub async fn commit_trades(
    exchange: &Client,
    users: u64,
    transactions: u64,
    rows: u64,
    first: u64,
) -> Result<Duration> {
    let started = Instant::now();
    let insert = format!(
        "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) {} \
         FROM generate_series",
        trade_select(users)
    );
    if transactions == 1 {
        exchange
            .batch_execute(&format!(
                "{insert}({first}::bigint, {}::bigint) g",
                first + rows - 1
            ))
            .await?;
    } else {
        exchange
            .batch_execute(&format!(
                "DO $$ BEGIN FOR i IN 0..{last} LOOP \
                 {insert}({first} + i * {rows}::bigint, {first} + i * {rows}::bigint + {end}) g; \
                 COMMIT; END LOOP; END $$",
                last = transactions - 1,
                end = rows - 1,
            ))
            .await?;
    }
    Ok(started.elapsed())
}

/// Opens `n` positions, each of a different user numbered from `first_user`.
pub async fn open_positions(exchange: &Client, n: u64, first_user: u64) -> Result<()> {
    exchange
        .batch_execute(&format!(
            "INSERT INTO positions (user_address, symbol, size, entry_price) \
             SELECT {}, 'BTC-PERP', 0.5 * (1 + g % 20), 2000 + g % 1000 \
             FROM generate_series(0, {}) g",
            address(&format!("{first_user} + g")),
            n - 1
        ))
        .await?;
    Ok(())
}

/// The pgbench script of the live runs: one trade per transaction between two of `users`.
pub fn pgbench_script(users: u64) -> String {
    format!(
        "\\set t random(1, {users})\n\\set m random(1, {users})\n\
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES \
         ('BTC-PERP', 1000.25 + :t % 4000, 0.1 * (1 + :m % 50), \
         '0x' || lpad(to_hex(:t), 40, '0'), '0x' || lpad(to_hex(:m), 40, '0'));\n"
    )
}
