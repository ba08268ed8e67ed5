//! The replication source: a pgoutput stream from a logical slot, as decoded transactions.
//!
//! Transport is pgwire-replication; this module adds what walpoints needs on top:
//! - it decodes each XLogData payload with our own pure [`crate::pgoutput`] decoder and keeps the
//!   relation cache, so a change always comes with the table's current shape;
//! - it yields changes in commit order, grouped by transaction, with the commit timestamp known
//!   from the first change on (pgoutput sends it in Begin);
//! - it acknowledges to the slot only the LSN the caller says is durable ([`ReplicationSource::ack`]),
//!   while the transport keeps standby feedback flowing on its own, so a busy caller never trips
//!   `wal_sender_timeout`;
//! - every failure is a [`SourceError`] that says whether reconnecting can help.
//!
//! Administrative commands (publication, slot, system identifier) run on a session of their
//! own, [`super::AdminSession`], configured by the same `replication_config`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};

use super::connect::{self, ConnectError};
use crate::changes::{Op, RowChange, Transaction, TxBegin, TxCommit};
use crate::config::{ConnUrl, SslMode};
use crate::identifier::quote_ident;
use crate::lsn::Lsn;
use crate::pgoutput::{self, DecodeError, Message, RelationCache, RelationError};

/// A failure of the change stream (or of an administrative command on the source), split by
/// what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection broke or the server is restarting: back off, reconnect from the last
    /// durable LSN; nothing was acknowledged past it.
    #[error("source connection failed (will retry): {0}")]
    Transient(#[source] PgWireError),
    /// The server ended the replication stream without an error (a restart, a failover):
    /// transient like a broken connection.
    #[error("source connection failed (will retry): the server ended the replication stream")]
    StreamEnded,
    /// Another session holds the slot (SQLSTATE 55006): a previous session's walsender that has
    /// not exited yet, or a second instance. Retry after a pause; it may take a while.
    #[error("the replication slot is in use by another session: {0}")]
    SlotBusy(#[source] PgWireError),
    /// Retrying cannot help (authentication, missing slot or publication, permissions): stop and
    /// tell the operator.
    #[error("source refused: {0}")]
    Refused(#[source] PgWireError),
    /// The server answered a command with something walpoints cannot use; stop.
    #[error("source refused: {0}")]
    Unexpected(&'static str),
    /// The stream went silent although the source should have spoken (see [`SilenceWatch`]):
    /// the connection is presumed dead (a host that died without a word); reconnect.
    #[error("source connection presumed dead (will reconnect): {0}")]
    Silent(String),
    /// Connecting (or a command on the source) took longer than it may: a black-holed host
    /// accepts a connection and never answers. Transient.
    #[error("source connection failed (will retry): {what} got no answer within {after:?}")]
    TimedOut {
        /// What was being done.
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// Finding the host to replicate from (a multi-host URL's primary) failed.
    #[error("source: {0}")]
    Connect(#[source] ConnectError),
    /// The server sent bytes that are not valid pgoutput: a bug or corruption; stop.
    #[error("undecodable pgoutput message at {lsn}: {source}")]
    Decode {
        /// Where in the WAL the message came from.
        lsn: Lsn,
        /// What was wrong with it.
        source: DecodeError,
    },
    /// A change names a relation the stream never described: the decoder and the server
    /// disagree, so nothing after it can be trusted; stop.
    #[error("inconsistent stream at {lsn}: {source}")]
    Relation {
        /// Where in the WAL the change came from.
        lsn: Lsn,
        /// What was inconsistent.
        source: RelationError,
    },
    /// A commit timestamp out of range (PostgreSQL's `infinity`); never a real commit.
    #[error("commit at {lsn} has an impossible timestamp {raw}")]
    BadTimestamp {
        /// The transaction's commit LSN.
        lsn: Lsn,
        /// The raw pgoutput timestamp.
        raw: i64,
    },
}

impl SourceError {
    /// True when reconnecting and resuming from the last durable LSN may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Transient(_)
            | SourceError::StreamEnded
            | SourceError::SlotBusy(_)
            | SourceError::Silent(_)
            | SourceError::TimedOut { .. } => true,
            SourceError::Connect(e) => e.is_transient(),
            SourceError::Refused(_)
            | SourceError::Unexpected(_)
            | SourceError::Decode { .. }
            | SourceError::Relation { .. }
            | SourceError::BadTimestamp { .. } => false,
        }
    }
}

impl From<PgWireError> for SourceError {
    fn from(e: PgWireError) -> Self {
        let text = e.to_string();
        // Server errors carry their SQLSTATE; these mean "not now", not "never".
        const RETRY_STATES: &[&str] = &[
            "SQLSTATE 08",    // connection exceptions
            "SQLSTATE 57P01", // admin_shutdown
            "SQLSTATE 57P02", // crash_shutdown
            "SQLSTATE 57P03", // cannot_connect_now (starting up, recovering)
            "SQLSTATE 53300", // too_many_connections
        ];
        // The transport's worker ended while the `recv` joining it was cancelled (a `select!`
        // branch that lost): its error went with that call (the transport logged it), and the
        // session is over. Reconnecting from the checkpoint is what any ended session needs.
        let worker_gone = matches!(&e, PgWireError::Internal(m) if m.contains("already joined"));
        if e.is_server() && text.contains("SQLSTATE 55006") {
            SourceError::SlotBusy(e)
        } else if worker_gone
            || e.is_transient()
            || (e.is_server() && RETRY_STATES.iter().any(|s| text.contains(s)))
        {
            SourceError::Transient(e)
        } else {
            SourceError::Refused(e)
        }
    }
}

/// Where and how to stream from.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The source database.
    pub url: ConnUrl,
    /// The logical slot to stream from.
    pub slot: String,
    /// The publication whose tables the slot decodes.
    pub publication: String,
    /// Stream transactions that commit after this LSN (`0/0`: from the slot's confirmed position).
    pub start_lsn: Lsn,
    /// What the slot is told is durable until [`ReplicationSource::ack`] says more. `0/0` never
    /// moves the slot (the server ignores an invalid flush position).
    pub durable_lsn: Lsn,
    /// Create the slot as a temporary slot on this session: it vanishes when the session ends.
    pub temporary_slot: bool,
    /// `application_name`, shown in `pg_stat_replication`.
    pub application_name: String,
    /// Notice a stream gone silent (a host that died without a word); `None`: wait for the
    /// kernel, which takes about 15 minutes.
    pub silence: Option<SilenceWatch>,
}

/// How [`ReplicationSource`] notices a connection that is open but carries nothing: a dead
/// host sends no FIN or RST, and the transport sets no TCP keepalive, so only silence tells.
///
/// Silence alone is no proof: an idle source whose slot is fully confirmed sends nothing at
/// all, because the transport's standby status updates (every second) keep the walsender from
/// ever asking for a reply. So after half the timeout of silence the watchdog *probes*: it
/// commits a transactional logical message ([`PROBE_PREFIX`]) on `probe_url`, which a live
/// stream must then deliver. The stream is presumed dead when, a whole timeout after the
/// silence began, nothing has arrived although the probe committed at least half a timeout ago,
/// or the probe could not reach the source at all. A probe the source refuses (no privilege to
/// emit messages) proves nothing: then the watchdog warns once and keeps waiting.
///
/// A walsender can also be silent because it is busy: decoding a long stretch of WAL with
/// nothing for walpoints (a bulk load of a table it does not follow, or of another database on
/// the same server) delivers nothing, and the probe waits behind it. So each probe also reads how
/// far the slot's walsender has read (`pg_stat_replication.sent_lsn`), whether it is at work
/// or waiting (`pg_stat_activity.wait_event_type`), and where the WAL ends after the probe's
/// commit; at the deadline a second probe looks again (`progress`). Read further but not yet
/// past the first probe, or at work: the walsender is busy, and the silence starts over. Past
/// the first probe with nothing delivered, or not moved and waiting (on a client that does not
/// read, typically): the connection is dead.
#[derive(Debug, Clone)]
pub struct SilenceWatch {
    /// How long the stream may stay silent (see above).
    pub timeout: Duration,
    /// Where the probe is committed: the source, or its primary when decoding on a standby.
    pub probe_url: ConnUrl,
    /// The slot the stream reads, whose walsender's progress the probe reads.
    pub slot: String,
}

/// Prefix of the silence watchdog's probe messages in the WAL (the batch loop ignores them,
/// but their transaction moves the checkpoint like a heartbeat's).
pub const PROBE_PREFIX: &str = "walpoints.probe";

/// The watchdog's state, kept on the source so a dropped `next_event` (a `select!` branch that
/// lost) loses none of it.
struct Watchdog {
    watch: SilenceWatch,
    /// When the stream was first found with nothing to deliver, since the last event.
    silent_since: Option<Instant>,
    probe: Probe,
    /// What the first probe of this silence read, once a second one has been started to look
    /// again ([`progress`]).
    looked: Option<Reading>,
    /// A refused probe was already reported.
    warned: bool,
}

/// What a probe read on the source right after committing its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// How far the slot's walsender had read (`sent_lsn`).
    sent: Lsn,
    /// The end of the WAL after the probe's commit: a walsender that read past it decoded and
    /// sent the probe's message.
    end: Lsn,
    /// The walsender was at work (on a core, or reading and writing its spill files), not
    /// waiting on its client or for WAL. While it hands a big transaction's changes to the
    /// output plugin at its commit, `sent_lsn` stands still for as long as that takes.
    busy: bool,
}

/// What two probes of one silence say about the walsender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// It read further, not yet past the first probe, or it is at work: busy with older WAL,
    /// alive.
    Working,
    /// It read past the first probe, whose message never arrived: the connection is dead.
    SentProbe,
    /// It did not move and waits: blocked on a connection nobody reads, or idle.
    Stalled,
}

