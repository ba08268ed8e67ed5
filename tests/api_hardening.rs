//! The HTTP server under abuse: thousands of malformed requests (random paths, query strings,
//! forged cursors, other methods, oversized heads and bodies, garbage bytes) each get a 4xx and
//! never a 5xx; a client that trickles its request head is cut off; a flood of idle connections
//! is capped; and through all of it the daemon stays up and keeps answering real requests.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::daemon::{fence, Walpoints};
use crate::support::http::{get, http_addr};
use crate::support::rng::Lcg;
use crate::support::{Running, TestDb};

/// Pieces of URLs that parsers trip on: escapes (valid, invalid, NUL, non-UTF-8), dots,
/// slashes, separators, non-ASCII.
const URL_BITS: &[&str] = &[
    "a", "Z", "0", "9", "x", "-", "_", ".", "..", "/", "//", "%", "%2", "%zz", "%00", "%ff", "%2f",
    "%2e%2e", "%20", "+", "=", "&", ";", "~", "!", "$", "'", "(", "*", ",", "@", ":", "é", "💥",
    "\u{202e}", "[", "]", "{", "}", "|", "\\", "^", "`",
];

/// Query values that are wrong for every parameter the API takes.
const BAD_VALUES: &[&str] = &[
    "",
    "-1",
    "1001",
    "1e3",
    "0x10",
    "1.5",
    "NaN",
    "inf",
    "99999999999999999999999999",
    "-99999999999999999999999999",
    "%00",
    "%ff",
    "abc",
    " 1",
    "1 ",
    "１",
];

/// Cursors with the right shape and wrong contents, which must be refused before the store sees
/// them: the hex of tag, 0x1f, parts.
fn forged_cursor(rng: &mut Lcg) -> String {
    let parts: &[&[&str]] = &[
        &["L", "0/1", "1", "a\0b"],
        &["L", "zz/1", "1", "s"],
        &["L", "0/1", "99999999999", "s"],
        &["L", "0/1", "1"],
        &["L", "0/1", "1", "s", "extra"],
        &["B", "NaN", "0xabc"],
        &["B", "1_000", "0xabc"],
        &["B", "1e400", "0xabc"],
        &["B", "1", "0x\0"],
        &["B", "79228162514264337593543950336", "a"],
        &["X", "1", "2"],
        &["B"],
        &[""],
    ];
    let chosen = parts[rng.index(parts.len())];
    hex::encode(chosen.join("\u{1f}"))
}

