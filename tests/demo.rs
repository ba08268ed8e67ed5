//! The README's first command: `walpoints demo` runs setup and the daemon end to end on an
//! embedded throwaway cluster and prints the leaderboard. With `--keep` it stays up, so this
//! test checks every printed row against the store, then stops it with Ctrl-C (SIGINT) and
//! checks that the cluster is gone.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{connect, Running};

/// One leaderboard row as printed: rank, user, total, trading, referral, holding, pnl, volume.
type Row = Vec<String>;

/// Reads stdout lines until one starts with `prefix` (after indentation); returns the lines
/// read, that one included.
fn lines_until(demo: &Running, prefix: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = demo.lines(1, left).remove(0);
        let done = line.trim_start().starts_with(prefix);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// The running demo; dropped (a failed assertion included), it is stopped with Ctrl-C rather
/// than killed, so that it removes its cluster instead of leaving a server running.
struct Demo(Running);

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.0.child.try_wait(), Ok(None)) {
            self.0.signal(libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.0.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_the_stores_leaderboard_and_ctrl_c_removes_everything() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walpoints"));
    cmd.args(["demo", "--seconds", "5", "--keep"])
        .env("WALPOINTS_CONFIG", "/dev/null")
        .env("RUST_LOG", "warn");
    let mut demo = Demo(Running::spawn(cmd));
    let out = lines_until(&demo.0, "data directory:", Duration::from_secs(120));
    let text = out.join("\n");

    let header = out
        .iter()
        .find(|l| l.contains("leaderboard ("))
        .unwrap_or_else(|| panic!("no leaderboard in:\n{text}"));
    let epoch: i32 = header
        .strip_prefix("epoch ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {header:?}"));
    let entries: i64 = header
        .split("leaderboard (")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry count in {header:?}"));
    let printed: Vec<Row> = out
        .iter()
        .skip_while(|l| !l.contains("leaderboard ("))
        .skip(2)
        .take_while(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(printed.len(), 10, "a top-10 leaderboard:\n{text}");
    let committed: u64 = out
        .iter()
        .find_map(|l| l.strip_prefix("exchange: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exchange totals in:\n{text}"));
    assert!(committed > 100, "the demo exchange traded: {committed}");
    assert!(text.contains("self-trades"), "{text}");
    let field = |name: &str| {
        out.iter()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{text}"))
    };
    let store_url = field("store:");
    let data_dir = field("data directory:");
    assert!(std::path::Path::new(&data_dir).is_dir(), "{data_dir}");

    // Every printed row, in order, is the store's.
    let store = connect(&store_url).await;
    let rows = store
        .query(
            "SELECT u.user_address, u.total_points::text, u.trading_points::text,
                    u.referral_points::text, u.holding_points::text, u.pnl_points::text,
                    u.trading_volume::text
             FROM walpoints.user_epoch_points u WHERE u.epoch = $1
             ORDER BY u.total_points DESC, u.user_address LIMIT 10",
            &[&epoch],
        )
        .await
        .expect("read the store's leaderboard");
    let expected: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..7).map(|i| r.get::<_, String>(i)).collect())
        .collect();
    let shown: Vec<Vec<String>> = printed.iter().map(|r| r[1..].to_vec()).collect();
    assert_eq!(shown, expected, "the leaderboard differs from the store");
    let ranks: Vec<&str> = printed.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ranks[0], "1", "{text}");
    let in_store: i64 = store
        .query_one("SELECT count(*) FROM walpoints.ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_store, entries, "ledger entries");
    // Every fill is between two different users above the minimum notional, mostly.
    assert!(
        entries as u64 >= committed,
        "{entries} entries for {committed} trades"
    );
    drop(store);

    demo.0.signal(libc::SIGINT);
    let status = demo.0.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "demo exited {status}:\n{}",
        demo.0.stderr()
    );
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "the cluster's data directory {data_dir} is left behind"
    );
    let stderr = demo.0.stderr();
    assert!(
        stderr.contains("trades (") && stderr.contains("points awarded"),
        "a progress line:\n{stderr}"
    );
}
