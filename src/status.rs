//! `walpoints status`: how far behind the slot and the store are, from outside the daemon.
//!
//! A CDC sidecar is watched through its slot: the slot pins WAL on the primary until walpoints
//! confirms it, so lag in bytes is what fills the primary's disk and `wal_status` says how close
//! the slot is to being invalidated under `max_slot_wal_keep_size`. The store's checkpoint says
//! what the points stand at. `status` reads both (the source's `pg_replication_slots`, never a
//! business table) and exits 1 when something needs a human, so it serves as a cron or
//! Kubernetes probe. The daemon's own slot poll (for `/metrics` and `/readyz`) uses the same
//! query, [`SlotReport::query`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::pgconn;
use crate::store::{Store, StoreError};
use crate::telemetry::now_micros;

/// The slot as `pg_replication_slots` shows it, with the server's current WAL position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    /// The slot asked about.
    pub slot_name: String,
    /// Whether a slot of that name exists (all fields below but `server_lsn` are empty if not).
    pub slot_exists: bool,
    /// Whether a walsender streams it now.
    pub active: bool,
    /// The walsender's process id.
    pub active_pid: Option<i32>,
    /// Oldest WAL the slot still needs.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub restart_lsn: Option<Lsn>,
    /// What walpoints has acknowledged.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The server's current WAL position (the replay position on a standby).
    #[serde(serialize_with = "ser_opt_lsn")]
    pub server_lsn: Option<Lsn>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// Bytes of WAL that can be written before the slot is in danger; None when unlimited.
    pub safe_wal_size: Option<i64>,
}

/// Serializes an optional LSN in PostgreSQL's `X/Y` form.
pub fn ser_opt_lsn<S: serde::Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

impl SlotReport {
    /// Reads slot `slot` and the server's WAL position in one query.
    pub async fn query(
        client: &tokio_postgres::Client,
        slot: &str,
    ) -> Result<SlotReport, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT s.slot_name IS NOT NULL, coalesce(s.active, false), s.active_pid, \
                        s.restart_lsn::text, s.confirmed_flush_lsn::text, s.wal_status, \
                        s.safe_wal_size, \
                        (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                              ELSE pg_current_wal_lsn() END)::text \
                 FROM (SELECT 1) AS one \
                 LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                &[&slot],
            )
            .await?;
        let lsn = |i: usize| -> Option<Lsn> {
            row.get::<_, Option<String>>(i).and_then(|t| t.parse().ok())
        };
        Ok(SlotReport {
            slot_name: slot.to_owned(),
            slot_exists: row.get(0),
            active: row.get(1),
            active_pid: row.get(2),
            restart_lsn: lsn(3),
            confirmed_flush_lsn: lsn(4),
            wal_status: row.get(5),
            safe_wal_size: row.get(6),
            server_lsn: lsn(7),
        })
    }

    /// Whether the slot exists.
    pub fn exists(&self) -> bool {
        self.slot_exists
    }

    /// Server LSN − confirmed_flush_lsn: WAL the slot pins that walpoints has not confirmed.
    pub fn lag_bytes(&self) -> Option<i64> {
        let (server, confirmed) = (self.server_lsn?, self.confirmed_flush_lsn?);
        Some(i64::try_from(server.0.saturating_sub(confirmed.0)).unwrap_or(i64::MAX))
    }

    /// `wal_status`, or `missing` when there is no slot.
    pub fn wal_status_label(&self) -> &str {
        match (&self.wal_status, self.slot_exists) {
            (_, false) => "missing",
            (Some(s), true) => s,
            (None, true) => "unknown",
        }
    }
}

/// When `status` reports unhealthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// Slot lag in bytes above which status exits 1.
    pub max_lag_bytes: Option<u64>,
    /// Replication lag in seconds above which status exits 1.
    pub max_lag_seconds: Option<f64>,
}

