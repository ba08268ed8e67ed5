//! `walpoints teardown`: drop the slot (so it never pins the primary's WAL again) and the
//! publication; with `--drop-store`, this source's rows in the store too.

use super::DaemonError;
use crate::config::Config;
use crate::pg::AdminSession;
use crate::points::Engine;
use crate::store::{Store, StoreError};

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
                // The open holding segments' credits are in the totals but in no ledger row yet.
                let open_credits = match (
                    store.checkpoint().await?,
                    store.last_journaled_rules().await?,
                ) {
                    (Some(cp), Some(rules)) => Engine::new(rules)?
                        .open_segment_credits(&store.load_state(cp.stream_time).await?)
                        .map_err(|source| {
                            StoreError::bad_value("the open holding credits", source)
                        })?,
                    _ => Default::default(),
                };
                store.drop_source(&open_credits).await?;
                store_dropped = true;
            }
            Err(e) if e.is_missing_database() => {
                tracing::info!("the store database does not exist: nothing to delete")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(TeardownReport { store_dropped })
}
