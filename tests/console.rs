//! The operator console in a real browser: headless Chromium (Debian's `chromium`) loads each
//! page of a daemon serving a known workload and the tests read the DOM it rendered. The pages'
//! Content-Security-Policy allows no script, so what Chromium renders is what a browser with
//! JavaScript off renders (Chromium's own switch for it,
//! `--blink-settings=scriptEnabled=false`, also stops `--dump-dom` and `--screenshot`). Every page loads without a console message (no error, no CSP violation, no failed
//! load), the figures shown equal the points API's for the same user and epoch, search finds a
//! user, and paging walks the API's pages. Screenshots at a phone's and a desktop's width are
//! written under `$CARGO_TARGET_DIR/console-screenshots/` (or `target/`).
//!
//! Chromium is driven through its command line (`--dump-dom`, `--screenshot`, console messages
//! logged to stderr) rather than a DevTools-protocol crate: nothing to build, nothing to
//! download, and it is what a fresh machine gets from `apt-get install chromium`.
//!
//! The workload is tests/api.rs's (alice 15, carol 11.5, bob and eve 5, frank 2.5, `liq`
//! excluded), plus takers u00..u59 with rising fills against `mm` (so the board has more than
//! one page of 50) and one row with a negative price (a dead letter).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{fence, Walpoints};
use crate::support::http::{get_json, http_addr};
use crate::support::{Running, TestDb};

