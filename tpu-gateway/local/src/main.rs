//! `afterburner-local`: Afterburner on one machine, for trying it and for end-to-end
//! tests. `run` starts an embedded agave test validator (`solana-test-validator`:
//! real RPC, websocket, leader schedule and TPU QUIC) and the `tpu-gateway` binary
//! as a child process wired to it, with its own identity (staked through the
//! validator's staked-nodes overrides, so the validator's own sending keeps its
//! connection budget), then prints a status line whenever the gateway's counters
//! move; `send` builds a signed transfer from
//! the validator's funded payer, posts it through the gateway and waits until it
//! lands (or only prints it, base64, for curl); `validator` runs the validator alone
//! (the AF_XDP end-to-end test starts it inside a network namespace).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use afterburner_local::{
    Counts, GATEWAY_STAKE_LAMPORTS, GatewayProcess, gateway_bin, gateway_config, http_status,
    keypair_file, say, stake_gateway,
};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use solana_client::nonblocking::rpc_client::RpcClient;
use solana_commitment_config::CommitmentConfig;
use solana_sdk::{
    signature::{Keypair, read_keypair_file, write_keypair_file},
    signer::Signer,
    transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;
use solana_test_validator::{TestValidator, TestValidatorGenesis};

/// Afterburner with an embedded local validator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local validator and the gateway in front of it; Ctrl-C stops both.
    Run {
        /// Working directory: the payer and identity keypairs, the ledger.
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        /// The gateway's JSON-RPC address (what clients use instead of an RPC URL).
        #[arg(long, default_value = "127.0.0.1:8899")]
        listen: SocketAddr,
        /// The gateway's Prometheus address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: SocketAddr,
        /// The validator's RPC port (its websocket: the next one).
        #[arg(long, default_value_t = 18_899)]
        validator_rpc_port: u16,
        /// Present the validator's own identity instead of the gateway's own. Both
        /// then share agave's per-identity connection limit at the leader (1 in the
        /// test validator): whichever connects first holds it, so the validator's
        /// RPC `sendTransaction` or the gateway is refused (close code 4).
        #[arg(long)]
        validator_identity: bool,
    },
    /// Build a transfer from the local validator's payer and send it through the
    /// gateway, then wait until it is confirmed.
    Send {
        /// The directory `run` uses.
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
        /// The gateway's JSON-RPC URL.
        #[arg(long, default_value = "http://127.0.0.1:8899")]
        gateway: String,
        /// The validator's RPC URL (for a recent blockhash and the confirmation).
        #[arg(long, default_value = "http://127.0.0.1:18899")]
        validator: String,
        /// Lamports to transfer (to a new address).
        #[arg(long, default_value_t = 1_000_000)]
        lamports: u64,
        /// Only print the signed transaction (base64) for a `sendTransaction` call.
        #[arg(long)]
        print: bool,
    },
    /// Run the validator alone, bound to `bind`; prints `ready <rpc url>` and runs
    /// until stdin closes.
    Validator {
        /// Where to write the payer keypair and keep the ledger.
        #[arg(long)]
        dir: PathBuf,
        /// The address to bind and advertise (RPC, gossip, TPU).
        #[arg(long, default_value = "127.0.0.1")]
        bind: IpAddr,
        /// The RPC port (websocket: the next one).
        #[arg(long, default_value_t = 18_899)]
        rpc_port: u16,
    },
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("afterburner-local")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run {
                dir,
                listen,
                metrics_listen,
                validator_rpc_port,
                validator_identity,
            } => {
                run(
                    &dir,
                    listen,
                    metrics_listen,
                    validator_rpc_port,
                    validator_identity,
                )
                .await
            }
            Cmd::Send {
                dir,
                gateway,
                validator,
                lamports,
                print,
            } => send(&dir, &gateway, &validator, lamports, print).await,
            Cmd::Validator {
                dir,
                bind,
                rpc_port,
            } => validator(&dir, bind, rpc_port).await,
        }
    })
}

