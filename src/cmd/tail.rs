//! `walpoints tail`: the decoded change stream as JSON lines, exactly as walpoints sees it.
//!
//! By default tail creates a publication and a *temporary* slot of its own: the slot lives only
//! as long as tail's replication session, so tail can never leave WAL pinned on the primary, even
//! when killed. With `--slot` it reads an existing slot without ever acknowledging, so peeking at
//! the daemon's slot does not move it.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use crate::changes::RowChange;
use crate::cli::TailArgs;
use crate::config::{Config, ConnUrl};
use crate::identifier::{is_identifier, BadTableName, TableName};
use crate::lsn::Lsn;
use crate::pg::{AdminSession, ReplicationSource, SourceError, SourceOptions, StreamEvent};
use crate::pgoutput::{ColumnValue, Relation, TupleData};
use crate::time::format_rfc3339;

/// What `tail` should follow and when it should stop.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// The source database.
    pub url: ConnUrl,
    /// Tables to show; with a temporary slot, the publication covers exactly these.
    pub tables: Vec<TableName>,
    /// Read this existing slot (never acknowledged) instead of a temporary one.
    pub slot: Option<String>,
    /// The publication to use with `slot`.
    pub publication: String,
    /// Start streaming at this LSN (`0/0`: where the slot stands).
    pub from: Lsn,
    /// Exit after this many changes.
    pub limit: Option<u64>,
    /// Exit once the stream has passed this LSN: every transaction committed at or before it
    /// is shown, none after.
    pub until: Option<Lsn>,
}

