//! What the running daemon knows about itself, for operators: Prometheus metrics and the health
//! that `/readyz` judges.
//!
//! The daemon writes here (each committed batch, each reconnect, each slot poll, each
//! heartbeat); the HTTP server only reads. Nothing here feeds back into the points: the wall
//! clock used for lag is for humans and probes, never for the ledger.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::changes::Op;
use crate::dead_letter::Reason;
use crate::lsn::{self, Lsn};
use crate::mapping::TableKind;
use crate::pg::Slot;
use crate::points::{EntryKind, Rejection};
use crate::time::now_micros;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    table: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WalStatusLabels {
    wal_status: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// What the daemon is doing, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connecting for the first time (startup checks, state load).
    Starting,
    /// The replication stream is open.
    Streaming,
    /// Another instance runs the source: waiting to take over.
    Standby {
        /// Who runs it, as the store shows it.
        holder: String,
    },
    /// The last session failed transiently; waiting to reconnect.
    Reconnecting {
        /// The failure, as logged.
        error: String,
    },
    /// The daemon has stopped (asked to, or on a definite error).
    Stopped,
}

/// The mutable part of the health picture.
#[derive(Debug)]
struct Health {
    phase: Phase,
    last_commit: Option<Instant>,
    checkpoint: Option<(Lsn, i64)>,
    /// The last successful slot poll.
    slot: Option<(Instant, Slot)>,
    /// Why the last poll failed, when it did.
    poll_error: Option<String>,
    http_addr: Option<std::net::SocketAddr>,
}

/// Thresholds `/readyz` applies.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// Slot lag in bytes above which walpoints is not ready; 0: unchecked.
    pub max_lag_bytes: u64,
    /// Replication lag in seconds above which walpoints is not ready; 0: unchecked.
    pub max_lag_seconds: u64,
    /// How often the slot is polled; a poll older than three of these is stale.
    pub poll_interval: Duration,
}

/// The daemon's metrics registry and health, shared by the daemon (writer) and the HTTP server
/// (reader).
pub struct Telemetry {
    registry: Registry,
    readiness: Readiness,
    health: Mutex<Health>,
    slot_lag_bytes: Gauge,
    replication_lag_seconds: FloatGauge,
    checkpoint_lsn: Gauge,
    slot_safe_wal_size_bytes: Gauge,
    slot_wal_status: Family<WalStatusLabels, Gauge>,
    slot_active: Gauge,
    slot_failover: Gauge,
    slot_failover_unprotected: Gauge,
    changes: Family<ChangeLabels, Counter>,
    transactions: Counter,
    points_awarded: Family<KindLabels, FloatCounter>,
    points_reversed: Family<KindLabels, FloatCounter>,
    dead_letters: Family<ReasonLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    batch_duration: Histogram,
    batch_size: Histogram,
    reconnects: Counter,
    heartbeat_roundtrip: FloatGauge,
    last_batch_timestamp: FloatGauge,
    /// Fills (trade inserts) seen since start, for the console's fills per second.
    fills: std::sync::atomic::AtomicU64,
    /// The slot polls of the last hour, oldest first, for the console's lag chart.
    lag_history: Mutex<std::collections::VecDeque<LagSample>>,
}

/// How long the console's lag chart looks back.
pub const LAG_HISTORY: Duration = Duration::from_secs(3600);

/// Most samples kept, whatever the poll interval: the history's memory stays bounded.
const MAX_LAG_SAMPLES: usize = 3600;

