//! The `tpu-gateway` binary: loads the configuration, starts the gateway, and shuts
//! it down cleanly on SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tpu_gateway::{Gateway, config::Config};

/// Afterburner's transaction gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); `AFTERBURNER_SECTION__KEY` variables override it.
    #[arg(long, env = "AFTERBURNER_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Override `identity`.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Override `rpc.listen`.
    #[arg(long)]
    rpc_listen: Option<std::net::SocketAddr>,
    /// Override `metrics.listen`.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(p) = cli.identity {
        config.identity = Some(p);
    }
    if let Some(a) = cli.rpc_listen {
        config.rpc.listen = a;
    }
    if let Some(a) = cli.metrics_listen {
        config.metrics.listen = a;
    }
    config.validate()?;
    if let Some(path) = &config.identity {
        solana_sdk::signature::read_keypair_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("identity keypair {}", path.display()))?;
    }
    if cli.check {
        println!("configuration ok");
        return Ok(());
    }
    tpu_gateway::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tpu-gateway")
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let mut gateway = Gateway::start(config).await?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let failed = loop {
            tokio::select! {
                signal = wait_for_signal() => {
                    signal?;
                    break None;
                }
                why = gateway.failed() => break Some(why),
                _ = hup.recv() => match gateway.reload_identity().await {
                    Ok(identity) => tracing::info!(%identity, "SIGHUP: identity reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: identity not reloaded; keeping the current one"),
                },
            }
        };
        tracing::info!("shutting down");
        gateway.shutdown().await;
        tracing::info!("stopped");
        match failed {
            // Non-zero, for systemd or Kubernetes to restart the process.
            Some(why) => Err(anyhow::anyhow!("the QUIC engine failed: {why}")),
            None => Ok(()),
        }
    })
}

async fn wait_for_signal() -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
