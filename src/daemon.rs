//! The operator's commands: `setup` (store schema, publication, slot, initial snapshot), `run`
//! (the daemon: startup checks, heartbeat, the batch loop, reconnects) and `teardown`.
//!
//! Every check that guards against losing data lives here, before the stream starts, and each
//! says what happened and what to do; see the README's runbook for the longer story.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::IsolationLevel;

use crate::config::{quote_ident, Config, ConnUrl};
use crate::events::{Mapper, TableKind};
use crate::lsn::Lsn;
use crate::pgconn::{self, ConnectError};
use crate::pipeline::{BatchLimits, OpenBatch, Origin, Pipeline, PipelineError};
use crate::points::{Engine, Event, PositionStatus, TxEvents};
use crate::source::{quote_literal, AdminSession, ReplicationSource, SourceError, SourceOptions};
use crate::store::{Checkpoint, DeadLetter, Store, StoreError};

/// Prefix of walpoints' heartbeat messages in the WAL.
pub const HEARTBEAT_PREFIX: &str = "walpoints.heartbeat";

/// Events per pseudo-transaction of the initial snapshot.
const SNAPSHOT_CHUNK: usize = 10_000;

/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a command failed; the definite ones carry the operator's next step.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// `run` before `setup`.
    #[error(
        "source {source_id:?} is not set up in the store: run `walpoints setup` first (it \
         creates the publication, the slot and the initial snapshot)"
    )]
    NotSetUp {
        /// The source.
        source_id: String,
    },
    /// The slot is gone but the store has a checkpoint.
    #[error(
        "the replication slot {slot:?} does not exist, but the store has a checkpoint at \
         {checkpoint} for source {source_id:?}: the slot was dropped, and the WAL since the \
         checkpoint is gone with it, so the points since then cannot be computed. To start over \
         from a fresh snapshot: `walpoints teardown --yes --drop-store`, then `walpoints setup` \
         (set backfill.trades_since to award the trades since the loss). See README, Runbook: \
         \"The slot is lost\""
    )]
    SlotMissing {
        /// The slot.
        slot: String,
        /// The source.
        source_id: String,
        /// The store's checkpoint.
        checkpoint: Lsn,
    },
    /// The configuration names another slot than the one the store's checkpoint belongs to.
    #[error(
        "source {source_id:?} was set up with the slot {recorded:?}, but source.slot is now \
         {configured:?}: a checkpoint is a position in one slot only. Set source.slot back to \
         {recorded:?}, or give the new slot its own source.id (and run `walpoints setup`)"
    )]
    SlotRenamed {
        /// The source.
        source_id: String,
        /// The slot in the checkpoint.
        recorded: String,
        /// The slot in the configuration.
        configured: String,
    },
    /// The slot was acknowledged past the checkpoint.
    #[error(
        "the slot {slot:?} has confirmed_flush_lsn {confirmed}, ahead of the store's checkpoint \
         {checkpoint}: something other than this store's walpoints acknowledged the slot, or \
         the store was restored from an older backup. The transactions in between will never be \
         streamed again, so walpoints refuses to skip them silently. Restore the matching \
         store, or start over: `walpoints teardown --yes --drop-store`, then `walpoints setup`. \
         See README, Runbook: \"The daemon refuses to start\""
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// Its confirmed position.
        confirmed: Lsn,
        /// The store's checkpoint.
        checkpoint: Lsn,
    },
    /// The server invalidated the slot.
    #[error(
        "the slot {slot:?} was invalidated (wal_status = lost): the server removed WAL it still \
         needed, because walpoints fell further behind than max_slot_wal_keep_size allows. \
         Start over from a fresh snapshot: `walpoints teardown --yes --drop-store`, then \
         `walpoints setup`. See README, Runbook: \"The slot is lost\""
    )]
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// The slot exists but is not a pgoutput logical slot.
    #[error("the slot {slot:?} is not a logical pgoutput slot (plugin {plugin:?}); choose another source.slot")]
    WrongSlot {
        /// The slot.
        slot: String,
        /// Its plugin.
        plugin: String,
    },
    /// The source is a different cluster than at setup.
    #[error(
        "the source's system identifier is {found}, but the store was set up against {recorded}: \
         source.url now points at a different cluster (restored from a backup, rebuilt, or \
         another server), whose LSNs mean nothing to this store. Point source.url back at the \
         original cluster, or start over: `walpoints teardown --yes --drop-store`, then \
         `walpoints setup`"
    )]
    SystemIdChanged {
        /// At setup.
        recorded: String,
        /// Now.
        found: String,
    },
    /// A configured table is missing on the source.
    #[error(
        "the table {table} (tables.{key} in walpoints.toml) does not exist in the source \
         database: create it, or set tables.{key} to the table's schema-qualified name"
    )]
    TableMissing {
        /// The table.
        table: String,
        /// Its config key.
        key: &'static str,
    },
    /// Mapped columns are missing on the source.
    #[error(
        "the table {table} has no column {columns}: set the [columns] keys in walpoints.toml to \
         the table's column names, or restore the column"
    )]
    ColumnMissing {
        /// The table.
        table: String,
        /// The missing columns.
        columns: String,
    },
    /// The publication does not cover a configured table.
    #[error(
        "the publication {publication:?} does not include {table}, so its changes would never \
         arrive: `ALTER PUBLICATION {publication} ADD TABLE {table};` on the source"
    )]
    NotPublished {
        /// The publication.
        publication: String,
        /// The table.
        table: String,
    },
    /// The publication is gone.
    #[error(
        "the publication {publication:?} does not exist on the source: run `walpoints setup` \
         (or sql/publication.sql as the tables' owner) to create it"
    )]
    NoPublication {
        /// The publication.
        publication: String,
    },
    /// Backfill needs a time column.
    #[error("backfill.trades_since needs columns.trades_time (the trades' time column)")]
    BackfillWithoutTime,
    /// An SQL connection to the source failed.
    #[error("source: {0}")]
    Connect(#[from] ConnectError),
    /// The initial snapshot failed.
    #[error("initial snapshot: {0}")]
    Snapshot(String),
    /// Teardown without `--yes`.
    #[error(
        "teardown drops the slot {slot:?} and the publication {publication:?}; points can then \
         only start over from a new snapshot. Re-run with --yes to confirm"
    )]
    NotConfirmed {
        /// The slot.
        slot: String,
        /// The publication.
        publication: String,
    },
    /// Streaming or writing failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl From<SourceError> for DaemonError {
    fn from(e: SourceError) -> Self {
        DaemonError::Pipeline(e.into())
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        DaemonError::Pipeline(e.into())
    }
}

