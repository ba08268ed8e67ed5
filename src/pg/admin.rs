//! A replication-protocol session that never streams: the administrative side of the source.
//!
//! PostgreSQL accepts SQL as well as replication commands (IDENTIFY_SYSTEM,
//! CREATE_REPLICATION_SLOT) on a `replication=database` session, so setup, teardown, the
//! startup checks and `verify` talk to the source over the same kind of connection the stream
//! uses: TLS and authentication are configured in one place, and a role with REPLICATION and
//! no other rights can do everything walpoints needs.

use pgwire_replication::ReplicationClient;

use super::replication::{replication_config, SourceError};
use super::slot::Slot;
use super::snapshot::ExportedSlot;
use crate::config::ConnUrl;
use crate::identifier::{quote_ident, quote_literal, TableName};
use crate::lsn::Lsn;

/// A replication-protocol session that has not started streaming: runs SQL and replication
/// commands (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT) for setup and teardown.
pub struct AdminSession {
    client: ReplicationClient,
}

impl AdminSession {
    /// Connects and authenticates; `slot`/`publication` only matter if this session later
    /// streams.
    /// Connecting is bounded by [`super::connect::CONNECT_TIMEOUT`]: a black-holed host would
    /// otherwise hang it for the kernel's minutes.
    /// A multi-host URL connects to the host [`super::connect::pick_host`] picks.
    pub async fn connect(url: &ConnUrl, application_name: &str) -> Result<Self, SourceError> {
        let url = super::connect::pick_host(url)
            .await
            .map_err(SourceError::Connect)?;
        let cfg = replication_config(&url, "unused", "unused")
            .with_application_name(application_name.to_owned());
        let limit = super::connect::CONNECT_TIMEOUT;
        let connecting = async {
            let mut client = ReplicationClient::connect_gated(cfg).await?;
            // The worker connects in the background: the first command says whether it did.
            client.simple_query("SELECT 1").await?;
            Ok::<_, SourceError>(client)
        };
        let client = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| SourceError::TimedOut {
                what: "connecting to the source",
                after: limit,
            })??;
        Ok(AdminSession { client })
    }

    /// Runs one statement and returns its rows as text (NULL as `None`).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        let rows = self.client.simple_query(sql).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }

    /// The cluster's system identifier: a changed one means the source was replaced
    /// (restored, failed over to a different cluster), and the slot's LSNs no longer apply.
    pub async fn system_id(&mut self) -> Result<String, SourceError> {
        Ok(self.client.identify_system().await?.system_id)
    }

    /// Where the server's current timeline left its parent: `(timeline, parent, switchpoint)`
    /// from `TIMELINE_HISTORY`, or `None` on timeline 1 (never promoted). WAL past the
    /// switchpoint on the parent timeline (an old primary's tail) is not in this server's WAL.
    pub async fn timeline_fork(&mut self) -> Result<Option<(u32, u32, Lsn)>, SourceError> {
        let timeline = self.client.identify_system().await?.timeline;
        if timeline <= 1 {
            return Ok(None);
        }
        let history = self.client.timeline_history(timeline).await?;
        let text = String::from_utf8_lossy(&history.content);
        Ok(parse_last_fork(&text).map(|(parent, at)| (timeline, parent, at)))
    }

    /// Creates `name` FOR TABLE `tables` unless a publication of that name exists.
    pub async fn ensure_publication(
        &mut self,
        name: &str,
        tables: &[TableName],
    ) -> Result<(), SourceError> {
        let exists = self
            .query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {}",
                quote_literal(name)
            ))
            .await?;
        if exists.is_empty() {
            let list: Vec<String> = tables.iter().map(ToString::to_string).collect();
            self.query(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(name),
                list.join(", ")
            ))
            .await?;
        }
        Ok(())
    }

    /// Drops the publication if it exists.
    pub async fn drop_publication(&mut self, name: &str) -> Result<(), SourceError> {
        self.query(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
            .await?;
        Ok(())
    }

    /// The slot as `pg_replication_slots` shows it (`exists()` is false when there is none).
    pub async fn slot(&mut self, name: &str) -> Result<Slot, SourceError> {
        let rows = self.query(&Slot::sql(&quote_literal(name))).await?;
        Ok(Slot::from_text_row(name, rows.first().map(Vec::as_slice)))
    }

    /// Creates a permanent pgoutput slot and returns its consistent point: the first LSN whose
    /// commits it will stream.
    pub async fn create_slot(&mut self, name: &str) -> Result<Lsn, SourceError> {
        let rows = self
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(name)
            ))
            .await?;
        consistent_point(rows)
    }

    /// Creates a permanent pgoutput slot that exports its snapshot, for the initial copy. The
    /// snapshot can be imported (`SET TRANSACTION SNAPSHOT`) only while this session stays open
    /// and runs no other command, so keep the session until the copy's transaction has begun.
    ///
    /// With `failover` (PostgreSQL 17+) it is a failover slot, which standbys running with
    /// `sync_replication_slots` copy, so it survives their promotion.
    pub async fn create_slot_exporting(
        &mut self,
        name: &str,
        failover: bool,
    ) -> Result<ExportedSlot, SourceError> {
        let sql = if failover {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)",
                quote_ident(name)
            )
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(name)
            )
        };
        exported(self.query(&sql).await?)
    }

    /// Turns an existing slot into a failover slot (PostgreSQL 17+). The server refuses
    /// (SQLSTATE 55006, [`SourceError::SlotBusy`]) while another session streams the slot.
    pub async fn set_failover(&mut self, name: &str) -> Result<(), SourceError> {
        self.query(&format!(
            "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
            quote_ident(name)
        ))
        .await?;
        Ok(())
    }

    /// The server's `server_version_num` (170000 for 17.0) and `server_version` text.
    pub async fn server_version(&mut self) -> Result<(u32, String), SourceError> {
        let rows = self
            .query(
                "SELECT current_setting('server_version_num'), current_setting('server_version')",
            )
            .await?;
        let row = rows.first();
        let text = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        let num = text(0)
            .and_then(|t| t.parse().ok())
            .ok_or(SourceError::Unexpected(
                "server_version_num is not a number",
            ))?;
        Ok((num, text(1).unwrap_or_default()))
    }

    /// Creates a temporary pgoutput slot that exports its snapshot and is never streamed: its
    /// consistent point names exactly which commits the snapshot holds (those before it), which
    /// is what `walpoints verify` needs to compare the business tables with the store at one
    /// LSN. The slot vanishes with this session, so it can never pin WAL.
    pub async fn create_temporary_slot_exporting(
        &mut self,
        name: &str,
    ) -> Result<ExportedSlot, SourceError> {
        let rows = self
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(name)
            ))
            .await?;
        exported(rows)
    }

    /// Drops the slot if it exists (waiting for a session that holds it to let go).
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), SourceError> {
        if self.slot(name).await?.exists() {
            self.query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(name)))
                .await?;
        }
        Ok(())
    }
}

