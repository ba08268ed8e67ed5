//! The operator's commands: `setup` (store schema, publication, slot, initial snapshot), `run`
//! (the daemon: startup checks, heartbeat, the batch loop, reconnects) and `teardown`.
//!
//! Every check that guards against losing data lives here, before the stream starts, and each
//! says what happened and what to do; see the README, "Refusing to lose
//! data", for the longer story.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ConnUrl};
use crate::events::Mapper;
use crate::pgconn;
use crate::pipeline::{BatchLimits, Pipeline, PipelineError};
use crate::points::Engine;
use crate::source::{AdminSession, ReplicationSource, SourceOptions, StreamEvent};
use crate::status::SlotReport;
use crate::store::{Store, StoreError};
use crate::telemetry::{Phase, Readiness, Telemetry};

mod checks;
mod error;
mod setup;

use checks::{check_publication, check_slot, check_tables};
pub use error::DaemonError;
pub use setup::{setup, SetupReport};

/// Prefix of walpoints' heartbeat messages in the WAL.
pub const HEARTBEAT_PREFIX: &str = "walpoints.heartbeat";

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn engine(config: &Config) -> Result<Engine, DaemonError> {
    Engine::new(config.rules.clone()).map_err(|e| DaemonError::Config(e.to_string()))
}

fn mapper(config: &Config) -> Mapper {
    Mapper::new(&config.tables, &config.columns)
}

/// The telemetry `run` reports to, with the readiness thresholds of `config`.
pub fn telemetry(config: &Config) -> Arc<Telemetry> {
    Arc::new(Telemetry::new(Readiness {
        max_lag_bytes: config.http.ready_max_lag_bytes,
        max_lag_seconds: config.http.ready_max_lag_seconds,
        poll_interval: config.http_poll_interval(),
    }))
}

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

