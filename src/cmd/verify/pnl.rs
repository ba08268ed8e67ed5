//! The PnL check: per position closed in profit, the PnL points it must earn, recomputed by
//! SQL from the positions table and compared with the ledger's `pnl` entries at the same cut.

use std::collections::{BTreeMap, BTreeSet};

use super::{sql_err, Difference, VerifyError};
use crate::config::Config;
use crate::identifier::quote_ident;
use crate::lsn::Lsn;
use crate::mapping::TableKind;

/// Positions closed in profit: (position id, user) → the PnL points they must earn.
pub(super) type PnlByPosition = BTreeMap<(String, String), String>;

pub(super) async fn source_pnl(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    excluded: &[String],
) -> Result<PnlByPosition, VerifyError> {
    let c = &config.columns;
    let table = config.tables.name_of(TableKind::Positions)?;
    let (id, user, status, pnl) = (
        quote_ident(&c.positions_id),
        quote_ident(&c.positions_user),
        quote_ident(&c.positions_status),
        quote_ident(&c.positions_realized_pnl),
    );
    let closed: Vec<String> = c
        .positions_closed_values
        .iter()
        .map(|v| v.trim().to_lowercase())
        .collect();
    let rate = config.rules.pnl.rate.to_string();
    // round(numeric, 6) rounds half away from zero, as the rules do.
    let sql = format!(
        "SELECT {id}::text, lower({user}::text),
                trim_scale(round({pnl}::numeric * $1::text::numeric, 6))::text
         FROM {table}
         WHERE lower(btrim({status}::text)) = ANY($2::text[])
           AND {id} IS NOT NULL AND {user} IS NOT NULL AND {pnl} IS NOT NULL
           AND {pnl}::numeric <> 'NaN' AND {pnl}::numeric > 0
           AND NOT (lower({user}::text) = ANY($3::text[]))"
    );
    let rows = tx
        .query(&sql, &[&rate, &closed, &excluded])
        .await
        .map_err(sql_err(
            "source",
            "recompute PnL points from the positions table",
        ))?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// The store's PnL entries before the cut: (position id, user) → (epoch, points).
pub(super) type StorePnl = BTreeMap<(String, String), (u32, String)>;

pub(super) async fn store_pnl(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
) -> Result<StorePnl, VerifyError> {
    let rows = stx
        .query(
            "SELECT position_id, user_address::text, max(epoch), trim_scale(sum(points))::text
             FROM walpoints.ledger
             WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn AND kind = 'pnl'
               AND position_id IS NOT NULL
             GROUP BY 1, 2",
            &[&source_id, &cut.to_string()],
        )
        .await
        .map_err(sql_err("store", "read the ledger's PnL entries"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let epoch = u32::try_from(r.get::<_, i32>(2)).ok()?;
            Some(((r.get(0), r.get(1)), (epoch, r.get(3))))
        })
        .collect())
}

/// The outcome of the PnL comparison.
pub(super) struct PnlComparison {
    pub(super) compared: usize,
    pub(super) unseen: usize,
    pub(super) deleted: usize,
    pub(super) differences: Vec<Difference>,
}

/// Compares PnL per (position, user). A position closed in profit that the store has not paid
/// is a difference only if walpoints saw it open (it has holding entries): one closed before
/// `setup` never earns. A payment for a position the source no longer has cannot be checked.
pub(super) async fn compare_pnl(
    tx: &tokio_postgres::Transaction<'_>,
    stx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    cut: Lsn,
    source: &PnlByPosition,
    store: &StorePnl,
) -> Result<PnlComparison, VerifyError> {
    let mut out = PnlComparison {
        compared: 0,
        unseen: 0,
        deleted: 0,
        differences: Vec::new(),
    };
    let what = |id: &str| format!("pnl points, position {id}");
    // Paid by the store: the source must say the same.
    let paid_only: Vec<&(String, String)> =
        store.keys().filter(|k| !source.contains_key(*k)).collect();
    let existing = positions_present(tx, config, &paid_only).await?;
    for (key, (epoch, points)) in store {
        match source.get(key) {
            Some(expected) => {
                out.compared += 1;
                if expected != points {
                    out.differences.push(Difference {
                        user: key.1.clone(),
                        epoch: *epoch,
                        what: what(&key.0),
                        store: points.clone(),
                        source: expected.clone(),
                    });
                }
            }
            None if existing.contains(&key.0) => out.differences.push(Difference {
                user: key.1.clone(),
                epoch: *epoch,
                what: what(&key.0),
                store: points.clone(),
                source: "0 (not closed in profit, or another owner)".into(),
            }),
            None => out.deleted += 1,
        }
    }
    // Expected by the source but not paid: a difference when walpoints saw the position open.
    let unpaid: Vec<&(String, String)> =
        source.keys().filter(|k| !store.contains_key(*k)).collect();
    let seen = positions_seen(stx, &config.source.id, cut, &unpaid).await?;
    for key in unpaid {
        match seen.get(&key.0) {
            Some(epoch) => {
                out.compared += 1;
                out.differences.push(Difference {
                    user: key.1.clone(),
                    epoch: *epoch,
                    what: what(&key.0),
                    store: "0 (not paid)".into(),
                    source: source.get(key).cloned().unwrap_or_default(),
                });
            }
            None => out.unseen += 1,
        }
    }
    Ok(out)
}

/// Which of these positions the source still has (in any state).
async fn positions_present(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    keys: &[&(String, String)],
) -> Result<BTreeSet<String>, VerifyError> {
    if keys.is_empty() {
        return Ok(BTreeSet::new());
    }
    let table = config.tables.name_of(TableKind::Positions)?;
    let id = quote_ident(&config.columns.positions_id);
    let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let rows = tx
        .query(
            &format!("SELECT {id}::text FROM {table} WHERE {id}::text = ANY($1::text[])"),
            &[&ids],
        )
        .await
        .map_err(sql_err("source", "look up positions the store paid"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Of these positions, those walpoints saw open (holding entries before the cut), with the
/// epoch of their last segment, which ends at the close and so is the PnL's epoch.
async fn positions_seen(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
    keys: &[&(String, String)],
) -> Result<BTreeMap<String, u32>, VerifyError> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let users: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let rows = stx
        .query(
            "SELECT position_id, max(epoch) FROM walpoints.ledger
             WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn AND kind = 'holding'
               AND user_address = ANY($3::text[]) AND position_id = ANY($4::text[])
             GROUP BY 1",
            &[&source_id, &cut.to_string(), &users, &ids],
        )
        .await
        .map_err(sql_err("store", "look for holding entries"))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0), u32::try_from(r.get::<_, i32>(1)).ok()?)))
        .collect())
}