impl DaemonError {
    /// Whether `run` should reconnect and try again.
    pub fn is_transient(&self) -> bool {
        match self {
            DaemonError::Pipeline(e) => e.is_transient(),
            DaemonError::Connect(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What `setup` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// The source was set up already; nothing was copied.
    pub already: bool,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// The checkpoint now.
    pub checkpoint: Lsn,
    /// Open positions copied.
    pub positions: u64,
    /// Referral relations copied.
    pub referrals: u64,
    /// Trades backfilled.
    pub trades: u64,
    /// Ledger entries written by the snapshot.
    pub entries: u64,
    /// Snapshot rows dead-lettered.
    pub dead_letters: u64,
}

impl std::fmt::Display for SetupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.already {
            write!(
                f,
                "already set up: slot consistent point {}, checkpoint {}",
                self.consistent_point, self.checkpoint
            )
        } else {
            write!(
                f,
                "set up: slot consistent point {}; snapshot copied {} open positions, {} referral \
                 relations and {} backfilled trades ({} ledger entries, {} dead letters)",
                self.consistent_point,
                self.positions,
                self.referrals,
                self.trades,
                self.entries,
                self.dead_letters
            )
        }
    }
}

fn engine(config: &Config) -> Result<Engine, DaemonError> {
    Engine::new(config.rules.clone()).map_err(|e| DaemonError::Config(e.to_string()))
}

fn mapper(config: &Config) -> Mapper {
    Mapper::new(&config.tables, &config.columns)
}

/// `walpoints setup`: store schema, publication, slot and initial snapshot; safe to re-run.
pub async fn setup(config: &Config) -> Result<SetupReport, DaemonError> {
    let engine = engine(config)?;
    let mapper = mapper(config);
    if config.backfill_since().is_some() && config.columns.trades_time.trim().is_empty() {
        return Err(DaemonError::BackfillWithoutTime);
    }
    let mut store = Store::connect(&config.store_url(), &config.source.id, true).await?;
    store.migrate().await?;
    let mut admin = AdminSession::connect(&config.source.url, "walpoints-setup").await?;
    let system_id = admin.system_id().await?;
    let mut source_db = pgconn::connect(&config.source.url, "walpoints-setup").await?;
    check_tables(&source_db, config, &mapper).await?;
    let existing = store.checkpoint().await?;
    if let Some(cp) = &existing {
        // Set up before: refuse (without creating anything) if the slot cannot continue.
        check_slot(&mut admin, config, cp, &system_id).await?;
    }
    admin
        .ensure_publication(&config.source.publication, &config.tables.all())
        .await?;
    check_publication(&source_db, config).await?;

    if let Some(cp) = existing {
        return Ok(SetupReport {
            already: true,
            consistent_point: cp.consistent_point,
            checkpoint: cp.lsn,
            positions: 0,
            referrals: 0,
            trades: 0,
            entries: 0,
            dead_letters: 0,
        });
    }
    if admin.slot(&config.source.slot).await?.is_some() {
        // The store has no checkpoint, so nothing was ever committed from this slot: it is left
        // over from a setup that did not finish, and its exported snapshot is gone.
        tracing::warn!(slot = %config.source.slot, "the slot exists but the store has no checkpoint (an unfinished setup): dropping it and starting over");
        admin.drop_slot(&config.source.slot).await?;
    }
    let exported = admin.create_slot_exporting(&config.source.slot).await?;
    tracing::info!(slot = %config.source.slot, consistent_point = %exported.consistent_point, "slot created");

    let tx = source_db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(snapshot_err("begin the snapshot transaction"))?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        quote_literal(&exported.snapshot)
    ))
    .await
    .map_err(snapshot_err("import the slot's snapshot"))?;
    // The snapshot is imported; the replication session may end.
    drop(admin);
    let now: std::time::SystemTime = tx
        .query_one("SELECT now()", &[])
        .await
        .map_err(snapshot_err("read the snapshot's time"))?
        .get(0);
    let snapshot_time = crate::store::micros_of(now);

    // Change tracking on: the snapshot's state reaches the store as deltas, like a batch's.
    let mut state = crate::points::State::new();
    state.enable_change_tracking();
    let mut pipeline = Pipeline::new(
        engine,
        mapper,
        config.truncate.policy,
        state,
        exported.consistent_point,
    );
    let mut report = SetupReport {
        already: false,
        consistent_point: exported.consistent_point,
        checkpoint: exported.consistent_point,
        positions: 0,
        referrals: 0,
        trades: 0,
        entries: 0,
        dead_letters: 0,
    };
    let stx = store.begin().await?;
    stx.insert_checkpoint(&Checkpoint {
        source_id: config.source.id.clone(),
        slot_name: config.source.slot.clone(),
        publication: config.source.publication.clone(),
        system_id,
        consistent_point: exported.consistent_point,
        snapshot_time,
        lsn: exported.consistent_point,
        commit_time: snapshot_time,
        stream_time: None,
        transactions: 0,
        rules_version: pipeline.engine().version().to_owned(),
    })
    .await?;

    // Pseudo-transactions 0/1, 0/2, ...: below any real commit LSN, so their ledger rows can
    // never collide with a streamed transaction's.
    let mut pseudo_lsn = 0u64;
    let mut snapshot = Snapshot {
        pipeline: &mut pipeline,
        stx: &stx,
        snapshot_time,
        pseudo_lsn: &mut pseudo_lsn,
        consistent_point: exported.consistent_point,
    };
    let (referrals, _) = snapshot
        .copy(&tx, config, TableKind::Referrals, None, |_| true)
        .await?;
    let (positions, _) = snapshot
        .copy(
            &tx,
            config,
            TableKind::Positions,
            None,
            |e| matches!(e, Event::PositionInserted { new } if new.status == PositionStatus::Open),
        )
        .await?;
    let mut trades = 0;
    if let Some(since) = config.backfill_since() {
        trades = snapshot
            .copy(&tx, config, TableKind::Trades, Some(since), |_| true)
            .await?
            .0;
    }
    report.referrals = referrals;
    report.positions = positions;
    report.trades = trades;
    report.entries = pipeline.progress().entries;
    report.dead_letters = pipeline.progress().dead_letters;
    stx.advance_checkpoint(
        exported.consistent_point,
        exported.consistent_point,
        snapshot_time,
        pipeline.state().stream_time().or(Some(snapshot_time)),
        0,
        pipeline.engine().version(),
    )
    .await?;
    stx.commit().await?;
    tx.commit()
        .await
        .map_err(snapshot_err("end the snapshot transaction"))?;
    Ok(report)
}

