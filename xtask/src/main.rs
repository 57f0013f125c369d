//! Afterburner's build automation (`cargo xtask <command>`).
//!
//! - `bench [--txs N] [--pairs P]`: the TPU client benchmark. agave's TPU QUIC server
//!   runs in one process; our engine (kernel UDP) and agave's `tpu-client-next` run
//!   in turn, each in its own process, sending the same pre-signed transactions.
//!   Prints delivered tx/s and client CPU µs per delivered transaction for each run,
//!   the medians, and the ratios (ours / theirs, median over the pairs).
//! - `test`: the XDP object check, `cargo fmt --check`, then every test, built with
//!   clippy-driver denying warnings on all our crates and targets (what CI runs).
//! - `run`, `local <args>`: local mode (`afterburner-local`): a local validator and
//!   the `tpu-gateway` binary in front of it; `local send` posts a transfer.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};

mod gateway_bench;
#[path = "../../afterburner-xdp/tests/support/netns.rs"]
mod netns;
mod xdp_bench;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench-xdp") => xdp_bench::bench_xdp(&args[1..]),
        Some("ebpf") => ebpf(&args[1..]),
        Some("netns") => netns_cmd(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("bench-gateway") => gateway_bench::bench_gateway(&args[1..]),
        Some("run") => local(&args[..]),
        Some("local") => local(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 run                           local mode: a local validator and the gateway in front\n    \
                                               of it (Ctrl-C stops); see the README\n  \
                 local send [--print]          a transfer through the local gateway, until it lands\n    \
                                               (--print: only print it, base64, for curl)\n  \
                 bench [--txs N] [--pairs P]   engine vs tpu-client-next against agave's TPU server\n  \
                 bench-xdp [--txs N] [--pairs P] [--raw N]\n    \
                                               raw AF_XDP vs engine over AF_XDP vs engine over UDP vs\n    \
                                               tpu-client-next, on a veth pair (root)\n  \
                 ebpf [--check]                rebuild the XDP object (nightly + bpf-linker);\n    \
                                               --check: fail if the checked-in object differs\n  \
                 netns up [--queues N] | down  the test topology: two namespaces and a veth pair\n  \
                 fuzz [--runs N]               fuzz the gateway's request decoding (cargo-fuzz, nightly)\n  \
                 bench-gateway [--rounds N]    gateway ingress vs an axum no-op (wrk), and latency\n  \
                 test [cargo test args]        the whole test suite"
            );
            std::process::exit(2);
        }
    }
}

/// The checkout xtask works on: the current directory when it is a workspace root
/// (`./x` starts there), else where xtask was compiled. Not simply the latter: with
/// a target directory shared between checkouts, `target/debug/xtask` may have been
/// built from another one.
fn workspace_root() -> PathBuf {
    if let Ok(dir) = std::env::current_dir()
        && dir.join("xtask/Cargo.toml").is_file()
    {
        return dir;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The checked-in XDP object, relative to the workspace root.
const EBPF_OBJECT: &str = "afterburner-xdp/bpf/afterburner_xdp.o";

/// Builds `afterburner-ebpf` (nightly, `-Z build-std=core`, bpf-linker) and installs
/// the object at [`EBPF_OBJECT`]; with `--check`, compares instead and fails on a
/// difference (CI: the checked-in object is what the source builds to).
fn ebpf(args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [a] if a == "--check" => true,
        _ => bail!("usage: cargo xtask ebpf [--check]"),
    };
    let target = target_dir().join("ebpf");
    // Nightly through rustup (the workspace's rust-toolchain.toml names stable, and
    // the environment cargo gave us points at it).
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root().join("afterburner-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .args(["run", "nightly", "cargo"])
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--locked",
            "--target-dir",
        ])
        .arg(&target);
    run(cmd).context(
        "building the XDP program needs nightly with rust-src and bpf-linker (./x installs them)",
    )?;
    let built = target.join("bpfel-unknown-none/release/afterburner_xdp");
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    let installed = workspace_root().join(EBPF_OBJECT);
    if check {
        let current = std::fs::read(&installed)
            .with_context(|| format!("reading {}", installed.display()))?;
        if current != fresh {
            bail!(
                "{EBPF_OBJECT} does not match afterburner-ebpf's source ({} bytes checked in, {} built): \
                 run `cargo xtask ebpf` and commit the object",
                current.len(),
                fresh.len()
            );
        }
        println!("{EBPF_OBJECT}: matches the source ({} bytes)", fresh.len());
    } else {
        std::fs::write(&installed, &fresh)?;
        println!("wrote {EBPF_OBJECT} ({} bytes)", fresh.len());
    }
    Ok(())
}

/// Runs the gateway's request-decoding fuzz target (`tpu-gateway/fuzz`) for `--runs`
/// executions (default 1,000,000) from the checked-in seeds, and prints libFuzzer's
/// own count.
fn fuzz(args: &[String]) -> Result<()> {
    let runs: u64 = match args {
        [] => 1_000_000,
        [flag, n] if flag == "--runs" => n.parse()?,
        _ => bail!("usage: cargo xtask fuzz [--runs N]"),
    };
    let dir = workspace_root().join("tpu-gateway/fuzz");
    std::fs::create_dir_all(dir.join("corpus/rpc_request"))?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .args([
            "run",
            "nightly",
            "cargo",
            "fuzz",
            "run",
            "rpc_request",
            "-O",
        ])
        .arg("corpus/rpc_request")
        .arg("seeds")
        .arg("--")
        .arg(format!("-runs={runs}"))
        .arg("-max_len=65536");
    run(cmd).context("cargo fuzz (./x installs cargo-fuzz and nightly's rust-src)")
}

