//! `bench-xdp [--txs N] [--pairs P] [--raw N] [--no-rps]`: the AF_XDP benchmark on a
//! veth pair (needs root).
//!
//! agave's TPU QUIC server runs in one namespace (pinned to CPU 0); each sender runs
//! in the other namespace, pinned to CPU 1, in its own process, in rotating order:
//! (a) raw AF_XDP: plain UDP datagrams through our AF_XDP backend (no QUIC), the
//!     ceiling of this path here;
//! (b) our engine over AF_XDP; (c) our engine over kernel UDP; (d) agave's
//!     tpu-client-next (kernel UDP, quinn).
//! Everything goes to the same receiver, the server's socket. Packets/s: for (a)
//! what the receiving kernel delivered to UDP sockets (`/proc/net/snmp` in its
//! namespace), for (b) and (c) the datagrams our engine sent (the receiver counts a
//! GSO train as one), for (d) not known; over the time from the sender's start to
//! the last delivery. tx/s: what agave's server delivered. CPU: the sender
//! process's user+sys time per packet (a) or transaction (b-d). veth delivers
//! synchronously: without RPS the receiver's protocol work runs in the sender's
//! softirq and is billed to it; by default RPS moves it to the receiver's CPU
//! (`--no-rps` measures the other way).

use std::{path::Path, process::Command, time::Duration};

use afterburner_test_support::netns;
use anyhow::{Context, Result, bail};

use crate::{
    bench::{Peer, RemoveOnDrop, bench_run_cmd, build_engine_bench, field, median},
    util::{positive, run},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Signed transfers per QUIC run.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = positive)]
    txs: usize,
    /// Rounds, each running every sender once (the order rotates).
    #[arg(long, value_name = "P", default_value_t = 5, value_parser = positive)]
    pairs: usize,
    /// 1200-byte datagrams per raw AF_XDP run.
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = positive)]
    raw: usize,
    /// No RPS on the receiver's veth: its protocol work is billed to the sender.
    #[arg(long)]
    no_rps: bool,
}

const KINDS: [&str; 4] = [
    "raw-af-xdp",
    "afterburner-xdp",
    "afterburner-udp",
    "tpu-client-next",
];

#[derive(Clone, Copy, Debug, Default)]
struct Row {
    pps: f64,
    tps: f64,
    cpu_us_per_tx: f64,
    cpu_us_per_packet: f64,
}

/// Datagrams the kernel in namespace `ns` delivered to UDP sockets so far.
fn udp_in(ns: &str) -> Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp of {ns}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "InDatagrams")
        .context("InDatagrams")?;
    Ok(values.split_whitespace().nth(i).context("value")?.parse()?)
}

fn in_ns(ns: &str, cpu: &str, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "taskset", "-c", cpu]).arg(bin);
    c
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        bench_xdp(self)
    }
}

