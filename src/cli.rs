//! The command line: global options and one subcommand per job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lsn::Lsn;

/// walpoints: exchange loyalty points from PostgreSQL's write-ahead log.
#[derive(Debug, Parser)]
#[command(name = "walpoints", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file [default: ./walpoints.toml, optional]; a file named here must exist.
    #[arg(long, global = true, env = "WALPOINTS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Source database URL (overrides source.url and WALPOINTS_SOURCE_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub source_url: Option<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prepare everything once: the store's schema, the publication, the replication slot and
    /// the initial snapshot of open positions and referrals. Safe to re-run.
    Setup,
    /// The daemon: stream the slot into the store until SIGINT/SIGTERM. While another instance
    /// runs the same source against the same store, wait as a standby and take over when it
    /// stops.
    Run(RunArgs),
    /// Drop the slot and the publication (so no slot is left pinning WAL); the store is kept
    /// unless --drop-store.
    Teardown(TeardownArgs),
    /// Print the decoded change stream as JSON lines, one change per line.
    Tail(TailArgs),
    /// Show the slot's lag, wal_status and the store's checkpoint; exit 1 when the slot is
    /// missing or lost or lag is above the thresholds (for cron or a Kubernetes probe).
    Status(StatusArgs),
    /// Start a throwaway PostgreSQL, run setup and the daemon while a synthetic exchange
    /// trades on it, and print the leaderboard; everything is removed at the end (with --keep,
    /// at Ctrl-C).
    Demo(DemoArgs),
    /// Recompute from the business tables what does not depend on event order (eligible
    /// volume and fills per user and epoch, PnL points of closed positions) and compare with
    /// the store; exit 1 on any difference. Reads the business tables: point it at a replica.
    Verify(VerifyArgs),
    /// Run the store's journal through the points engine again and compare the result with
    /// the stored ledger and totals (--verify); exit 1 listing the first differences, 2 when it
    /// cannot compare. Reads only the store, and may run while `run` streams.
    Replay(ReplayArgs),
}

/// Options of `walpoints replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Compare with the store (the only mode so far; required, so that a later mode that
    /// writes is never the default).
    #[arg(long, required = true)]
    pub verify: bool,
    /// Compare only this epoch.
    #[arg(long, value_name = "N")]
    pub epoch: Option<u32>,
}

/// Options of `walpoints run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit (status 1, naming the other instance) instead of waiting as a standby when another
    /// instance already runs this source.
    #[arg(long)]
    pub no_standby: bool,
}

/// Options of `walpoints teardown`.
#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// Confirm: without it nothing is dropped.
    #[arg(long)]
    pub yes: bool,
    /// Also delete this source's ledger, totals, state and checkpoint from the store.
    #[arg(long)]
    pub drop_store: bool,
}

/// Options of `walpoints status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Unhealthy when the slot lags the server's WAL by more bytes than this.
    #[arg(long, value_name = "BYTES")]
    pub max_lag_bytes: Option<u64>,
    /// Unhealthy when the store's last source commit is older than this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_lag_seconds: Option<f64>,
}

/// Options of `walpoints demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the synthetic exchange trades.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// After the leaderboard, keep the cluster and the daemon running (and print how to query
    /// them) until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `walpoints verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify only this epoch.
    #[arg(long, value_name = "N")]
    pub epoch: Option<u32>,
}

/// Options of `walpoints tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// A table to follow, schema.name (repeatable; default: the three configured tables).
    #[arg(long = "table", value_name = "SCHEMA.NAME")]
    pub tables: Vec<String>,
    /// Read this existing slot, never acknowledging (default: a temporary slot and
    /// publication that vanish when tail exits).
    #[arg(long)]
    pub slot: Option<String>,
    /// The publication to use with --slot (default: source.publication).
    #[arg(long)]
    pub publication: Option<String>,
    /// Start at this LSN (X/Y).
    #[arg(long, value_name = "LSN")]
    pub from: Option<Lsn>,
    /// Exit after N changes.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Exit once every transaction committed at or before this LSN has been shown.
    #[arg(long, value_name = "LSN")]
    pub until_lsn: Option<Lsn>,
}