/// One source's status: the slot on the source plus the store's side.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// `source.id`.
    pub source_id: String,
    /// The slot (None when the source could not be read).
    pub slot: Option<SlotReport>,
    /// Slot lag in bytes.
    pub lag_bytes: Option<i64>,
    /// The store's checkpoint LSN.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub checkpoint_lsn: Option<Lsn>,
    /// Commit time of the checkpoint's transaction (RFC 3339).
    pub checkpoint_commit_time: Option<String>,
    /// Now − that commit time.
    pub lag_seconds: Option<f64>,
    /// Rows in `walpoints.dead_letter` for this source.
    pub dead_letters: Option<i64>,
    /// The `walpoints run` that holds the source's instance lock in the store (application
    /// name, store backend pid, client address), `None` when none runs it (or the store could
    /// not be read). A standby waits without the lock, so it never shows here.
    pub instance: Option<String>,
    /// What is wrong; empty when healthy.
    pub problems: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// True when no source has a problem.
    pub healthy: bool,
    /// One entry per configured source.
    pub sources: Vec<SourceStatus>,
}

/// Reads the slot on the source and the checkpoint in the store. Failures to connect are
/// reported as problems (the probe must say "unhealthy", not crash).
pub async fn status(config: &Config, thresholds: Thresholds) -> Status {
    let mut s = SourceStatus {
        source_id: config.source.id.clone(),
        slot: None,
        lag_bytes: None,
        checkpoint_lsn: None,
        checkpoint_commit_time: None,
        lag_seconds: None,
        dead_letters: None,
        instance: None,
        problems: Vec::new(),
    };
    match pgconn::connect(&config.source.url, "walpoints-status").await {
        Ok(client) => match SlotReport::query(&client, &config.source.slot).await {
            Ok(slot) => {
                s.lag_bytes = slot.lag_bytes();
                if !slot.exists() {
                    s.problems.push(format!(
                        "slot {:?} does not exist on the source (see README, Runbook)",
                        slot.slot_name
                    ));
                } else if slot.wal_status.as_deref() == Some("lost") {
                    s.problems.push(format!(
                        "slot {:?} is lost: the WAL it needed was removed (see README, Runbook)",
                        slot.slot_name
                    ));
                }
                s.slot = Some(slot);
            }
            Err(e) => s.problems.push(format!(
                "reading the slot on the source: {}",
                pgconn::error_text(&e)
            )),
        },
        Err(e) => s.problems.push(format!("source: {e}")),
    }
    match Store::connect(&config.store_url(), &config.source.id, false).await {
        Ok(store) => match read_store(&store, &config.source.id).await {
            Ok(Some((lsn, commit_time, dead))) => {
                s.checkpoint_lsn = Some(lsn);
                s.checkpoint_commit_time = Some(crate::tail::rfc3339_micros(commit_time));
                s.lag_seconds =
                    Some((now_micros().saturating_sub(commit_time)).max(0) as f64 / 1e6);
                s.dead_letters = Some(dead);
                s.instance = store.source_lock_holder().await.ok().flatten();
            }
            Ok(None) => s
                .problems
                .push("no checkpoint in the store: run `walpoints setup`".into()),
            Err(e) => s.problems.push(format!("store: {e}")),
        },
        Err(StoreError::NoDatabase(_)) => s
            .problems
            .push("the store database does not exist: run `walpoints setup`".into()),
        Err(e) => s.problems.push(format!("store: {e}")),
    }
    if let (Some(max), Some(lag)) = (thresholds.max_lag_bytes, s.lag_bytes) {
        if lag > i64::try_from(max).unwrap_or(i64::MAX) {
            s.problems.push(format!(
                "slot lag {lag} bytes exceeds --max-lag-bytes {max}"
            ));
        }
    }
    if let (Some(max), Some(lag)) = (thresholds.max_lag_seconds, s.lag_seconds) {
        if lag > max {
            s.problems.push(format!(
                "replication lag {lag:.1} s exceeds --max-lag-seconds {max}"
            ));
        }
    }
    Status {
        healthy: s.problems.is_empty(),
        sources: vec![s],
    }
}

