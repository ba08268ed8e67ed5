//! The operator's commands besides the daemon's own (`setup`, `run`, `teardown` live in
//! [`crate::daemon`]): each reads what it needs and prints a report, and none writes the store.
//!
//! | command | what |
//! |---|---|
//! | [`status`] | the slot's lag and `wal_status` and the store's checkpoint, with an exit code for probes |
//! | [`tail`] | the decoded change stream as JSON lines |
//! | [`progress`] | the progress line of long work on a terminal |
//! | [`replay`] | the journal through the engine again, compared with the stored ledger and totals |
//! | [`verify`] | order-independent points recomputed by SQL from the business tables, compared with the store |
//! | [`demo`] | a throwaway cluster, a synthetic exchange, the real daemon, the leaderboard |

pub mod demo;
pub mod progress;
pub mod replay;
pub mod status;
pub mod tail;
pub mod verify;
