//! The README's first command: `walpoints demo` runs setup and the daemon end to end on an
//! embedded throwaway cluster and prints the leaderboard.

use std::process::Command;

#[test]
fn demo_runs_end_to_end_and_prints_the_leaderboard() {
    let out = Command::new(env!("CARGO_BIN_EXE_walpoints"))
        .args(["demo", "--seconds", "2"])
        .env("WALPOINTS_CONFIG", "/dev/null")
        .output()
        .expect("run walpoints demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let committed: u64 = stderr
        .split("the exchange committed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the demo reports how many trades it committed");
    assert!(committed > 10, "the demo exchange traded: {committed}");
    let entries: u64 = stdout
        .split("leaderboard (")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no leaderboard header in:\n{stdout}"));
    // Every fill is between two different users above the minimum notional: a taker and a maker
    // entry each, plus referral, holding and PnL entries.
    assert!(
        entries >= 2 * committed,
        "{entries} entries for {committed} trades"
    );
    let ranked = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(ranked, 10, "a top-10 leaderboard:\n{stdout}");
}
