//! The `rules` table: every rules version ever in force, with the text it stands for. Ledger
//! and journal rows name their version by a small id instead of repeating a 64-character hash,
//! and `replay` runs each transaction under the rules recorded for it.

use std::collections::BTreeMap;

use super::{Store, StoreError};
use crate::points::RuleSet;

impl Store {
    /// Records `rules` (once per version) and makes it the version this connection's batches
    /// are stamped with; returns its id.
    pub async fn use_rules(&mut self, rules: &RuleSet) -> Result<i16, StoreError> {
        let version = rules.version();
        let json = serde_json::to_string(rules)
            .map_err(|source| StoreError::bad_value("the rules as JSON", source))?;
        let tx = self
            .client
            .transaction()
            .await
            .map_err(StoreError::db("begin"))?;
        tx.batch_execute("LOCK TABLE walpoints.rules IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(StoreError::db("lock walpoints.rules"))?;
        let id: i16 = tx
            .query_one(
                "WITH new AS (
                   INSERT INTO walpoints.rules (rules_id, version, canonical, rules)
                   SELECT coalesce(max(rules_id), 0) + 1, $1, $2, $3 FROM walpoints.rules
                   ON CONFLICT (version) DO NOTHING RETURNING rules_id)
                 SELECT rules_id FROM new
                 UNION ALL SELECT rules_id FROM walpoints.rules WHERE version = $1",
                &[&version, &rules.canonical_text(), &json],
            )
            .await
            .map_err(StoreError::db("record the rules version"))?
            .get(0);
        tx.commit().await.map_err(StoreError::db("commit"))?;
        self.rules_id = Some(id);
        self.rules_version = Some(version);
        Ok(id)
    }

    /// Every recorded rules version by id, as `replay` runs them.
    pub async fn recorded_rules(&self) -> Result<BTreeMap<i16, RuleSet>, StoreError> {
        let rows = self
            .client
            .query("SELECT rules_id, version, rules FROM walpoints.rules", &[])
            .await
            .map_err(StoreError::db("read walpoints.rules"))?;
        rows.iter()
            .map(|r| {
                let id: i16 = r.get(0);
                let version: &str = r.get(1);
                let rules: RuleSet = serde_json::from_str(r.get(2)).map_err(|source| {
                    StoreError::bad_value(format!("walpoints.rules {id} ({version})"), source)
                })?;
                Ok((id, rules))
            })
            .collect()
    }
}

impl Store {
    /// The rules the last journaled transaction of this source ran under (`None` before the
    /// first): when they differ from the rules starting now, the engine ends the open holding
    /// segments under them first, exactly as `replay` will when the journal's rules change.
    pub async fn last_journaled_rules(&self) -> Result<Option<RuleSet>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT r.rules_id, r.version, r.rules FROM walpoints.rules r
                 JOIN (SELECT rules_id FROM walpoints.journal WHERE source_id = $1
                       ORDER BY epoch DESC, commit_lsn DESC, ordinal DESC LIMIT 1) j
                   USING (rules_id)",
                &[&self.source_id],
            )
            .await
            .map_err(StoreError::db("read the last journaled rules"))?;
        row.map(|r| {
            let id: i16 = r.get(0);
            let version: &str = r.get(1);
            serde_json::from_str(r.get(2)).map_err(|source| {
                StoreError::bad_value(format!("walpoints.rules {id} ({version})"), source)
            })
        })
        .transpose()
    }
}

impl Store {
    /// Creates the journal and ledger partitions of epochs `from ..= from + ahead` (and of
    /// "before genesis") that do not exist yet, outside any batch, so that batches seldom
    /// create one while API readers wait on its lock.
    pub async fn create_partitions_ahead(&self, from: i32, ahead: i32) -> Result<(), StoreError> {
        let mut epochs: Vec<i32> = vec![-1];
        epochs.extend((from.max(0)..).take(usize::try_from(ahead + 1).unwrap_or(1)));
        for e in &epochs {
            self.client
                .execute("SELECT walpoints.ensure_epoch_partitions($1)", &[e])
                .await
                .map_err(StoreError::db("create epoch partitions"))?;
        }
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(epochs);
        Ok(())
    }
}