/// One slot poll as the console charts it: kept in memory only (it is about this process, not
/// about points, so it has no place in the store).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagSample {
    /// Wall-clock time of the poll, microseconds since the Unix epoch.
    pub at_micros: i64,
    /// Slot lag in bytes.
    pub lag_bytes: i64,
    /// Seconds between the poll and the checkpoint's commit time, once there is a checkpoint.
    pub lag_seconds: Option<f64>,
    /// Fills seen since start at the poll, so two samples give a rate.
    pub fills: u64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A fresh registry with every walpoints metric registered (so each appears at 0 from the
    /// first scrape, and alerts on absent series are not needed).
    pub fn new(readiness: Readiness) -> Telemetry {
        let mut t = Telemetry {
            registry: Registry::default(),
            readiness,
            health: Mutex::new(Health {
                phase: Phase::Starting,
                last_commit: None,
                checkpoint: None,
                slot: None,
                poll_error: None,
                http_addr: None,
            }),
            slot_lag_bytes: Gauge::default(),
            replication_lag_seconds: FloatGauge::default(),
            checkpoint_lsn: Gauge::default(),
            slot_safe_wal_size_bytes: Gauge::default(),
            slot_wal_status: Family::default(),
            slot_active: Gauge::default(),
            slot_failover: Gauge::default(),
            slot_failover_unprotected: Gauge::default(),
            changes: Family::default(),
            transactions: Counter::default(),
            points_awarded: Family::default(),
            points_reversed: Family::default(),
            dead_letters: Family::default(),
            rejected: Family::default(),
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            reconnects: Counter::default(),
            heartbeat_roundtrip: FloatGauge::default(),
            last_batch_timestamp: FloatGauge::default(),
            fills: std::sync::atomic::AtomicU64::new(0),
            lag_history: Mutex::new(std::collections::VecDeque::new()),
        };
        t.registry = t.registered();
        for rejection in Rejection::ALL {
            t.rejected
                .get_or_create(&ReasonLabels {
                    reason: rejection.as_str(),
                })
                .inc_by(0);
        }
        t
    }

    /// A registry holding every metric of `self`.
    fn registered(&self) -> Registry {
        let t = self;
        let mut registry = Registry::default();
        registry.register(
            "walpoints_slot_lag_bytes",
            "Bytes of WAL between the server's current position and the slot's confirmed_flush_lsn",
            t.slot_lag_bytes.clone(),
        );
        registry.register(
            "walpoints_replication_lag_seconds",
            "Seconds between now and the commit time of the last source transaction in the store",
            t.replication_lag_seconds.clone(),
        );
        registry.register(
            "walpoints_checkpoint_lsn",
            "The store's checkpoint: end LSN of the last source transaction committed, as a number",
            t.checkpoint_lsn.clone(),
        );
        registry.register(
            "walpoints_slot_safe_wal_size_bytes",
            "Bytes of WAL that can still be written before the slot is at risk of invalidation (-1: unlimited)",
            t.slot_safe_wal_size_bytes.clone(),
        );
        registry.register(
            "walpoints_slot_wal_status",
            "1 for the slot's current wal_status (reserved, extended, unreserved, lost, missing)",
            t.slot_wal_status.clone(),
        );
        registry.register(
            "walpoints_slot_active",
            "1 when a walsender is streaming the slot",
            t.slot_active.clone(),
        );
        registry.register(
            "walpoints_slot_failover",
            "1 when the slot is a failover slot, synchronised to standbys with sync_replication_slots (PostgreSQL 17+)",
            t.slot_failover.clone(),
        );
        registry.register(
            "walpoints_slot_failover_unprotected",
            "1 when the slot is a failover slot but the primary's synchronized_standby_slots is empty: walpoints may get ahead of every standby",
            t.slot_failover_unprotected.clone(),
        );
        registry.register(
            "walpoints_changes",
            "Row changes of the followed tables decoded",
            t.changes.clone(),
        );
        registry.register(
            "walpoints_transactions",
            "Source transactions committed into the store",
            t.transactions.clone(),
        );
        registry.register(
            "walpoints_points_awarded",
            "Points of positive ledger entries written, by kind",
            t.points_awarded.clone(),
        );
        registry.register(
            "walpoints_points_reversed",
            "Points taken back by negative ledger entries (corrections, deletes), by kind",
            t.points_reversed.clone(),
        );
        registry.register(
            "walpoints_dead_letter",
            "Rows written to walpoints.dead_letter, by reason",
            t.dead_letters.clone(),
        );
        registry.register(
            "walpoints_rejected",
            "Inputs that earn nothing by rule (self-trades, rejected referrals, ...), by reason",
            t.rejected.clone(),
        );
        registry.register(
            "walpoints_batch_duration_seconds",
            "Time to write and commit one store transaction",
            t.batch_duration.clone(),
        );
        registry.register(
            "walpoints_batch_size",
            "Row changes per store transaction",
            t.batch_size.clone(),
        );
        registry.register(
            "walpoints_reconnects",
            "Sessions ended by a transient failure and started again",
            t.reconnects.clone(),
        );
        registry.register(
            "walpoints_heartbeat_roundtrip_seconds",
            "Duration of the last heartbeat write on the source",
            t.heartbeat_roundtrip.clone(),
        );
        registry.register(
            "walpoints_last_batch_timestamp_seconds",
            "Wall-clock time of the last store commit, seconds since 1970",
            t.last_batch_timestamp.clone(),
        );
        registry.register(
            "walpoints_build",
            "walpoints build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        self.refresh_lag();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts `n` decoded row changes of a followed table.
    pub fn count_changes(&self, table: TableKind, op: Op, n: u64) {
        if table == TableKind::Trades && op == Op::Insert {
            self.fills
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        self.changes
            .get_or_create(&ChangeLabels {
                table: table.as_str(),
                op: op.as_str(),
            })
            .inc_by(n);
    }

    /// Counts the points a batch wrote of one kind: `awarded` by positive entries, `reversed`
    /// (a magnitude) by negative ones.
    pub fn count_points(&self, kind: EntryKind, awarded: Decimal, reversed: Decimal) {
        let labels = KindLabels {
            kind: kind.as_str(),
        };
        self.points_awarded
            .get_or_create(&labels)
            .inc_by(awarded.to_f64().unwrap_or(0.0));
        self.points_reversed
            .get_or_create(&labels)
            .inc_by(reversed.to_f64().unwrap_or(0.0));
    }

    /// Counts `n` rows dead-lettered for `reason`.
    pub fn count_dead_letters(&self, reason: Reason, n: u64) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// Counts `n` inputs the rules refused to pay for `rejection`.
    pub fn count_rejections(&self, rejection: Rejection, n: u64) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: rejection.as_str(),
            })
            .inc_by(n);
    }

    /// Records a committed (and acknowledged) store transaction: the checkpoint it moved to,
    /// the commit time of its last source transaction, how many source transactions and row
    /// changes it held, and how long writing and committing it took.
    pub fn record_batch(
        &self,
        checkpoint: Lsn,
        commit_time: i64,
        transactions: u64,
        changes: u64,
        write: Duration,
    ) {
        self.transactions.inc_by(transactions);
        self.batch_duration.observe(write.as_secs_f64());
        self.batch_size.observe(changes as f64);
        self.last_batch_timestamp.set(now_micros() as f64 / 1e6);
        let mut h = self.health();
        h.last_commit = Some(Instant::now());
        self.set_checkpoint(&mut h, checkpoint, commit_time);
    }

    /// Records a checkpoint moved over idle WAL (its commit time stays).
    pub fn idle_advanced(&self, lsn: Lsn) {
        let mut h = self.health();
        let commit_time = h.checkpoint.map_or(0, |(_, t)| t);
        self.set_checkpoint(&mut h, lsn, commit_time);
    }

    /// Records the checkpoint a session starts from.
    pub fn resumed_at(&self, lsn: Lsn, commit_time: i64) {
        let mut h = self.health();
        self.set_checkpoint(&mut h, lsn, commit_time);
    }

    fn set_checkpoint(&self, h: &mut Health, lsn: Lsn, commit_time: i64) {
        h.checkpoint = Some((lsn, commit_time));
        self.checkpoint_lsn
            .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
    }

    /// Records what the daemon is doing.
    pub fn set_phase(&self, phase: Phase) {
        if matches!(phase, Phase::Reconnecting { .. }) {
            self.reconnects.inc();
        }
        self.health().phase = phase;
    }

    /// Records a slot poll of the source.
    pub fn slot_polled(&self, result: Result<Slot, String>) {
        let mut h = self.health();
        match result {
            Ok(report) => {
                self.slot_lag_bytes.set(report.lag_bytes().unwrap_or(0));
                self.remember_lag(LagSample {
                    at_micros: now_micros(),
                    lag_bytes: report.lag_bytes().unwrap_or(0),
                    lag_seconds: Self::lag_seconds(&h),
                    fills: self.fills.load(std::sync::atomic::Ordering::Relaxed),
                });
                self.slot_safe_wal_size_bytes
                    .set(report.safe_wal_size.unwrap_or(-1));
                self.slot_active.set(i64::from(report.active));
                self.slot_failover
                    .set(i64::from(report.failover == Some(true)));
                let warning = report.failover_warning();
                if let Some(w) = &warning {
                    if h.slot
                        .as_ref()
                        .is_none_or(|(_, s)| s.failover_warning().is_none())
                    {
                        tracing::warn!("{w}");
                    }
                }
                self.slot_failover_unprotected
                    .set(i64::from(warning.is_some()));
                self.slot_wal_status.clear();
                self.slot_wal_status
                    .get_or_create(&WalStatusLabels {
                        wal_status: report.wal_status_label().to_owned(),
                    })
                    .set(1);
                h.slot = Some((Instant::now(), report));
                h.poll_error = None;
            }
            Err(e) => h.poll_error = Some(e),
        }
    }

    fn remember_lag(&self, sample: LagSample) {
        let mut history = self
            .lag_history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let oldest = sample.at_micros - LAG_HISTORY.as_micros() as i64;
        while history
            .front()
            .is_some_and(|s| s.at_micros < oldest || history.len() >= MAX_LAG_SAMPLES)
        {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// The slot polls of the last hour ([`LAG_HISTORY`]), oldest first.
    pub fn lag_history(&self) -> Vec<LagSample> {
        self.lag_history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// What the daemon is doing, in words, for the console (the same words `/readyz` uses
    /// when not ready).
    pub fn phase_text(&self) -> String {
        match &self.health().phase {
            Phase::Starting => "starting: the replication stream is not open yet".into(),
            Phase::Streaming => "streaming".into(),
            Phase::Standby { holder } => format!("standby: {holder}"),
            Phase::Reconnecting { error } => format!("reconnecting after: {error}"),
            Phase::Stopped => "stopped".into(),
        }
    }

    /// Records a heartbeat's round trip.
    pub fn heartbeat(&self, took: Duration) {
        self.heartbeat_roundtrip.set(took.as_secs_f64());
    }

    /// Records the address the HTTP server listens on.
    pub fn set_http_addr(&self, addr: std::net::SocketAddr) {
        self.health().http_addr = Some(addr);
    }

    /// The address the HTTP server listens on, once bound.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.health().http_addr
    }

    /// Seconds between now and the checkpoint's commit time.
    fn lag_seconds(h: &Health) -> Option<f64> {
        h.checkpoint
            .map(|(_, t)| (now_micros().saturating_sub(t)).max(0) as f64 / 1e6)
    }

    fn refresh_lag(&self) {
        let h = self.health();
        if let Some(s) = Self::lag_seconds(&h) {
            self.replication_lag_seconds.set(s);
        }
    }

    /// `Ok` when walpoints is streaming, its slot poll is fresh and lag is under the thresholds;
    /// otherwise why not.
    pub fn ready(&self) -> Result<ReadyReport, String> {
        let h = self.health();
        let r = &self.readiness;
        match &h.phase {
            Phase::Streaming => {}
            Phase::Starting => {
                return Err("starting: the replication stream is not open yet".into())
            }
            Phase::Reconnecting { error } => {
                return Err(format!("not streaming: reconnecting after: {error}"))
            }
            Phase::Standby { holder } => return Err(format!("standby: {holder}")),
            Phase::Stopped => return Err("stopped".into()),
        }
        let stale = r.poll_interval * 3 + Duration::from_secs(1);
        let Some((at, slot)) = &h.slot else {
            return Err(match &h.poll_error {
                Some(e) => format!("the slot cannot be read on the source: {e}"),
                None => "the slot has not been read on the source yet".into(),
            });
        };
        if at.elapsed() > stale {
            return Err(format!(
                "the slot was last read {} s ago{}",
                at.elapsed().as_secs(),
                h.poll_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        if !slot.exists() {
            return Err(format!("slot {} does not exist", slot.slot_name));
        }
        if slot.is_lost() {
            return Err(format!(
                "slot {} is lost (wal_status = lost)",
                slot.slot_name
            ));
        }
        let lag_bytes = slot.lag_bytes().unwrap_or(0);
        if r.max_lag_bytes > 0 && lag_bytes > i64::try_from(r.max_lag_bytes).unwrap_or(i64::MAX) {
            return Err(format!(
                "slot lag {lag_bytes} bytes is above http.ready_max_lag_bytes = {}",
                r.max_lag_bytes
            ));
        }
        let lag_seconds = Self::lag_seconds(&h);
        if let Some(s) = lag_seconds {
            if r.max_lag_seconds > 0 && s > r.max_lag_seconds as f64 {
                return Err(format!(
                    "replication lag {s:.1} s is above http.ready_max_lag_seconds = {}",
                    r.max_lag_seconds
                ));
            }
        }
        Ok(ReadyReport {
            lag_bytes,
            lag_seconds,
            checkpoint: h.checkpoint.map(|(l, _)| l),
            last_commit_seconds_ago: h.last_commit.map(|t| t.elapsed().as_secs_f64()),
            failover: slot.failover,
            warnings: slot.failover_warning().into_iter().collect(),
        })
    }
}

/// What `/readyz` says when ready.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyReport {
    /// Slot lag in bytes at the last poll.
    pub lag_bytes: i64,
    /// Seconds since the checkpoint's commit time.
    pub lag_seconds: Option<f64>,
    /// The checkpoint.
    #[serde(serialize_with = "lsn::serialize_opt")]
    pub checkpoint: Option<Lsn>,
    /// Seconds since this process last committed a batch.
    pub last_commit_seconds_ago: Option<f64>,
    /// Whether the slot is a failover slot (PostgreSQL 17+; `None` before).
    pub failover: Option<bool>,
    /// What is not wrong enough to be unready but must be seen: a failover slot the primary
    /// does not hold back for its standbys.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry() -> Telemetry {
        Telemetry::new(Readiness {
            max_lag_bytes: 1000,
            max_lag_seconds: 60,
            poll_interval: Duration::from_secs(5),
        })
    }

    fn slot(lag: u64, wal_status: &str) -> Slot {
        Slot {
            slot_name: "walpoints".into(),
            slot_exists: wal_status != "missing",
            plugin: Some("pgoutput".into()),
            logical: true,
            active: true,
            active_pid: Some(7),
            restart_lsn: Some(Lsn(100)),
            confirmed_flush_lsn: Some(Lsn(100)),
            server_lsn: Some(Lsn(100 + lag)),
            wal_status: Some(wal_status.into()),
            safe_wal_size: None,
            failover: None,
            synced: None,
            synchronized_standby_slots: None,
            in_recovery: false,
        }
    }

    #[test]
    fn the_lag_history_keeps_the_last_hour_in_order_and_stays_bounded() {
        let t = telemetry();
        t.count_changes(TableKind::Trades, Op::Insert, 3);
        t.count_changes(TableKind::Positions, Op::Insert, 5);
        t.slot_polled(Ok(slot(10, "reserved")));
        t.slot_polled(Err("down".into()));
        t.slot_polled(Ok(slot(20, "reserved")));
        let h = t.lag_history();
        assert_eq!(
            h.iter().map(|s| s.lag_bytes).collect::<Vec<_>>(),
            [10, 20],
            "failed polls are not samples"
        );
        assert_eq!(h[1].fills, 3, "only trade inserts are fills");
        let now = now_micros();
        let hour = LAG_HISTORY.as_micros() as i64;
        for i in 0..MAX_LAG_SAMPLES as i64 + 10 {
            t.remember_lag(LagSample {
                at_micros: now - hour - 10 + i,
                lag_bytes: i,
                lag_seconds: None,
                fills: 0,
            });
        }
        let h = t.lag_history();
        assert!(h.len() <= MAX_LAG_SAMPLES, "{}", h.len());
        assert!(h.windows(2).all(|w| w[0].at_micros < w[1].at_micros));
        t.remember_lag(LagSample {
            at_micros: now + 2 * hour,
            lag_bytes: 1,
            lag_seconds: None,
            fills: 0,
        });
        assert_eq!(t.lag_history().len(), 1, "samples older than an hour go");
    }

    #[test]
    fn ready_only_when_streaming_with_a_fresh_poll_under_the_thresholds() {
        let t = telemetry();
        assert!(t.ready().unwrap_err().contains("starting"));
        t.set_phase(Phase::Streaming);
        assert!(t.ready().unwrap_err().contains("not been read"));
        t.slot_polled(Ok(slot(10, "reserved")));
        t.resumed_at(Lsn(100), now_micros());
        let ok = t.ready().unwrap();
        assert_eq!(ok.lag_bytes, 10);
        t.slot_polled(Ok(slot(5000, "reserved")));
        assert!(t.ready().unwrap_err().contains("ready_max_lag_bytes"));
        t.slot_polled(Ok(slot(0, "lost")));
        assert!(t.ready().unwrap_err().contains("lost"));
        t.slot_polled(Ok(slot(0, "reserved")));
        t.resumed_at(Lsn(100), now_micros() - 120_000_000);
        assert!(t.ready().unwrap_err().contains("ready_max_lag_seconds"));
        t.resumed_at(Lsn(100), now_micros());
        t.set_phase(Phase::Reconnecting {
            error: "connection refused".into(),
        });
        assert!(t.ready().unwrap_err().contains("connection refused"));
    }

    #[test]
    fn every_series_is_there_from_the_first_scrape() {
        let text = telemetry().encode();
        for name in [
            "walpoints_slot_lag_bytes",
            "walpoints_replication_lag_seconds",
            "walpoints_checkpoint_lsn",
            "walpoints_transactions_total",
            "walpoints_rejected_total{reason=\"self_trades\"} 0",
            "walpoints_batch_duration_seconds_bucket",
            "walpoints_batch_size_count",
            "walpoints_reconnects_total",
            "walpoints_heartbeat_roundtrip_seconds",
            "walpoints_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
