//! A replication slot as `pg_replication_slots` shows it, with the server's WAL position.
//!
//! The slot is walpoints' bookmark in the source's WAL: the startup checks read it to refuse a
//! slot that is missing, lost, ahead of the store or of another plugin; `status`, `/metrics`
//! and `/readyz` read it for lag. All of them read it with one query ([`Slot::sql`]) into one
//! type, over whichever connection they hold: an ordinary SQL session ([`Slot::query`]) or a
//! replication-protocol one ([`super::AdminSession::slot`]).

use serde::Serialize;

use crate::lsn::{self, Lsn};

/// One slot, or the absence of one (`slot_exists` false, the slot's own fields empty), and the
/// server's current WAL position (the replay position on a standby).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// The slot asked about.
    pub slot_name: String,
    /// Whether a slot of that name exists.
    pub slot_exists: bool,
    /// Its output plugin; walpoints needs `pgoutput`.
    #[serde(skip)]
    pub plugin: Option<String>,
    /// False for a physical slot.
    #[serde(skip)]
    pub logical: bool,
    /// Whether a walsender streams it now.
    pub active: bool,
    /// That walsender's process id.
    pub active_pid: Option<i32>,
    /// Oldest WAL the slot still needs.
    #[serde(serialize_with = "lsn::serialize_opt")]
    pub restart_lsn: Option<Lsn>,
    /// Everything before this is acknowledged and will not be streamed again.
    #[serde(serialize_with = "lsn::serialize_opt")]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The server's current WAL position (the replay position on a standby).
    #[serde(serialize_with = "lsn::serialize_opt")]
    pub server_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (the slot can no longer stream).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can be written before the slot is in danger; `None` when unlimited.
    pub safe_wal_size: Option<i64>,
    /// Whether it is a failover slot, synchronised to standbys that run with
    /// `sync_replication_slots` (PostgreSQL 17+; `None` on older servers).
    pub failover: Option<bool>,
    /// Whether this is a standby's synchronised copy of a primary's failover slot (17+).
    pub synced: Option<bool>,
    /// The server's `synchronized_standby_slots` (17+): the physical slots of the standbys a
    /// failover slot's walsender waits for. Empty: walpoints may confirm WAL no standby has.
    pub synchronized_standby_slots: Option<String>,
    /// Whether the server is a standby.
    pub in_recovery: bool,
}

impl Slot {
    /// The query, with `name` already spliced in (a `$1` placeholder or a quoted literal):
    /// every column as text, so both kinds of session parse it with [`Slot::from_text_row`].
    pub fn sql(name: &str) -> String {
        format!(
            "SELECT (s.slot_name IS NOT NULL)::text, coalesce(s.active, false)::text, \
                    s.active_pid::text, s.restart_lsn::text, s.confirmed_flush_lsn::text, \
                    s.wal_status, s.safe_wal_size::text, \
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                          ELSE pg_current_wal_lsn() END)::text, \
                    s.plugin::text, s.slot_type, \
                    to_jsonb(s) ->> 'failover', to_jsonb(s) ->> 'synced', \
                    current_setting('synchronized_standby_slots', true), \
                    pg_is_in_recovery()::text \
             FROM (SELECT 1) AS one \
             LEFT JOIN pg_replication_slots s ON s.slot_name = {name}"
        )
    }

    /// Reads slot `name` on an ordinary SQL session.
    pub async fn query(
        client: &tokio_postgres::Client,
        name: &str,
    ) -> Result<Slot, tokio_postgres::Error> {
        let row = client.query_one(&Slot::sql("$1"), &[&name]).await?;
        let texts: Vec<Option<String>> = (0..row.len()).map(|i| row.get(i)).collect();
        Ok(Slot::from_text_row(name, Some(&texts)))
    }

    /// Parses a row of [`Slot::sql`] (no row at all reads as no slot).
    pub fn from_text_row(name: &str, row: Option<&[Option<String>]>) -> Slot {
        let text = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        let lsn = |i: usize| text(i).and_then(|t| t.parse().ok());
        Slot {
            slot_name: name.to_owned(),
            slot_exists: text(0).as_deref() == Some("true"),
            active: text(1).as_deref() == Some("true"),
            active_pid: text(2).and_then(|t| t.parse().ok()),
            restart_lsn: lsn(3),
            confirmed_flush_lsn: lsn(4),
            wal_status: text(5),
            safe_wal_size: text(6).and_then(|t| t.parse().ok()),
            server_lsn: lsn(7),
            plugin: text(8),
            logical: text(9).as_deref() == Some("logical"),
            failover: text(10).map(|t| t == "true"),
            synced: text(11).map(|t| t == "true"),
            synchronized_standby_slots: text(12),
            in_recovery: text(13).as_deref() == Some("true"),
        }
    }

