//! One running instance per source: take the source's instance lock in the store, or wait
//! as a standby until it is free (or refuse, with `run --no-standby`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{DaemonError, Standby};
use crate::store::Store;
use crate::telemetry::{Phase, Telemetry};

/// How often a standby asks the store whether the source's lock is free: the longest it takes
/// to notice that the running instance has gone.
const STANDBY_POLL: Duration = Duration::from_secs(2);

/// Takes the source's instance lock on `store`'s connection, waiting as a standby while another
/// instance holds it (or refusing, as `standby` says). Returns false when asked to stop while
/// waiting.
pub(super) async fn lead(
    store: &Store,
    id: &str,
    standby: Standby,
    mut stop: watch::Receiver<bool>,
    telemetry: &Arc<Telemetry>,
) -> Result<bool, DaemonError> {
    // Named after this process, so the others' messages and `status` say who runs the source.
    store
        .prepare_lock_session(&format!("walpoints run (pid {})", std::process::id()))
        .await?;
    let mut waiting = false;
    loop {
        if store.try_lock_source().await? {
            if waiting {
                tracing::warn!(source = %id, "the other instance has stopped: this standby takes over the source");
                telemetry.set_phase(Phase::Starting);
            }
            return Ok(true);
        }
        let holder = store
            .source_lock_holder()
            .await?
            .unwrap_or_else(|| "an instance that is just stopping".to_owned());
        if standby == Standby::Refuse {
            return Err(DaemonError::AnotherInstance {
                source_id: id.to_owned(),
                holder,
            });
        }
        if !waiting {
            waiting = true;
            tracing::warn!(
                source = %id,
                holder = %holder,
                "another walpoints instance is running this source against this store; waiting as a standby, will take over when it stops"
            );
            telemetry.set_phase(Phase::Standby {
                holder: format!("another walpoints instance runs source {id:?}: {holder}"),
            });
        }
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL) => {}
            _ = stop.wait_for(|s| *s) => return Ok(false),
        }
    }
}
