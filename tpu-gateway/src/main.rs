//! The `tpu-gateway` binary: loads the configuration, starts the gateway, and shuts
//! it down cleanly on SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tpu_gateway::{Gateway, config::Sources, privileges};

/// Afterburner's transaction gateway.
#[derive(Clone, Debug, Parser)]
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

/// The configuration's sources, in order: the file, the environment, the flags.
fn sources(cli: &Cli) -> Result<Sources> {
    let mut sources = Sources::file(cli.config.as_deref())?.env(std::env::vars());
    if let Some(p) = &cli.identity {
        sources = sources.flag("identity", p);
    }
    if let Some(a) = cli.rpc_listen {
        sources = sources.flag("rpc.listen", a);
    }
    if let Some(a) = cli.metrics_listen {
        sources = sources.flag("metrics.listen", a);
    }
    Ok(sources)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = sources(&cli)?.extract()?;
    if let Some(path) = &config.identity {
        solana_sdk::signature::read_keypair_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("identity keypair {}", path.display()))?;
    }
    if let Some(path) = &config.auth.keys_file {
        tpu_gateway::auth::keys_from_file(path, config.limits.max_tracked)
            .map_err(anyhow::Error::msg)?;
    }
    if cli.check {
        println!("configuration ok");
        return Ok(());
    }
    tpu_gateway::init_logging(&config);
    // Opened before the runtime starts any thread: capabilities are per thread,
    // and every thread started after the drop inherits the reduced sets.
    let io = tpu_gateway::open_packet_path(&config)?;
    if config.packet_path.drop_capabilities {
        let xdp = matches!(io, afterburner_xdp::AnyIo::Xdp(_));
        let kept = privileges::keep_only(&privileges::needed(xdp))
            .map_err(anyhow::Error::msg)
            .context("dropping capabilities (packet_path.drop_capabilities)")?;
        tracing::info!(kept = ?privileges::names(&kept), "capabilities dropped");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tpu-gateway")
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let has_identity_file = config.identity.is_some();
        let mut gateway = Gateway::start_with_io(config, io, 0).await?;
        let reload_cli = cli.clone();
        gateway.service.set_config_loader(std::sync::Arc::new(move || {
            sources(&reload_cli)
                .and_then(Sources::extract)
                .map_err(|e| format!("{e:#}"))
        }));
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let failed = loop {
            tokio::select! {
                signal = wait_for_signal() => {
                    signal?;
                    break None;
                }
                why = gateway.failed() => break Some(why),
                _ = hup.recv() => {
                    if has_identity_file {
                        match gateway.reload_identity().await {
                        Ok(identity) => tracing::info!(%identity, "SIGHUP: identity reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: identity not reloaded; keeping the current one"),
                        }
                    }
                    if gateway.service.leader_policy().is_some()
                        && let Err(e) = gateway.reload_leader_policy()
                    {
                        tracing::error!(error = %e, "SIGHUP: leader policy not reloaded; keeping the current one");
                    }
                }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// A variable the binary reads for itself must not also be read as a
    /// configuration key (`AFTERBURNER_CONFIG` once failed as "unknown field").
    #[test]
    fn the_binarys_own_variables_are_not_configuration_keys() {
        for arg in super::Cli::command().get_arguments() {
            if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
                assert!(
                    tpu_gateway::config::NOT_CONFIG_VARIABLES.contains(&var),
                    "{var} is read by the binary; add it to NOT_CONFIG_VARIABLES"
                );
            }
        }
    }
}
