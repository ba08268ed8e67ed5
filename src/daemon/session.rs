//! One connected session of `walpoints run`, in its phases:
//!
//! 1. **store**: connect, migrate, take the source's instance lock (or wait as a standby);
//! 2. **checks**: the refusals that keep points from being lost or invented;
//! 3. **state**: load the rules engine's state as of the checkpoint;
//! 4. **stream**: start the replication stream at the checkpoint, run the batch loop (with the
//!    heartbeat beside it) until stopped or failed;
//! 5. **end**: stop the stream cleanly, or hold it open while a store on another server is away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::background::{heartbeat_loop, AbortOnDrop};
use super::batch::{BatchError, BatchLimits, BatchLoop, Evaluator};
use super::checks;
use super::outage::{self, Held};
use super::standby::lead;
use super::{DaemonError, Standby};
use crate::config::Config;
use crate::mapping::Mapper;
use crate::pg::replication::SilenceWatch;
use crate::pg::{connect, AdminSession, ReplicationSource, SourceError, SourceOptions};
use crate::points::Engine;
use crate::store::{Checkpoint, Store};
use crate::telemetry::{Phase, Telemetry};

/// How a session ended without an error for the reconnect loop to handle.
pub(super) enum Ended {
    /// Asked to stop.
    Stopped,
    /// The store failed mid-stream and answers again: start a new session from its checkpoint.
    StoreBack,
}