/// Judges the walsender from the first probe's reading and the second's.
fn progress(first: Reading, second: Reading) -> Progress {
    if second.sent >= first.end {
        Progress::SentProbe
    } else if second.sent > first.sent || second.busy {
        Progress::Working
    } else {
        Progress::Stalled
    }
}

/// The probe of one silence.
enum Probe {
    /// Not sent (yet) in this silence.
    None,
    /// On its way.
    Running(tokio::task::JoinHandle<Result<Option<Reading>, ConnectError>>),
    /// Committed on the source at this instant, with what it read of the walsender (`None`
    /// when the source would not say).
    Committed(Instant, Option<Reading>),
    /// Could not reach the source (transient failure or no answer).
    Unreachable(String),
    /// The source refused it: it proves nothing.
    Refused,
}

impl Watchdog {
    /// Starts the probe: a fresh connection (it must not share the fate of the stream's), one
    /// statement, within half the timeout.
    fn start_probe(&mut self) {
        let url = self.watch.probe_url.clone();
        let slot = self.watch.slot.clone();
        let limit = self.watch.timeout / 2;
        self.probe = Probe::Running(tokio::spawn(async move {
            let emit = async {
                let client = connect::connect(&url, "walpoints-probe").await?;
                client
                    .query_one(
                        "SELECT pg_logical_emit_message(true, $1, '')::text",
                        &[&PROBE_PREFIX],
                    )
                    .await
                    .map_err(|e| ConnectError::of("committing the silence probe", e))?;
                // A role that may not see its walsender's row reads nothing: the probe then
                // proves only what its commit proves.
                let reading = client
                    .query_opt(
                        "SELECT r.sent_lsn, pg_current_wal_insert_lsn(), \
                         a.wait_event_type IS DISTINCT FROM 'Client' \
                         AND a.wait_event_type IS DISTINCT FROM 'Activity' \
                         FROM pg_replication_slots s JOIN pg_stat_replication r \
                         ON r.pid = s.active_pid JOIN pg_stat_activity a ON a.pid = r.pid \
                         WHERE s.slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| {
                        let sent: Option<tokio_postgres::types::PgLsn> = r.get(0);
                        let end: tokio_postgres::types::PgLsn = r.get(1);
                        Some(Reading {
                            sent: Lsn(u64::from(sent?)),
                            end: Lsn(u64::from(end)),
                            busy: r.get(2),
                        })
                    });
                Ok(reading)
            };
            match tokio::time::timeout(limit, emit).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::TimedOut {
                    context: format!("committing the silence probe on {url}"),
                    after: limit,
                }),
            }
        }));
    }

    /// Records how a finished probe ended.
    fn probe_ended(
        &mut self,
        result: Result<Result<Option<Reading>, ConnectError>, tokio::task::JoinError>,
    ) {
        self.probe = match result {
            Ok(Ok(reading)) => {
                if let (Some(first), Some(second)) = (self.looked, reading) {
                    if progress(first, second) == Progress::Working {
                        tracing::info!(
                            from = %first.sent,
                            to = %second.sent,
                            "the replication stream is silent, but its walsender is reading WAL \
                             with nothing for walpoints yet: waiting on"
                        );
                        self.silent_since = Some(Instant::now());
                        self.looked = None;
                    }
                }
                Probe::Committed(Instant::now(), reading)
            }
            Ok(Err(e)) if e.is_transient() => Probe::Unreachable(e.to_string()),
            Ok(Err(e)) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(error = %e, "the silence watchdog cannot probe the source (it refused the probe message): a silent stream is not noticed until the kernel gives up on it; grant the role REPLICATION or turn the heartbeat on");
                }
                Probe::Refused
            }
            Err(e) => Probe::Unreachable(format!("the probe task failed: {e}")),
        };
    }

    /// When the silence that began at `since` makes the stream presumed dead, given the probe.
    fn deadline(&self, since: Instant) -> Option<Instant> {
        let t = self.watch.timeout;
        match &self.probe {
            Probe::None => Some(since + t / 2),
            // A probe gives up within half the timeout by itself.
            Probe::Running(_) | Probe::Refused => None,
            Probe::Unreachable(_) => Some(since + t),
            // The second look found no progress: the deadline has passed.
            Probe::Committed(..) if self.looked.is_some() => Some(since + t),
            Probe::Committed(at, _) => Some((since + t).max(*at + t / 2)),
        }
    }

    /// Why the stream is presumed dead at its deadline.
    fn verdict(&self, since: Instant) -> String {
        let silent = since.elapsed().as_secs();
        match &self.probe {
            Probe::Committed(at, reading) => {
                let walsender = match (self.looked, reading) {
                    (Some(first), Some(second)) => match progress(first, *second) {
                        Progress::SentProbe => format!(
                            "; its walsender has read past the probe ({} >= {}), so the message \
                             was sent on a connection that delivers nothing",
                            second.sent, first.end
                        ),
                        _ => format!("; its walsender has not moved from {}", second.sent),
                    },
                    _ => String::new(),
                };
                format!(
                    "nothing arrived for {silent}s, although a probe message committed on the \
                     source {}s ago{walsender} (a dead connection, or a walsender held back: see \
                     the server log, e.g. for a synchronized_standby_slots entry naming a slot \
                     that does not exist)",
                    at.elapsed().as_secs()
                )
            }
            Probe::Unreachable(e) => {
                format!(
                    "nothing arrived for {silent}s, and a probe could not reach the source: {e}"
                )
            }
            _ => format!(
                "nothing arrived for {silent}s, and a probe could not reach the source within {}s",
                (self.watch.timeout / 2).as_secs()
            ),
        }
    }
}