    /// Why this failover slot is not protected on a primary: `synchronized_standby_slots` is
    /// empty, so the walsender may send walpoints WAL no standby has received, and after a
    /// failover the store holds points of transactions the new primary never had.
    pub fn failover_warning(&self) -> Option<String> {
        if self.failover != Some(true) || self.in_recovery {
            return None;
        }
        let standbys = self.synchronized_standby_slots.as_deref().unwrap_or("");
        standbys.trim().is_empty().then(|| {
            format!(
                "slot {} is a failover slot but synchronized_standby_slots is empty on the \
                 primary: walpoints may get ahead of every standby, and a failover can lose \
                 points it already counted (README, Runbook, \"Failover\")",
                self.slot_name
            )
        })
    }

    /// Whether the slot exists.
    pub fn exists(&self) -> bool {
        self.slot_exists
    }

    /// Whether the server invalidated it (`wal_status = lost`): the WAL it needs is gone.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// Whether it is a logical slot of the pgoutput plugin, the only kind walpoints streams.
    pub fn is_pgoutput(&self) -> bool {
        self.logical && self.plugin.as_deref() == Some("pgoutput")
    }

    /// Server LSN − confirmed_flush_lsn: WAL the slot pins that walpoints has not confirmed.
    pub fn lag_bytes(&self) -> Option<i64> {
        let (server, confirmed) = (self.server_lsn?, self.confirmed_flush_lsn?);
        Some(i64::try_from(server.0.saturating_sub(confirmed.0)).unwrap_or(i64::MAX))
    }

    /// `wal_status`, or `missing` when there is no slot (a metrics label).
    pub fn wal_status_label(&self) -> &str {
        match (&self.wal_status, self.slot_exists) {
            (_, false) => "missing",
            (Some(s), true) => s,
            (None, true) => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(exists: bool, confirmed: Option<u64>, server: u64) -> Slot {
        Slot {
            slot_name: "s".into(),
            slot_exists: exists,
            plugin: exists.then(|| "pgoutput".into()),
            logical: exists,
            active: false,
            active_pid: None,
            restart_lsn: None,
            confirmed_flush_lsn: confirmed.map(Lsn),
            server_lsn: Some(Lsn(server)),
            wal_status: exists.then(|| "reserved".into()),
            safe_wal_size: None,
            failover: None,
            synced: None,
            synchronized_standby_slots: None,
            in_recovery: false,
        }
    }

    #[test]
    fn lag_is_server_minus_confirmed() {
        assert_eq!(slot(true, Some(100), 350).lag_bytes(), Some(250));
        assert_eq!(slot(true, Some(400), 350).lag_bytes(), Some(0));
        assert_eq!(slot(false, None, 350).lag_bytes(), None);
    }

    #[test]
    fn a_failover_slot_without_standby_slots_is_warned_about_on_a_primary_only() {
        let mut s = slot(true, Some(1), 1);
        assert_eq!(s.failover_warning(), None, "not a failover slot");
        s.failover = Some(true);
        s.synchronized_standby_slots = Some(String::new());
        let w = s.failover_warning().unwrap();
        assert!(w.contains("synchronized_standby_slots is empty"), "{w}");
        s.synchronized_standby_slots = Some("standby1".into());
        assert_eq!(s.failover_warning(), None);
        s.synchronized_standby_slots = Some(String::new());
        s.in_recovery = true;
        assert_eq!(
            s.failover_warning(),
            None,
            "a standby's setting does not matter"
        );
    }

    #[test]
    fn a_missing_slot_is_labelled_missing() {
        assert_eq!(slot(false, None, 1).wal_status_label(), "missing");
        assert_eq!(slot(true, Some(1), 1).wal_status_label(), "reserved");
    }

    #[test]
    fn lsns_serialize_in_postgres_form_and_the_plugin_stays_out() {
        let json = serde_json::to_value(slot(true, Some(0x1_0000_0010), 0x1_0000_0020)).unwrap();
        assert_eq!(json["confirmed_flush_lsn"], "1/10");
        assert_eq!(json["restart_lsn"], serde_json::Value::Null);
        assert!(json.get("plugin").is_none() && json.get("logical").is_none());
    }

    #[test]
    fn a_text_row_parses_and_no_row_is_no_slot() {
        let row: Vec<Option<String>> = [
            Some("true"),
            Some("true"),
            Some("42"),
            Some("0/10"),
            Some("0/20"),
            Some("reserved"),
            None,
            Some("0/30"),
            Some("pgoutput"),
            Some("logical"),
        ]
        .map(|v| v.map(str::to_owned))
        .to_vec();
        let s = Slot::from_text_row("wp", Some(&row));
        assert!(s.exists() && s.active && s.is_pgoutput() && !s.is_lost());
        assert_eq!((s.active_pid, s.lag_bytes()), (Some(42), Some(0x10)));
        assert_eq!((s.failover, s.synced), (None, None), "before PostgreSQL 17");
        let none = Slot::from_text_row("wp", None);
        assert!(!none.exists() && !none.is_pgoutput());
    }
}
