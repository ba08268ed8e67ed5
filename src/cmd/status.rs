//! `walpoints status`: how far behind the slot and the store are, from outside the daemon.
//!
//! A CDC sidecar is watched through its slot: the slot pins WAL on the primary until walpoints
//! confirms it, so lag in bytes is what fills the primary's disk and `wal_status` says how close
//! the slot is to being invalidated under `max_slot_wal_keep_size`. The store's checkpoint says
//! what the points stand at. `status` reads both (the source's `pg_replication_slots`, never a
//! business table) and exits 1 when something needs a human, so it serves as a cron or
//! Kubernetes probe. The daemon's own slot poll (for `/metrics` and `/readyz`) uses the same
//! query, [`Slot::query`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::lsn::{self, Lsn};
use crate::pg::connect::{self, error_text};
use crate::pg::Slot;
use crate::store::{Store, StoreError};
use crate::time::{format_rfc3339, now_micros};

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
    pub slot: Option<Slot>,
    /// Slot lag in bytes.
    pub lag_bytes: Option<i64>,
    /// The store's checkpoint LSN.
    #[serde(serialize_with = "lsn::serialize_opt")]
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
    /// What is at risk without being wrong now (a failover slot the primary does not hold
    /// back for its standbys); does not make the source unhealthy.
    pub warnings: Vec<String>,
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
        warnings: Vec::new(),
    };
    match connect::connect(&config.source.url, "walpoints-status").await {
        Ok(client) => match Slot::query(&client, &config.source.slot).await {
            Ok(slot) => {
                s.lag_bytes = slot.lag_bytes();
                if !slot.exists() {
                    s.problems.push(format!(
                        "slot {:?} does not exist on the source (see README, Runbook)",
                        slot.slot_name
                    ));
                } else if slot.is_lost() {
                    s.problems.push(format!(
                        "slot {:?} is lost: the WAL it needed was removed (see README, Runbook)",
                        slot.slot_name
                    ));
                }
                s.warnings.extend(slot.failover_warning());
                s.slot = Some(slot);
            }
            Err(e) => s.problems.push(format!(
                "reading the slot on the source: {}",
                error_text(&e)
            )),
        },
        Err(e) => s.problems.push(format!("source: {e}")),
    }
    match Store::connect(&config.store_url(), &config.source.id, false).await {
        Ok(store) => match read_store(&store).await {
            Ok(Some((lsn, commit_time, dead))) => {
                s.checkpoint_lsn = Some(lsn);
                s.checkpoint_commit_time = Some(format_rfc3339(commit_time));
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
        Err(e) if e.is_missing_database() => s
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
async fn read_store(store: &Store) -> Result<Option<(Lsn, i64, i64)>, StoreError> {
    let Some(cp) = store.checkpoint().await? else {
        return Ok(None);
    };
    Ok(Some((cp.lsn, cp.commit_time, store.dead_letters().await?)))
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
                (
                    "failover slot",
                    opt(slot
                        .filter(|r| r.exists())
                        .map(|r| match (r.failover, r.synced) {
                            (None, _) => "no (PostgreSQL 16 or older)".into(),
                            (Some(false), _) => "no".into(),
                            (Some(true), Some(true)) => {
                                "yes (a standby's synchronised copy)".into()
                            }
                            (Some(true), _) => match r.synchronized_standby_slots.as_deref() {
                                Some(s) if !s.trim().is_empty() => {
                                    format!("yes (synchronized_standby_slots = {s})")
                                }
                                _ => "yes, but synchronized_standby_slots is empty".into(),
                            },
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
            for w in &s.warnings {
                let _ = writeln!(out, "{:<24}{w}", "WARNING");
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

    #[test]
    fn bytes_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MB (3145728 bytes)");
    }
}