/// One item of the change stream, in WAL order.
#[derive(Debug)]
pub enum StreamEvent {
    /// A transaction starts; its commit LSN and time are already known.
    Begin(TxBegin),
    /// A row change (or a truncation) inside the current transaction.
    Change(RowChange),
    /// A transactional logical message (`pg_logical_emit_message(true, ...)`), such as
    /// walpoints' own heartbeat.
    Message {
        /// The message's prefix, which says who sent it.
        prefix: String,
        /// Its payload.
        content: Bytes,
    },
    /// The current transaction committed.
    Commit(TxCommit),
    /// The server has nothing more right now; everything before `wal_end` has been sent.
    Idle {
        /// The server's sent position.
        wal_end: Lsn,
        /// The server asks for a reply (its periodic ping, or a shutdown waiting for us to
        /// confirm everything it sent).
        reply_requested: bool,
    },
}

/// What [`ReplicationSource::next_item`] yields.
#[derive(Debug)]
pub enum Item {
    /// A whole committed transaction.
    Transaction(Transaction),
    /// Between transactions the server reported that it has sent everything before `wal_end`.
    Idle {
        /// The server's sent position.
        wal_end: Lsn,
        /// The server asks for a reply.
        reply_requested: bool,
    },
}

/// A live replication session on one slot.
pub struct ReplicationSource {
    client: ReplicationClient,
    relations: RelationCache,
    system_id: String,
    in_tx: Option<TxBegin>,
    /// Changes decoded but not yet handed out (a TRUNCATE of several tables yields several).
    pending: VecDeque<RowChange>,
    /// The transaction [`ReplicationSource::next_transaction`] is assembling; kept here so
    /// that dropping that future (a `select!` timeout) loses nothing.
    partial: Option<Transaction>,
    /// The server's clock when it sent the latest message that carried one (XLogData,
    /// keepalive), µs since 2000-01-01: compared with a commit time on the same clock, how far
    /// behind the stream is, whatever the skew between the two machines.
    sent_at: Option<i64>,
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for ReplicationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSource")
            .field("system_id", &self.system_id)
            .finish_non_exhaustive()
    }
}