/// The last switch of a timeline history file (`parentTLI<TAB>switchpoint<TAB>reason` lines,
/// `#` comments): the parent timeline and where the current one left it.
fn parse_last_fork(text: &str) -> Option<(u32, Lsn)> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let parent = fields.next()?.parse().ok()?;
            let at = fields.next()?.parse().ok()?;
            Some((parent, at))
        })
        .next()
}

/// The consistent point and snapshot name of a CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT.
fn exported(rows: Vec<Vec<Option<String>>>) -> Result<ExportedSlot, SourceError> {
    let snapshot = rows
        .first()
        .and_then(|r| r.get(2).cloned().flatten())
        .ok_or(SourceError::Unexpected(
            "CREATE_REPLICATION_SLOT exported no snapshot",
        ))?;
    Ok(ExportedSlot {
        consistent_point: consistent_point(rows)?,
        snapshot,
    })
}

fn consistent_point(rows: Vec<Vec<Option<String>>>) -> Result<Lsn, SourceError> {
    rows.into_iter()
        .next()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|s| s.parse().ok())
        .ok_or(SourceError::Unexpected(
            "CREATE_REPLICATION_SLOT returned no consistent point",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_switch_of_a_timeline_history_is_the_fork() {
        let text = "1\t0/3000060\tno recovery target specified\n\n2\t0/5A00108\tno recovery target specified\n";
        assert_eq!(parse_last_fork(text), Some((2, Lsn(0x5A0_0108))));
        assert_eq!(parse_last_fork("# nothing\n"), None);
    }
}
