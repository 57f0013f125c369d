//! Transactions land over the AF_XDP path: a real agave test validator runs as its
//! own process (`afterburner-local validator`) in one network namespace, the
//! `tpu-gateway` binary in another, attached with XDP to its end of the veth pair
//! between them.
//! The gateway tracks the validator through its RPC and websocket (kernel TCP over
//! the veth) and sends to its TPU QUIC address through our TX ring; the validator's
//! replies come back through the XDP program and the RX ring. Needs root: skips
//! with a printed reason otherwise, and fails instead under `CI=true`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use afterburner_test_support::netns;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use afterburner_local::{Counts, GatewayProcess, TempDir, gateway_config, http_status};
use netns::{CLIENT_IF, SERVER_IP, Topology, in_netns, root_or_skip};
use solana_client::{nonblocking::rpc_client::RpcClient, rpc_config::RpcSendTransactionConfig};
use solana_commitment_config::CommitmentConfig;
use solana_sdk::{
    pubkey::Pubkey, signature::read_keypair_file, signer::Signer, transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;

const TRANSFERS: u64 = 50;
const RPC_PORT: u16 = 8899;
const XDP_PORT: u16 = 12_000;

/// The validator process; closing its stdin stops it, and drop makes sure it is gone.
struct ValidatorProcess(Child);

impl Drop for ValidatorProcess {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn transactions_land_over_af_xdp() {
    if !root_or_skip("transactions_land_over_af_xdp") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let dir = TempDir::new("e2e-xdp").unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &topo.server_ns])
        .arg(env!("CARGO_BIN_EXE_afterburner-local"))
        .args(["validator", "--bind", &SERVER_IP.to_string()])
        .args(["--rpc-port", &RPC_PORT.to_string(), "--dir"])
        .arg(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let validator = ValidatorProcess(child);
    // Its stdout: progress lines, then "ready ..."; drained to the end so the
    // validator never writes into a closed pipe.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = ready_tx.send(line);
            }
        }
    });
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the validator did not start within 60 s");
    println!("validator {ready}");
    let payer = read_keypair_file(dir.0.join("payer.json")).unwrap();
    let rpc_url = format!("http://{SERVER_IP}:{RPC_PORT}");
    let ws_url = format!("ws://{SERVER_IP}:{}", RPC_PORT + 1);

    // The validator's own identity (staked), as beside a real validator.
    let identity = dir.0.join("ledger").join("validator-keypair.json");
    let (rpc, metrics) = (
        "127.0.0.1:8899".parse().unwrap(),
        "127.0.0.1:9464".parse().unwrap(),
    );
    let config = gateway_config(
        &identity,
        rpc,
        "127.0.0.1:8900".parse().unwrap(),
        metrics,
        &rpc_url,
        &ws_url,
        &format!(
            "[validation]\npreflight = \"refuse\"\n[retry]\ninterval_ms = 400\nstatus_interval_ms = 200\n\
             [packet_path]\nkind = \"xdp\"\ninterface = \"{CLIENT_IF}\"\nxdp_port = {XDP_PORT}\n\
             xdp_fallback_to_udp = false\n[log]\nlevel = \"info\"\n"
        ),
    );
    let gateway = GatewayProcess::spawn(
        &dir.0,
        &config,
        rpc,
        metrics,
        &["ip", "netns", "exec", &topo.client_ns],
    )
    .unwrap();

    let ns = topo.client_ns.clone();
    let xdp_ns = ns.clone();
    // The test's own clients (HTTP to the gateway's loopback listeners, RPC to the
    // validator across the veth) run in the gateway's namespace.
    let gateway = in_netns(&ns, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (m, url) = (gateway.metrics, gateway.url());
        runtime.block_on(async move {
            let ready = format!("{url}/ready");
            let deadline = Instant::now() + Duration::from_secs(60);
            while http_status(&ready).await != Some(200) {
                assert!(Instant::now() < deadline, "gateway not ready within 60 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                Topology::has_xdp(&xdp_ns, CLIENT_IF).unwrap(),
                "no XDP program on {CLIENT_IF}"
            );

            let chain =
                RpcClient::new_with_commitment(rpc_url.clone(), CommitmentConfig::confirmed());
            let via = RpcClient::new(url);
            let to = Pubkey::new_unique();
            let blockhash = chain.get_latest_blockhash().await.unwrap();
            let mut sigs = Vec::new();
            for i in 0..TRANSFERS {
                let ix = system_instruction::transfer(&payer.pubkey(), &to, 1_000_000 + i);
                let tx = Transaction::new_signed_with_payer(
                    &[ix],
                    Some(&payer.pubkey()),
                    &[&payer],
                    blockhash,
                );
                let config = RpcSendTransactionConfig {
                    skip_preflight: true,
                    ..Default::default()
                };
                sigs.push(via.send_transaction_with_config(&tx, config).await.unwrap());
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut confirmed = 0;
            while Instant::now() < deadline {
                let statuses = chain.get_signature_statuses(&sigs).await.unwrap().value;
                confirmed = statuses
                    .iter()
                    .flatten()
                    .filter(|s| s.satisfies_commitment(CommitmentConfig::confirmed()))
                    .inspect(|s| assert!(s.err.is_none(), "failed on chain: {:?}", s.err))
                    .count();
                if confirmed == sigs.len() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(confirmed, sigs.len(), "not all transfers landed");
            let expected: u64 = (0..TRANSFERS).map(|i| 1_000_000 + i).sum();
            assert_eq!(chain.get_balance(&to).await.unwrap(), expected);

            // They went through our rings, not the kernel: the handshake and the
            // streams are many frames; the kernel socket only carries what goes out
            // before the neighbour is resolved (a few at most).
            let text = afterburner_local::scrape(m).await.unwrap();
            let get = |name| afterburner_local::sum_series(&text, name, None);
            let tx_frames = get("afterburner_xdp_tx_frames_total");
            let rx_frames = get("afterburner_xdp_rx_frames_total");
            let kernel_tx = get("afterburner_xdp_kernel_tx_total");
            println!(
                "{TRANSFERS} transfers landed over AF_XDP: {tx_frames} frames out through the TX \
                 ring, {rx_frames} in through the RX ring, {kernel_tx} via the kernel socket"
            );
            assert!(tx_frames >= 3.0, "tx frames {tx_frames}");
            assert!(
                rx_frames >= 3.0,
                "rx frames {rx_frames}: no replies through the RX ring"
            );
            assert!(kernel_tx <= 5.0, "kernel fallback used {kernel_tx} times");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let c = Counts::scrape(m).await.unwrap();
                if c.landed >= TRANSFERS as f64 && c.in_flight == 0.0 {
                    assert_eq!(c.accepted, TRANSFERS as f64, "{c:?}");
                    assert_eq!(c.accepted, c.sent + c.dropped, "{c:?}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the gateway did not see them land: {c:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        gateway
    });
    // SIGTERM: exit 0, and the kernel detaches the program with the process.
    gateway.terminate(Duration::from_secs(10)).unwrap();
    assert!(
        !Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap(),
        "XDP still attached after shutdown"
    );
    drop(validator);
}