/// `netns up [--queues N]`: creates the test topology and leaves it in place;
/// `netns down`: removes every topology namespace of this tool.
fn netns_cmd(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => {
            let queues = match args.get(1).map(String::as_str) {
                Some("--queues") => args.get(2).context("--queues needs a value")?.parse()?,
                None => 1,
                Some(other) => bail!("unknown argument {other}"),
            };
            let topo = netns::Topology::create(queues)?;
            println!(
                "{} ({} {}) <-> {} ({} {})",
                topo.server_ns,
                netns::SERVER_IF,
                netns::SERVER_IP,
                topo.client_ns,
                netns::CLIENT_IF,
                netns::CLIENT_IP
            );
            println!(
                "run inside with: ip netns exec {} <command>",
                topo.client_ns
            );
            // Left in place on purpose; `cargo xtask netns down` removes it.
            std::mem::forget(topo);
            Ok(())
        }
        Some("down") => {
            let list = netns::ip(&["netns", "list"])?;
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if name.starts_with(netns::PREFIX) {
                    netns::ip(&["netns", "del", name])?;
                    println!("removed {name}");
                }
            }
            Ok(())
        }
        _ => bail!("usage: cargo xtask netns up [--queues N] | down"),
    }
}

/// `afterburner-local <args>` (local mode). Built by the same command, features and
/// environment as `test` (a tested tree starts at once, and the validator is not
/// rebuilt with another feature set); it runs the `tpu-gateway` binary built beside it.
fn local(args: &[String]) -> Result<()> {
    let mut build = cargo();
    build.args([
        "test",
        "--workspace",
        "--all-targets",
        "--no-run",
        "--quiet",
    ]);
    lint_env(&mut build)?;
    run(build)?;
    let mut cmd = Command::new(target_dir().join("debug/afterburner-local"));
    cmd.args(args);
    run(cmd)
}

/// Builds our crates through clippy-driver with warnings denied
/// (`RUSTC_WORKSPACE_WRAPPER`, which is how `cargo clippy` runs it), in the test build
/// itself. A separate `cargo clippy` would check-build every dependency a second
/// time, including the test validator's rocksdb C++ (about 20 more minutes cold);
/// this way dependencies are built once, by rustc, and shared.
fn lint_env(cmd: &mut Command) -> Result<()> {
    cmd.env("RUSTC_WORKSPACE_WRAPPER", clippy_driver()?).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
    Ok(())
}

/// The XDP object check, formatting, lints, then every test. Extra arguments go to
/// `cargo test`.
fn test(extra: &[String]) -> Result<()> {
    ebpf(&["--check".to_string()])?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt)?;
    let mut build = cargo();
    build.args(["test", "--workspace", "--all-targets", "--no-run"]);
    lint_env(&mut build)?;
    run(build)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-targets"])
        .args(extra);
    lint_env(&mut cmd)?;
    run(cmd)
}

/// The clippy-driver of the toolchain cargo runs with.
fn clippy_driver() -> Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "clippy-driver"])
        .current_dir(workspace_root())
        .output()
        .context("running rustup which clippy-driver (./x installs clippy)")?;
    if !out.status.success() {
        bail!(
            "clippy-driver not found: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A child process spoken to line by line.
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
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<T: std::str::FromStr>(fields: &[String], i: usize) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(fields.get(i).context("missing field")?.parse()?)
}

struct RunResult {
    delivered: u64,
    tx_per_s: f64,
    cpu_us_per_tx: f64,
    /// From the client's start to the last delivery.
    secs: f64,
    /// Datagrams the client sent, when it can tell.
    packets: Option<u64>,
}

const CLIENTS: [&str; 2] = ["afterburner", "tpu-client-next"];

fn bench(args: &[String]) -> Result<()> {
    let mut txs: usize = 20_000;
    let mut pairs: usize = 5;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--txs" => txs = it.next().context("--txs needs a value")?.parse()?,
            "--pairs" => pairs = it.next().context("--pairs needs a value")?.parse()?,
            other => bail!("unknown bench argument {other}"),
        }
    }
    if txs == 0 || pairs == 0 {
        bail!("--txs and --pairs must be positive");
    }
    eprintln!("building the benchmark (release)…");
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "afterburner-xdp",
        "--example",
        "tpu_bench_server",
        "--example",
        "tpu_bench_client",
    ]);
    run(build)?;
    let examples = target_dir().join("release/examples");
    let server_bin = examples.join("tpu_bench_server");
    let client_bin = examples.join("tpu_bench_client");

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
            let r = bench_run(&mut server, &client_bin, CLIENTS[which], &addr, &dir, txs)?;
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

fn bench_run(
    server: &mut Peer,
    client_bin: &PathBuf,
    client: &'static str,
    addr: &str,
    dir: &PathBuf,
    txs: usize,
) -> Result<RunResult> {
    let mut cmd = Command::new(client_bin);
    cmd.arg("run").arg(client).arg(addr).arg(dir);
    bench_run_cmd(server, client, cmd, txs)
}

/// One client run (`cmd`, a `tpu_bench_client run …`) against the server.
fn bench_run_cmd(
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
    let _ = peer.child.wait();
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
fn median(mut v: Vec<f64>) -> f64 {
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
