//! The `[tables]` and `[columns]` sections of `walpoints.toml`: which business tables walpoints
//! follows and which column of each holds what. They belong to the mapping, which is the only
//! code that reads a row's columns; the configuration embeds them as its sections.

use serde::{Deserialize, Serialize};

use super::TableKind;
use crate::identifier::{BadTableName, TableName};

/// The three business tables, schema-qualified; `tail` follows them unless told otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tables {
    /// One row per fill.
    pub trades: String,
    /// One row per position, updated in place as it changes.
    pub positions: String,
    /// One row per referee naming their referrer.
    pub referral_relations: String,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            trades: "public.trades".into(),
            positions: "public.positions".into(),
            referral_relations: "public.referral_relations".into(),
        }
    }
}

/// Column names of the three business tables, flat so each has a `WALPOINTS_COLUMNS_<KEY>`
/// variable. Defaults match the seed schema in `sql/exchange_schema.sql`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// `trades` primary key: it keys corrections and deletes.
    pub trades_id: String,
    /// `trades` market symbol.
    pub trades_symbol: String,
    /// `trades` fill price.
    pub trades_price: String,
    /// `trades` fill amount (base quantity).
    pub trades_amount: String,
    /// `trades` taker address.
    pub trades_taker: String,
    /// `trades` maker address.
    pub trades_maker: String,
    /// `trades` fill time; empty means "use the commit time of the inserting transaction".
    pub trades_time: String,
    /// `positions` primary key.
    pub positions_id: String,
    /// `positions` owner address.
    pub positions_user: String,
    /// `positions` market symbol.
    pub positions_symbol: String,
    /// `positions` signed size.
    pub positions_size: String,
    /// `positions` entry price.
    pub positions_entry_price: String,
    /// `positions` status.
    pub positions_status: String,
    /// `positions` realized PnL (NULL while open).
    pub positions_realized_pnl: String,
    /// Status values that mean "open" (compared case-insensitively).
    pub positions_open_values: Vec<String>,
    /// Status values that mean "closed" (liquidated counts as closed if listed here).
    pub positions_closed_values: Vec<String>,
    /// `referral_relations` referee address (its key).
    pub referrals_referee: String,
    /// `referral_relations` referrer address.
    pub referrals_referrer: String,
}

impl Default for Columns {
    fn default() -> Self {
        let s = |v: &str| v.to_owned();
        Columns {
            trades_id: s("id"),
            trades_symbol: s("symbol"),
            trades_price: s("price"),
            trades_amount: s("amount"),
            trades_taker: s("taker_address"),
            trades_maker: s("maker_address"),
            trades_time: s("created_at"),
            positions_id: s("id"),
            positions_user: s("user_address"),
            positions_symbol: s("symbol"),
            positions_size: s("size"),
            positions_entry_price: s("entry_price"),
            positions_status: s("status"),
            positions_realized_pnl: s("realized_pnl"),
            positions_open_values: vec![s("open")],
            positions_closed_values: vec![s("closed")],
            referrals_referee: s("referee_address"),
            referrals_referrer: s("referrer_address"),
        }
    }
}

impl Tables {
    /// The configured name of a followed table, parsed (the configuration refuses a name that
    /// does not parse when it is loaded).
    pub fn name_of(&self, table: TableKind) -> Result<TableName, BadTableName> {
        match table {
            TableKind::Trades => &self.trades,
            TableKind::Positions => &self.positions,
            TableKind::Referrals => &self.referral_relations,
        }
        .parse()
    }

    /// The configured tables in a fixed order, for building a publication.
    pub fn all(&self) -> Vec<TableName> {
        [&self.trades, &self.positions, &self.referral_relations]
            .into_iter()
            .filter_map(|t| t.parse().ok())
            .collect()
    }
}
