//! The PostgreSQL edge: every connection walpoints opens to a server, and what it reads there.
//!
//! | file | what |
//! |---|---|
//! | [`connect`] | ordinary SQL connections (the store, checks, heartbeat), libpq's `sslmode` over rustls, failures classified transient or definite |
//! | [`replication`] | the change stream of a logical slot, as decoded transactions; acknowledgement only on request |
//! | [`admin`] | a replication-protocol session that never streams: system id, publication, slot commands |
//! | [`slot`] | a slot as `pg_replication_slots` shows it, one type for checks, `status` and metrics |
//! | [`snapshot`] | reading the source in a new slot's exported snapshot (`setup`, `verify`) |

pub mod admin;
pub mod connect;
pub mod replication;
pub mod slot;
pub mod snapshot;
mod tls;

pub use admin::AdminSession;
pub use replication::{ReplicationSource, SourceError, SourceOptions, StreamEvent};
pub use slot::Slot;
pub use snapshot::ExportedSlot;
