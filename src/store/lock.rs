//! One running instance per source: a session-level advisory lock in the store.
//!
//! `walpoints run` takes `pg_try_advisory_lock` on the very connection its store writer commits
//! on, keyed on the source id, and holds it for that connection's life. Every batch therefore
//! commits on a session that holds the lock: if that session dies (store restart, network), the
//! lock goes with it and so does every later write on it, so the process must reconnect and
//! win the lock again before it can commit anything. A second instance finds the lock taken and
//! waits as a standby (or, with `run --no-standby`, exits saying who holds it). The checkpoint
//! compare-and-set ([`super::StoreError::Fenced`]) stays the last-line fence, and the slot's
//! `active_pid` keeps two sessions from streaming the slot at once.
//!
//! Session locks need a session: a transaction-pooling proxy (PgBouncer in transaction mode)
//! between walpoints and the store would break this; use a direct or session-pooled connection.

use super::{Store, StoreError};

/// The lock's key: a 64-bit hash of `walpoints.source:<id>`, in the database of the store.
/// Sources sharing a store lock independently (a hash collision between two ids would only
/// make one wait for the other, never let two write one source).
const KEY_SQL: &str = "hashtextextended('walpoints.source:' || $1, 0)";

impl Store {
    /// Tries to take this source's instance lock on this connection; true when it is ours now
    /// (or already was). Non-blocking.
    pub async fn try_lock_source(&self) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                &format!("SELECT pg_try_advisory_lock({KEY_SQL})"),
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("take the source's instance lock"))?;
        Ok(row.get(0))
    }

    /// Who holds this source's instance lock, as far as the store lets this role see
    /// (`pg_locks` and `pg_stat_activity`): application name, store backend pid, client
    /// address and since when. `None` when nobody holds it (no instance is running).
    pub async fn source_lock_holder(&self) -> Result<Option<String>, StoreError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT l.pid, a.application_name, host(a.client_addr), \
                     to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                     AND l.database = (SELECT oid FROM pg_database \
                                       WHERE datname = current_database()) \
                     AND ((l.classid::int8 << 32) | l.objid::int8) = {KEY_SQL} \
                     LIMIT 1"
                ),
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("read the source's instance lock"))?;
        Ok(row.map(|r| {
            let pid: Option<i32> = r.get(0);
            let app: Option<String> = r.get(1);
            let addr: Option<String> = r.get(2);
            let since: Option<String> = r.get(3);
            let mut who = match app.filter(|a| !a.is_empty()) {
                Some(app) => format!("{app:?}"),
                None => "a session".to_owned(),
            };
            if let Some(pid) = pid {
                who.push_str(&format!(", store backend pid {pid}"));
            }
            who.push_str(&match addr {
                Some(addr) => format!(", from {addr}"),
                None => ", over a local socket".to_owned(),
            });
            if let Some(since) = since {
                who.push_str(&format!(", connected since {since}"));
            }
            who
        }))
    }

    /// Prepares this connection to hold the lock: names it in `pg_stat_activity`
    /// (`application_name`), so that a standby and `walpoints status` can tell the operator
    /// which process holds the lock, and has the server probe it with TCP keepalives every few
    /// seconds, so that if this process's host vanishes without closing the connection, the
    /// server drops the session (and the lock, for a standby to take) within about half a
    /// minute rather than the operating system's two hours. (Over a Unix socket the keepalive
    /// settings are ignored.)
    pub async fn prepare_lock_session(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .execute(
                "SELECT set_config('application_name', $1, false), \
                 set_config('tcp_keepalives_idle', '10', false), \
                 set_config('tcp_keepalives_interval', '5', false), \
                 set_config('tcp_keepalives_count', '3', false)",
                &[&name],
            )
            .await
            .map_err(StoreError::db("prepare the instance lock's session"))?;
        Ok(())
    }
}
