//! The startup checks that refuse to lose data or to stream the wrong thing: run before the
//! stream starts, by `run` on every (re)connect and by a repeated `setup`. Each takes only the
//! settings it checks.

use super::DaemonError;
use crate::config::SourceConfig;
use crate::mapping::{Mapper, TableKind, Tables};
use crate::pg::connect::ConnectError;
use crate::pg::AdminSession;
use crate::store::Checkpoint;

/// Checks that each configured table exists with every mapped column, and that each amount,
/// price and time column has a type walpoints converts (a `money` or `text` price would
/// otherwise dead-letter every row, or `setup` would accept a column no row can pass).
pub(super) async fn tables(
    source_db: &tokio_postgres::Client,
    tables: &Tables,
    mapper: &Mapper,
) -> Result<(), DaemonError> {
    for table in TableKind::ALL {
        let name = tables.name_of(table)?.to_string();
        let row = source_db
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                 ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                       AND attnum > 0 AND NOT attisdropped ORDER BY attnum), \
                 ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                       WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                       AND NOT a.attisdropped ORDER BY a.attnum), \
                 ARRAY(SELECT b.typname::text FROM pg_attribute a \
                       JOIN pg_type t ON t.oid = a.atttypid \
                       JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' \
                                                     THEN t.typbasetype ELSE t.oid END \
                       WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                       AND NOT a.attisdropped ORDER BY a.attnum)",
                &[&name],
            )
            .await
            .map_err(|e| ConnectError::of("checking the source tables", e))?;
        if !row.get::<_, bool>(0) {
            return Err(DaemonError::TableMissing {
                table: name,
                key: table.as_str(),
            });
        }
        let present: Vec<String> = row.get(1);
        let missing: Vec<&str> = mapper
            .snapshot_columns(table)
            .into_iter()
            .filter(|c| !present.iter().any(|p| p == c))
            .collect();
        if !missing.is_empty() {
            return Err(DaemonError::ColumnMissing {
                table: name,
                columns: missing.join(", "),
            });
        }
        let shown: Vec<String> = row.get(2);
        let plain = tables.name_of(table)?;
        let base: Vec<String> = row.get(3);
        for (key, column, kind) in mapper.typed_columns(table) {
            let Some(i) = present.iter().position(|p| p == column) else {
                continue;
            };
            let typname = base.get(i).map(String::as_str).unwrap_or_default();
            if !kind.accepts(typname) {
                return Err(DaemonError::ColumnType {
                    table: format!("{}.{}", plain.schema, plain.name),
                    column: column.to_owned(),
                    key,
                    found: shown.get(i).cloned().unwrap_or_default(),
                    kind,
                });
            }
        }
    }
    Ok(())
}

/// Checks that `publication` exists and covers every configured table.
pub(super) async fn publication(
    source_db: &tokio_postgres::Client,
    publication: &str,
    tables: &Tables,
) -> Result<(), DaemonError> {
    let exists = source_db
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| ConnectError::of("checking the publication", e))?
        .is_some();
    if !exists {
        return Err(DaemonError::NoPublication {
            publication: publication.to_owned(),
        });
    }
    for table in tables.all() {
        let n = source_db
            .query_one(
                "SELECT count(*) FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &table.schema, &table.name],
            )
            .await
            .map_err(|e| ConnectError::of("checking the publication", e))?
            .get::<_, i64>(0);
        if n == 0 {
            return Err(DaemonError::NotPublished {
                publication: publication.to_owned(),
                table: table.to_string(),
            });
        }
    }
    Ok(())
}