fn snapshot_err(what: &'static str) -> impl Fn(tokio_postgres::Error) -> DaemonError {
    move |e| DaemonError::Snapshot(format!("{what}: {}", pgconn::error_text(&e)))
}

/// The initial copy: rows read in the slot's snapshot, evaluated as pseudo-transactions and
/// written into the store transaction that also records the checkpoint.
struct Snapshot<'a, 'b> {
    pipeline: &'a mut Pipeline,
    stx: &'a crate::store::StoreTx<'b>,
    snapshot_time: i64,
    pseudo_lsn: &'a mut u64,
    consistent_point: Lsn,
}

impl Snapshot<'_, '_> {
    /// Copies one table (trades: those at or after `since`, in time then id order); `keep`
    /// filters mapped events. Returns (events kept, rows rejected).
    async fn copy(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        config: &Config,
        kind: TableKind,
        since: Option<i64>,
        keep: impl Fn(&Event) -> bool,
    ) -> Result<(u64, u64), DaemonError> {
        let table = match kind {
            TableKind::Trades => &config.tables.trades,
            TableKind::Positions => &config.tables.positions,
            TableKind::Referrals => &config.tables.referral_relations,
        };
        let table_sql = table
            .parse::<crate::config::TableName>()
            .map_err(DaemonError::Config)?
            .to_string();
        let columns: Vec<String> = self
            .pipeline
            .mapper()
            .snapshot_columns(kind)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let c = &config.columns;
        let (filter, order) = match kind {
            TableKind::Trades => (
                format!("WHERE {} >= $1", quote_ident(&c.trades_time)),
                format!(
                    "{}, {}",
                    quote_ident(&c.trades_time),
                    quote_ident(&c.trades_id)
                ),
            ),
            TableKind::Positions => (String::new(), quote_ident(&c.positions_id)),
            TableKind::Referrals => (String::new(), quote_ident(&c.referrals_referee)),
        };
        let sql = format!(
            "SELECT {} FROM {table_sql} {filter} ORDER BY {order}",
            list.join(", ")
        );
        let since_time = since.map(crate::store::time_of);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &since_time {
            Some(t) => vec![t],
            None => vec![],
        };
        let rows = tx
            .query_raw(&sql, params)
            .await
            .map_err(snapshot_err("read the snapshot"))?;
        tokio::pin!(rows);
        let mut chunk = Vec::new();
        let mut dead = Vec::new();
        let (mut kept, mut rejected) = (0u64, 0u64);
        use futures_util::TryStreamExt;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(snapshot_err("read the snapshot"))?
        {
            let texts: Vec<Option<&str>> = (0..columns.len()).map(|i| row.get(i)).collect();
            match self.pipeline.mapper().map_snapshot_row(kind, &texts) {
                Ok(e) if keep(&e) => {
                    kept += 1;
                    chunk.push(e);
                }
                Ok(_) => {}
                Err(r) => {
                    rejected += 1;
                    dead.push(DeadLetter {
                        commit_lsn: Lsn(*self.pseudo_lsn + 1),
                        seq: 0,
                        lsn: self.consistent_point,
                        table: r.table.clone(),
                        op: "snapshot".into(),
                        reason: r.reason.to_owned(),
                        detail: r.detail.clone(),
                        row: r.row.clone(),
                        at: self.snapshot_time,
                    });
                }
            }
            if chunk.len() >= SNAPSHOT_CHUNK {
                self.flush(std::mem::take(&mut chunk), std::mem::take(&mut dead))
                    .await?;
            }
        }
        if !chunk.is_empty() || !dead.is_empty() {
            self.flush(chunk, dead).await?;
        }
        Ok((kept, rejected))
    }

