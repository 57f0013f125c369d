//! Benchmark client: sends pre-signed transactions to one TPU with either our engine
//! (kernel UDP) or agave's `solana-tpu-client-next`, in its own process, and reports
//! its own CPU time. Driven by `cargo xtask bench`:
//!
//! - `prepare <dir> <n>`: writes `<dir>/id.json` (client identity) and `<dir>/txs.bin`
//!   (`n` signed transfers, u16-length-prefixed);
//! - `run <afterburner|afterburner-xdp|tpu-client-next> <addr> <dir> [<bind ip|interface>]`:
//!   prints `start <ns>` just before it starts (CLOCK_MONOTONIC), sends everything,
//!   stays connected until stdin closes, then prints `cpu_us <user+sys> sent <n>`.
//!   The optional last argument is the local IP to bind (kernel UDP clients, default
//!   127.0.0.1) or the interface to attach to (`afterburner-xdp`);
//! - `raw <interface> <addr> <count> <size>`: the AF_XDP ceiling, no QUIC: sends
//!   `count` UDP datagrams of `size` bytes through our AF_XDP backend as fast as the
//!   rings take them; prints `start <ns>`, then `cpu_us <user+sys> sent <n> end <ns>`.
#![allow(
    clippy::unwrap_used,
    reason = "test and benchmark code: a failure should stop it loudly"
)]

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use afterburner_quic::{EngineConfig, EngineHandle, Identity, OutcomeKind, Submission};
use afterburner_test_support as support;
use afterburner_xdp::{
    batch::TxBatch,
    io::{IoCounters, PacketIo},
    udp::UdpIo,
    xdp::{XdpConfig, XdpIo},
};
use anyhow::{Context, Result, bail};
use solana_sdk::signature::Keypair;
use solana_tpu_client_next::{
    ConnectionWorkersScheduler,
    connection_workers_scheduler::{
        BindTarget, ConnectionWorkersSchedulerConfig, Fanout, StakeIdentity,
    },
    leader_updater::LeaderUpdater,
    transaction_batch::TransactionBatch,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("prepare") if args.len() == 4 => prepare(Path::new(&args[2]), args[3].parse()?),
        Some("raw") if args.len() == 6 => run_raw(
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            args[5].parse()?,
        ),
        Some("run") if args.len() == 5 || args.len() == 6 => {
            let target: SocketAddr = args[3].parse()?;
            let dir = Path::new(&args[4]);
            let local = args.get(5).map_or("127.0.0.1", String::as_str);
            let identity = Identity::from_keypair_file(dir.join("id.json"))?;
            let txs = load(&dir.join("txs.bin"))?;
            // Each client converts the transactions to its own input form first; CPU
            // is counted from `start` (see `announce_start`) to the end.
            let (sent, cpu_before, packets) = match args[2].as_str() {
                "afterburner" => {
                    let io = UdpIo::bind(SocketAddr::new(local.parse()?, 0))?;
                    run_afterburner(&identity, target, txs, io)?
                }
                "afterburner-xdp" => {
                    let io = XdpIo::open(XdpConfig::new(local))?;
                    let stats = io.stats();
                    let r = run_afterburner(&identity, target, txs, io)?;
                    if std::env::var_os("BENCH_VERBOSE").is_some() {
                        eprintln!("afterburner-xdp: {:?}", stats.snapshot());
                    }
                    r
                }
                "tpu-client-next" => {
                    let bind = SocketAddr::new(local.parse()?, 0);
                    let (sent, cpu) = run_tpu_client_next(identity.keypair(), target, txs, bind)?;
                    (sent, cpu, None)
                }
                other => bail!("unknown client {other}"),
            };
            let cpu = cpu_us() - cpu_before;
            // Datagrams sent, where the client can tell (not tpu-client-next).
            match packets {
                Some(p) => println!("cpu_us {cpu} sent {sent} packets {p}"),
                None => println!("cpu_us {cpu} sent {sent}"),
            }
            Ok(())
        }
        _ => bail!(
            "usage: tpu_bench_client prepare <dir> <n> \
             | run <afterburner|afterburner-xdp|tpu-client-next> <addr> <dir> [<bind ip|interface>] \
             | raw <interface> <addr> <count> <size>"
        ),
    }
}

fn prepare(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let keypair = Keypair::new();
    solana_sdk::signer::keypair::write_keypair_file(&keypair, dir.join("id.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for tx in support::signed_transfers(&keypair, n) {
        out.extend_from_slice(&(tx.len() as u16).to_le_bytes());
        out.extend_from_slice(&tx);
    }
    std::fs::write(dir.join("txs.bin"), out)?;
    Ok(())
}

fn load(path: &Path) -> Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut txs = Vec::new();
    let mut rest = data.as_slice();
    while let [a, b, tail @ ..] = rest {
        let len = u16::from_le_bytes([*a, *b]) as usize;
        if tail.len() < len {
            bail!("truncated transaction file");
        }
        txs.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(txs)
}

/// Prints `start <ns>` and returns the CPU time used so far.
fn announce_start() -> Result<u64> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {}", support::mono_ns())?;
    out.flush()?;
    Ok(cpu_us())
}

