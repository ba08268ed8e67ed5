//! The session's background jobs: the heartbeat on the source and the slot poll for
//! `/metrics` and `/readyz`. Each keeps its own SQL connection and survives its failures, so a
//! source restart costs it one tick; neither can stop the daemon.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ConnUrl;
use crate::pg::connect::{self, ConnectError};
use crate::pg::Slot;
use crate::telemetry::Telemetry;

/// Prefix of walpoints' heartbeat messages in the WAL.
pub const HEARTBEAT_PREFIX: &str = "walpoints.heartbeat";

/// A SQL connection for a periodic background job, opened on first use and again after it
/// broke, so a source restart costs the job one tick.
struct Kept {
    url: ConnUrl,
    application: &'static str,
    client: Option<tokio_postgres::Client>,
}

impl Kept {
    fn new(url: ConnUrl, application: &'static str) -> Kept {
        Kept {
            url,
            application,
            client: None,
        }
    }

    async fn get(&mut self) -> Result<&tokio_postgres::Client, ConnectError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        match self.client {
            Some(ref c) => Ok(c),
            None => Ok(self
                .client
                .insert(connect::connect(&self.url, self.application).await?)),
        }
    }

    fn reset(&mut self) {
        self.client = None;
    }
}

/// A tick every `every` that skips, rather than bunches, ticks missed while busy.
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Aborts a spawned task when dropped, so a session's heartbeat dies with the session.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `task`, to be aborted when the handle is dropped.
    pub(super) fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a transactional logical message on the source every `every`: it keeps the slot
/// moving (and WAL recyclable) when the followed tables are idle but the database is not, and
/// advances stream time so holding hours are credited at hour boundaries without trades.
pub(super) async fn heartbeat_loop(
    url: ConnUrl,
    source_id: String,
    every: Duration,
    telemetry: Arc<Telemetry>,
) {
    let mut conn = Kept::new(url, "walpoints-heartbeat");
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        let c = match conn.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat: cannot connect");
                continue;
            }
        };
        let sent = std::time::Instant::now();
        match c
            .query_one(
                "SELECT pg_logical_emit_message(true, $1, $2)::text",
                &[&HEARTBEAT_PREFIX, &source_id],
            )
            .await
        {
            Ok(_) => {
                telemetry.heartbeat(sent.elapsed());
                tracing::trace!(ms = sent.elapsed().as_millis() as u64, "heartbeat");
            }
            Err(e) => {
                tracing::warn!(error = %connect::error_text(&e), "heartbeat failed");
                conn.reset();
            }
        }
    }
}

/// Reads the slot's lag on the source every `every`, for `/metrics` and `/readyz`. A query of
/// `pg_replication_slots` only: no business table is touched.
pub(super) async fn poll_slot(
    url: ConnUrl,
    slot: String,
    every: Duration,
    telemetry: Arc<Telemetry>,
) {
    let mut conn = Kept::new(url, "walpoints-monitor");
    let mut tick = ticker(every);
    loop {
        tick.tick().await;
        let c = match conn.get().await {
            Ok(c) => c,
            Err(e) => {
                telemetry.slot_polled(Err(e.to_string()));
                continue;
            }
        };
        let polled =
            tokio::time::timeout(every.max(Duration::from_secs(5)), Slot::query(c, &slot)).await;
        match polled {
            Ok(Ok(report)) => telemetry.slot_polled(Ok(report)),
            Ok(Err(e)) => {
                telemetry.slot_polled(Err(connect::error_text(&e)));
                conn.reset();
            }
            Err(_) => {
                telemetry.slot_polled(Err("reading pg_replication_slots timed out".into()));
                conn.reset();
            }
        }
    }
}