/// One session: store, checks, state, stream, end.
pub(super) async fn run(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<Ended, DaemonError> {
    let engine = Engine::new(config.rules.clone())?;
    let mapper = Mapper::new(&config.tables, &config.columns);
    let Some((store, cp)) = open_store(config, standby, stop.clone(), telemetry).await? else {
        tracing::info!(source = %config.source.id, "stopped while waiting as a standby");
        return Ok(Ended::Stopped);
    };
    // Bounded: a black-holed source must not hang the session between two reconnects.
    let limit = CHECKS_TIMEOUT;
    let on_standby = tokio::time::timeout(limit, check_source(config, &mapper, &cp))
        .await
        .map_err(|_| SourceError::TimedOut {
            what: "the startup checks on the source",
            after: limit,
        })??;
    let state = store.load_state(cp.stream_time).await?;
    let previous_rules = match store.last_journaled_rules().await? {
        Some(rules) => Some(Engine::new(rules)?),
        None => None,
    };
    tracing::info!(
        checkpoint = %cp.lsn,
        open_positions = state.open_positions(),
        users = state.user_count(),
        "state loaded; starting the stream"
    );
    telemetry.resumed_at(cp.lsn, cp.commit_time);
    let mut source = start_stream(config, &cp, on_standby).await?;
    telemetry.set_phase(Phase::Streaming);
    if on_standby && config.heartbeat_interval().is_some() {
        tracing::warn!("the source is a physical standby, which cannot write: walpoints sends no heartbeat; commit it on the primary instead (README, \"Decoding on a physical standby\")");
    }
    let heartbeat = config
        .heartbeat_interval()
        .filter(|_| !on_standby)
        .map(|every| {
            AbortOnDrop::spawn(heartbeat_loop(
                config.source.url.clone(),
                config.source.id.clone(),
                every,
                telemetry.clone(),
            ))
        });
    let evaluator =
        Evaluator::new(engine, mapper, config.truncate.policy, state).after_rules(previous_rules);
    let limits = BatchLimits {
        max_changes: config.batch.max_changes,
        max_delay: config.batch_delay(),
    };
    let mut batches = BatchLoop::new(evaluator, limits, cp.lsn, telemetry.as_ref());
    let mut stop_stream = stop.clone();
    let mut stopped = Box::pin(async move {
        let _ = stop_stream.wait_for(|s| *s).await;
    });
    // The store comes back so that its instance lock is held until the stream has ended.
    let (_store, result) = batches.stream(&mut source, store, &mut stopped).await;
    drop(heartbeat);
    end(
        config,
        result,
        source,
        batches.checkpoint(),
        stop,
        telemetry,
    )
    .await
}

/// Phase 1: the store, migrated, with this source's instance lock held on the very connection
/// the writer commits on (see `store/lock.rs`), and its checkpoint. `None` when asked to stop
/// while waiting as a standby.
async fn open_store(
    config: &Config,
    standby: Standby,
    stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<Option<(Store, Checkpoint)>, DaemonError> {
    let not_set_up = || DaemonError::NotSetUp {
        source_id: config.source.id.clone(),
    };
    let mut store = match Store::connect(&config.store_url(), &config.source.id, false).await {
        Ok(s) => s,
        // No store database yet: setup has never run (it creates it).
        Err(e) if e.is_missing_database() => return Err(not_set_up()),
        Err(e) => return Err(e.into()),
    };
    store.migrate().await?;
    if !lead(&store, &config.source.id, standby, stop, telemetry).await? {
        return Ok(None);
    }
    let cp = store.checkpoint().await?.ok_or_else(not_set_up)?;
    store.use_rules(&config.rules).await?;
    let stream_epoch = config
        .rules
        .calendar()?
        .epoch_of(cp.stream_time.unwrap_or(cp.commit_time))
        .and_then(|e| i32::try_from(e).ok())
        .unwrap_or(0);
    store
        .create_partitions_ahead(stream_epoch, PARTITIONS_AHEAD)
        .await?;
    Ok(Some((store, cp)))
}

/// How long the startup checks on the source may take in all.
const CHECKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Epochs past the stream's whose journal and ledger partitions `run` creates at start.
const PARTITIONS_AHEAD: i32 = 2;

/// Phase 2: the source is the cluster the store was set up against, its slot can continue
/// from the checkpoint, and its tables and publication are what the mapping expects. Returns
/// whether the source is a physical standby (decoding there, PostgreSQL 16+).
async fn check_source(
    config: &Config,
    mapper: &Mapper,
    cp: &Checkpoint,
) -> Result<bool, DaemonError> {
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-check").await?;
    let on_standby = admin
        .query("SELECT pg_is_in_recovery()::text")
        .await?
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
        == Some("true");
    let system_id = admin.system_id().await?;
    checks::slot(&mut admin, &config.source, cp, &system_id).await?;
    checks::failover(&mut admin, &config.source).await?;
    let source_db = connect::connect(&config.source.url, "walpoints-check").await?;
    checks::tables(&source_db, &config.tables, mapper).await?;
    checks::publication(&source_db, &config.source.publication, &config.tables).await?;
    Ok(on_standby)
}

/// Phase 4: the stream from the checkpoint, on the cluster the store was set up against.
async fn start_stream(
    config: &Config,
    cp: &Checkpoint,
    on_standby: bool,
) -> Result<ReplicationSource, DaemonError> {
    if on_standby && config.silence_timeout().is_some() {
        tracing::warn!("the source is a physical standby: the silence watchdog cannot commit its probe there and is off; keep the heartbeat going on the primary so the stream is never silent for long");
    }
    let source = ReplicationSource::start(&SourceOptions {
        url: config.source.url.clone(),
        slot: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        start_lsn: cp.lsn,
        durable_lsn: cp.lsn,
        temporary_slot: false,
        application_name: "walpoints".into(),
        silence: config
            .silence_timeout()
            .filter(|_| !on_standby)
            .map(|timeout| SilenceWatch {
                timeout,
                probe_url: config.source.url.clone(),
                slot: config.source.slot.clone(),
            }),
    })
    .await?;
    if source.system_id() != cp.system_id {
        return Err(DaemonError::SystemIdChanged {
            recorded: cp.system_id.clone(),
            found: source.system_id().to_owned(),
        });
    }
    Ok(source)
}

/// Phase 5: a clean stop ends the stream; a store that failed on another server is waited for
/// with the replication session held open; anything else is the session's error.
async fn end(
    config: &Config,
    result: Result<(), BatchError>,
    mut source: ReplicationSource,
    checkpoint: crate::lsn::Lsn,
    mut stop: watch::Receiver<bool>,
    telemetry: &Telemetry,
) -> Result<Ended, DaemonError> {
    match result {
        Ok(()) => {
            // Give the transport a moment to send the last acknowledgement, then end cleanly.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            if let Err(e) = source.stop().await {
                tracing::debug!(error = %e, "ending the replication session");
            }
            tracing::info!(%checkpoint, "stopped cleanly");
            Ok(Ended::Stopped)
        }
        Err(BatchError::Store(e)) if e.is_transient() && !same_server(config) => {
            let held = outage::wait_for_store(
                &config.store_url(),
                &config.source.id,
                &mut stop,
                telemetry,
                &mut source,
                &e,
            )
            .await;
            // The evaluator's state ran ahead of the store, and the source has streamed past
            // the checkpoint: both start over from the store.
            drop(source);
            match held {
                Held::StoreBack => Ok(Ended::StoreBack),
                Held::Stopped => {
                    tracing::warn!(error = %e, "stopping without committing the open batch; it is redone on the next start");
                    Ok(Ended::Stopped)
                }
                Held::Released => Err(BatchError::Store(e).into()),
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