/// Session settings pinned on every replication connection, so values arrive in the text forms
/// the value parser expects, whatever the server's defaults.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,MDY -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3";

pub(super) fn replication_config(
    url: &ConnUrl,
    slot: &str,
    publication: &str,
) -> ReplicationConfig {
    let mut tls = pgwire_replication::TlsConfig::disabled();
    tls.mode = match url.sslmode {
        SslMode::Disable => pgwire_replication::SslMode::Disable,
        SslMode::Prefer => pgwire_replication::SslMode::Prefer,
        SslMode::Require => pgwire_replication::SslMode::Require,
        SslMode::VerifyCa => pgwire_replication::SslMode::VerifyCa,
        SslMode::VerifyFull => pgwire_replication::SslMode::VerifyFull,
    };
    tls.ca_pem_path = url.sslrootcert.clone();
    ReplicationConfig::new(
        url.host.clone(),
        url.user.clone(),
        url.password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default(),
        url.dbname.clone(),
        slot,
        publication,
    )
    .with_port(url.port)
    .with_tls(tls)
    .with_options(SESSION_OPTIONS)
}

impl ReplicationSource {
    /// Connects, (for a temporary slot) creates the slot on this very session, and starts
    /// streaming at `opts.start_lsn`; all of it within [`connect::CONNECT_TIMEOUT`] twice, so a
    /// black-holed host is a transient failure, not a hang.
    pub async fn start(opts: &SourceOptions) -> Result<Self, SourceError> {
        let limit = connect::CONNECT_TIMEOUT * 2;
        tokio::time::timeout(limit, Self::start_unbounded(opts))
            .await
            .map_err(|_| SourceError::TimedOut {
                what: "starting the replication stream",
                after: limit,
            })?
    }