/// The checks that refuse to lose data: same cluster, slot present, not lost, not ahead.
pub(super) async fn slot(
    admin: &mut AdminSession,
    source: &SourceConfig,
    cp: &Checkpoint,
    system_id: &str,
) -> Result<(), DaemonError> {
    if cp.slot_name != source.slot {
        return Err(DaemonError::SlotRenamed {
            source_id: source.id.clone(),
            recorded: cp.slot_name.clone(),
            configured: source.slot.clone(),
        });
    }
    if cp.system_id != system_id {
        return Err(DaemonError::SystemIdChanged {
            recorded: cp.system_id.clone(),
            found: system_id.to_owned(),
        });
    }
    let slot = admin.slot(&source.slot).await?;
    if !slot.exists() {
        return Err(DaemonError::SlotMissing {
            slot: source.slot.clone(),
            source_id: source.id.clone(),
            checkpoint: cp.lsn,
        });
    }
    if !slot.is_pgoutput() {
        return Err(DaemonError::WrongSlot {
            slot: source.slot.clone(),
            plugin: slot.plugin.unwrap_or_default(),
        });
    }
    if slot.is_lost() {
        return Err(DaemonError::SlotLost {
            slot: source.slot.clone(),
        });
    }
    timeline(admin, cp, slot.confirmed_flush_lsn).await?;
    if let Some(confirmed) = slot.confirmed_flush_lsn {
        if confirmed > cp.lsn {
            return Err(DaemonError::SlotAhead {
                slot: source.slot.clone(),
                confirmed,
                checkpoint: cp.lsn,
            });
        }
    }
    Ok(())
}

/// PostgreSQL 17 introduced failover slots.
const FAILOVER_SLOTS_SINCE: u32 = 170_000;

/// With `source.failover`, refuses a server older than PostgreSQL 17 (before the slot is
/// created, or streamed).
pub(super) async fn failover_supported(
    admin: &mut AdminSession,
    source: &SourceConfig,
) -> Result<(), DaemonError> {
    if !source.failover {
        return Ok(());
    }
    let (num, version) = admin.server_version().await?;
    if num < FAILOVER_SLOTS_SINCE {
        return Err(DaemonError::FailoverUnsupported { version });
    }
    Ok(())
}

/// With `source.failover`, makes the existing slot a failover slot (a slot created before the
/// setting was turned on), and warns when the primary's `synchronized_standby_slots` is empty.
/// `ALTER_REPLICATION_SLOT` fails while another session streams the slot: at a reconnect that is
/// usually this daemon's previous walsender on its way out, so it is tried a few times, then
/// reported as [`DaemonError::FailoverSlotBusy`] (transient: `run` tries again later).
pub(super) async fn failover(
    admin: &mut AdminSession,
    source: &SourceConfig,
) -> Result<(), DaemonError> {
    if !source.failover {
        return Ok(());
    }
    failover_supported(admin, source).await?;
    let mut attempt = 0;
    loop {
        let slot = admin.slot(&source.slot).await?;
        if !slot.exists() || slot.failover == Some(true) || slot.in_recovery {
            if let Some(w) = slot.failover_warning() {
                tracing::warn!("{w}");
            }
            return Ok(());
        }
        match admin.set_failover(&source.slot).await {
            Ok(()) => {
                tracing::info!(slot = %source.slot, "the slot is now a failover slot (source.failover = true)");
                continue;
            }
            Err(crate::pg::SourceError::SlotBusy(e)) => {
                attempt += 1;
                if attempt >= FAILOVER_ALTER_ATTEMPTS {
                    return Err(DaemonError::FailoverSlotBusy {
                        slot: source.slot.clone(),
                        holder: match slot.active_pid {
                            Some(pid) => format!("walsender pid {pid}"),
                            None => e.to_string(),
                        },
                    });
                }
                tracing::info!(slot = %source.slot, attempt, "the slot is busy; turning on failover again in a moment");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How often [`failover`] tries `ALTER_REPLICATION_SLOT` on a busy slot, a second apart.
const FAILOVER_ALTER_ATTEMPTS: u32 = 5;

/// After a promotion: refuses a store checkpoint past the point where the current timeline left
/// its parent while the slot (a failover slot synchronised from the old primary) is confirmed
/// only up to that point. Then the checkpoint came from the old primary's tail that never
/// reached the standby: the store holds points of transactions the cluster no longer has. Once
/// walpoints has streamed on the new timeline, the slot is confirmed past the fork and the
/// check passes.
async fn timeline(
    admin: &mut AdminSession,
    cp: &Checkpoint,
    confirmed: Option<crate::lsn::Lsn>,
) -> Result<(), DaemonError> {
    let Some((timeline, parent, fork)) = admin.timeline_fork().await? else {
        return Ok(());
    };
    let confirmed = confirmed.unwrap_or(crate::lsn::Lsn::ZERO);
    if cp.lsn > fork && confirmed <= fork {
        return Err(DaemonError::BeyondTimelineFork {
            checkpoint: cp.lsn,
            fork,
            timeline,
            parent,
            confirmed,
        });
    }
    Ok(())
}
