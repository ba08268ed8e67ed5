//! The batch loop: source transactions → mapping → rules → one store transaction → slot
//! acknowledgement. It holds no business logic ([`Evaluator`] drives the pure core); it decides
//! when to commit, and keeps the exactly-once rules, each the job of one method of [`BatchLoop`]:
//!
//! 1. **Skip what the store has** (`BatchLoop::on_begin`): a transaction that commits below
//!    the checkpoint (its end LSN is then at or below it) is in the store; its changes are
//!    dropped unread.
//! 2. **Whole transactions, in commit order** (`BatchLoop::on_change`,
//!    `BatchLoop::on_commit`): changes are evaluated in the order they come, [`CHUNK`] at a
//!    time (pgoutput's Begin already carries the commit LSN and time, so a transaction of a
//!    million rows is never held whole), and a transaction joins the open batch only at its
//!    Commit; a batch ends only between transactions, so on stop the one in progress is
//!    finished first.
//! 3. **One store transaction per batch** (`BatchLoop::seal`): the batch's ledger rows,
//!    totals, rule state, awards, dead letters and its end LSN as the new checkpoint are
//!    committed together by the store writer. Rows go ahead in parts of [`PART_ROWS`] into the
//!    batch's still-open store transaction (`BatchLoop::send_part`), so memory stays bounded
//!    whatever the batch's size; a batch is still all or nothing.
//! 4. **Acknowledge only what is committed** (`BatchLoop::on_committed`): the slot hears an
//!    LSN only after the writer reported its commit, and only then is the batch reported to
//!    the [`BatchObserver`].
//! 5. **An idle stream confirms what the server sent** (`BatchLoop::on_idle`): with nothing
//!    open or in flight, the checkpoint moves to the server's sent position (a store write of
//!    that LSN alone) and is acknowledged: at once when the server asks for a reply, else at
//!    most every [`IDLE_ADVANCE_EVERY`]. PostgreSQL's shutdown waits until every walsender's
//!    client has confirmed all it was sent; a consumer that confirms only its own
//!    transactions would hold a fast shutdown forever.
//!
//! A batch closes (`BatchLoop::ready_to_seal`) when it holds `max_changes` row changes, when
//! the store has committed everything before it and its first transaction is `max_delay` old
//! (under a light load each transaction is visible as soon as the store can commit it; under a
//! backlog batches grow while the store is busy, amortising the per-user writes), or on stop.
//! While the stream is [`BEHIND`] (the server sent the last transaction a second or more after
//! its commit, and has not said since that it has sent everything), a batch stays open after
//! the store is free for half as long as the stream is late, up to [`CATCH_UP_HOLD`], so a
//! backlog is drained in batches of up to `max_changes`. Batch boundaries change no point: only when the points become visible.
//! Writing is pipelined: the writer, a task of its own, commits one batch while the next is
//! evaluated.
//!
//! The engine's state runs ahead of the store while a batch is open, so after any failure the
//! caller must throw this loop away and build a new one from the store.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::changes::RowChange;
use crate::lsn::Lsn;
use crate::mapping::MappingError;
use crate::pg::replication::{ReplicationSource, SourceError, StreamEvent};
use crate::points::StreamError;
use crate::store::{write_batches, Seal, Store, StoreError, StoreWriter};
use crate::time::now_micros;

mod evaluate;
mod open;

pub use evaluate::{Evaluator, Origin};
pub use open::{BatchReport, OpenBatch, Progress};

use evaluate::InTx;

/// Ledger rows (plus changed awards and dead letters) after which the open batch hands what it
/// has to the store writer (rule 3).
pub const PART_ROWS: usize = 5_000;

/// Changes of a source transaction evaluated at a time (rule 2).
pub const CHUNK: usize = 1_000;

/// Least time between two idle checkpoint moves the server did not ask for (rule 5); with the
/// store on the source's server each move writes WAL that the walsender then reports as sent,
/// so they must not chase each other.
pub const IDLE_ADVANCE_EVERY: Duration = Duration::from_secs(10);

/// A transaction the server sent this long after its commit means walpoints is working
/// through a backlog: batches then grow past the moment the store is free (see
/// `BatchLoop::ready_to_seal`), amortising the per-user writes over more trades.
pub const BEHIND: Duration = Duration::from_secs(1);

/// The longest a batch grows while behind once the store is free. It may grow for half as long
/// as the stream is late, so its points become visible at most half as late again as they
/// could have, and never more than this.
pub const CATCH_UP_HOLD: Duration = Duration::from_secs(10);

