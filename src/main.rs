//! The `walpoints` binary: parse the command line, set up logging, dispatch.

use anyhow::Result;
use clap::Parser;
use std::process::ExitCode;
use walpoints::cli::{Cli, Command, LogFormat};
use walpoints::config::Config;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // verify: 1 means "the store differs", so its own failures to run exit 2.
    let verifying = matches!(cli.command, Command::Verify(_));
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walpoints: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walpoints: {e:#}");
            if e.is::<walpoints::verify::Differences>() {
                std::process::ExitCode::from(1)
            } else if verifying {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
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
            .map_err(|e: String| anyhow::anyhow!("--source-url: {e}"))?;
    }
    match cli.command {
        Command::Status(args) => {
            let thresholds = walpoints::status::Thresholds {
                max_lag_bytes: args.max_lag_bytes,
                max_lag_seconds: args.max_lag_seconds,
            };
            let status = walpoints::status::status(&config, thresholds).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(if status.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Setup => {
            let report = walpoints::daemon::setup(&config).await?;
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
                walpoints::daemon::Standby::Refuse
            } else {
                walpoints::daemon::Standby::Wait
            };
            walpoints::daemon::run(&config, standby, stop_rx).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown(args) => {
            let report = walpoints::daemon::teardown(&config, args.yes, args.drop_store).await?;
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
            let opts = walpoints::tail::options(&config, args).map_err(anyhow::Error::msg)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let summary =
                walpoints::tail::run(&opts, &mut out, walpoints::signal::shutdown()).await?;
            tracing::info!(changes = summary.changes, reason = ?summary.reason, "tail finished");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::LineWriter::new(stdout.lock());
            let opts = walpoints::demo::DemoOptions {
                seconds: args.seconds,
                keep: args.keep,
            };
            let summary = walpoints::demo::run(&opts, &mut out).await?;
            tracing::debug!(?summary, "demo finished");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let opts = walpoints::verify::VerifyOptions {
                epoch: args.epoch,
                ..Default::default()
            };
            let report = walpoints::verify::run(&config, &opts).await?;
            print!("{}", report.render());
            if report.is_clean() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(walpoints::verify::Differences(report.differences.len()).into())
            }
        }
    }
}