    async fn flush(
        &mut self,
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    ) -> Result<(), DaemonError> {
        *self.pseudo_lsn += 1;
        let lsn = Lsn(*self.pseudo_lsn);
        let txe = TxEvents {
            commit_lsn: lsn.0,
            commit_time: self.snapshot_time,
            events,
        };
        let table_of = |e: &Event| match e {
            Event::TradeInserted { .. }
            | Event::TradeUpdated { .. }
            | Event::TradeDeleted { .. } => "trades",
            Event::PositionInserted { .. }
            | Event::PositionUpdated { .. }
            | Event::PositionDeleted { .. } => "positions",
            _ => "referral_relations",
        };
        let origin = |k: usize| {
            txe.events.get(k).map(|e| Origin {
                lsn: self.consistent_point,
                table: table_of(e).to_owned(),
                op: "snapshot",
                row: serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
            })
        };
        let mut open = OpenBatch::default();
        self.pipeline
            .evaluate(&mut open, &txe, self.consistent_point, dead, origin)?;
        let mut batch = self.pipeline.take_batch(&mut open);
        self.stx.write(&mut batch).await?;
        Ok(())
    }
}

/// Checks that each configured table exists with every mapped column.
async fn check_tables(
    source_db: &tokio_postgres::Client,
    config: &Config,
    mapper: &Mapper,
) -> Result<(), DaemonError> {
    for (key, kind, table) in [
        ("trades", TableKind::Trades, &config.tables.trades),
        ("positions", TableKind::Positions, &config.tables.positions),
        (
            "referral_relations",
            TableKind::Referrals,
            &config.tables.referral_relations,
        ),
    ] {
        let name = table
            .parse::<crate::config::TableName>()
            .map_err(DaemonError::Config)?
            .to_string();
        let rows = source_db
            .query(
                "SELECT to_regclass($1) IS NOT NULL, \
                 ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                       AND attnum > 0 AND NOT attisdropped)",
                &[&name],
            )
            .await
            .map_err(|e| {
                DaemonError::Connect(ConnectError::from_pg("checking the source tables", &e))
            })?;
        let Some(row) = rows.first() else { continue };
        if !row.get::<_, bool>(0) {
            return Err(DaemonError::TableMissing { table: name, key });
        }
        let present: Vec<String> = row.get(1);
        let missing: Vec<&str> = mapper
            .snapshot_columns(kind)
            .into_iter()
            .filter(|c| !present.iter().any(|p| p == c))
            .collect();
        if !missing.is_empty() {
            return Err(DaemonError::ColumnMissing {
                table: name,
                columns: missing.join(", "),
            });
        }
    }
    Ok(())
}