/// The Chromium binary: `WALPOINTS_CHROMIUM`, else the first of the usual names on PATH. A
/// machine without one fails the test with the reason (`.ci/run` installs it).
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("WALPOINTS_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no Chromium found (tried chromium, chromium-browser, google-chrome on PATH and \
         WALPOINTS_CHROMIUM): the console's browser tests need it; `apt-get install -y chromium` \
         (.ci/run does this)"
    );
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args`; returns (stdout, the
/// console messages it logged).
fn run_chromium(url: &str, width: u32, height: u32, args: &[String]) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium().display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}\n{stderr}",
        out.status
    );
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The DOM Chromium rendered for `url`, after asserting the page logged no console message.
fn dom(url: &str) -> String {
    let (dom, console) = run_chromium(url, 1280, 900, &["--dump-dom".into()]);
    assert!(
        console.is_empty(),
        "{url} logged to the browser console:\n{}",
        console.join("\n")
    );
    assert!(
        dom.contains("<main id=\"main\">"),
        "{url} rendered no page: {dom}"
    );
    dom
}

/// Screenshots `url` as `name`-desktop.png and `name`-phone.png.
fn screenshots(url: &str, name: &str) {
    for (suffix, w, h) in [("desktop", 1280, 1000), ("phone", 390, 1400)] {
        let file = screenshot_dir().join(format!("{name}-{suffix}.png"));
        let _ = std::fs::remove_file(&file);
        let (_, console) = run_chromium(url, w, h, &[format!("--screenshot={}", file.display())]);
        assert!(console.is_empty(), "{url}: {}", console.join("\n"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "no screenshot of {url} at {file:?}");
    }
}

/// The text of an element: tags dropped, entities decoded, white space collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text of the element with `id` (up to its closing `tag`).
fn by_id(dom: &str, id: &str, tag: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find(&format!("</{tag}>")).unwrap();
    text(&dom[start..end])
}

/// The body rows of table `id`, each a list of cell texts.
fn rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let at = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table #{id}"));
    let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| text(&format!("<td{cell}")))
                .collect()
        })
        .collect()
}

/// A figure as the page shows it ("60,000.000000") back to the decimal string the API gives
/// ("60000.000000"), asserting the grouping is by thousands.
fn ungrouped(shown: &str) -> String {
    let int = shown.split('.').next().unwrap().trim_start_matches('-');
    let groups: Vec<&str> = int.split(',').collect();
    assert!(
        groups[0].len() <= 3 && groups[1..].iter().all(|g| g.len() == 3),
        "{shown:?} is not grouped by thousands"
    );
    shown.replace(',', "")
}

fn assert_shown(shown: &str, api: &Value, what: &str) {
    let api = api
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {api} is not a string"));
    assert_eq!(
        ungrouped(shown),
        api,
        "{what}: page shows {shown:?}, the API {api:?}"
    );
}

struct Console {
    base: String,
    addr: String,
    _running: Running,
}

/// A daemon with its HTTP server on, once the workload is in its store.
async fn start(db: &TestDb) -> (Walpoints<'_>, Console) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "excluded_addresses = [\"LIQ\"]\n").unwrap();
    let path = config.into_temp_path().keep().unwrap();
    let wp = Walpoints::new(db, "console")
        .env("WALPOINTS_CONFIG", path.to_str().unwrap())
        .env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0")
        .env("WALPOINTS_HTTP_POLL_INTERVAL", "1s");
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    let ex = db.client().await;
    let mut sql = String::from(
        "INSERT INTO referral_relations (referee_address, referrer_address) VALUES ('alice', 'carol');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('BTC', 100, 10, 'alice', 'bob');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('ETH', 200, 5, 'carol', 'alice');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('ETH', 50, 10, 'dave', 'dave'),
           ('SOL', 50, 10, 'Eve', 'frank'),
           ('BTC', 100, 10, 'liq', 'dave');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES
           ('BTC', -5, 1, 'mallory', 'bob');
         INSERT INTO trades (symbol, price, amount, taker_address, maker_address) VALUES ",
    );
    let fills: Vec<String> = (0..60)
        .map(|i| format!("('BTC', 10, {}, 'u{i:02}', 'mm')", i + 1))
        .collect();
    sql.push_str(&fills.join(", "));
    sql.push(';');
    ex.batch_execute(&sql).await.unwrap();
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(30), &running).await;
    (
        wp,
        Console {
            base: format!("http://{addr}"),
            addr,
            _running: running,
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_loads_in_chromium_without_console_errors() {
    let db = TestDb::exchange("console_pages").await;
    let (_wp, c) = start(&db).await;
    // A few slot polls, so the lag chart has a line.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pages = [
        ("/", "overview"),
        ("/leaderboard", "leaderboard"),
        ("/users/alice", "user"),
        ("/dead-letters", "dead-letters"),
    ];
    for (path, name) in pages {
        let url = format!("{}{path}", c.base);
        let dom = tokio::task::spawn_blocking(move || dom(&url))
            .await
            .unwrap();
        assert!(dom.contains("walpoints</title>"), "{path}: {dom}");
        let url = format!("{}{path}", c.base);
        tokio::task::spawn_blocking(move || screenshots(&url, name))
            .await
            .unwrap();
    }
    let base = c.base.clone();
    let overview = tokio::task::spawn_blocking(move || dom(&format!("{base}/")))
        .await
        .unwrap();
    assert!(
        by_id(&overview, "readiness", "dd").starts_with("Ready"),
        "{overview}"
    );
    assert!(by_id(&overview, "lag-bytes", "dd").ends_with("bytes"));
    assert_eq!(by_id(&overview, "dead-letters", "dd"), "1");
    assert!(
        overview.contains("<path d=\"M"),
        "the lag chart has a line: {overview}"
    );
    assert!(
        overview.contains("100,000"),
        "tiers with thousands separators"
    );
    let base = c.base.clone();
    let dead = tokio::task::spawn_blocking(move || dom(&format!("{base}/dead-letters")))
        .await
        .unwrap();
    let dead = rows(&dead, "dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0][0], "negative_price");
    assert!(
        dead[0][3].starts_with("public.trades") || dead[0][3].contains("trades"),
        "{dead:?}"
    );
    assert!(dead[0][5].contains("mallory"), "the row: {dead:?}");
    // A page that does not exist is the API's 404; bad input the API's 400, as HTML.
    let (status, _) = get_json(&c.addr, "/nowhere").await;
    assert_eq!(status, 404);
    let (status, body) = crate::support::http::get(&c.addr, "/leaderboard?epoch=99999").await;
    assert_eq!(status, 400);
    assert!(body.contains("out of range"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_page_shows_the_apis_figures() {
    let db = TestDb::exchange("console_user").await;
    let (_wp, c) = start(&db).await;
    for who in ["alice", "carol", "eve", "u59", "nobody"] {
        let (status, api) = get_json(&c.addr, &format!("/v1/users/{who}")).await;
        assert_eq!(status, 200, "{api}");
        let (_, ledger) = get_json(&c.addr, &format!("/v1/users/{who}/ledger")).await;
        let url = format!("{}/users/{who}", c.base);
        let page = tokio::task::spawn_blocking(move || dom(&url))
            .await
            .unwrap();
        assert_eq!(by_id(&page, "address", "code"), who);
        assert_shown(
            &by_id(&page, "total", "dd"),
            &api["points"]["total"],
            "total",
        );
        for kind in ["trading", "referral", "holding", "pnl"] {
            assert_shown(
                &by_id(&page, &format!("points-{kind}"), "td"),
                &api["points"][kind],
                kind,
            );
        }
        assert_shown(
            &by_id(&page, "volume", "dd"),
            &api["trading_volume"],
            "volume",
        );
        let rank = by_id(&page, "rank", "dd");
        match api["rank"].as_i64() {
            Some(r) => assert_eq!(rank, r.to_string(), "{who}"),
            None => assert_eq!(rank, "not ranked"),
        }
        assert_eq!(by_id(&page, "referees", "dd"), api["referees"].to_string());
        assert_eq!(
            by_id(&page, "referrer", "dd"),
            api["referrer"].as_str().unwrap_or("none")
        );
        if let Some(next) = api["next_tier"].as_object() {
            assert_shown(
                &by_id(&page, "volume-needed", "span"),
                &next["volume_needed"],
                "to next tier",
            );
        }
        let entries = ledger["entries"].as_array().unwrap();
        let shown = rows(&page, "entries");
        if entries.is_empty() {
            assert_eq!(shown.len(), 1, "the 'no entries' row: {shown:?}");
            continue;
        }
        assert_eq!(shown.len(), entries.len(), "{who}: {shown:?}");
        for (row, entry) in shown.iter().zip(entries) {
            assert_eq!(row[1], entry["kind"].as_str().unwrap());
            assert_shown(&row[2], &entry["points"], "entry points");
            assert_eq!(row[5], entry["commit_lsn"].as_str().unwrap());
            assert!(row[0].ends_with(" UTC"), "{row:?}");
        }
    }
    // The reason in words, for alice's taker fill: 1,000 notional × 0.01 × 1.00.
    let url = format!("{}/users/ALICE", c.base);
    let page = tokio::task::spawn_blocking(move || dom(&url))
        .await
        .unwrap();
    let taker = rows(&page, "entries")
        .into_iter()
        .find(|r| r[1] == "trading_taker")
        .expect("alice's taker entry");
    assert!(
        taker[3].starts_with("1,000")
            && taker[3].contains("notional × 0.01")
            && taker[3].contains("taker rate"),
        "{taker:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leaderboard_search_finds_a_user_and_pages_like_the_api() {
    let db = TestDb::exchange("console_board").await;
    let (_wp, c) = start(&db).await;
    // Page 1 and page 2 of 50, against the API's pages of 50.
    let (_, api1) = get_json(&c.addr, "/v1/leaderboard?limit=50").await;
    let url = format!("{}/leaderboard", c.base);
    let page1 = tokio::task::spawn_blocking(move || dom(&url))
        .await
        .unwrap();
    let shown1 = rows(&page1, "board");
    let compare = |shown: &[Vec<String>], api: &Value| {
        let entries = api["entries"].as_array().unwrap();
        assert_eq!(shown.len(), entries.len());
        for (row, e) in shown.iter().zip(entries) {
            assert_eq!(row[0], e["rank"].to_string());
            assert_eq!(row[1], e["address"].as_str().unwrap());
            for (i, kind) in ["trading", "referral", "holding", "pnl", "total"]
                .iter()
                .enumerate()
            {
                assert_shown(&row[2 + i], &e["points"][*kind], kind);
            }
            assert_shown(&row[7], &e["trading_volume"], "volume");
        }
    };
    compare(&shown1, &api1);
    assert_eq!(shown1.len(), 50);
    // Ties share a rank: bob and eve both have 5.
    let bob = shown1.iter().find(|r| r[1] == "bob").unwrap();
    let eve = shown1.iter().find(|r| r[1] == "eve").unwrap();
    assert_eq!(bob[0], eve[0]);
    // The "Next page" link leads to the API's second page.
    let at = page1
        .find("id=\"next\"")
        .or_else(|| page1.find("rel=\"next\""))
        .expect("a next link");
    let href_at = page1[..at].rfind("href=\"").unwrap() + 6;
    let href = page1[href_at..href_at + page1[href_at..].find('"').unwrap()].replace("&amp;", "&");
    let cursor = api1["next_cursor"].as_str().unwrap();
    assert!(href.ends_with(&format!("cursor={cursor}")), "{href}");
    let (_, api2) = get_json(
        &c.addr,
        &format!("/v1/leaderboard?limit=50&cursor={cursor}"),
    )
    .await;
    let url = format!("{}{href}", c.base);
    let page2 = tokio::task::spawn_blocking(move || dom(&url))
        .await
        .unwrap();
    let shown2 = rows(&page2, "board");
    compare(&shown2, &api2);
    assert!(!shown2.is_empty());
    assert!(
        !page2.contains("rel=\"next\""),
        "the last page has no next link"
    );
    // Search: "EVE" finds eve, with the API's rank.
    let (_, eve_api) = get_json(&c.addr, "/v1/users/eve").await;
    let url = format!("{}/leaderboard?address=EVE", c.base);
    let found = tokio::task::spawn_blocking(move || dom(&url))
        .await
        .unwrap();
    let line = by_id(&found, "found", "p");
    assert!(
        line.starts_with("eve: rank ") && line.contains(&format!("rank {},", eve_api["rank"])),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "{} points",
            eve_api["points"]["total"].as_str().unwrap()
        )),
        "{line}"
    );
    // An excluded address is found but not ranked.
    let url = format!("{}/leaderboard?address=liq", c.base);
    let liq = tokio::task::spawn_blocking(move || dom(&url))
        .await
        .unwrap();
    assert!(by_id(&liq, "found", "p").contains("excluded"), "{liq}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_carry_a_content_security_policy_that_allows_no_script() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::exchange("console_csp").await;
    let (_wp, c) = start(&db).await;
    for path in [
        "/",
        "/leaderboard",
        "/users/alice",
        "/dead-letters",
        "/console.css",
        "/users/%41?epoch=x",
    ] {
        let mut s = tokio::net::TcpStream::connect(&c.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let head = text.split("\r\n\r\n").next().unwrap();
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path}: no CSP in {head}"));
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(
            !csp.contains("script-src"),
            "no script source is allowed: {csp}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(!text.contains("<script"), "{path} has a script");
        assert!(
            !text.contains(" style=\""),
            "{path} has an inline style the CSP would block"
        );
    }
}

/// Not a test: a measurement, run on demand (`cargo test --release --test integration
/// console::measure -- --ignored --nocapture`). Commits 1,000,000 fills among 10,000 users (in
/// transactions of 10,000), lets the daemon drain them, then prints how long each page takes:
/// the server's answer (median of 5 GETs) and a whole headless Chromium load (process start
/// included). It asserts only that the pages load.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement of minutes, not a test; run it with --ignored --nocapture"]
async fn measure_page_loads_against_a_million_fills() {
    let fills: i64 = std::env::var("WALPOINTS_CONSOLE_FILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = TestDb::exchange("console_measure").await;
    let wp = Walpoints::new(&db, "measure").env("WALPOINTS_HTTP_LISTEN", "127.0.0.1:0");
    let running = wp.setup_and_stream().await;
    let addr = http_addr(&running).await;
    let ex = db.client().await;
    let started = std::time::Instant::now();
    let per_tx = 10_000;
    for first in (0..fills).step_by(per_tx as usize) {
        ex.execute(
            "INSERT INTO trades (symbol, price, amount, taker_address, maker_address) \
             SELECT 'BTC', 100 + n % 50, 1 + n % 7, 'u' || (n % 10000), 'u' || ((n * 7 + 1) % 10000) \
             FROM generate_series($1::bigint, $2::bigint) AS n",
            &[&first, &(first + per_tx - 1).min(fills - 1)],
        )
        .await
        .unwrap();
    }
    let until = fence(&ex).await;
    wp.wait_for(until, Duration::from_secs(3600), &running)
        .await;
    println!(
        "{fills} fills committed and drained in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let (_, board) = get_json(&addr, "/v1/leaderboard?limit=50").await;
    let top = board["entries"][0]["address"].as_str().unwrap().to_owned();
    let next = board["next_cursor"].as_str().unwrap().to_owned();
    let pages = [
        "/".to_owned(),
        "/leaderboard".to_owned(),
        format!("/leaderboard?cursor={next}"),
        "/leaderboard?address=u4321".to_owned(),
        format!("/users/{top}"),
        "/users/u4321".to_owned(),
        "/dead-letters".to_owned(),
    ];
    println!("| page | server answer, median of 5 | headless Chromium load |");
    println!("|---|---:|---:|");
    for path in pages {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let (status, _) = crate::support::http::get(&addr, &path).await;
            assert_eq!(status, 200, "{path}");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let url = format!("http://{addr}{path}");
        let t = std::time::Instant::now();
        tokio::task::spawn_blocking(move || dom(&url))
            .await
            .unwrap();
        let browser = t.elapsed().as_secs_f64() * 1000.0;
        let shown = if path.len() > 40 {
            format!("{}…", &path[..40])
        } else {
            path
        };
        println!("| `{shown}` | {:.0} ms | {browser:.0} ms |", times[2]);
    }
}
