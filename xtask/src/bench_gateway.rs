//! `bench-gateway [--rounds N]`: the gateway's ingress throughput and latency.
//!
//! 1. Ingress: wrk (2 threads, 32 connections, 8 s) posts distinct pre-signed
//!    `sendTransaction` bodies to the gateway (in-process with agave's TPU server as
//!    its static leader), and the same way to an axum no-op handler on the same box:
//!    requests/s side by side, and the ratio.
//!    The gateway runs twice: with signature verification (the default) and
//!    without (`verify_signatures = false`), since one ed25519 verification costs
//!    more than the whole no-op request on these machines.
//! 2. Latency at half the measured maximum rate, with and without busy polling,
//!    with and without verification: request -> frame handed to the packet path
//!    (the gateway's own per-transaction measurement, split into stages) and
//!    request -> agave server receipt; p50/p99/p999.
//!
//! With `--baseline REV`, the gateway as built from git revision REV runs beside
//! the current one, in each round and at each latency setting, and the ratios
//! after/before are printed: the cost of what changed since REV (`d990325` is the
//! last commit before the transaction ledger). REV is exported with `git archive`
//! into the target directory and built there once (its own artifacts; the
//! registry dependencies are shared).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{Peer, RemoveOnDrop, build_examples, field, median},
    util::{cargo, run, target_dir, workspace_root},
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Ingress rounds (wrk against the no-op, then the gateway with and without
    /// signature verification).
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
    /// Also run the gateway built from this git revision, side by side (e.g.
    /// `d990325`, before the transaction ledger).
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        let baseline = match &self.baseline {
            Some(rev) => Some(build_baseline(rev)?),
            None => None,
        };
        bench_gateway(self.rounds, baseline.as_ref())
    }
}

/// A gateway benchmark binary built from another revision.
struct Baseline {
    rev: String,
    bin: PathBuf,
}