/// Checks that the publication covers every configured table.
async fn check_publication(
    source_db: &tokio_postgres::Client,
    config: &Config,
) -> Result<(), DaemonError> {
    let exists = source_db
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.source.publication],
        )
        .await
        .map_err(|e| DaemonError::Connect(ConnectError::from_pg("checking the publication", &e)))?
        .is_some();
    if !exists {
        return Err(DaemonError::NoPublication {
            publication: config.source.publication.clone(),
        });
    }
    for table in config.tables.all() {
        let n = source_db
            .query_one(
                "SELECT count(*) FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&config.source.publication, &table.schema, &table.name],
            )
            .await
            .map_err(|e| {
                DaemonError::Connect(ConnectError::from_pg("checking the source tables", &e))
            })?
            .get::<_, i64>(0);
        if n == 0 {
            return Err(DaemonError::NotPublished {
                publication: config.source.publication.clone(),
                table: table.to_string(),
            });
        }
    }
    Ok(())
}

/// The checks that refuse to lose data: same cluster, slot present, not lost, not ahead.
async fn check_slot(
    admin: &mut AdminSession,
    config: &Config,
    cp: &Checkpoint,
    system_id: &str,
) -> Result<(), DaemonError> {
    if cp.slot_name != config.source.slot {
        return Err(DaemonError::SlotRenamed {
            source_id: config.source.id.clone(),
            recorded: cp.slot_name.clone(),
            configured: config.source.slot.clone(),
        });
    }
    if cp.system_id != system_id {
        return Err(DaemonError::SystemIdChanged {
            recorded: cp.system_id.clone(),
            found: system_id.to_owned(),
        });
    }
    let slot = &config.source.slot;
    let Some(info) = admin.slot(slot).await? else {
        return Err(DaemonError::SlotMissing {
            slot: slot.clone(),
            source_id: config.source.id.clone(),
            checkpoint: cp.lsn,
        });
    };
    if !info.logical || info.plugin != "pgoutput" {
        return Err(DaemonError::WrongSlot {
            slot: slot.clone(),
            plugin: info.plugin,
        });
    }
    if info.wal_status.as_deref() == Some("lost") {
        return Err(DaemonError::SlotLost { slot: slot.clone() });
    }
    if let Some(confirmed) = info.confirmed_flush_lsn {
        if confirmed > cp.lsn {
            return Err(DaemonError::SlotAhead {
                slot: slot.clone(),
                confirmed,
                checkpoint: cp.lsn,
            });
        }
    }
    Ok(())
}

