//! The daemon's commands: `setup` (store schema, publication, slot, initial snapshot), `run`
//! (the daemon: startup checks, heartbeat, the batch loop, reconnects) and `teardown`.
//!
//! Every check that guards against losing data runs here before the stream starts, and each
//! says what happened and what to do; see the README, "Refusing to lose data".
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | `run`: the HTTP server and slot poll beside the reconnect loop |
//! | `session.rs` | one connected session, phase by phase |
//! | [`batch`] | the batch loop and its exactly-once rules |
//! | `standby.rs` | the one-instance lock: lead or wait as a standby |
//! | `outage.rs` | holding the replication session while the store is away |
//! | `background.rs` | the heartbeat and the slot poll |
//! | `setup.rs`, `snapshot.rs` | `setup` and its initial snapshot |
//! | `teardown.rs` | `teardown` |
//! | `checks.rs` | the startup checks |
//! | `error.rs` | [`DaemonError`], each refusal with its runbook link |

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::points::Rejection;
use crate::telemetry::{Phase, Readiness, Telemetry};

mod background;
pub mod batch;
mod checks;
mod error;
mod outage;
mod session;
mod setup;
mod snapshot;
mod standby;
mod teardown;

pub use background::HEARTBEAT_PREFIX;
pub use error::DaemonError;
pub use setup::{setup, SetupReport};
pub use teardown::{teardown, TeardownReport};

use background::AbortOnDrop;
use batch::{BatchObserver, BatchReport};
use session::Ended;

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A session healthy for longer than this ended in a new incident: backoff starts over.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// What `run` does when another instance already runs the same source against the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// Wait as a standby, and take over when the other instance stops (the default): a second
    /// instance is a hot spare, never a second writer.
    Wait,
    /// Exit with [`DaemonError::AnotherInstance`] naming the other instance (`run
    /// --no-standby`), for supervisors that want exactly one process and a failure otherwise.
    Refuse,
}

/// The telemetry `run` reports to, with the readiness thresholds of `config`.
pub fn telemetry(config: &Config) -> Arc<Telemetry> {
    Arc::new(Telemetry::new(Readiness {
        max_lag_bytes: config.http.ready_max_lag_bytes,
        max_lag_seconds: config.http.ready_max_lag_seconds,
        poll_interval: config.http_poll_interval(),
    }))
}

/// `walpoints run`: streams until `stop` turns true, reconnecting with capped exponential
/// backoff on transient errors; returns the definite error that stopped it. With `http.listen`
/// set, serves metrics, health and the points API meanwhile. While another instance runs the
/// source, waits as a standby or refuses, as `standby` says.
pub async fn run(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    run_reporting(config, standby, stop, telemetry(config)).await
}

/// [`run`], reporting to `telemetry` (so an embedding program, like the demo, can read the HTTP
/// address or the health itself).
pub async fn run_reporting(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
    telemetry: Arc<Telemetry>,
) -> Result<(), DaemonError> {
    let mut background = Vec::new();
    if let Some(addr) = config.http_listen() {
        let api = crate::http::Api::new(&config.rules, config.store_url(), config.http.pool_size)?;
        let server = crate::http::Server::bind(addr, api, telemetry.clone()).await?;
        let mut stop_http = stop.clone();
        background.push(AbortOnDrop::spawn(server.serve(async move {
            let _ = stop_http.wait_for(|s| *s).await;
        })));
        background.push(AbortOnDrop::spawn(background::poll_slot(
            config.source.url.clone(),
            config.source.slot.clone(),
            config.http_poll_interval(),
            telemetry.clone(),
        )));
    }
    let result = reconnecting(config, standby, stop, &telemetry).await;
    telemetry.set_phase(Phase::Stopped);
    drop(background);
    result
}

/// Runs sessions one after another: a transient failure waits (capped exponential backoff) and
/// starts a new session from the store's checkpoint; a definite one, or `stop`, returns.
async fn reconnecting(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<(), DaemonError> {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        let started = std::time::Instant::now();
        let err = match session::run(config, standby, stop.clone(), telemetry).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::StoreBack) => {
                // The outage was waited out already: resume at once.
                backoff = Duration::from_millis(250);
                attempt = 0;
                continue;
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        telemetry.set_phase(Phase::Reconnecting {
            error: err.to_string(),
        });
        if *stop.borrow() {
            // Asked to stop while the store or source was away: nothing of the open batch was
            // acknowledged, so the next start streams it again.
            tracing::warn!(error = %err, "stopping without committing the open batch; it is redone on the next start");
            return Ok(());
        }
        if started.elapsed() > HEALTHY_SESSION {
            backoff = Duration::from_millis(250);
            attempt = 0;
        }
        attempt += 1;
        tracing::warn!(attempt, retry_in_ms = backoff.as_millis() as u64, error = %err, "transient failure; reconnecting");
        let mut stop_wait = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop_wait.wait_for(|s| *s) => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The batch loop reports to telemetry: each committed batch becomes counts of changes, points,
/// dead letters and rejections, and a new checkpoint.
impl BatchObserver for Telemetry {
    fn batch_committed(&self, r: &BatchReport) {
        for &(table, op, n) in &r.changes_by {
            self.count_changes(table, op, n);
        }
        for &(kind, awarded, reversed) in &r.points {
            self.count_points(kind, awarded, reversed);
        }
        for &(reason, n) in &r.dead_letters {
            self.count_dead_letters(reason, n);
        }
        for rejection in Rejection::ALL {
            let n = r.counters.rejected(rejection);
            if n > 0 {
                self.count_rejections(rejection, n);
            }
        }
        self.record_batch(r.lsn, r.commit_time, r.transactions, r.changes, r.write);
    }

    fn checkpoint_advanced(&self, checkpoint: Lsn) {
        self.idle_advanced(checkpoint);
    }
}