/// One malformed request of the given kind, and whether the server may close the connection
/// without an answer (only raw garbage may: it is not HTTP at all).
fn malformed(rng: &mut Lcg, kind: usize, host: &str) -> (Vec<u8>, bool) {
    let req = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };
    match kind {
        // Random paths, outside and inside the API's tree.
        0 => {
            let prefix = rng.pick(&["/", "/v1/", "/v1/users/x/", "/metrics/", "/v2/", "//"]);
            let path = format!("{prefix}{}", rng.text(URL_BITS, 60));
            (req("GET", &path.replace(' ', "%20"), ""), false)
        }
        // Malformed addresses.
        1 => {
            let address = match rng.index(4) {
                0 => "a".repeat(129 + rng.index(2000)),
                1 => format!(
                    "0x{}",
                    rng.pick(&["%00", "%20", "%ff", "%0a", "%09", "%7f"])
                ),
                2 => format!("0x{}", rng.text(&["é", "💥", "%e2%80%ae", "%c3"], 5)),
                _ => format!("%{}", rng.text(&["0", "f", "z", "%"], 3)),
            };
            let route = rng.pick(&["", "/ledger"]);
            (
                req("GET", &format!("/v1/users/{address}{route}"), ""),
                false,
            )
        }
        // Query strings: unknown names, repeated names, bad values, forged cursors, overlong.
        2 => {
            let route = rng.pick(&[
                "/v1/leaderboard",
                "/v1/users/0xabc/ledger",
                "/v1/users/0xabc",
                "/v1/epochs",
            ]);
            let query = match rng.index(6) {
                0 => format!("{}={}", rng.text(URL_BITS, 8), rng.pick(BAD_VALUES)),
                1 => "limit=1&limit=2".to_owned(),
                2 => format!("epoch={}", rng.pick(BAD_VALUES)),
                3 => {
                    let value = rng.pick(BAD_VALUES);
                    format!("limit={}", rng.pick(&["0", value]))
                }
                4 => format!("cursor={}", forged_cursor(rng)),
                _ => format!("cursor={}", "ab".repeat(1100 + rng.index(500))),
            };
            // /v1/epochs and /v1/users/{address} take no limit or cursor: also a 400.
            (req("GET", &format!("{route}?{query}"), ""), false)
        }
        // Anything but GET.
        3 => {
            let method = rng.pick(&[
                "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "CONNECT",
            ]);
            let path = rng.pick(&[
                "/metrics",
                "/healthz",
                "/readyz",
                "/v1/leaderboard",
                "/v1/users/0xabc",
            ]);
            (req(method, path, "Content-Length: 0\r\n"), false)
        }
        // Heads too large: one long header, or very many.
        4 => {
            let extra = if rng.index(2) == 0 {
                format!("X-Long: {}\r\n", "v".repeat(MAX_HEAD + rng.index(MAX_HEAD)))
            } else {
                (0..120 + rng.index(400))
                    .map(|i| format!("X-H{i}: {i}\r\n"))
                    .collect()
            };
            (req("GET", "/v1/leaderboard", &extra), false)
        }
        // Bodies: declared too large, or a chunked body with broken framing.
        5 => {
            let extra = match rng.index(3) {
                0 => format!("Content-Length: {}\r\n", 2_000 + rng.index(1 << 30)),
                1 => "Content-Length: nope\r\n".to_owned(),
                _ => "Transfer-Encoding: chunked\r\n".to_owned(),
            };
            let mut r = req("GET", "/metrics", &extra);
            r.extend_from_slice(b"zz\r\nnot a chunk\r\n");
            (r, false)
        }
        // A long request target.
        6 => {
            let target = format!("/v1/users/{}", "a".repeat(MAX_HEAD + rng.index(4096)));
            (req("GET", &target, ""), false)
        }
        // Header names and values that are not HTTP.
        7 => {
            let extra = rng.pick(&[
                "Bad Header: x\r\n",
                ": empty-name\r\n",
                "X-Nul: a\0b\r\n",
                "X-Ctl: \x01\x02\r\n",
                "Host: second.example\r\n",
                "X-Fold: a\r\n folded\r\n",
            ]);
            (req("GET", "/healthz", extra), false)
        }
        // Not HTTP at all.
        _ => {
            let mut garbage = rng.bytes(300);
            garbage.extend_from_slice(b"\r\n\r\n");
            (garbage, true)
        }
    }
}

const KINDS: usize = 9;
const MAX_HEAD: usize = walpoints::http::MAX_HEAD_BYTES;