/// `walpoints run`: streams until `stop` turns true, reconnecting with capped exponential
/// backoff on transient errors; returns the definite error that stopped it.
pub async fn run(config: &Config, stop: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        let started = std::time::Instant::now();
        let err = match session(config, stop.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
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

/// One connected session: checks, state load, stream until stop or error.
async fn session(config: &Config, stop: watch::Receiver<bool>) -> Result<(), DaemonError> {
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
    let mut pipeline = Pipeline::new(engine, mapper, config.truncate.policy, state, cp.lsn);
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
    let heartbeat = config.heartbeat_interval().map(|every| {
        let url = config.source.url.clone();
        let id = config.source.id.clone();
        AbortOnDrop(tokio::spawn(heartbeat_loop(url, id, every)))
    });
    let limits = BatchLimits {
        max_changes: config.batch.max_changes,
        max_delay: config.batch_delay(),
    };
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
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
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
async fn heartbeat_loop(url: ConnUrl, source_id: String, every: Duration) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match pgconn::connect(&url, "walpoints-heartbeat").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "heartbeat: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let sent = std::time::Instant::now();
        match c
            .query_one(
                "SELECT pg_logical_emit_message(true, $1, $2)::text",
                &[&HEARTBEAT_PREFIX, &source_id],
            )
            .await
        {
            Ok(_) => tracing::trace!(ms = sent.elapsed().as_millis() as u64, "heartbeat"),
            Err(e) => {
                tracing::warn!(error = %pgconn::error_text(&e), "heartbeat failed");
                client = None;
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