/// How often the progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Why the loop stopped, split by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Reading the stream failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A followed table no longer has a mapped column.
    #[error("at {lsn}: {source}")]
    Mapping {
        /// Where the table's new shape appeared.
        lsn: Lsn,
        /// What is missing.
        source: MappingError,
    },
    /// A followed table was truncated under `truncate.policy = "stop"`.
    #[error(
        "{table} was TRUNCATEd at {lsn}. walpoints stopped so that points do not silently \
         diverge from an emptied table; nothing after it was processed. If the truncate was \
         intended, set truncate.policy = \"ignore\" (what was awarded stays awarded) and start \
         again; to recompute from scratch, run `walpoints teardown --yes --drop-store` and \
         `walpoints setup`"
    )]
    Truncated {
        /// The table.
        table: String,
        /// WAL position of the TRUNCATE.
        lsn: Lsn,
    },
    /// The rules refused a transaction as a whole.
    #[error("transaction committed at {lsn}: {source}")]
    Rules {
        /// Commit LSN of the transaction.
        lsn: Lsn,
        /// Why.
        source: StreamError,
    },
}

impl BatchError {
    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            BatchError::Source(e) => e.is_transient(),
            BatchError::Store(e) => e.is_transient(),
            BatchError::Mapping { .. }
            | BatchError::Truncated { .. }
            | BatchError::Rules { .. } => false,
        }
    }
}

/// Hears of every committed batch; the daemon plugs telemetry in here.
pub trait BatchObserver: Send + Sync {
    /// A batch was committed and acknowledged.
    fn batch_committed(&self, report: &BatchReport);
    /// The checkpoint moved over idle WAL (rule 5) and was acknowledged.
    fn checkpoint_advanced(&self, checkpoint: Lsn);
}

/// When a batch closes.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// After this many row changes.
    pub max_changes: u64,
    /// Once the store is idle and its first transaction is this old.
    pub max_delay: Duration,
}

/// What the writer has been handed and not committed yet, in order.
enum InFlight {
    /// A sealed batch, with when it was sealed.
    Batch(Box<BatchReport>, Instant),
    /// An idle checkpoint move (rule 5).
    Idle,
}

/// The batch loop of one session: the evaluator, the open batch, and what is in flight.
pub struct BatchLoop<'o> {
    evaluator: Evaluator,
    limits: BatchLimits,
    observer: &'o dyn BatchObserver,
    /// The committed checkpoint: everything at or below it is in the store.
    checkpoint: Lsn,
    /// Commit time of the checkpoint's transaction, once this loop has committed one.
    checkpoint_commit_time: Option<i64>,
    open: OpenBatch,
    /// The source transaction being applied; `skip` is set when the store has it (rule 1).
    current: Option<(InTx, bool)>,
    in_flight: VecDeque<InFlight>,
    /// Batches committed since the loop started, for the progress line.
    batches: u64,
    stopping: bool,
    /// How late the server sent the last transaction, when that was [`BEHIND`] or more and
    /// the server has not said since that it has sent everything.
    behind: Option<Duration>,
    last_idle_advance: Instant,
    last_log: Instant,
}

