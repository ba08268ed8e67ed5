//! Throwaway PostgreSQL for the tests and `walpoints demo`, apart from the product code: no
//! module but the demo uses it, and `tests/architecture.rs` keeps it that way.

mod cluster;

pub use cluster::{ClusterError, PgBinaries, PgCluster, StopMode};

/// The seed schema of the exchange's business tables (`sql/exchange_schema.sql`), which the
/// demo and the tests create in their throwaway exchange.
pub const EXCHANGE_SCHEMA: &str = include_str!("../../sql/exchange_schema.sql");
