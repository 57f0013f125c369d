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

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    bench::{Peer, RemoveOnDrop, build_examples, field, median},
    util::run,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Ingress rounds (wrk against the no-op, then the gateway with and without
    /// signature verification).
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
}

impl Args {
    pub(crate) fn run(self) -> Result<()> {
        bench_gateway(self.rounds)
    }
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

fn bench_gateway(rounds: usize) -> Result<()> {
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
    println!(
        "{:<6} {:>12} {:>16} {:>6} {:>16} {:>6}",
        "round", "noop req/s", "gateway req/s", "ratio", "no-verify req/s", "ratio"
    );
    let mut ratios = Vec::new();
    let mut ratios_nv = Vec::new();
    let mut gateway_rates = Vec::new();
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
            let mut gw_cmd = Command::new(&bin);
            gw_cmd.args(["serve", "127.0.0.1:18992", verify]);
            let mut gw = Peer::spawn("gateway", gw_cmd)?;
            gw.expect("ready", Duration::from_secs(30))?;
            *rate = wrk("http://127.0.0.1:18992/", &script, &bodies, secs)?;
            gw.close_stdin();
            let report = gw.expect("accepted", Duration::from_secs(30))?;
            let accepted: u64 = field(&report, 1)?;
            let duplicates: u64 = field(&report, 3)?;
            let delivered: u64 = field(&report, 5)?;
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!(
                    "gateway (verify {verify}): accepted {accepted} duplicates {duplicates} delivered {delivered}"
                );
            }
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

    let rate = (max / 2.0).max(100.0);
    let count = ((rate * 5.0) as usize).clamp(1_000, 20_000);
    for (busy, verify) in [("1", "1"), ("0", "1"), ("1", "0"), ("0", "0")] {
        let out = Command::new(&bin)
            .args([
                "latency",
                &format!("{rate:.0}"),
                &count.to_string(),
                busy,
                verify,
            ])
            .output()
            .context("latency run")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "latency run failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        print!("{text}");
    }
    Ok(())
}