fn bench_xdp(args: Args) -> Result<()> {
    let Args {
        txs,
        pairs,
        raw,
        no_rps,
    } = args;
    let rps = !no_rps;
    if !netns::is_root() {
        bail!("bench-xdp needs root (network namespaces, XDP)");
    }
    let (server_bin, client_bin) = build_engine_bench()?;

    let dir = std::env::temp_dir().join(format!("afterburner-bench-xdp-{}", std::process::id()));
    let mut prep = Command::new(&client_bin);
    prep.arg("prepare").arg(&dir).arg(txs.to_string());
    run(prep)?;
    let _dir_guard = RemoveOnDrop(dir.clone());

    let topo = netns::Topology::create(1)?;
    // GRO on the receiver's veth, as on a NIC: consecutive datagrams of a flow reach a
    // UDP_GRO socket (quinn's) as one train whether they left as a GSO message or as
    // separate frames. Without it veth hands GSO messages over whole but AF_XDP frames
    // one by one, which no real network does.
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &topo.server_ns,
        "ethtool",
        "-K",
        netns::SERVER_IF,
        "gro",
        "on",
    ]);
    run(c).context("enabling GRO on the receiver's veth (ethtool)")?;
    if rps {
        // The receiving side's protocol work (IP, UDP, socket wake-ups) would otherwise
        // run in the sender's softirq on its CPU (veth delivers synchronously) and be
        // billed to the sender. RPS moves it to the receiver's CPU, as with a real NIC,
        // where the receiver is another host. Applied to every sender alike.
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &topo.server_ns, "sh", "-c"])
            .arg(format!(
                "echo 1 > /sys/class/net/{}/queues/rx-0/rps_cpus",
                netns::SERVER_IF
            ));
        run(c).context("enabling RPS on the receiver's veth")?;
    }
    let mut server_cmd = in_ns(&topo.server_ns, "0", &server_bin);
    server_cmd
        .arg("--staked-keypair")
        .arg(dir.join("id.json"))
        .arg("--bind")
        .arg(format!("{}:0", netns::SERVER_IP));
    let mut server = Peer::spawn("tpu_bench_server", server_cmd)?;
    let ready = server.expect("ready", Duration::from_secs(30))?;
    let addr = ready.get(1).context("server address")?.clone();
    println!(
        "veth pair between two namespaces; agave TPU server (solana-streamer 3.1) at {addr} on CPU 0; \
         senders on CPU 1; {txs} signed transfers per QUIC run, {raw} raw 1200-byte datagrams; \
         {pairs} rounds, order rotating; receiver RPS to CPU 0: {rps}"
    );
    println!(
        "{:<5} {:<16} {:>10} {:>11} {:>11} {:>10} {:>10}",
        "round", "sender", "delivered", "packets/s", "tx/s", "cpu µs/tx", "cpu µs/pkt"
    );
    let mut rounds: Vec<[Row; 4]> = Vec::new();
    for round in 0..pairs {
        let mut rows = [Row::default(); 4];
        for k in 0..4 {
            let which = (k + round) % 4;
            let kind = KINDS[which];
            let before = udp_in(&topo.server_ns)?;
            let (row, delivered) = if which == 0 {
                let mut cmd = in_ns(&topo.client_ns, "1", &client_bin);
                cmd.args(["raw", netns::CLIENT_IF, &addr, &raw.to_string(), "1200"]);
                let mut peer = Peer::spawn("raw", cmd)?;
                let start: u64 = field(&peer.expect("start", Duration::from_secs(30))?, 1)?;
                let report = peer.expect("cpu_us", Duration::from_secs(120))?;
                peer.wait();
                let cpu: f64 = field(&report, 1)?;
                let end: u64 = field(&report, 5)?;
                // Let the receiving softirq finish what is in flight.
                std::thread::sleep(Duration::from_millis(200));
                let delivered = udp_in(&topo.server_ns)? - before;
                let secs = end.saturating_sub(start) as f64 / 1e9;
                let row = Row {
                    pps: delivered as f64 / secs.max(1e-9),
                    tps: f64::NAN,
                    cpu_us_per_tx: f64::NAN,
                    cpu_us_per_packet: cpu / raw as f64,
                };
                (row, delivered)
            } else {
                let mut cmd = in_ns(&topo.client_ns, "1", &client_bin);
                let (client, local) = match which {
                    1 => ("afterburner-xdp", netns::CLIENT_IF.to_string()),
                    2 => ("afterburner", netns::CLIENT_IP.to_string()),
                    _ => ("tpu-client-next", netns::CLIENT_IP.to_string()),
                };
                cmd.arg("run").arg(client).arg(&addr).arg(&dir).arg(local);
                let r = bench_run_cmd(&mut server, kind_name(which), cmd, txs)?;
                let cpu_total = r.cpu_us_per_tx * r.delivered as f64;
                let packets = r.packets.map_or(f64::NAN, |p| p as f64);
                let row = Row {
                    pps: packets / r.secs.max(1e-9),
                    tps: r.tx_per_s,
                    cpu_us_per_tx: r.cpu_us_per_tx,
                    cpu_us_per_packet: cpu_total / packets,
                };
                (row, r.delivered)
            };
            println!(
                "{:<5} {:<16} {:>10} {:>11.0} {:>11.0} {:>10.2} {:>10.2}",
                round + 1,
                kind,
                delivered,
                row.pps,
                row.tps,
                row.cpu_us_per_tx,
                row.cpu_us_per_packet
            );
            rows[which] = row;
        }
        rounds.push(rows);
    }
    drop(server);
    drop(topo);

    println!("\nmedians over {pairs} rounds:");
    for (i, kind) in KINDS.iter().enumerate() {
        println!(
            "  {:<16} {:>11.0} packets/s {:>11.0} tx/s {:>8.2} cpu µs/tx {:>8.2} cpu µs/pkt",
            kind,
            median(
                rounds
                    .iter()
                    .map(|r| r[i].pps)
                    .filter(|v| !v.is_nan())
                    .collect()
            ),
            median(
                rounds
                    .iter()
                    .map(|r| r[i].tps)
                    .filter(|v| !v.is_nan())
                    .collect()
            ),
            median(
                rounds
                    .iter()
                    .map(|r| r[i].cpu_us_per_tx)
                    .filter(|v| !v.is_nan())
                    .collect()
            ),
            median(
                rounds
                    .iter()
                    .map(|r| r[i].cpu_us_per_packet)
                    .filter(|v| !v.is_nan())
                    .collect()
            ),
        );
    }
    let ratio = |f: &dyn Fn(&[Row; 4]) -> f64| median(rounds.iter().map(f).collect());
    println!("ratios (median of per-round ratios):");
    println!(
        "  b/a packets/s           {:.2}  (engine over AF_XDP vs raw AF_XDP; target >= 0.6)",
        ratio(&|r| r[1].pps / r[0].pps)
    );
    println!(
        "  b/c tx/s                {:.2}  (AF_XDP vs kernel UDP, same engine; target >= 1.5)",
        ratio(&|r| r[1].tps / r[2].tps)
    );
    println!(
        "  b/c cpu per tx          {:.2}",
        ratio(&|r| r[1].cpu_us_per_tx / r[2].cpu_us_per_tx)
    );
    println!(
        "  b/d cpu per tx          {:.2}  (vs tpu-client-next; target <= 0.5)",
        ratio(&|r| r[1].cpu_us_per_tx / r[3].cpu_us_per_tx)
    );
    println!(
        "  b/d tx/s                {:.2}",
        ratio(&|r| r[1].tps / r[3].tps)
    );
    Ok(())
}

fn kind_name(which: usize) -> &'static str {
    KINDS[which]
}