/// Sends `request` and returns the answer's status (None if the server closed the connection
/// without answering). Every request says `Connection: close`, or is garbage the server closes.
async fn send(addr: &str, request: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything (an oversized head): a failed
    // write is fine, the answer is what counts.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("the server answers or closes within 30 s");
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// Source `hard` on `db` (an exchange) with its HTTP server on, once 500 trades are in its
/// store; returns the server's address too.
async fn start(db: &TestDb) -> (Walpoints<'_>, Running, String) {
    let wp = Walpoints::new(db, "hard").env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0");
    let running = wp.setup_and_stream().await;
    let ex = db.client().await;
    ex.batch_execute(
        "INSERT INTO trades (symbol, price, amount, taker_address, maker_address)
         SELECT 'BTC-PERP', 100, 1 + g % 3, '0xa' || g % 50, '0xb' || g % 40
         FROM generate_series(1, 500) g",
    )
    .await
    .unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(60), &running).await;
    let addr = http_addr(&running).await;
    (wp, running, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_malformed_requests_get_4xx_and_never_5xx() {
    let db = TestDb::exchange("api_hard_fuzz").await;
    let (_wp, mut running, addr) = start(&db).await;

    const REQUESTS: usize = 3_000;
    const PARALLEL: usize = 16;
    let mut rng = Lcg::seeded("requests");
    let seed = rng.0;
    let requests: Vec<(usize, Vec<u8>, bool)> = (0..REQUESTS)
        .map(|i| {
            let kind = i % KINDS;
            let (bytes, may_close) = malformed(&mut rng, kind, &addr);
            (kind, bytes, may_close)
        })
        .collect();
    let mut outcomes: BTreeMap<(usize, Option<u16>), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for chunk in requests.chunks(PARALLEL) {
        let answers =
            futures_util::future::join_all(chunk.iter().map(|(_, bytes, _)| send(&addr, bytes)))
                .await;
        for ((kind, bytes, may_close), status) in chunk.iter().zip(answers) {
            *outcomes.entry((*kind, status)).or_default() += 1;
            let ok = match status {
                Some(code) => (400..500).contains(&code),
                None => *may_close,
            };
            if !ok && failures.len() < 20 {
                let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                failures.push(format!("kind {kind}: {status:?} for {shown:?}"));
            }
        }
    }
    eprintln!("(kind, status) → count: {outcomes:?}");
    assert!(
        failures.is_empty(),
        "answers outside 4xx (seed {seed}):\n{}",
        failures.join("\n")
    );
    // Each kind got real answers, not just closed connections.
    for kind in 0..KINDS - 1 {
        assert!(
            !outcomes.contains_key(&(kind, None)),
            "kind {kind} was dropped without an answer: {outcomes:?}"
        );
    }

    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon died"
    );
    let (status, body) = get(&addr, "/v1/leaderboard?limit=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    assert!(
        !running.stderr().contains("panicked"),
        "a panic was logged:\n{}",
        running.stderr()
    );
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off_and_connections_are_capped() {
    let db = TestDb::exchange("api_hard_slow").await;
    let (_wp, mut running, addr) = start(&db).await;

    // A slowloris: half a request head, then silence. The server closes it after the header
    // read timeout (10 s), with a 408 or without an answer.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), slow.read_to_end(&mut buf))
        .await
        .expect("a trickling client is cut off")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "cut off after {waited:?}, before the timeout"
    );
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A flood of idle connections beyond the cap: the excess is closed at once, the daemon
    // stays up, and once the idle ones time out a real request gets through again.
    let cap = walpoints::http::MAX_CONNECTIONS;
    let mut idle = Vec::new();
    for _ in 0..cap + 50 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut one = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut one)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 50,
        "only {closed} connections over the cap were closed"
    );
    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = get(&addr, "/healthz").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer after the flood"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the daemon died"
    );
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_binds_loopback_by_default_and_changes_nothing() {
    // Loopback unless told otherwise.
    let config = walpoints::config::Config::default();
    let listen = config.http_listen().expect("the server is on by default");
    assert!(listen.ip().is_loopback(), "{listen}");

    let db = TestDb::exchange("api_hard_ro").await;
    let (wp, mut running, addr) = start(&db).await;
    let before = wp.ledger().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            "/v1/leaderboard",
            "/v1/users/0xa1",
            "/v1/users/0xa1/ledger",
            "/metrics",
        ] {
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            assert_eq!(
                send(&addr, req.as_bytes()).await,
                Some(405),
                "{method} {path}"
            );
        }
    }
    assert_eq!(wp.ledger().await, before, "a request changed the store");
    // Page sizes are capped: 1000 is the most one page holds.
    assert_eq!(get(&addr, "/v1/leaderboard?limit=1000").await.0, 200);
    assert_eq!(get(&addr, "/v1/leaderboard?limit=1001").await.0, 400);
    running.signal(libc::SIGTERM);
    assert!(running.wait(Duration::from_secs(30)).success());
}