/// Starts a fresh validator with its ledger in `dir/ledger`; writes `dir/payer.json`.
/// `staked`: an identity the validator credits with stake (the gateway's own).
async fn start_validator(
    dir: &Path,
    bind: IpAddr,
    rpc_port: u16,
    staked: Option<solana_sdk::pubkey::Pubkey>,
) -> Result<TestValidator> {
    let ledger = dir.join("ledger");
    if ledger.exists() {
        std::fs::remove_dir_all(&ledger)
            .with_context(|| format!("removing the old ledger {}", ledger.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut genesis = TestValidatorGenesis::default();
    genesis
        .ledger_path(&ledger)
        .rpc_port(rpc_port)
        .bind_ip_addr(bind)
        .gossip_host(bind)
        // Below the kernel's ephemeral ports, above the usual services.
        .port_range((21_000, 21_500));
    if let Some(identity) = staked {
        stake_gateway(&mut genesis, identity);
    }
    let (validator, payer) = genesis.start_async().await;
    let payer_path = dir.join("payer.json");
    write_keypair_file(&payer, &payer_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", payer_path.display()))?;
    Ok(validator)
}

async fn run(
    dir: &Path,
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    validator_rpc_port: u16,
    validator_identity: bool,
) -> Result<()> {
    let gateway_bin = gateway_bin()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The gateway's own identity, kept across runs, staked by the validator.
    let own_identity = dir.join("gateway-identity.json");
    let own = keypair_file(&own_identity)?.pubkey();
    say(&format!(
        "starting a local validator (RPC port {validator_rpc_port})…"
    ));
    let validator = start_validator(
        dir,
        IpAddr::from([127, 0, 0, 1]),
        validator_rpc_port,
        (!validator_identity).then_some(own),
    )
    .await?;
    say(&format!(
        "validator  RPC {}  websocket {}  ledger {}",
        validator.rpc_url(),
        validator.rpc_pubsub_url(),
        dir.join("ledger").display()
    ));
    let validator_keypair = dir.join("ledger").join("validator-keypair.json");
    let validator_pubkey = read_keypair_file(&validator_keypair)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("reading the validator's identity")?
        .pubkey();
    let (identity, whose) = if validator_identity {
        (
            validator_keypair,
            "the validator's own: its RPC sendTransaction and the gateway now share one connection per leader"
                .to_string(),
        )
    } else {
        (
            own_identity,
            format!(
                "its own, staked {} SOL",
                GATEWAY_STAKE_LAMPORTS / 1_000_000_000
            ),
        )
    };
    say(&format!(
        "identities validator {validator_pubkey} (its RPC sendTransaction sends with it)  gateway {} ({whose})",
        if validator_identity {
            validator_pubkey
        } else {
            own
        }
    ));
    // The websocket proxy where @solana/web3.js looks: the RPC port + 1.
    let websocket = SocketAddr::new(listen.ip(), listen.port().saturating_add(1));
    let config = gateway_config(
        &identity,
        listen,
        websocket,
        metrics_listen,
        &validator.rpc_url(),
        &validator.rpc_pubsub_url(),
        "[validation]\npreflight = \"forward\"\n[log]\nlevel = \"warn\"\n",
    );
    let gateway = GatewayProcess::spawn(dir, &config, listen, metrics_listen, &[])?;
    say(&format!(
        "gateway    JSON-RPC {}  metrics http://{metrics_listen}/metrics  config {}  identity {}  ({})",
        gateway.url(),
        dir.join("tpu-gateway.toml").display(),
        identity.display(),
        gateway_bin.display()
    ));
    say(&format!(
        "payer      {} (funded; `./x local send` signs with it)",
        dir.join("payer.json").display()
    ));

    // A status line whenever something changes, until Ctrl-C or SIGTERM.
    let chain = validator.get_async_rpc_client();
    let ready_url = format!("{}/ready", gateway.url());
    let mut last = None;
    let mut ready_said = false;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if !ready_said && http_status(&ready_url).await == Some(200) {
            say(
                "gateway ready: send with `./x local send` in another terminal, or curl (see the README)",
            );
            ready_said = true;
        }
        let Ok(c) = Counts::scrape(metrics_listen).await else {
            continue;
        };
        if last != Some(c) {
            let slot = chain.get_slot().await.unwrap_or_default();
            say(&format!(
                "slot {slot:>6}  accepted {}  sent {}  landed {}  expired {}  dropped {}  rebroadcasts {}",
                c.accepted, c.sent, c.landed, c.expired, c.dropped, c.retries
            ));
            last = Some(c);
        }
    }
    say("stopping");
    gateway.terminate(Duration::from_secs(10))?;
    drop(validator);
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn send(
    dir: &Path,
    gateway: &str,
    validator: &str,
    lamports: u64,
    print: bool,
) -> Result<()> {
    let payer_path = dir.join("payer.json");
    let payer = read_keypair_file(&payer_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "reading the payer {} (is `afterburner-local run` running?)",
                payer_path.display()
            )
        })?;
    let chain =
        RpcClient::new_with_commitment(validator.to_string(), CommitmentConfig::confirmed());
    // A finalized blockhash: a preflight simulation (any commitment) knows it.
    let (blockhash, _) = chain
        .get_latest_blockhash_with_commitment(CommitmentConfig::finalized())
        .await
        .with_context(|| format!("getLatestBlockhash from the validator at {validator}"))?;
    // A fresh random recipient: every send is a distinct transaction (new_unique()
    // counts from the same start in every process, so two sends would be one).
    let to = Keypair::new().pubkey();
    let ix = system_instruction::transfer(&payer.pubkey(), &to, lamports);
    let tx = Transaction::new_signed_with_payer(&[ix], Some(&payer.pubkey()), &[&payer], blockhash);
    if print {
        let wire = bincode::serialize(&tx).context("serializing")?;
        println!("{}", base64::prelude::BASE64_STANDARD.encode(wire));
        return Ok(());
    }
    let via = RpcClient::new(gateway.to_string());
    let t0 = Instant::now();
    let sig = via
        .send_transaction_with_config(
            &tx,
            solana_client::rpc_config::RpcSendTransactionConfig {
                skip_preflight: true,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("sendTransaction through the gateway at {gateway}"))?;
    println!("sent {sig}: {lamports} lamports to {to}");
    let deadline = t0 + Duration::from_secs(30);
    while Instant::now() < deadline {
        let status = chain.get_signature_statuses(&[sig]).await?.value[0].clone();
        if let Some(s) = status
            && s.satisfies_commitment(CommitmentConfig::confirmed())
        {
            if let Some(err) = s.err {
                bail!("{sig} landed in slot {} but failed: {err}", s.slot);
            }
            println!(
                "landed in slot {} ({:?}) after {} ms; recipient balance {}",
                s.slot,
                s.confirmation_status(),
                t0.elapsed().as_millis(),
                chain.get_balance(&to).await?
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{sig} not confirmed within 30 s")
}

async fn validator(dir: &Path, bind: IpAddr, rpc_port: u16) -> Result<()> {
    let validator = start_validator(dir, bind, rpc_port, None).await?;
    say(&format!(
        "ready {} {}",
        validator.rpc_url(),
        validator.rpc_pubsub_url()
    ));
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().lines().count();
    })
    .await?;
    drop(validator);
    Ok(())
}