    async fn start_unbounded(opts: &SourceOptions) -> Result<Self, SourceError> {
        let url = connect::pick_host(&opts.url)
            .await
            .map_err(SourceError::Connect)?;
        let cfg = replication_config(&url, &opts.slot, &opts.publication)
            .with_application_name(opts.application_name.clone())
            .with_start_lsn(to_wire(opts.start_lsn))
            .with_ack_lsn(to_wire(opts.durable_lsn))
            .with_status_interval(Duration::from_secs(1))
            .with_wakeup_interval(Duration::from_secs(1));
        let mut client = ReplicationClient::connect_gated(cfg).await?;
        let system_id = client.identify_system().await?.system_id;
        if opts.temporary_slot {
            client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                    quote_ident(&opts.slot)
                ))
                .await?;
        }
        client.start().await?;
        client.wait_started().await?;
        Ok(ReplicationSource {
            client,
            relations: RelationCache::default(),
            system_id,
            in_tx: None,
            pending: VecDeque::new(),
            partial: None,
            sent_at: None,
            watchdog: opts.silence.clone().map(|watch| Watchdog {
                watch,
                silent_since: None,
                probe: Probe::None,
                looked: None,
                warned: false,
            }),
        })
    }

    /// The source cluster's system identifier, read on this session before streaming.
    pub fn system_id(&self) -> &str {
        &self.system_id
    }

    /// Tells the slot that everything up to `lsn` is durable on our side, so the server may
    /// recycle that WAL and will not stream it again. Call only after the store committed it.
    pub fn ack(&self, lsn: Lsn) {
        self.client.update_applied_lsn(to_wire(lsn));
    }

    /// Ends the stream cleanly (CopyDone); a temporary slot goes with the session.
    pub async fn stop(mut self) -> Result<(), SourceError> {
        self.client.shutdown().await?;
        Ok(())
    }

    /// How long after its commit the server sent the latest change of the transaction
    /// committed at `commit_time` (µs since 1970), in µs; both readings come from the
    /// server's clock. Large while walpoints works through a backlog, near zero when it keeps
    /// up. `None` before the first message that carries the server's clock.
    pub fn sent_after_commit(&self, commit_time: i64) -> Option<i64> {
        let sent = crate::time::from_pg_micros(self.sent_at?)?;
        Some(sent.saturating_sub(commit_time))
    }

    /// The next item of the stream; `Ok(None)` when the server ended it.
    pub async fn next_event(&mut self) -> Result<Option<StreamEvent>, SourceError> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(Some(StreamEvent::Change(change)));
            }
            let Some(event) = self.recv().await? else {
                return Ok(None);
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let commit_lsn = from_wire(final_lsn);
                    let begin = TxBegin {
                        xid,
                        commit_lsn,
                        commit_time: unix_time(commit_lsn, commit_time_micros)?,
                    };
                    self.in_tx = Some(begin.clone());
                    return Ok(Some(StreamEvent::Begin(begin)));
                }
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => {
                    self.in_tx = None;
                    let commit_lsn = from_wire(lsn);
                    return Ok(Some(StreamEvent::Commit(TxCommit {
                        commit_lsn,
                        end_lsn: from_wire(end_lsn),
                        commit_time: unix_time(commit_lsn, commit_time_micros)?,
                    })));
                }
                ReplicationEvent::Message {
                    transactional,
                    prefix,
                    content,
                    ..
                } => {
                    if transactional {
                        return Ok(Some(StreamEvent::Message { prefix, content }));
                    }
                }
                ReplicationEvent::KeepAlive {
                    wal_end,
                    reply_requested,
                    server_time_micros,
                } => {
                    self.sent_at = Some(server_time_micros);
                    if self.in_tx.is_none() {
                        return Ok(Some(StreamEvent::Idle {
                            wal_end: from_wire(wal_end),
                            reply_requested,
                        }));
                    }
                }
                ReplicationEvent::XLogData {
                    wal_start,
                    data,
                    server_time_micros,
                    ..
                } => {
                    self.sent_at = Some(server_time_micros);
                    self.decode(from_wire(wal_start), &data)?;
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
            }
        }
    }

    /// The transport's next event, under the silence watchdog when there is one. Cancel-safe:
    /// the channel's `recv` is, and the watchdog's state lives on `self`.
    async fn recv(&mut self) -> Result<Option<ReplicationEvent>, SourceError> {
        let Some(dog) = self.watchdog.as_mut() else {
            return Ok(self.client.recv().await?);
        };
        loop {
            let since = *dog.silent_since.get_or_insert_with(Instant::now);
            let deadline = dog.deadline(since);
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let probe = async {
                match &mut dog.probe {
                    Probe::Running(handle) => handle.await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                event = self.client.recv() => {
                    dog.silent_since = None;
                    if let Probe::Running(handle) = &dog.probe {
                        handle.abort();
                    }
                    dog.probe = Probe::None;
                    dog.looked = None;
                    return Ok(event?);
                }
                ended = probe => dog.probe_ended(ended),
                () = sleep => {
                    match &dog.probe {
                        Probe::None => {
                            dog.start_probe();
                            continue;
                        }
                        // Look again: a busy walsender reads on, a dead connection does not.
                        Probe::Committed(_, Some(first)) if dog.looked.is_none() => {
                            dog.looked = Some(*first);
                            dog.start_probe();
                            continue;
                        }
                        _ => {}
                    }
                    let why = dog.verdict(since);
                    tracing::warn!(%why, "the replication stream is silent: dropping the connection");
                    // The socket may be black-holed: end the transport at once, without the
                    // goodbye it could wait on.
                    self.client.abort();
                    return Err(SourceError::Silent(why));
                }
            }
        }
    }

    /// The next whole transaction, in commit order; `Ok(None)` when the stream ended.
    /// Cancel-safe: a transaction being assembled survives a dropped call.
    pub async fn next_transaction(&mut self) -> Result<Option<Transaction>, SourceError> {
        loop {
            match self.next_item().await? {
                None => return Ok(None),
                Some(Item::Transaction(t)) => return Ok(Some(t)),
                Some(Item::Idle { .. }) => {}
            }
        }
    }

    /// The next whole transaction, or word that the stream is idle between transactions;
    /// `Ok(None)` when the stream ended. Cancel-safe like [`Self::next_transaction`].
    pub async fn next_item(&mut self) -> Result<Option<Item>, SourceError> {
        loop {
            match self.next_event().await? {
                None => return Ok(None),
                Some(StreamEvent::Begin(b)) => self.partial = Some(Transaction::new(b)),
                Some(StreamEvent::Change(c)) => {
                    if let Some(t) = self.partial.as_mut() {
                        t.changes.push(c);
                    }
                }
                Some(StreamEvent::Message { prefix, content }) => {
                    if let Some(t) = self.partial.as_mut() {
                        t.messages.push((prefix, content));
                    }
                }
                Some(StreamEvent::Commit(c)) => {
                    if let Some(mut t) = self.partial.take() {
                        t.end_lsn = c.end_lsn;
                        t.commit_time = c.commit_time;
                        return Ok(Some(Item::Transaction(t)));
                    }
                }
                Some(StreamEvent::Idle {
                    wal_end,
                    reply_requested,
                }) => {
                    if self.partial.is_none() {
                        return Ok(Some(Item::Idle {
                            wal_end,
                            reply_requested,
                        }));
                    }
                }
            }
        }
    }

    /// Decodes one XLogData payload into `pending`; relation messages update the cache and
    /// yield nothing.
    fn decode(&mut self, lsn: Lsn, data: &Bytes) -> Result<(), SourceError> {
        let message =
            pgoutput::decode(data).map_err(|source| SourceError::Decode { lsn, source })?;
        let relation = |cache: &RelationCache, oid| {
            cache
                .get(oid)
                .cloned()
                .map_err(|source| SourceError::Relation { lsn, source })
        };
        let change = match message {
            Message::Relation(r) => {
                self.relations.update(r);
                return Ok(());
            }
            Message::Insert(m) => RowChange {
                lsn,
                relation: relation(&self.relations, m.relation_oid)?,
                op: Op::Insert,
                new: Some(m.new),
                old: None,
                key: None,
            },
            Message::Update(m) => {
                let (old, key) = split_old(m.old);
                RowChange {
                    lsn,
                    relation: relation(&self.relations, m.relation_oid)?,
                    op: Op::Update,
                    new: Some(m.new),
                    old,
                    key,
                }
            }
            Message::Delete(m) => {
                let (old, key) = split_old(Some(m.old));
                RowChange {
                    lsn,
                    relation: relation(&self.relations, m.relation_oid)?,
                    op: Op::Delete,
                    new: None,
                    old,
                    key,
                }
            }
            Message::Truncate(m) => {
                // One change per truncated table, in the order the server lists them.
                for oid in m.relation_oids {
                    self.pending.push_back(RowChange {
                        lsn,
                        relation: relation(&self.relations, oid)?,
                        op: Op::Truncate,
                        new: None,
                        old: None,
                        key: None,
                    });
                }
                return Ok(());
            }
            Message::Begin(_)
            | Message::Commit(_)
            | Message::Origin(_)
            | Message::Type(_)
            | Message::LogicalMessage(_) => return Ok(()),
        };
        self.pending.push_back(change);
        Ok(())
    }
}