/// Blocks until the driver closes our stdin (it does once the server reported).
fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn run_afterburner(
    identity: &Identity,
    target: SocketAddr,
    txs: Vec<Vec<u8>>,
    io: impl PacketIo + 'static,
) -> Result<(u64, u64, Option<u64>)> {
    let n = txs.len();
    // Same batching as tpu-client-next gets below: 64 transactions per queue entry.
    let mut batches: Vec<Vec<Submission>> = txs
        .into_iter()
        .enumerate()
        .map(|(id, tx)| Submission {
            id: id as u64,
            payload: tx.into(),
            target,
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[Submission]>::to_vec)
        .collect();
    let cpu_before = announce_start()?;
    let config = EngineConfig {
        // Both clients get room for the whole burst (tpu-client-next: a channel of
        // batches), so neither drops for lack of buffering.
        max_queued_per_connection: n,
        ingress_queue: batches.len() + 1,
        ..bench_config()
    };
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let engine = EngineHandle::spawn(config, identity, io, move |o: afterburner_quic::Outcome| {
        if o.kind == OutcomeKind::Sent {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    for batch in batches.drain(..) {
        if let Err((e, _)) = engine.submit_batch(batch) {
            bail!("submit refused: {e}");
        }
    }
    wait_for_stdin_eof();
    let s = engine.stats().snapshot();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!(
            "afterburner: cpu before shutdown {} us",
            cpu_us() - cpu_before
        );
        eprintln!("afterburner: {:?}", engine.connection_info(target));
        eprintln!(
            "afterburner: {} datagrams out in {} send calls, {} in over {} receive calls, {} waits for stream credit",
            s.packets_sent, s.send_calls, s.packets_received, s.recv_calls, s.stream_credit_waits
        );
    }
    engine.shutdown()?;
    Ok((
        sent.load(Ordering::Relaxed),
        cpu_before,
        Some(s.packets_sent),
    ))
}

struct FixedLeader(SocketAddr);

#[async_trait::async_trait]
impl LeaderUpdater for FixedLeader {
    fn next_leaders(&mut self, _lookahead_leaders: usize) -> Vec<SocketAddr> {
        vec![self.0]
    }
    async fn stop(&mut self) {}
}

/// Transactions per queue entry, for both clients.
const BATCH: usize = 64;

fn run_tpu_client_next(
    keypair: &Keypair,
    target: SocketAddr,
    txs: Vec<Vec<u8>>,
    bind: SocketAddr,
) -> Result<(u64, u64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let batches: Vec<TransactionBatch> = txs
        .chunks(BATCH)
        .map(|c| TransactionBatch::new(c.to_vec()))
        .collect();
    let (stats, cpu_before) = runtime.block_on(async move {
        let cpu_before = announce_start()?;
        let (tx_sender, tx_receiver) = tokio::sync::mpsc::channel(batches.len() + 1);
        let (_identity_sender, identity_receiver) = tokio::sync::watch::channel(None);
        let cancel = tokio_util::sync::CancellationToken::new();
        let scheduler = ConnectionWorkersScheduler::new(
            Box::new(FixedLeader(target)),
            tx_receiver,
            identity_receiver,
            cancel.clone(),
        );
        let config = ConnectionWorkersSchedulerConfig {
            bind: BindTarget::Address(bind),
            stake_identity: Some(StakeIdentity::new(keypair)),
            num_connections: 1,
            skip_check_transaction_age: true,
            worker_channel_size: batches.len() + 1,
            max_reconnect_attempts: 4,
            leaders_fanout: Fanout {
                send: 1,
                connect: 1,
            },
        };
        let handle = tokio::spawn(scheduler.run(config));
        for b in batches {
            tx_sender.send(b).await?;
        }
        tokio::task::spawn_blocking(wait_for_stdin_eof).await?;
        cancel.cancel();
        let stats = handle.await??;
        anyhow::Ok((stats, cpu_before))
    })?;
    Ok((stats.successfully_sent.load(Ordering::Relaxed), cpu_before))
}

/// Plain UDP datagrams through the AF_XDP backend, as fast as the TX ring takes them:
/// the ceiling of this path on this machine (frames built by our builder, no QUIC).
fn run_raw(interface: &str, target: SocketAddr, count: usize, size: usize) -> Result<()> {
    let mut io = XdpIo::open(XdpConfig::new(interface))?;
    let mut counters = IoCounters::default();
    let mut batch = TxBatch::new(64);
    // Resolve the next hop first (the first datagram goes through the kernel while
    // ARP runs), outside the measurement.
    batch.spare(size).context("datagram size")?;
    batch.commit(size, target);
    io.send(&mut batch, &mut counters)?;
    std::thread::sleep(std::time::Duration::from_millis(50));
    let payload = vec![0xabu8; size];
    let cpu_before = announce_start()?;
    let mut sent = 0;
    while sent < count {
        while !batch.is_full() && sent + batch.pending().len() < count {
            let Some(slot) = batch.spare(size) else {
                break;
            };
            slot[..size].copy_from_slice(&payload);
            batch.commit(size, target);
        }
        let before = batch.pending().len();
        io.send(&mut batch, &mut counters)?;
        sent += before - batch.pending().len();
    }
    let end = support::mono_ns();
    let cpu = cpu_us() - cpu_before;
    let s = io.stats().snapshot();
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("raw: {counters:?} {s:?}");
    }
    println!("cpu_us {cpu} sent {sent} end {end}");
    Ok(())
}

fn cpu_us() -> u64 {
    // SAFETY: getrusage writes into a zeroed rusage we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Engine knobs for experiments: `AB_CWND=<packets>`, `AB_HYSTART=0`, `AB_BUSY_POLL=1`.
fn bench_config() -> EngineConfig {
    let mut c = EngineConfig::default();
    let var = |k: &str| std::env::var(k).ok();
    if let Some(v) = var("AB_CWND").and_then(|v| v.parse().ok()) {
        c.initial_congestion_window_packets = v;
    }
    if var("AB_HYSTART").as_deref() == Some("0") {
        c.hystart = false;
    }
    if var("AB_BUSY_POLL").as_deref() == Some("1") {
        c.busy_poll = true;
    }
    c
}
