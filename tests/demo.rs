//! The README's first command: `walpoints demo` runs end to end on an embedded throwaway cluster.

use std::process::Command;

#[test]
fn demo_runs_end_to_end_and_shows_the_stream() {
    let out = Command::new(env!("CARGO_BIN_EXE_walpoints"))
        .args(["demo", "--seconds", "2"])
        .env("WALPOINTS_CONFIG", "/dev/null")
        .output()
        .expect("run walpoints demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let changes: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let trades = changes.iter().filter(|c| c["table"] == "trades").count();
    let referrals = changes
        .iter()
        .filter(|c| c["table"] == "referral_relations")
        .count();
    assert_eq!(referrals, 18, "every referral the demo writes is streamed");
    let committed: usize = stderr
        .split("the exchange committed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the demo reports how many trades it committed");
    assert!(committed > 10, "the demo exchange traded: {committed}");
    assert_eq!(trades, committed, "every committed trade is streamed, once");
    assert!(
        stderr.contains(&format!("tail printed {} changes", changes.len())),
        "{stderr}"
    );
}
