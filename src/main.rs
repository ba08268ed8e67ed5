//! The `walpoints` binary: parse the command line, set up logging, load the configuration,
//! dispatch to the command, and turn its outcome into an exit code.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use walpoints::cli::{Cli, Command, LogFormat};
use walpoints::cmd::{demo, replay, status, tail, verify};
use walpoints::config::Config;
use walpoints::daemon;

/// mimalloc, not glibc's malloc: walpoints allocates and frees rows by the million on several
/// threads (see Cargo.toml for the measurements).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` (its C enum's fifth value; the Rust binding names
/// no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Arenas committed as they are used, not when reserved: keeps the peak RSS with a million
/// open positions at glibc's (Cargo.toml). Set by an ELF constructor of a priority that runs
/// before mimalloc's own (default-priority) constructor reserves its first arena: set in
/// `main`, it came too late (298 MiB instead of 286).
extern "C" fn commit_mimalloc_arenas_lazily() {
    // SAFETY: sets a plain integer option, before any thread or allocation exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[link_section = ".init_array.00100"]
static COMMIT_MIMALLOC_ARENAS_LAZILY: extern "C" fn() = commit_mimalloc_arenas_lazily;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // verify: 1 means "the store differs", so its own failures to run exit 2.
    let verifying = matches!(cli.command, Command::Verify(_) | Command::Replay(_));
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walpoints: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walpoints: {}", render(&e));
            if e.is::<verify::Differences>() || e.is::<replay::ReplayDiffers>() {
                ExitCode::from(1)
            } else if verifying {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// An error and its causes on one line. walpoints' errors already say their cause in their own
/// message (logs show only that), so a cause is appended only when it adds something.
fn render(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and shippers get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| "walpoints.toml".into());
    let mut config = Config::load(&path, cli.config.is_some(), std::env::vars())?;
    if let Some(url) = &cli.source_url {
        config.source.url = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--source-url: {e}"))?;
    }
    match cli.command {
        Command::Status(args) => {
            let thresholds = status::Thresholds {
                max_lag_bytes: args.max_lag_bytes,
                max_lag_seconds: args.max_lag_seconds,
            };
            let report = status::status(&config, thresholds).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Setup => {
            let report = daemon::setup(&config).await?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                walpoints::signal::shutdown().await;
                tracing::info!("signal received: finishing the current batch");
                let _ = stop_tx.send(true);
            });
            let standby = if args.no_standby {
                daemon::Standby::Refuse
            } else {
                daemon::Standby::Wait
            };
            daemon::run(&config, standby, stop_rx).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown(args) => {
            let report = daemon::teardown(&config, args.yes, args.drop_store).await?;
            println!(
                "dropped slot {:?} and publication {:?}{}",
                config.source.slot,
                config.source.publication,
                if report.store_dropped {
                    "; deleted the source's rows from the store"
                } else {
                    "; the store is kept"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            let opts = tail::options(&config, args)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let summary = tail::run(&opts, &mut out, walpoints::signal::shutdown()).await?;
            tracing::info!(changes = summary.changes, reason = ?summary.reason, "tail finished");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::LineWriter::new(stdout.lock());
            let opts = demo::DemoOptions {
                seconds: args.seconds,
                keep: args.keep,
            };
            let summary = demo::run(&opts, &mut out).await?;
            tracing::debug!(?summary, "demo finished");
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let opts = replay::ReplayOptions { epoch: args.epoch };
            let report = replay::verify(&config, &opts).await?;
            print!("{}", report.render());
            if report.is_clean() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(replay::ReplayDiffers(report.differences).into())
            }
        }
        Command::Verify(args) => {
            let opts = verify::VerifyOptions {
                epoch: args.epoch,
                ..Default::default()
            };
            let report = verify::run(&config, &opts).await?;
            print!("{}", report.render());
            if report.is_clean() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(verify::Differences(report.differences.len()).into())
            }
        }
    }
}
