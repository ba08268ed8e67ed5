//! Two `walpoints run` for one source and store: the second never processes while the first
//! runs. It waits as a standby (saying why, in its log, `/readyz` and `walpoints status`) and
//! takes over when the first dies, with the ledger of an undisturbed run; SIGTERM ends a
//! waiting standby at once; `run --no-standby` refuses instead, naming the running instance.

use std::time::Duration;

use walpoints::points::RuleSet;

use crate::support::daemon::{
    assert_same_ledger, fence, reference_ledger, reference_slot, workload, Walpoints,
};
use crate::support::http::{get_json, http_addr};
use crate::support::{error_line, Running, TestDb};

/// What `walpoints status --json` says runs the source (the holder of its lock in the store).
fn instance(wp: &Walpoints<'_>) -> serde_json::Value {
    let out = wp.output(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    status["sources"][0]["instance"].clone()
}

/// How the lock holder names itself in the store.
fn named(running: &Running) -> String {
    format!("walpoints run (pid {})", running.child.id())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_processes_nothing_then_takes_over_when_the_first_is_killed() {
    let db = TestDb::exchange("inst_takeover").await;
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::new(&db, "takeover");
    let mut first = wp.setup_and_stream().await;
    let mut standby = wp.start();
    let log = standby.wait_for_stderr("waiting as a standby", Duration::from_secs(60));
    assert!(
        log.contains("another walpoints instance is running this source")
            && log.contains(&named(&first)),
        "the standby says why it waits and who runs the source:\n{log}"
    );

    // While the first runs, it alone writes: the store's lock holder is the first process, and
    // the standby never loads state or opens a stream.
    workload(db.url.clone(), 1, 3_000, 100).await;
    let ex = db.client().await;
    let mid = fence(&ex).await;
    wp.wait_for(mid, Duration::from_secs(120), &first).await;
    let holder = instance(&wp);
    assert!(
        holder.as_str().is_some_and(|h| h.contains(&named(&first))),
        "status names the first instance: {holder}"
    );
    assert!(
        !standby.stderr().contains("starting the stream"),
        "the standby started streaming while the first ran:\n{}",
        standby.stderr()
    );

    // The first dies mid-workload; the standby takes over and finishes it.
    let writer = tokio::spawn(workload(db.url.clone(), 3_001, 3_000, 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.child.kill().expect("SIGKILL the first instance");
    let killed = std::time::Instant::now();
    let _ = first.child.wait();
    standby.wait_for_stderr("this standby takes over", Duration::from_secs(60));
    eprintln!(
        "the standby took the lock {:?} after the SIGKILL",
        killed.elapsed()
    );
    writer.await.unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(180), &standby).await;

    let expected = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert!(expected.len() > 6_000, "{} entries", expected.len());
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");
    wp.assert_totals_match_ledger().await;
    let holder = instance(&wp);
    assert!(
        holder
            .as_str()
            .is_some_and(|h| h.contains(&named(&standby))),
        "status names the standby that took over: {holder}"
    );

    standby.signal(libc::SIGTERM);
    let status = standby.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}: {}", standby.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_a_waiting_standby_at_once_and_readyz_says_standby() {
    let db = TestDb::exchange("inst_sigterm").await;
    let wp = Walpoints::new(&db, "sigterm");
    let first = wp.setup_and_stream().await;
    let mut standby = Walpoints::new(&db, "sigterm")
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .start();
    standby.wait_for_stderr("waiting as a standby", Duration::from_secs(60));
    let addr = http_addr(&standby).await;
    let (code, body) = get_json(&addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("standby: another walpoints instance runs source \"sigterm\"")
            && reason.contains(&named(&first)),
        "{body}"
    );

    standby.signal(libc::SIGTERM);
    let status = standby.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", standby.stderr());
    assert!(
        standby
            .stderr()
            .contains("stopped while waiting as a standby"),
        "{}",
        standby.stderr()
    );

    // The running instance never noticed.
    let ex = db.client().await;
    ex.execute(
        "INSERT INTO trades (id, symbol, price, amount, taker_address, maker_address)
         VALUES (1, 'BTC-PERP', 100, 2, '0xtaker', '0xmaker')",
        &[],
    )
    .await
    .unwrap();
    wp.wait_for(fence(&ex).await, Duration::from_secs(60), &first)
        .await;
    assert_eq!(wp.ledger().await.len(), 2, "taker and maker entries");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_standby_refuses_and_names_the_running_instance() {
    let db = TestDb::exchange("inst_refuse").await;
    let wp = Walpoints::new(&db, "refuse");
    let first = wp.setup_and_stream().await;
    let mut second = Running::spawn(wp.cmd(&["run", "--no-standby"]));
    let status = second.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", second.stderr());
    let stderr = second.wait_for_stderr("walpoints: ", Duration::from_secs(5));
    let line = error_line(&stderr);
    for needle in [
        "another walpoints instance is already running source \"refuse\"",
        &named(&first),
        "--no-standby",
    ] {
        assert!(line.contains(needle), "no {needle:?} in: {line}");
    }
    assert!(
        !stderr.contains("starting the stream"),
        "the refused instance started streaming:\n{stderr}"
    );
}

/// Ends the store session of `running`'s instance lock (as a store restart or a network cut
/// would), returning whether there was one.
async fn cut_lock_session(wp: &Walpoints<'_>, running: &Running) -> bool {
    wp.store()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&named(running)],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_lock_session_mid_stream_hands_over_without_a_double_count() {
    let db = TestDb::exchange("inst_cut").await;
    reference_slot(&db, "wp_ref").await;
    let wp = Walpoints::new(&db, "cut");
    let mut first = wp.setup_and_stream().await;
    let mut second = wp.start();
    second.wait_for_stderr("waiting as a standby", Duration::from_secs(60));

    // While the exchange trades, the lock's session is cut under whichever instance holds it,
    // three times: each time both race for the lock, and the loser waits as a standby.
    let writer = tokio::spawn(workload(db.url.clone(), 1, 10_000, 100));
    for cut in 1..=3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // The holder `status` names may be handing over at that very moment (its session gone
        // before its successor's is named): then look again.
        loop {
            let holder = instance(&wp);
            let holder = holder.as_str().unwrap_or_default().to_owned();
            if let Some(r) = [&first, &second]
                .into_iter()
                .find(|r| holder.contains(&named(r)))
            {
                if cut_lock_session(&wp, r).await {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nobody held the lock to cut (cut {cut})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    writer.await.unwrap();
    let until = fence(&db.client().await).await;
    wp.wait_for(until, Duration::from_secs(180), &first).await;

    let expected = reference_ledger(&db, "wp_ref", RuleSet::default(), until).await;
    assert_same_ledger(&wp.ledger().await, &expected, "the pure engine");
    wp.assert_totals_match_ledger().await;
    // Nobody was fenced off or stopped: the lock, not the checkpoint's compare-and-set, decided.
    for running in [&mut first, &mut second] {
        assert!(
            running.child.try_wait().unwrap().is_none(),
            "an instance exited:\n{}",
            running.stderr()
        );
        assert!(
            !running
                .stderr()
                .contains("another walpoints instance is writing"),
            "{}",
            running.stderr()
        );
    }
}