/// Exports `rev` into the target directory and builds its `gateway_bench` there
/// (once per revision); the binary is copied out, since the current build
/// overwrites `release/examples/gateway_bench` next.
fn build_baseline(rev: &str) -> Result<Baseline> {
    let out = Command::new("git")
        .current_dir(workspace_root())
        .args(["rev-parse", "--short=12", &format!("{rev}^{{commit}}")])
        .output()
        .context("git rev-parse")?;
    if !out.status.success() {
        bail!(
            "{rev} is not a commit here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rev = String::from_utf8(out.stdout)?.trim().to_string();
    let root = target_dir().join("bench-baseline");
    let dir = root.join(&rev);
    let bin = root.join(format!("gateway_bench-{rev}"));
    if bin.exists() {
        eprintln!("baseline {rev}: {} (built before)", bin.display());
        return Ok(Baseline { rev, bin });
    }
    if !dir.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&dir)?;
        let archive = Command::new("git")
            .current_dir(workspace_root())
            .args(["archive", "--format=tar", &rev])
            .output()
            .context("git archive")?;
        if !archive.status.success() {
            bail!(
                "git archive {rev}: {}",
                String::from_utf8_lossy(&archive.stderr)
            );
        }
        let mut tar = Command::new("tar")
            .current_dir(&dir)
            .args(["-x", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("tar")?;
        std::io::Write::write_all(tar.stdin.as_mut().context("tar stdin")?, &archive.stdout)?;
        drop(tar.stdin.take());
        if !tar.wait()?.success() {
            bail!("unpacking {rev} failed");
        }
    }
    eprintln!("building the baseline {rev} (release; its own workspace crates, once)…");
    let mut build = cargo();
    build
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .args([
            "build",
            "--release",
            "-p",
            "tpu-gateway",
            "--example",
            "gateway_bench",
        ]);
    run(build)?;
    std::fs::copy(target_dir().join("release/examples/gateway_bench"), &bin)
        .context("copying the baseline binary")?;
    Ok(Baseline { rev, bin })
}

/// `p50` and `p99` after `what` in a latency line (e.g. `request->wire p50 61.2 p99
/// 236.0`).
fn p50_p99(line: &str, what: &str) -> Option<(f64, f64)> {
    let rest = &line[line.find(what)? + what.len()..];
    let mut words = rest.split_whitespace();
    let mut get = |name: &str| -> Option<f64> {
        words.find(|w| *w == name)?;
        words.next()?.parse().ok()
    };
    Some((get("p50")?, get("p99")?))
}

/// Runs one latency setting of `bin`; returns its output.
fn latency_run(bin: &Path, rate: f64, count: usize, busy: &str, verify: &str) -> Result<String> {
    let out = Command::new(bin)
        .args([
            "latency",
            &format!("{rate:.0}"),
            &count.to_string(),
            busy,
            verify,
        ])
        .output()
        .context("latency run")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "latency run failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

const WRK_LUA: &str = r#"
local bodies = {}
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  -- Each thread starts in its own half: no body is sent twice during a run.
  counter = id * math.floor(#bodies / 2)
end
function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", "/", {["Content-Type"] = "application/json"}, bodies[counter])
end
"#;

/// Runs wrk against `url`; returns requests/s.
fn wrk(url: &str, script: &Path, bodies: &Path, secs: u64) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .arg("--")
        .arg(bodies)
        .output()
        .context("running wrk (./x installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{text}");
    }
    if let Some(l) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors: {l}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    Ok(line.split_whitespace().nth(1).context("rate")?.parse()?)
}

/// Ingress req/s of `bin` (`serve`, verifying signatures or not) under wrk.
fn gateway_rate(bin: &Path, verify: &str, script: &Path, bodies: &Path, secs: u64) -> Result<f64> {
    let mut gw_cmd = Command::new(bin);
    gw_cmd.args(["serve", "127.0.0.1:18992", verify]);
    let mut gw = Peer::spawn("gateway", gw_cmd)?;
    gw.expect("ready", Duration::from_secs(30))?;
    let rate = wrk("http://127.0.0.1:18992/", script, bodies, secs)?;
    gw.close_stdin();
    let report = gw.expect("accepted", Duration::from_secs(30))?;
    let accepted: u64 = field(&report, 1)?;
    let duplicates: u64 = field(&report, 3)?;
    let delivered: u64 = field(&report, 5)?;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!(
            "gateway {} (verify {verify}): accepted {accepted} duplicates {duplicates} delivered {delivered}",
            bin.display()
        );
    }
    Ok(rate)
}

fn bench_gateway(rounds: usize, baseline: Option<&Baseline>) -> Result<()> {
    let [bin] = build_examples("tpu-gateway", ["gateway_bench"])?;
    let dir = std::env::temp_dir().join(format!("afterburner-bench-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _guard = RemoveOnDrop(dir.clone());
    let script = dir.join("bodies.lua");
    std::fs::write(&script, WRK_LUA)?;
    let secs = 8u64;

    println!(
        "ingress: wrk -t2 -c32 -d{secs}s, distinct signed transfers (base64, skipPreflight); {rounds} rounds"
    );
    if let Some(b) = baseline {
        println!("before: the gateway at {}; after: this checkout", b.rev);
    }
    println!(
        "{:<6} {:>12} {:>16} {:>6} {:>16} {:>6}",
        "round", "noop req/s", "gateway req/s", "ratio", "no-verify req/s", "ratio"
    );
    let mut ratios = Vec::new();
    let mut ratios_nv = Vec::new();
    let mut gateway_rates = Vec::new();
    // After / before, verified and not (with a baseline).
    let mut changes = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Enough distinct bodies that none repeats (no duplicate shortcuts).
        let bodies = dir.join(format!("bodies-{round}.txt"));
        let mut prep = Command::new(&bin);
        prep.arg("prepare").arg(&bodies).arg("600000");
        run(prep)?;
        let mut noop_cmd = Command::new(&bin);
        noop_cmd.args(["noop", "127.0.0.1:18991"]);
        let noop = Peer::spawn("noop", noop_cmd)?;
        noop.expect("ready", Duration::from_secs(10))?;
        let noop_rate = wrk("http://127.0.0.1:18991/", &script, &bodies, secs)?;
        drop(noop);
        let mut rates = [0.0; 2];
        for (verify, rate) in ["1", "0"].iter().zip(rates.iter_mut()) {
            *rate = gateway_rate(&bin, verify, &script, &bodies, secs)?;
        }
        let [gw_rate, nv_rate] = rates;
        println!(
            "{:<6} {:>12.0} {:>16.0} {:>6.2} {:>16.0} {:>6.2}",
            round + 1,
            noop_rate,
            gw_rate,
            gw_rate / noop_rate,
            nv_rate,
            nv_rate / noop_rate
        );
        if let Some(b) = baseline {
            let mut before = [0.0; 2];
            for (verify, rate) in ["1", "0"].iter().zip(before.iter_mut()) {
                *rate = gateway_rate(&b.bin, verify, &script, &bodies, secs)?;
            }
            println!(
                "{:<6} {:>12} {:>16.0} {:>6.2} {:>16.0} {:>6.2}   after/before {:.2} / {:.2}",
                "before",
                "",
                before[0],
                before[0] / noop_rate,
                before[1],
                before[1] / noop_rate,
                gw_rate / before[0],
                nv_rate / before[1]
            );
            changes[0].push(gw_rate / before[0]);
            changes[1].push(nv_rate / before[1]);
        }
        ratios.push(gw_rate / noop_rate);
        ratios_nv.push(nv_rate / noop_rate);
        gateway_rates.push(gw_rate);
        let _ = std::fs::remove_file(&bodies);
    }
    let max = median(gateway_rates);
    println!(
        "median ratio gateway/noop: {:.2} (gateway median {max:.0} req/s); \
         with verify_signatures = false: {:.2}",
        median(ratios),
        median(ratios_nv)
    );
    if let Some(b) = baseline {
        let [v, nv] = changes;
        println!(
            "median ingress after/before ({}): verified {:.2}, not verified {:.2}",
            b.rev,
            median(v),
            median(nv)
        );
    }

    let rate = (max / 2.0).max(100.0);
    let count = ((rate * 5.0) as usize).clamp(1_000, 20_000);
    let mut table = Vec::new();
    for (busy, verify) in [("1", "1"), ("0", "1"), ("1", "0"), ("0", "0")] {
        let after = latency_run(&bin, rate, count, busy, verify)?;
        print!("{after}");
        if let Some(b) = baseline {
            let before = latency_run(&b.bin, rate, count, busy, verify)?;
            print!("before ({}): {before}", b.rev);
            for what in ["request->wire", "request->agave receipt"] {
                if let (Some(a), Some(b)) = (p50_p99(&after, what), p50_p99(&before, what)) {
                    table.push((busy, verify, what, b, a));
                }
            }
        }
    }
    if let Some(b) = baseline {
        println!(
            "\nlatency at {rate:.0} req/s, before ({}) and after, p50 / p99 us:",
            b.rev
        );
        println!(
            "{:<9} {:<7} {:<23} {:>17} {:>17} {:>13}",
            "busy_poll", "verify", "", "before", "after", "after/before"
        );
        for (busy, verify, what, (b50, b99), (a50, a99)) in table {
            println!(
                "{busy:<9} {verify:<7} {what:<23} {:>17} {:>17} {:>13}",
                format!("{b50:.0} / {b99:.0}"),
                format!("{a50:.0} / {a99:.0}"),
                format!("{:.2} / {:.2}", a50 / b50, a99 / b99)
            );
        }
    }
    Ok(())
}
