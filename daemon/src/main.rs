//! officesyncd: the officesync node daemon. Reads one config file, opens the store, serves
//! the local API, and shuts down cleanly on SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use officesync_daemon::config::Config;
use officesync_daemon::node::Node;
use tracing_subscriber::EnvFilter;

/// The officesync node daemon.
#[derive(Debug, Parser)]
#[command(name = "officesyncd", version, about)]
struct Args {
    /// Path of the node's TOML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Check the config (and certificates) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("officesyncd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("officesyncd: config {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("officesyncd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let node = match Node::start(&config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("officesyncd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    match node.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("officesyncd: shutdown failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can only be killed; wait on Ctrl-C instead.
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