fn split_old(
    old: Option<pgoutput::OldTuple>,
) -> (Option<pgoutput::TupleData>, Option<pgoutput::TupleData>) {
    match old {
        Some(pgoutput::OldTuple::Full(t)) => (Some(t), None),
        Some(pgoutput::OldTuple::Key(t)) => (None, Some(t)),
        None => (None, None),
    }
}

fn unix_time(lsn: Lsn, raw: i64) -> Result<i64, SourceError> {
    crate::time::from_pg_micros(raw).ok_or(SourceError::BadTimestamp { lsn, raw })
}

fn to_wire(lsn: Lsn) -> pgwire_replication::Lsn {
    pgwire_replication::Lsn(lsn.0)
}

fn from_wire(lsn: pgwire_replication::Lsn) -> Lsn {
    Lsn(lsn.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_joined_by_a_cancelled_recv_ends_the_session_transiently() {
        assert!(classify(PgWireError::Internal(
            "replication worker already joined".into()
        )));
    }

    #[test]
    fn a_second_probe_tells_a_busy_walsender_from_a_dead_connection() {
        let first = Reading {
            sent: Lsn(1_000),
            end: Lsn(5_000),
            busy: true,
        };
        let at = |sent, busy| Reading {
            sent: Lsn(sent),
            end: Lsn(9_000),
            busy,
        };
        assert_eq!(progress(first, at(3_000, false)), Progress::Working);
        // Handing a big transaction to the output plugin at its commit: sent_lsn stands still.
        assert_eq!(progress(first, at(1_000, true)), Progress::Working);
        assert_eq!(progress(first, at(1_000, false)), Progress::Stalled);
        assert_eq!(progress(first, at(5_000, true)), Progress::SentProbe);
        assert_eq!(progress(first, at(6_000, false)), Progress::SentProbe);
    }

    fn classify(e: PgWireError) -> bool {
        SourceError::from(e).is_transient()
    }

    #[test]
    fn connection_trouble_is_transient_and_refusals_are_definite() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(classify(PgWireError::Io(std::sync::Arc::new(io))));
        for state in ["57P01", "57P03", "08006", "53300", "55006"] {
            assert!(
                classify(PgWireError::Server(format!("boom (SQLSTATE {state})"))),
                "{state}"
            );
        }
        assert!(!classify(PgWireError::Auth(
            "password authentication failed".into()
        )));
        for state in ["42704", "42501", "28P01", "55000"] {
            assert!(
                !classify(PgWireError::Server(format!("no (SQLSTATE {state})"))),
                "{state}"
            );
        }
    }
}