/// How a tail run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailSummary {
    /// Changes printed.
    pub changes: u64,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Why `tail` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--limit` changes were printed.
    Limit,
    /// The stream passed `--until-lsn`.
    UntilLsn,
    /// SIGINT or SIGTERM.
    Signal,
    /// The server ended the stream.
    StreamEnded,
}

/// Why `tail` failed.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The change stream failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Standard output went away (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// A `--table` is not `schema.table`.
    #[error("--table: {0}")]
    Table(#[from] BadTableName),
    /// A `--slot` or `--publication` is not a plain identifier.
    #[error("{flag} {name:?} must be 1-63 characters of a-z, 0-9 and _")]
    Name {
        /// The option.
        flag: &'static str,
        /// What it was given.
        name: String,
    },
}

/// Builds tail's options from the configuration and the command line.
pub fn options(config: &Config, args: TailArgs) -> Result<TailOptions, TailError> {
    let tables = if args.tables.is_empty() {
        config.tables.all()
    } else {
        args.tables
            .iter()
            .map(|t| t.parse::<TableName>())
            .collect::<Result<_, _>>()?
    };
    for (flag, name) in [("--slot", &args.slot), ("--publication", &args.publication)] {
        if let Some(name) = name.as_ref().filter(|n| !is_identifier(n)) {
            return Err(TailError::Name {
                flag,
                name: name.clone(),
            });
        }
    }
    Ok(TailOptions {
        url: config.source.url.clone(),
        tables,
        slot: args.slot,
        publication: args
            .publication
            .unwrap_or_else(|| config.source.publication.clone()),
        from: args.from.unwrap_or(Lsn::ZERO),
        limit: args.limit,
        until: args.until_lsn,
    })
}

/// Streams changes to `out` until a stop condition or `shutdown` resolves; always removes the
/// temporary publication and slot it created.
pub async fn run(
    opts: &TailOptions,
    out: &mut impl Write,
    shutdown: impl Future<Output = ()>,
) -> Result<TailSummary, TailError> {
    let temporary = opts.slot.is_none();
    let (slot, publication) = match &opts.slot {
        Some(slot) => (slot.clone(), opts.publication.clone()),
        None => {
            let name = format!(
                "walpoints_tail_{}_{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            );
            (name.clone(), name)
        }
    };
    if temporary {
        let mut admin = AdminSession::connect(&opts.url, "walpoints tail").await?;
        admin.ensure_publication(&publication, &opts.tables).await?;
    }
    let result = stream(opts, &slot, &publication, temporary, out, shutdown).await;
    if temporary {
        // Best effort: the slot is gone with the session; the publication needs dropping.
        match AdminSession::connect(&opts.url, "walpoints tail").await {
            Ok(mut admin) => {
                if let Err(e) = admin.drop_publication(&publication).await {
                    tracing::warn!("could not drop tail's publication {publication}: {e}");
                }
            }
            Err(e) => tracing::warn!("could not drop tail's publication {publication}: {e}"),
        }
    }
    result
}

async fn stream(
    opts: &TailOptions,
    slot: &str,
    publication: &str,
    temporary: bool,
    out: &mut impl Write,
    shutdown: impl Future<Output = ()>,
) -> Result<TailSummary, TailError> {
    let source_opts = SourceOptions {
        url: opts.url.clone(),
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        start_lsn: opts.from,
        durable_lsn: Lsn::ZERO,
        temporary_slot: temporary,
        application_name: "walpoints tail".into(),
        // tail only reads: it writes no probe on the source.
        silence: None,
    };
    let mut source = start_when_free(&source_opts).await?;
    tracing::info!(slot, temporary, "tail streaming");
    let wanted: HashSet<(&str, &str)> = opts
        .tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .collect();
    let mut printer = Printer::default();
    let mut fence: Option<AdminSession> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    let reason = loop {
        let event = tokio::select! {
            biased;
            () = &mut shutdown => break StopReason::Signal,
            event = source.next_event() => event?,
        };
        let Some(event) = event else {
            break StopReason::StreamEnded;
        };
        match event {
            StreamEvent::Begin(b) => {
                if opts.until.is_some_and(|until| b.commit_lsn > until) {
                    tracing::debug!(commit_lsn = %b.commit_lsn, "a transaction past --until-lsn begins");
                    break StopReason::UntilLsn;
                }
                printer.begin(b.xid, b.commit_lsn, b.commit_time);
            }
            StreamEvent::Change(change) => {
                let r = &change.relation;
                if !wanted.is_empty() && !wanted.contains(&(r.namespace.as_str(), r.name.as_str()))
                {
                    continue;
                }
                printer.change(out, &change)?;
                if opts.limit.is_some_and(|limit| printer.count >= limit) {
                    break StopReason::Limit;
                }
            }
            StreamEvent::Commit(c) => {
                out.flush()?;
                if temporary {
                    source.ack(c.end_lsn);
                }
                if opts.until.is_some_and(|until| c.commit_lsn >= until) {
                    break StopReason::UntilLsn;
                }
            }
            StreamEvent::Idle { wal_end, .. } => {
                // A keepalive's position is the server's WAL end, not what was decoded and sent,
                // so it cannot say "everything up to --until-lsn has arrived". Once the WAL is
                // past the target, a logical message commits after it: its Begin is the fence.
                if let Some(until) = opts.until {
                    if wal_end >= until && fence.is_none() {
                        match emit_fence(&opts.url).await {
                            Ok(session) => {
                                tracing::debug!(%wal_end, "emitted a fence past --until-lsn");
                                fence = Some(session);
                            }
                            // A read-only server (a standby) cannot take the fence; the
                            // keepalive is then the best evidence there is.
                            Err(e) => {
                                tracing::warn!("cannot fence the stream ({e}); stopping at the server's WAL position");
                                break StopReason::UntilLsn;
                            }
                        }
                    }
                }
            }
            StreamEvent::Message { .. } => {}
        }
    };
    out.flush()?;
    if tokio::time::timeout(Duration::from_secs(5), source.stop())
        .await
        .is_err()
    {
        tracing::warn!("the server did not end the stream within 5 s; closing the connection");
    }
    Ok(TailSummary {
        changes: printer.count,
        reason,
    })
}

/// A transactional logical message: an empty transaction that the stream delivers in commit
/// order, used to learn that the stream has passed a position.
const FENCE_SQL: &str = "SELECT pg_logical_emit_message(true, 'walpoints.tail.fence', '')";

/// Starts streaming, waiting up to 10 s for a named slot that a walsender which is just going
/// away (a previous tail, say) still holds.
async fn start_when_free(opts: &SourceOptions) -> Result<ReplicationSource, SourceError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ReplicationSource::start(opts).await {
            Err(SourceError::SlotBusy(why)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the slot: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Commits a fence message; the session is kept open until tail ends (it costs nothing).
async fn emit_fence(url: &ConnUrl) -> Result<AdminSession, SourceError> {
    let mut admin = AdminSession::connect(url, "walpoints tail").await?;
    admin.query(FENCE_SQL).await?;
    Ok(admin)
}

/// Formats changes as JSON lines; holds the current transaction's header fields.
#[derive(Default)]
struct Printer {
    count: u64,
    xid: u32,
    commit_lsn: String,
    commit_time: String,
}

impl Printer {
    fn begin(&mut self, xid: u32, commit_lsn: Lsn, commit_time: i64) {
        self.xid = xid;
        self.commit_lsn = commit_lsn.to_string();
        self.commit_time = format_rfc3339(commit_time);
    }

    fn change(&mut self, out: &mut impl Write, c: &RowChange) -> std::io::Result<()> {
        let r = &c.relation;
        write!(
            out,
            "{{\"lsn\":\"{}\",\"commit_lsn\":\"{}\",\"xid\":{},\"commit_time\":\"{}\",\"schema\":{},\"table\":{},\"op\":\"{}\"",
            c.lsn,
            self.commit_lsn,
            self.xid,
            self.commit_time,
            json_str(&r.namespace),
            json_str(&r.name),
            c.op.as_str()
        )?;
        for (field, tuple, keys_only) in [
            ("new", &c.new, false),
            ("old", &c.old, false),
            ("key", &c.key, true),
        ] {
            write!(out, ",\"{field}\":")?;
            match tuple {
                None => out.write_all(b"null")?,
                Some(t) => write_tuple(out, r, t, keys_only)?,
            }
        }
        out.write_all(b"}\n")?;
        self.count += 1;
        Ok(())
    }
}

fn write_tuple(
    out: &mut impl Write,
    relation: &Relation,
    tuple: &TupleData,
    keys_only: bool,
) -> std::io::Result<()> {
    out.write_all(b"{")?;
    let mut first = true;
    for (column, value) in relation.columns.iter().zip(tuple.columns.iter()) {
        if keys_only && !column.part_of_key {
            continue;
        }
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        write!(out, "{}:", json_str(&column.name))?;
        match value {
            ColumnValue::Null => out.write_all(b"null")?,
            ColumnValue::UnchangedToast => out.write_all(b"\"<unchanged-toast>\"")?,
            ColumnValue::Text(bytes) => {
                out.write_all(json_str(&String::from_utf8_lossy(bytes)).as_bytes())?
            }
            ColumnValue::Binary(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(out, "\"\\\\x{hex}\"")?
            }
        }
    }
    out.write_all(b"}")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
