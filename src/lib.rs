//! walpoints: a sidecar that turns an exchange's PostgreSQL write-ahead log into loyalty points.
//!
//! Data flows one way:
//!
//! ```text
//! pg::replication ─▶ pgoutput ─▶ changes ─▶ mapping ─▶ points ─▶ store ─▶ pg::replication (ack)
//!   (the slot)       (decoder)   (row changes, (the [columns]  (pure     (one transaction
//!                                 transactions) mapping)       rules)     per batch)
//! ```
//!
//! wired by the daemon's batch loop ([`daemon`]) and watched through [`telemetry`] (served by
//! [`http`] beside the points API) and the commands in [`cmd`].
//!
//! The modules come in four rooms, and the README's "Layout" lists every file with its room:
//!
//! - **The pure core**: [`lsn`], [`time`], [`identifier`], [`value`], [`pgoutput`], [`changes`],
//!   [`mapping`] and [`points`]. No I/O, no tokio, no clock (time comes from the stream), so
//!   the same WAL always gives the same ledger and all of it is tested without a server.
//! - **Settings**: [`config`] (`walpoints.toml` and `WALPOINTS_*`) and [`cli`]. The core's own
//!   sections (the rules, `[tables]`, `[columns]`) are defined in the core and embedded here.
//! - **The I/O edges**: [`pg`] (connections, the replication source, slots, snapshots),
//!   [`store`], [`http`], [`telemetry`] and [`signal`]. Each takes its own settings, not the
//!   whole configuration.
//! - **The commands**: [`daemon`] (`setup`, `run` with its batch loop, `teardown`) and [`cmd`]
//!   (`status`, `tail`, `verify`, `demo`).
//!
//! Apart from these, [`testing`] starts the throwaway PostgreSQL clusters that the tests and
//! `walpoints demo` run against; no product code but the demo uses it.
//!
//! The rule: the core imports nothing from the edges or the commands, the edges import no
//! command, and no file imports another that imports it back. `tests/architecture.rs` parses
//! every `use crate::…` of `src/` and fails when either is broken.

#![warn(missing_docs)]

pub mod changes;
pub mod dead_letter;
pub mod identifier;
pub mod lsn;
pub mod mapping;
pub mod pgoutput;
pub mod points;
pub mod time;
pub mod value;

pub mod cli;
pub mod config;

pub mod http;
pub mod pg;
pub mod signal;
pub mod store;
pub mod telemetry;

pub mod cmd;
pub mod daemon;

pub mod testing;
