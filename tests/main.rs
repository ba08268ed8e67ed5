//! walpoints' integration suite as one test binary: each scenario file of `tests/` is a module
//! of it (a test is named `daemon_crash::sigkill_at_five_random_moments_…`), and `support/` is
//! the harness they share. The tests talk to real PostgreSQL servers they start themselves,
//! each scenario with a database, slot and publication of its own. `WALPOINTS_TEST_PG_URL`
//! puts the tests that leave their server as they found it on an existing server instead; the
//! ones that restart, crash or reconfigure theirs always start a cluster of their own
//! (`TestDb::own_cluster`), and fail, saying why, where they cannot: no test passes by
//! skipping.
//!
//! `matrix::` runs the core scenarios once more per PostgreSQL version, each time as a child run
//! of this binary on that version's build.
//!
//! `cargo test --test integration daemon_checks::` runs one module, `cargo test` everything.

mod api;
mod api_hardening;
mod architecture;
mod console;
mod daemon;
mod daemon_checks;
mod daemon_crash;
mod daemon_heartbeat;
mod daemon_snapshot;
mod demo;
mod example_config;
mod failover;
mod faults;
mod holding;
mod hostile;
mod instances;
mod matrix;
mod metrics;
mod pgcluster;
mod pgconn_tls;
mod privilege;
mod readme;
mod replay;
mod source;
mod status;
mod tail;
mod tls;
mod tls_daemon;
mod verify;

mod support;
