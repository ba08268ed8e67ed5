//! walpoints: a sidecar that turns an exchange's PostgreSQL write-ahead log into loyalty points.
//!
//! Data flows one way: [`source`] (a logical replication slot) → [`pgoutput`] (pure decoder) →
//! [`change`] (row changes in commit order) → [`events`] (the column mapping) → [`points`] (pure
//! rules) → [`store`] (one transaction per batch), wired by [`pipeline`] and run by [`daemon`].
//! Operators watch it through [`telemetry`] (served by [`http`] next to the points API) and
//! [`status`]. See `ARCHITECTURE.md` in the shared folder for the whole picture and the invariants each
//! module keeps.

#![warn(missing_docs)]

pub mod change;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod events;
pub mod http;
pub mod lsn;
pub mod pgcluster;
pub mod pgconn;
pub mod pgoutput;
pub mod pipeline;
pub mod points;
pub mod signal;
pub mod source;
pub mod status;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod value;
pub mod verify;