/// (checkpoint LSN, its commit time, dead letters), or None before setup.
async fn read_store(store: &Store, source_id: &str) -> Result<Option<(Lsn, i64, i64)>, String> {
    let Some(cp) = store.checkpoint().await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let dead: i64 = store
        .client()
        .query_one(
            "SELECT count(*) FROM walpoints.dead_letter WHERE source_id = $1",
            &[&source_id],
        )
        .await
        .map_err(|e| pgconn::error_text(&e))?
        .get(0);
    Ok(Some((cp.lsn, cp.commit_time, dead)))
}

impl Status {
    /// The human table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.sources {
            let slot = s.slot.as_ref();
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let lsn = |v: Option<Lsn>| opt(v.map(|l| l.to_string()));
            let rows: Vec<(&str, String)> = vec![
                ("source", s.source_id.clone()),
                ("slot", opt(slot.map(|r| r.slot_name.clone()))),
                (
                    "active",
                    opt(slot.filter(|r| r.exists()).map(|r| match r.active_pid {
                        Some(pid) if r.active => format!("yes (walsender pid {pid})"),
                        _ => "no".into(),
                    })),
                ),
                ("restart_lsn", lsn(slot.and_then(|r| r.restart_lsn))),
                (
                    "confirmed_flush_lsn",
                    lsn(slot.and_then(|r| r.confirmed_flush_lsn)),
                ),
                ("server wal lsn", lsn(slot.and_then(|r| r.server_lsn))),
                ("lag", opt(s.lag_bytes.map(human_bytes))),
                (
                    "wal_status",
                    opt(slot.map(|r| r.wal_status_label().to_owned())),
                ),
                (
                    "safe_wal_size",
                    opt(slot.filter(|r| r.exists()).map(|r| {
                        r.safe_wal_size
                            .map(human_bytes)
                            .unwrap_or_else(|| "unlimited".into())
                    })),
                ),
                ("checkpoint", lsn(s.checkpoint_lsn)),
                (
                    "checkpoint commit time",
                    opt(s.checkpoint_commit_time.clone()),
                ),
                (
                    "replication lag",
                    opt(s.lag_seconds.map(|l| format!("{l:.1} s"))),
                ),
                ("dead letters", opt(s.dead_letters.map(|d| d.to_string()))),
                (
                    "instance",
                    match (&s.instance, s.checkpoint_lsn) {
                        (Some(who), _) => format!("running: {who}"),
                        (None, Some(_)) => "none running".into(),
                        (None, None) => "-".into(),
                    },
                ),
            ];
            for (k, v) in rows {
                let _ = writeln!(out, "{k:<24}{v}");
            }
            if s.problems.is_empty() {
                let _ = writeln!(out, "{:<24}healthy", "health");
            }
            for p in &s.problems {
                let _ = writeln!(out, "{:<24}{p}", "PROBLEM");
            }
        }
        out
    }
}

fn human_bytes(b: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {} ({b} bytes)", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(exists: bool, confirmed: Option<u64>, server: u64) -> SlotReport {
        SlotReport {
            slot_name: "s".into(),
            slot_exists: exists,
            active: false,
            active_pid: None,
            restart_lsn: None,
            confirmed_flush_lsn: confirmed.map(Lsn),
            server_lsn: Some(Lsn(server)),
            wal_status: exists.then(|| "reserved".into()),
            safe_wal_size: None,
        }
    }

    #[test]
    fn lag_is_server_minus_confirmed() {
        assert_eq!(report(true, Some(100), 350).lag_bytes(), Some(250));
        assert_eq!(report(true, Some(400), 350).lag_bytes(), Some(0));
        assert_eq!(report(false, None, 350).lag_bytes(), None);
    }

    #[test]
    fn a_missing_slot_is_labelled_missing() {
        assert_eq!(report(false, None, 1).wal_status_label(), "missing");
        assert_eq!(report(true, Some(1), 1).wal_status_label(), "reserved");
    }

    #[test]
    fn bytes_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MB (3145728 bytes)");
    }

    #[test]
    fn lsns_serialize_in_postgres_form() {
        let json = serde_json::to_value(report(true, Some(0x1_0000_0010), 0x1_0000_0020)).unwrap();
        assert_eq!(json["confirmed_flush_lsn"], "1/10");
        assert_eq!(json["restart_lsn"], serde_json::Value::Null);
    }
}
