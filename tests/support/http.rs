//! A minimal HTTP/1.1 client for the daemon's server: enough for GETs with `Connection: close`
//! (and for sending raw, malformed requests), without pulling an HTTP client crate into the
//! test build.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Running;

/// Waits for the daemon's "http: serving" log line (text or JSON) and returns the address it
/// names.
pub async fn http_addr(running: &Running) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stderr = running.stderr();
        if let Some(line) = stderr.lines().find(|l| l.contains("http: serving")) {
            // Text logs say addr=..., JSON logs {"fields":{"addr":"...",...}}.
            let addr = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(json) => json["fields"]["addr"].as_str().map(str::to_owned),
                Err(_) => line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_owned),
            };
            return addr.expect("the log line names addr");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start its HTTP server; stderr:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` as is and returns (status, body).
pub async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("response within 20 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// `GET path` → (status, body).
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// `GET path` → (status, JSON body).
pub async fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("GET {path}: {status} with a body that is not JSON ({e}): {body}")
    });
    (status, json)
}
