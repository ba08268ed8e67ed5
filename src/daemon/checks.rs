//! The startup checks that refuse to lose data or to stream the wrong thing: run before the
//! stream starts, by `run` on every (re)connect and by a repeated `setup`.

use crate::config::Config;
use crate::events::{Mapper, TableKind};
use crate::pgconn::ConnectError;
use crate::source::AdminSession;
use crate::store::Checkpoint;

use super::DaemonError;

/// Checks that each configured table exists with every mapped column.
pub(super) async fn check_tables(
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
pub(super) async fn check_publication(
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
pub(super) async fn check_slot(
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