/// How often a standby asks the store whether the source's lock is free: the longest it takes
/// to notice that the running instance has gone.
const STANDBY_POLL: Duration = Duration::from_secs(2);

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
        let server = crate::http::Server::bind(addr, config, telemetry.clone())
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let mut stop_http = stop.clone();
        background.push(AbortOnDrop(tokio::spawn(server.serve(async move {
            let _ = stop_http.wait_for(|s| *s).await;
        }))));
        background.push(AbortOnDrop(tokio::spawn(poll_slot(
            config.source.url.clone(),
            config.source.slot.clone(),
            config.http_poll_interval(),
            telemetry.clone(),
        ))));
    }
    let result = reconnecting(config, standby, stop, &telemetry).await;
    telemetry.set_phase(Phase::Stopped);
    drop(background);
    result
}

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
        let err = match session(config, standby, stop.clone(), telemetry).await {
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
        if started.elapsed() > Duration::from_secs(60) {
            // The session was healthy for a while: this is a new incident.
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

/// How a session ended without an error for [`reconnecting`] to handle.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The store failed mid-stream and answers again: start a new session from its checkpoint.
    StoreBack,
}

/// Longest pause between two probes of a store that failed mid-stream: short, since the
/// replication session is being held open meanwhile.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a replication session is held open for a store that does not answer. Past it the
/// session is let go, so that a standby instance which can reach the store (this one may be cut
/// off from it alone) can take the slot over.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// How long one probe of the store may take before it counts as another failure (a black-holed
/// store would otherwise hang it).
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// One connected session: the source's instance lock, checks, state load, stream until stop or
/// error.
async fn session(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<Ended, DaemonError> {
    let engine = engine(config)?;
    let mapper = mapper(config);
    let mut store = match Store::connect(&config.store_url(), &config.source.id, false).await {
        Ok(s) => s,
        // No store database yet: setup has never run (it creates it).
        Err(StoreError::NoDatabase(_)) => {
            return Err(DaemonError::NotSetUp {
                source_id: config.source.id.clone(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    store.migrate().await?;
    // The lock is taken on the connection the writer commits on: no batch can commit unless
    // this session holds it (see store/lock.rs).
    if !lead(&store, config, standby, stop.clone(), telemetry).await? {
        tracing::info!(source = %config.source.id, "stopped while waiting as a standby");
        return Ok(Ended::Stopped);
    }
    let cp = store
        .checkpoint()
        .await?
        .ok_or_else(|| DaemonError::NotSetUp {
            source_id: config.source.id.clone(),
        })?;
    {
        let mut admin = AdminSession::connect(&config.source.url, "walpoints-check").await?;
        let system_id = admin.system_id().await?;
        check_slot(&mut admin, config, &cp, &system_id).await?;
        let source_db = pgconn::connect(&config.source.url, "walpoints-check").await?;
        check_tables(&source_db, config, &mapper).await?;
        check_publication(&source_db, config).await?;
    }
    let state = store.load_state(cp.stream_time).await?;
    tracing::info!(
        checkpoint = %cp.lsn,
        open_positions = state.open_positions(),
        users = state.user_count(),
        "state loaded; starting the stream"
    );
    telemetry.resumed_at(cp.lsn, cp.commit_time);
    let mut pipeline = Pipeline::new(engine, mapper, config.truncate.policy, state, cp.lsn)
        .with_telemetry(telemetry.clone());
    let mut source = ReplicationSource::start(&SourceOptions {
        url: config.source.url.clone(),
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        start_lsn: cp.lsn,
        durable_lsn: cp.lsn,
        temporary_slot: false,
        application_name: "walpoints".into(),
    })
    .await?;
    if source.system_id() != cp.system_id {
        return Err(DaemonError::SystemIdChanged {
            recorded: cp.system_id.clone(),
            found: source.system_id().to_owned(),
        });
    }
    telemetry.set_phase(Phase::Streaming);
    let heartbeat = config.heartbeat_interval().map(|every| {
        let url = config.source.url.clone();
        let id = config.source.id.clone();
        AbortOnDrop(tokio::spawn(heartbeat_loop(
            url,
            id,
            every,
            telemetry.clone(),
        )))
    });
    let limits = BatchLimits {
        max_changes: config.batch.max_changes,
        max_delay: config.batch_delay(),
    };
    let mut stop_store = stop.clone();
    let mut stop_rx = stop;
    let mut stopped = Box::pin(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let result = pipeline
        .stream(&mut source, &mut store, limits, &mut stopped)
        .await;
    drop(heartbeat);
    match result {
        Ok(()) => {
            // Give the transport a moment to send the last acknowledgement, then end cleanly.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            if let Err(e) = source.stop().await {
                tracing::debug!(error = %e, "ending the replication session");
            }
            tracing::info!(checkpoint = %pipeline.checkpoint(), "stopped cleanly");
            Ok(Ended::Stopped)
        }
        Err(PipelineError::Store(e)) if e.is_transient() && !same_server(config) => {
            let held = wait_for_store(config, &mut stop_store, telemetry, &mut source, &e).await;
            // The pipeline's state ran ahead of the store, and the source has streamed past
            // the checkpoint: both start over from the store.
            drop(source);
            match held {
                Held::StoreBack => Ok(Ended::StoreBack),
                Held::Stopped => {
                    tracing::warn!(error = %e, "stopping without committing the open batch; it is redone on the next start");
                    Ok(Ended::Stopped)
                }
                Held::Released => Err(DaemonError::Pipeline(PipelineError::Store(e))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the store is on the source's server (same host and port): then a store failure is
/// most likely that server going away, and holding its replication session open is no use.
fn same_server(config: &Config) -> bool {
    let (store, source) = (config.store_url(), &config.source.url);
    store.host == source.host && store.port == source.port
}

/// How [`wait_for_store`] ended.
enum Held {
    /// The store answers again.
    StoreBack,
    /// Asked to stop.
    Stopped,
    /// The source went away, or asked for a confirmation walsender shutdown waits for: the
    /// replication session must be let go.
    Released,
}

/// The store failed mid-stream while the source is fine. Ending the session would drop the
/// replication connection too: the slot would go inactive (free for another instance to take)
/// and, if the store stays away longer than a reconnect, stay so. Instead this holds the
/// replication session open while probing the store with capped backoff: the transport keeps
/// sending standby feedback with the last committed LSN (so nothing new is acknowledged and
/// the walsender never hits `wal_sender_timeout`), and what the source sends meanwhile is
/// read and thrown away (the next session streams it again from the store's checkpoint).
///
/// A source that is shutting down asks for a reply and waits until its client has confirmed
/// everything it sent, which walpoints cannot do without the store: then (or if the source
/// ends the stream) the session is released at once rather than holding the shutdown. It is
/// released too after [`MAX_HOLD`], for a standby's sake.
async fn wait_for_store(
    config: &Config,
    stop: &mut watch::Receiver<bool>,
    telemetry: &Telemetry,
    source: &mut ReplicationSource,
    first: &StoreError,
) -> Held {
    let mut backoff = Duration::from_millis(250);
    let mut error = first.to_string();
    let mut attempt = 0u32;
    let held_since = std::time::Instant::now();
    loop {
        if held_since.elapsed() > MAX_HOLD {
            tracing::warn!(%error, "the store has been away for {MAX_HOLD:?}: releasing the replication session, so that a standby that can reach the store may take the slot over");
            return Held::Released;
        }
        attempt += 1;
        telemetry.set_phase(Phase::Reconnecting {
            error: format!(
                "the store is unreachable (replication held open, nothing acknowledged): {error}"
            ),
        });
        tracing::warn!(attempt, retry_in_ms = backoff.as_millis() as u64, %error, "the store failed; holding the replication session open, acknowledging nothing, until it answers");
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                _ = stop.wait_for(|s| *s) => return Held::Stopped,
                event = source.next_event() => match event {
                    Ok(Some(StreamEvent::Idle { reply_requested: true, wal_end })) => {
                        tracing::warn!(%wal_end, "the source asks walpoints to confirm WAL the store does not have (it may be shutting down): releasing the replication session");
                        return Held::Released;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!("the source ended the replication stream while the store was away");
                        return Held::Released;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the source failed too while the store was away");
                        return Held::Released;
                    }
                },
            }
        }
        let probe = async {
            let store = Store::connect(&config.store_url(), &config.source.id, false).await?;
            store.checkpoint().await.map(|_| ())
        };
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => {
                tracing::warn!(
                    attempt,
                    "the store answers again; resuming from its checkpoint"
                );
                return Held::StoreBack;
            }
            Ok(Err(e)) if e.is_transient() => error = e.to_string(),
            Ok(Err(_)) => return Held::StoreBack,
            Err(_) => error = format!("no answer within {STORE_PROBE_TIMEOUT:?}"),
        }
        backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
    }
}

/// Takes the source's instance lock on `store`'s connection, waiting as a standby while another
/// instance holds it (or refusing, as `standby` says). Returns false when asked to stop while
/// waiting.
async fn lead(
    store: &Store,
    config: &Config,
    standby: Standby,
    mut stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<bool, DaemonError> {
    let id = &config.source.id;
    // Named after this process, so the others' messages and `status` say who runs the source.
    store
        .prepare_lock_session(&format!("walpoints run (pid {})", std::process::id()))
        .await?;
    let mut waiting = false;
    loop {
        if store.try_lock_source().await? {
            if waiting {
                tracing::warn!(source = %id, "the other instance has stopped: this standby takes over the source");
                telemetry.set_phase(Phase::Starting);
            }
            return Ok(true);
        }
        let holder = store
            .source_lock_holder()
            .await?
            .unwrap_or_else(|| "an instance that is just stopping".to_owned());
        if standby == Standby::Refuse {
            return Err(DaemonError::AnotherInstance {
                source_id: id.clone(),
                holder,
            });
        }
        if !waiting {
            waiting = true;
            tracing::warn!(
                source = %id,
                holder = %holder,
                "another walpoints instance is running this source against this store; waiting as a standby, will take over when it stops"
            );
            telemetry.set_phase(Phase::Standby {
                holder: format!("another walpoints instance runs source {id:?}: {holder}"),
            });
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}

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

    async fn get(&mut self) -> Result<&tokio_postgres::Client, pgconn::ConnectError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(pgconn::connect(&self.url, self.application).await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| pgconn::ConnectError::Transient("no connection".into()))
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
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a transactional logical message on the source every `every`: it keeps the slot
/// moving (and WAL recyclable) when the followed tables are idle but the database is not, and
/// advances stream time so holding segments settle at hour boundaries without trades.
async fn heartbeat_loop(
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
                tracing::warn!(error = %pgconn::error_text(&e), "heartbeat failed");
                conn.reset();
            }
        }
    }
}

/// Reads the slot's lag on the source every `every`, for `/metrics` and `/readyz`. A query of
/// `pg_replication_slots` only: no business table is touched.
async fn poll_slot(url: ConnUrl, slot: String, every: Duration, telemetry: Arc<Telemetry>) {
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
        let polled = tokio::time::timeout(
            every.max(Duration::from_secs(5)),
            SlotReport::query(c, &slot),
        )
        .await;
        match polled {
            Ok(Ok(report)) => telemetry.slot_polled(Ok(report)),
            Ok(Err(e)) => {
                telemetry.slot_polled(Err(pgconn::error_text(&e)));
                conn.reset();
            }
            Err(_) => {
                telemetry.slot_polled(Err("reading pg_replication_slots timed out".into()));
                conn.reset();
            }
        }
    }
}

/// What `teardown` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeardownReport {
    /// The store's rows of this source were deleted.
    pub store_dropped: bool,
}

/// `walpoints teardown`: drops the slot (so it never pins the primary's WAL again) and the
/// publication; with `drop_store`, deletes this source's rows from the store too.
pub async fn teardown(
    config: &Config,
    yes: bool,
    drop_store: bool,
) -> Result<TeardownReport, DaemonError> {
    if !yes {
        return Err(DaemonError::NotConfirmed {
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
        });
    }
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-teardown").await?;
    admin.drop_slot(&config.source.slot).await?;
    admin.drop_publication(&config.source.publication).await?;
    tracing::info!(slot = %config.source.slot, publication = %config.source.publication, "slot and publication dropped");
    let mut store_dropped = false;
    if drop_store {
        match Store::connect(&config.store_url(), &config.source.id, false).await {
            Ok(mut store) => {
                store.migrate().await?;
                store.drop_source().await?;
                store_dropped = true;
            }
            Err(StoreError::NoDatabase(_)) => {
                tracing::info!("the store database does not exist: nothing to delete")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(TeardownReport { store_dropped })
}
