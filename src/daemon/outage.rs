//! A store that goes away mid-stream while the source is fine.
//!
//! Ending the session would drop the replication connection too: the slot would go inactive
//! (free for another instance to take) and, if the store stays away longer than a reconnect,
//! stay so. Instead the session holds the replication connection open while it probes the
//! store, acknowledging nothing; see [`wait_for_store`].

use std::time::Duration;

use tokio::sync::watch;

use crate::config::ConnUrl;
use crate::pg::{ReplicationSource, StreamEvent};
use crate::store::{Store, StoreError};
use crate::telemetry::{Phase, Telemetry};

/// Longest pause between two probes of a store that failed mid-stream: short, since the
/// replication session is being held open meanwhile.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a replication session is held open for a store that does not answer. Past it the
/// session is let go, so that a standby instance which can reach the store (this one may be cut
/// off from it alone) can take the slot over.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// How long one probe of the store may take before it counts as another failure (a black-holed
/// store would otherwise hang it).
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How [`wait_for_store`] ended.
pub(super) enum Held {
    /// The store answers again.
    StoreBack,
    /// Asked to stop.
    Stopped,
    /// The source went away, or asked for a confirmation walsender shutdown waits for: the
    /// replication session must be let go.
    Released,
}

/// The store failed mid-stream while the source is fine. Ending the session would drop the
/// replication connection too: the slot would go inactive (free for another instance to take)
/// and, if the store stays away longer than a reconnect, stay so. Instead this holds the
/// replication session open while probing the store with capped backoff: the transport keeps
/// sending standby feedback with the last committed LSN (so nothing new is acknowledged and
/// the walsender never hits `wal_sender_timeout`), and what the source sends meanwhile is
/// read and thrown away (the next session streams it again from the store's checkpoint).
///
/// A source that is shutting down asks for a reply and waits until its client has confirmed
/// everything it sent, which walpoints cannot do without the store: then (or if the source
/// ends the stream) the session is released at once rather than holding the shutdown. It is
/// released too after [`MAX_HOLD`], for a standby's sake.
pub(super) async fn wait_for_store(
    store_url: &ConnUrl,
    source_id: &str,
    stop: &mut watch::Receiver<bool>,
    telemetry: &Telemetry,
    source: &mut ReplicationSource,
    first: &StoreError,
) -> Held {
    let mut backoff = Duration::from_millis(250);
    let mut error = first.to_string();
    let mut attempt = 0u32;
    let held_since = std::time::Instant::now();
    loop {
        if held_since.elapsed() > MAX_HOLD {
            tracing::warn!(%error, "the store has been away for {MAX_HOLD:?}: releasing the replication session, so that a standby that can reach the store may take the slot over");
            return Held::Released;
        }
        attempt += 1;
        telemetry.set_phase(Phase::Reconnecting {
            error: format!(
                "the store is unreachable (replication held open, nothing acknowledged): {error}"
            ),
        });
        tracing::warn!(attempt, retry_in_ms = backoff.as_millis() as u64, %error, "the store failed; holding the replication session open, acknowledging nothing, until it answers");
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                _ = stop.wait_for(|s| *s) => return Held::Stopped,
                event = source.next_event() => match event {
                    Ok(Some(StreamEvent::Idle { reply_requested: true, wal_end })) => {
                        tracing::warn!(%wal_end, "the source asks walpoints to confirm WAL the store does not have (it may be shutting down): releasing the replication session");
                        return Held::Released;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!("the source ended the replication stream while the store was away");
                        return Held::Released;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the source failed too while the store was away");
                        return Held::Released;
                    }
                },
            }
        }
        let probe = async {
            let store = Store::connect(store_url, source_id, false).await?;
            store.checkpoint().await.map(|_| ())
        };
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => {
                tracing::warn!(
                    attempt,
                    "the store answers again; resuming from its checkpoint"
                );
                return Held::StoreBack;
            }
            Ok(Err(e)) if e.is_transient() => error = e.to_string(),
            Ok(Err(_)) => return Held::StoreBack,
            Err(_) => error = format!("no answer within {STORE_PROBE_TIMEOUT:?}"),
        }
        backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
    }
}
