//! What `verify` found: the report it prints and the differences it lists.

use std::fmt::Write as _;

use crate::lsn::Lsn;
use crate::time::format_rfc3339;

/// One disagreement between the store and the business tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference {
    /// The user (lowercase address).
    pub user: String,
    /// The epoch the difference is in.
    pub epoch: u32,
    /// What differs, e.g. `trading volume` or `pnl points, position <id>`.
    pub what: String,
    /// The store's value.
    pub store: String,
    /// The value recomputed from the business tables.
    pub source: String,
}

/// What `verify` compared and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The source compared.
    pub source_id: String,
    /// The LSN both sides were read at: the source snapshot holds exactly the commits before it.
    pub cut: Lsn,
    /// The epoch verified, if only one.
    pub epoch: Option<u32>,
    /// Trades at or after this instant (µs) were checked; `None` when the trading checks were
    /// skipped because `columns.trades_time` is empty.
    pub trades_since: Option<i64>,
    /// Eligible fills recomputed from the source.
    pub fills: u64,
    /// (user, epoch) rows of trading activity compared.
    pub trading_rows: usize,
    /// Positions closed in profit that were compared.
    pub pnl_positions: usize,
    /// Positions closed in profit that walpoints never saw open (closed before `setup`, or
    /// below `holding.min_notional`) and has not paid: not checked.
    pub pnl_unseen: usize,
    /// Positions the store paid PnL for that the source no longer has: not checked.
    pub pnl_deleted: usize,
    /// Every difference found, sorted by user, epoch, what.
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    /// Whether the store agrees with the business tables.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The report as the command prints it: what was compared, then the differences as a
    /// table (user, epoch, what, store, source), or a line saying there are none.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let scope = self
            .epoch
            .map_or_else(|| "all epochs".to_owned(), |e| format!("epoch {e}"));
        let _ = writeln!(
            s,
            "verify: source {:?}, {scope}, business tables and store both read at {}",
            self.source_id, self.cut
        );
        match self.trades_since {
            Some(since) => {
                let _ = writeln!(
                    s,
                    "trading: {} eligible fills since {} in {} (user, epoch) rows: volume and \
                     fill count compared",
                    self.fills,
                    format_rfc3339(since),
                    self.trading_rows
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "trading: NOT CHECKED: columns.trades_time is empty, so a fill's epoch is \
                     its commit time, which the trades table does not hold"
                );
            }
        }
        let _ = writeln!(
            s,
            "pnl: {} positions closed in profit compared; {} never seen open by walpoints \
             (closed before setup, or below holding.min_notional) and {} paid but since deleted \
             from the source were not checked",
            self.pnl_positions, self.pnl_unseen, self.pnl_deleted
        );
        if self.differences.is_empty() {
            let _ = writeln!(s, "OK: no differences");
            return s;
        }
        let _ = writeln!(
            s,
            "DIFFERENT: {} difference(s) between the store and the business tables",
            self.differences.len()
        );
        let w = |f: fn(&Difference) -> usize, title: &str| {
            self.differences
                .iter()
                .map(f)
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let uw = w(|d| d.user.len(), "user");
        let ww = w(|d| d.what.len(), "what");
        let sw = w(|d| d.store.len(), "store");
        let _ = writeln!(
            s,
            "{:<uw$}  {:>5}  {:<ww$}  {:>sw$}  source",
            "user", "epoch", "what", "store"
        );
        for d in &self.differences {
            let _ = writeln!(
                s,
                "{:<uw$}  {:>5}  {:<ww$}  {:>sw$}  {}",
                d.user, d.epoch, d.what, d.store, d.source
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_user_epoch_and_both_values() {
        let report = VerifyReport {
            source_id: "default".into(),
            cut: Lsn(0x1_0000_0010),
            epoch: None,
            trades_since: Some(0),
            fills: 3,
            trading_rows: 2,
            pnl_positions: 1,
            pnl_unseen: 0,
            pnl_deleted: 0,
            differences: vec![Difference {
                user: "0xalice".into(),
                epoch: 46,
                what: "trading volume".into(),
                store: "101".into(),
                source: "100".into(),
            }],
        };
        let text = report.render();
        assert!(text.contains("1/10"), "{text}");
        assert!(text.contains("since 1970-01-01T00:00:00.000000Z"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("0xalice"))
            .unwrap_or_else(|| panic!("no row for 0xalice in:\n{text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells, ["0xalice", "46", "trading", "volume", "101", "100"]);
        assert!(!report.is_clean());
    }
}
