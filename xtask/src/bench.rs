//! `bench [--txs N] [--pairs P]`: the TPU client benchmark. agave's TPU QUIC server
//! runs in one process; our engine (kernel UDP) and agave's `tpu-client-next` run in
//! turn, each in its own process, sending the same pre-signed transactions. Prints
//! delivered tx/s and client CPU µs per delivered transaction for each run, the
//! medians, and the ratios (ours / theirs, median over the pairs).
//!
//! Also what the other benchmarks share: [`Peer`] (a child process spoken to line by
//! line), one client run against the server ([`bench_run_cmd`]), [`median`].

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, positive, run, target_dir};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Signed transfers per run.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = positive)]
    txs: usize,
    /// Alternating pairs of runs (ours, theirs).
    #[arg(long, value_name = "P", default_value_t = 5, value_parser = positive)]
    pairs: usize,
}

const CLIENTS: [&str; 2] = ["afterburner", "tpu-client-next"];

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        let Self { txs, pairs } = self;
        let (server_bin, client_bin) = build_engine_bench()?;

        let dir = std::env::temp_dir().join(format!("afterburner-bench-{}", std::process::id()));
        let mut prep = Command::new(&client_bin);
        prep.arg("prepare").arg(&dir).arg(txs.to_string());
        run(prep)?;
        let dir_guard = RemoveOnDrop(dir.clone());

        let mut server_cmd = Command::new(&server_bin);
        server_cmd.arg("--staked-keypair").arg(dir.join("id.json"));
        let mut server = Peer::spawn("tpu_bench_server", server_cmd)?;
        let ready = server.expect("ready", Duration::from_secs(30))?;
        let addr = ready.get(1).context("server address")?.clone();
        println!(
            "agave TPU QUIC server (solana-streamer 3.1) at {addr}; {txs} signed transfers per run; \
             client identity holds all stake; {pairs} alternating pairs"
        );
        println!(
            "{:<5} {:<16} {:>9} {:>12} {:>14}",
            "run", "client", "delivered", "tx/s", "cpu µs/tx"
        );

        let mut results: Vec<[RunResult; 2]> = Vec::new();
        for pair in 0..pairs {
            // Alternate which client goes first, so drift on a shared machine hits both.
            let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut pair_results: [Option<RunResult>; 2] = [None, None];
            for which in order {
                let mut cmd = Command::new(&client_bin);
                cmd.arg("run").arg(CLIENTS[which]).arg(&addr).arg(&dir);
                let r = bench_run_cmd(&mut server, CLIENTS[which], cmd, txs)?;
                println!(
                    "{:<5} {:<16} {:>9} {:>12.0} {:>14.2}",
                    pair + 1,
                    CLIENTS[which],
                    r.delivered,
                    r.tx_per_s,
                    r.cpu_us_per_tx
                );
                pair_results[which] = Some(r);
            }
            let [Some(a), Some(b)] = pair_results else {
                bail!("a run did not report");
            };
            results.push([a, b]);
        }
        drop(server);
        drop(dir_guard);

        println!("\nmedians over {pairs} pairs:");
        for (i, name) in CLIENTS.iter().enumerate() {
            println!(
                "  {:<16} {:>12.0} tx/s {:>10.2} cpu µs/tx",
                name,
                median(results.iter().map(|r| r[i].tx_per_s).collect()),
                median(results.iter().map(|r| r[i].cpu_us_per_tx).collect()),
            );
        }
        let cpu_ratio = median(
            results
                .iter()
                .map(|r| r[0].cpu_us_per_tx / r[1].cpu_us_per_tx)
                .collect(),
        );
        let tps_ratio = median(
            results
                .iter()
                .map(|r| r[0].tx_per_s / r[1].tx_per_s)
                .collect(),
        );
        println!("ratios afterburner / tpu-client-next (median of per-pair ratios):");
        println!("  cpu per tx: {cpu_ratio:.2}x   (lower is better)");
        println!("  tx/s:       {tps_ratio:.2}x   (higher is better)");
        Ok(())
    }
}

