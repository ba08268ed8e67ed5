//! The store writer: writes batches while the batch loop already decodes and evaluates the next
//! ones, so the store's CPU (the daemon's bottleneck) never waits for walpoints' own.
//!
//! The batch loop sends jobs in stream order over a bounded channel (backpressure keeps memory
//! bounded): [`Job::Part`]s of a batch's ledger rows, awards and dead letters as they
//! accumulate, [`Job::Lookup`]s of trade awards, and finally the batch's [`Seal`] with its
//! totals, rule state and end LSN. The writer opens one store transaction per batch at its
//! first job (locking the checkpoint row where this process left it), writes every part into
//! it, and on the seal moves the checkpoint and commits. Only then does it report the LSN, and
//! only then may the slot be acknowledged: exactly-once is the same as with one transaction
//! written at once, since a batch is still all-or-nothing.
//!
//! Lookups run on the writer's connection, inside the open transaction and after every job
//! sent before them, so they see the awards of earlier batches (committed) and of earlier parts
//! of the current one (not yet committed) exactly as the engine would have left them.

use tokio::sync::{mpsc, oneshot};

use super::{Batch, Store, StoreError};
use crate::lsn::Lsn;
use crate::points::Award;

/// Jobs the batch loop may queue ahead of the writer. While the writer commits one batch, the
/// next can only grow by this many parts (of the batch loop's `PART_ROWS` rows, a few MB each):
/// 8 lets a backlog batch reach ~10,000 trades, amortising the per-user upserts, for ~25 MB.
const QUEUE: usize = 8;

/// What the writer is asked to do, in stream order.
enum Job {
    /// Rows to add to the open batch's transaction (boxed: a batch is large, the other jobs
    /// small).
    Part(Box<Batch>),
    /// Stored awards of these trade ids, as of everything queued before.
    Lookup(Vec<String>, oneshot::Sender<Vec<(String, Award)>>),
    /// The rest of the batch; then commit.
    Seal(Box<Seal>),
    /// Nothing is open or in flight and the server has sent everything before this LSN:
    /// move the checkpoint there alone, then commit (rule 5 of the batch loop).
    Idle(Lsn),
}

/// The end of a batch: its last rows and what the checkpoint becomes.
#[derive(Debug)]
pub struct Seal {
    /// Rows not sent in parts, and the batch's totals and rule state.
    pub batch: Batch,
    /// End LSN of the batch's last source transaction: the new checkpoint.
    pub end_lsn: Lsn,
    /// Commit time of that transaction, µs since 1970.
    pub commit_time: i64,
    /// The engine's stream time after the batch.
    pub stream_time: Option<i64>,
    /// Source transactions in the batch.
    pub transactions: u64,
    /// Rules version of the batch.
    pub rules_version: String,
}

/// The batch loop's end of the writer: queue parts, lookups and seals.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    jobs: mpsc::Sender<Job>,
}

/// The writer's end of the queue, for [`write_batches`].
pub struct WriterJobs {
    jobs: mpsc::Receiver<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Part(b) => write!(f, "Part({} entries)", b.entries.len()),
            Job::Lookup(ids, _) => write!(f, "Lookup({} ids)", ids.len()),
            Job::Seal(s) => write!(f, "Seal({})", s.end_lsn),
            Job::Idle(lsn) => write!(f, "Idle({lsn})"),
        }
    }
}

impl StoreWriter {
    /// A writer queue: the batch loop keeps the [`StoreWriter`], [`write_batches`] drains the
    /// [`WriterJobs`].
    pub fn channel() -> (StoreWriter, WriterJobs) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (StoreWriter { jobs: tx }, WriterJobs { jobs: rx })
    }

    /// Queues rows of the open batch (waits while the queue is full).
    pub async fn part(&self, batch: Batch) -> Result<(), StoreError> {
        self.jobs
            .send(Job::Part(Box::new(batch)))
            .await
            .map_err(|_| StoreError::WriterStopped)
    }

    /// Queues the end of the open batch; its LSN is reported once committed.
    pub async fn seal(&self, seal: Seal) -> Result<(), StoreError> {
        self.jobs
            .send(Job::Seal(Box::new(seal)))
            .await
            .map_err(|_| StoreError::WriterStopped)
    }

    /// Queues a move of the checkpoint over idle WAL, reported like a seal once committed. Only
    /// between batches: nothing may be open or in flight.
    pub async fn advance_idle(&self, to: Lsn) -> Result<(), StoreError> {
        self.jobs
            .send(Job::Idle(to))
            .await
            .map_err(|_| StoreError::WriterStopped)
    }

    /// The stored awards of `ids` as of everything queued so far.
    pub async fn lookup(&self, ids: Vec<String>) -> Result<Vec<(String, Award)>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Lookup(ids, tx))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)
    }
}

/// Writes the queued batches into `store`, the first one moving the checkpoint from `from`;
/// reports each committed end LSN on `committed`. Returns when the queue is closed (an open,
/// unsealed batch is then rolled back) or at the first error.
pub async fn write_batches(
    store: &mut Store,
    mut from: Lsn,
    mut queue: WriterJobs,
    committed: mpsc::UnboundedSender<Lsn>,
) -> Result<(), StoreError> {
    while let Some(mut job) = queue.jobs.recv().await {
        let tx = store.begin().await?;
        tx.lock_checkpoint(from).await?;
        loop {
            match job {
                Job::Part(mut batch) => tx.write(&mut batch).await?,
                // A failed lookup ends the writer with its error; the asker then sees
                // `WriterStopped` and the batch loop reports the writer's error instead.
                Job::Lookup(ids, reply) => {
                    let _ = reply.send(tx.awards(&ids).await?);
                }
                Job::Seal(seal) => {
                    let mut seal = *seal;
                    tx.write_appends(&mut seal.batch).await?;
                    // The checkpoint's move goes with the keyed statements: one round trip.
                    let (keyed, advanced) = tokio::join!(
                        tx.write_keyed(&seal.batch),
                        tx.advance_checkpoint(
                            from,
                            seal.end_lsn,
                            seal.commit_time,
                            seal.stream_time,
                            seal.transactions,
                            &seal.rules_version,
                        )
                    );
                    super::tx::first_failure([keyed, advanced])?;
                    tx.commit().await?;
                    from = seal.end_lsn;
                    // The batch loop may have stopped listening (it is stopping); nothing to do.
                    let _ = committed.send(from);
                    break;
                }
                Job::Idle(to) => {
                    tx.advance_idle(from, to).await?;
                    tx.commit().await?;
                    from = to;
                    let _ = committed.send(from);
                    break;
                }
            }
            match queue.jobs.recv().await {
                Some(next) => job = next,
                // The batch loop went away mid-batch: dropping the transaction rolls it back.
                None => return Ok(()),
            }
        }
    }
    Ok(())
}