impl<'o> BatchLoop<'o> {
    /// A loop resuming from the store's `checkpoint` with the evaluator built from the store.
    pub fn new(
        evaluator: Evaluator,
        limits: BatchLimits,
        checkpoint: Lsn,
        observer: &'o dyn BatchObserver,
    ) -> Self {
        BatchLoop {
            evaluator,
            limits,
            observer,
            checkpoint,
            checkpoint_commit_time: None,
            open: OpenBatch::default(),
            current: None,
            in_flight: VecDeque::new(),
            batches: 0,
            stopping: false,
            behind: None,
            last_idle_advance: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// The committed checkpoint.
    pub fn checkpoint(&self) -> Lsn {
        self.checkpoint
    }

    /// Streams until `stop` resolves, the writer committing each sealed batch on `store` while
    /// the next is evaluated; on `stop` the open batch is committed and acknowledged first.
    /// Gives the store back when the writer ended on its own (`None` after a failure that
    /// left its connection mid-transaction: the caller starts over from a new one anyway).
    pub async fn stream(
        &mut self,
        source: &mut ReplicationSource,
        store: Store,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> (Option<Store>, Result<(), BatchError>) {
        let (writer, jobs) = StoreWriter::channel();
        let (done, committed) = mpsc::unbounded_channel();
        // The writer is a task of its own, so that encoding and freeing a batch's rows runs on
        // a second thread while the loop decodes and evaluates the next.
        let from = self.checkpoint;
        let mut writing = tokio::spawn(async move {
            let mut store = store;
            let written = write_batches(&mut store, from, jobs, done).await;
            (store, written)
        });
        let collecting = self.collect(source, writer, committed, stop);
        tokio::pin!(collecting);
        tokio::select! {
            collected = &mut collecting => match collected {
                // The writer ended first: its own error is the one that says why.
                Err(BatchError::Store(StoreError::WriterStopped)) => match writing.await {
                    Ok((store, Err(e))) => (Some(store), Err(e.into())),
                    Ok((store, Ok(()))) => (Some(store), Err(StoreError::WriterStopped.into())),
                    Err(joined) => (None, Err(writer_lost(joined))),
                },
                // A clean stop: everything sealed is committed, and the loop dropped its end
                // of the queue, so the writer is ending.
                Ok(()) => match writing.await {
                    Ok((store, written)) => (Some(store), written.map_err(BatchError::from)),
                    Err(joined) => (None, Err(writer_lost(joined))),
                },
                // The loop failed: whatever the writer holds is rolled back with its
                // connection (it may be waiting on a store that no longer answers).
                Err(e) => {
                    writing.abort();
                    (writing.await.ok().map(|(store, _)| store), Err(e))
                }
            },
            written = &mut writing => match written {
                Ok((store, Err(e))) => (Some(store), Err(e.into())),
                // The writer ends cleanly only once the loop dropped its end of the queue.
                Ok((store, Ok(()))) => (Some(store), collecting.await),
                Err(joined) => (None, Err(writer_lost(joined))),
            },
        }
    }

    /// The loop of [`BatchLoop::stream`]: returns once stopped and everything sealed is
    /// committed and acknowledged (dropping `writer` then ends the writer).
    async fn collect(
        &mut self,
        source: &mut ReplicationSource,
        writer: StoreWriter,
        mut committed: mpsc::UnboundedReceiver<Lsn>,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), BatchError> {
        loop {
            if self.ready_to_seal() {
                self.seal(&writer).await?;
                continue;
            }
            if self.stopping && self.in_flight.is_empty() && self.current.is_none() {
                self.log_progress();
                return Ok(());
            }
            tokio::select! {
                biased;
                lsn = committed.recv() => self.on_committed(source, lsn)?,
                () = &mut *stop, if !self.stopping => self.stopping = true,
                () = sleep_until(self.linger()) => {}
                // A transaction in progress is finished even when stopping (rule 2).
                next = source.next_event(), if !self.stopping || self.current.is_some() => {
                    match next?.ok_or(SourceError::StreamEnded)? {
                        StreamEvent::Begin(begin) => self.on_begin(InTx::new(begin)),
                        StreamEvent::Change(change) => self.on_change(&writer, change).await?,
                        StreamEvent::Commit(commit) => {
                            self.behind = source
                                .sent_after_commit(commit.commit_time)
                                .and_then(|us| u64::try_from(us).ok())
                                .map(Duration::from_micros)
                                .filter(|late| *late >= BEHIND);
                            self.on_commit(&writer, commit.end_lsn).await?
                        }
                        StreamEvent::Idle { wal_end, reply_requested } => {
                            // The server has sent everything it has: no backlog to wait for.
                            self.behind = None;
                            self.on_idle(&writer, wal_end, reply_requested).await?
                        }
                        StreamEvent::Message { .. } => {}
                    }
                    if self.open.rows() >= PART_ROWS {
                        self.send_part(&writer).await?;
                    }
                }
            }
        }
    }

    /// Rule 1: a transaction the store has is skipped.
    fn on_begin(&mut self, tx: InTx) {
        let skip = tx.begin.commit_lsn < self.checkpoint;
        if skip {
            tracing::debug!(commit_lsn = %tx.begin.commit_lsn, checkpoint = %self.checkpoint, "already in the store: skipped");
        }
        self.current = Some((tx, skip));
    }

    /// Rule 2: changes are evaluated in order, a chunk at a time.
    async fn on_change(
        &mut self,
        writer: &StoreWriter,
        change: RowChange,
    ) -> Result<(), BatchError> {
        let Some((tx, false)) = self.current.as_mut() else {
            return Ok(());
        };
        tx.changes.push(change);
        if tx.changes.len() >= CHUNK {
            self.evaluator
                .apply_chunk(writer, &mut self.open, tx)
                .await?;
        }
        Ok(())
    }

    /// Rule 2: a transaction joins the open batch at its commit, with every change applied.
    async fn on_commit(&mut self, writer: &StoreWriter, end_lsn: Lsn) -> Result<(), BatchError> {
        let Some((mut tx, skip)) = self.current.take() else {
            return Ok(());
        };
        if !skip {
            self.evaluator
                .apply_chunk(writer, &mut self.open, &mut tx)
                .await?;
            self.evaluator.finish(&mut self.open, &tx, end_lsn);
        }
        Ok(())
    }

    /// When the open batch closes: never inside a transaction, and only with something in it.
    /// Once the store is free it closes after `max_delay`, or, while the stream is behind, once
    /// it has been open half as long as the stream is late, up to [`CATCH_UP_HOLD`] (a
    /// backlog's batches then reach `max_changes` instead of whatever arrived during the last
    /// commit).
    fn ready_to_seal(&self) -> bool {
        let Some(opened) = self.open.opened else {
            return false;
        };
        self.current.is_none()
            && (self.stopping
                || self.open.changes >= self.limits.max_changes
                || (self.in_flight.is_empty() && opened.elapsed() >= self.hold()))
    }

    /// How long the open batch may stay open once the store is free.
    fn hold(&self) -> Duration {
        match self.behind {
            Some(late) => self.limits.max_delay.max((late / 2).min(CATCH_UP_HOLD)),
            None => self.limits.max_delay,
        }
    }

    /// While the open batch waits, the moment it may close.
    fn linger(&self) -> Option<tokio::time::Instant> {
        let opened = self.open.opened?;
        (self.in_flight.is_empty() && self.current.is_none())
            .then(|| tokio::time::Instant::from_std(opened + self.hold()))
    }

    /// Rule 3: the batch, its rule state and its end LSN go to the writer, which commits them in
    /// one store transaction.
    async fn seal(&mut self, writer: &StoreWriter) -> Result<(), BatchError> {
        let mut done = std::mem::take(&mut self.open);
        let Some((end_lsn, commit_time)) = done.end else {
            return Ok(());
        };
        let report = done.tally.report(end_lsn, commit_time, &done);
        writer
            .seal(Seal {
                batch: self.evaluator.take_batch(&mut done),
                end_lsn,
                commit_time,
                stream_time: self.evaluator.state().stream_time(),
                transactions: done.transactions,
                rules_version: self.evaluator.engine().version().to_owned(),
            })
            .await?;
        self.in_flight
            .push_back(InFlight::Batch(Box::new(report), Instant::now()));
        Ok(())
    }

    /// Rule 3: rows of the open batch go ahead into its still-open store transaction.
    async fn send_part(&mut self, writer: &StoreWriter) -> Result<(), BatchError> {
        writer.part(self.open.take_part()).await?;
        Ok(())
    }

    /// Rule 4: only a committed LSN is acknowledged, and only then reported.
    fn on_committed(
        &mut self,
        source: &ReplicationSource,
        lsn: Option<Lsn>,
    ) -> Result<(), BatchError> {
        let lsn = lsn.ok_or(StoreError::WriterStopped)?;
        source.ack(lsn);
        self.checkpoint = lsn;
        match self.in_flight.pop_front() {
            Some(InFlight::Batch(mut report, sealed)) => {
                self.batches += 1;
                self.checkpoint_commit_time = Some(report.commit_time);
                report.write = sealed.elapsed();
                tracing::debug!(changes = report.changes, commit_ms = report.write.as_millis() as u64, %lsn, "batch committed");
                self.observer.batch_committed(&report);
            }
            Some(InFlight::Idle) => {
                tracing::debug!(%lsn, "idle: checkpoint moved over WAL with nothing for walpoints");
                self.observer.checkpoint_advanced(lsn);
            }
            None => {}
        }
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            self.log_progress();
        }
        Ok(())
    }

    /// Rule 5: with nothing open or in flight, the checkpoint follows the server's sent
    /// position.
    async fn on_idle(
        &mut self,
        writer: &StoreWriter,
        wal_end: Lsn,
        reply_requested: bool,
    ) -> Result<(), BatchError> {
        if self.current.is_none()
            && self.open.is_empty()
            && self.in_flight.is_empty()
            && wal_end > self.checkpoint
            && (reply_requested || self.last_idle_advance.elapsed() >= IDLE_ADVANCE_EVERY)
        {
            writer.advance_idle(wal_end).await?;
            self.in_flight.push_back(InFlight::Idle);
            self.last_idle_advance = Instant::now();
        }
        Ok(())
    }

    /// The info line operators read: totals since start, points, and how far behind the
    /// source's commits the store is (by commit time; wall clock, for humans only).
    fn log_progress(&self) {
        let p = self.evaluator.progress();
        let lag_seconds = self
            .checkpoint_commit_time
            .map(|t| (now_micros().saturating_sub(t)).max(0) as f64 / 1e6);
        tracing::info!(
            checkpoint = %self.checkpoint,
            transactions = p.transactions,
            changes = p.changes,
            entries = p.entries,
            points = %p.points,
            dead_letters = p.dead_letters,
            batches = self.batches,
            lag_seconds = lag_seconds.map(|s| format!("{s:.1}")).unwrap_or_default(),
            "progress"
        );
    }
}

/// The writer task panicked or was cancelled: the batch it held is rolled back with its
/// connection, and the session starts over from the store.
fn writer_lost(joined: tokio::task::JoinError) -> BatchError {
    tracing::error!(error = %joined, "the store writer task ended abnormally");
    StoreError::WriterStopped.into()
}

/// Sleeps until `at`; never resolves without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