/// Builds the engine benchmark's examples (release) and returns their paths:
/// `tpu_bench_server` (agave's TPU server) and `tpu_bench_client`.
pub(crate) fn build_engine_bench() -> Result<(PathBuf, PathBuf)> {
    let [server, client] =
        build_examples("afterburner-quic", ["tpu_bench_server", "tpu_bench_client"])?;
    Ok((server, client))
}

/// Builds `examples` of `package` (release, as every benchmark runs) and returns
/// their paths, in order.
pub(crate) fn build_examples<const N: usize>(
    package: &str,
    examples: [&str; N],
) -> Result<[PathBuf; N]> {
    eprintln!("building the benchmark (release)…");
    let mut build = cargo();
    build.args(["build", "--release", "-p", package]);
    for e in examples {
        build.args(["--example", e]);
    }
    run(build)?;
    let dir = target_dir().join("release/examples");
    Ok(examples.map(|e| dir.join(e)))
}

/// A child process spoken to line by line.
#[derive(Debug)]
pub(crate) struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    name: &'static str,
}

impl Peer {
    pub(crate) fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            name,
        })
    }

    pub(crate) fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line starting with `word`, split into its fields.
    pub(crate) fn expect(&self, word: &str, timeout: Duration) -> Result<Vec<String>> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .with_context(|| format!("{} did not print `{word}` within {timeout:?}", self.name))?;
        let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
        if fields.first().map(String::as_str) != Some(word) {
            bail!("{}: expected `{word} …`, got `{line}`", self.name);
        }
        Ok(fields)
    }

    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit (its status does not matter).
    pub(crate) fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Field `i` of a line [`Peer::expect`] returned, parsed.
pub(crate) fn field<T: std::str::FromStr>(fields: &[String], i: usize) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(fields.get(i).context("missing field")?.parse()?)
}

/// One client run, as the server and the client reported it.
pub(crate) struct RunResult {
    pub(crate) delivered: u64,
    pub(crate) tx_per_s: f64,
    pub(crate) cpu_us_per_tx: f64,
    /// From the client's start to the last delivery.
    pub(crate) secs: f64,
    /// Datagrams the client sent, when it can tell.
    pub(crate) packets: Option<u64>,
}

/// One client run (`cmd`, a `tpu_bench_client run …`) against the server.
pub(crate) fn bench_run_cmd(
    server: &mut Peer,
    client: &'static str,
    cmd: Command,
    txs: usize,
) -> Result<RunResult> {
    server.send(&format!("expect {txs}"))?;
    server.expect("ok", Duration::from_secs(10))?;
    let mut peer = Peer::spawn(client, cmd)?;
    let start: u64 = field(&peer.expect("start", Duration::from_secs(30))?, 1)?;
    let done = match server.expect("done", Duration::from_secs(60)) {
        Ok(d) => d,
        Err(_) => {
            // Not everything arrived in time: take what did.
            server.send("report")?;
            server.expect("done", Duration::from_secs(10))?
        }
    };
    let delivered: u64 = field(&done, 1)?;
    let staked: u64 = field(&done, 2)?;
    let last: u64 = field(&done, 3)?;
    let first: u64 = field(&done, 4)?;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!(
            "{client}: first delivery {:.2} ms after start, last {:.2} ms after the first",
            first.saturating_sub(start) as f64 / 1e6,
            last.saturating_sub(first) as f64 / 1e6
        );
    }
    peer.close_stdin();
    let report = peer.expect("cpu_us", Duration::from_secs(30))?;
    let cpu_us: u64 = field(&report, 1)?;
    let packets = match report.get(4).map(String::as_str) {
        Some("packets") => Some(field(&report, 5)?),
        _ => None,
    };
    peer.wait();
    if staked != delivered {
        bail!("{client}: {delivered} delivered but only {staked} flagged staked");
    }
    if delivered == 0 {
        bail!("{client}: nothing delivered");
    }
    let secs = last.saturating_sub(start) as f64 / 1e9;
    Ok(RunResult {
        delivered,
        tx_per_s: delivered as f64 / secs.max(1e-9),
        cpu_us_per_tx: cpu_us as f64 / delivered as f64,
        secs,
        packets,
    })
}

/// The median (mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Removes a directory tree when dropped.
#[derive(Debug)]
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
