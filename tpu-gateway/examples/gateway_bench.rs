//! Gateway benchmark helper, driven by `cargo xtask bench-gateway`:
//!
//! - `prepare <file> <n>`: `n` distinct signed transfers as JSON-RPC
//!   `sendTransaction` bodies (base64, skipPreflight), one per line, for wrk;
//! - `noop <listen>`: an axum server whose `POST /` answers a constant JSON-RPC
//!   result: the framework's own ceiling, the reference for ingress throughput;
//! - `serve <listen> <verify_signatures 0|1>`: agave's TPU server and the gateway in this process (static
//!   leader, staked identity); prints `ready`, runs until stdin closes, then prints
//!   the gateway's accounting;
//! - `latency <rate> <count> <busy_poll 0|1> <verify_signatures 0|1>`: the same, plus a paced client in this
//!   process: `count` requests at `rate` per second, one connection; prints
//!   request -> frame handed to the packet path (the gateway's own measurement) and
//!   request -> agave server receipt (p50/p99/p999, µs).
#![allow(
    clippy::unwrap_used,
    reason = "benchmark code: a failure should stop it loudly"
)]

use afterburner_test_support as support;

use std::{
    io::{BufRead, Write},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use base64::Engine as _;
use solana_sdk::{
    hash::Hash, pubkey::Pubkey, signature::Keypair, signer::Signer, transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;
use tpu_gateway::{Gateway, config::Config};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("prepare") if args.len() == 4 => prepare(&args[2], args[3].parse()?),
        Some("noop") if args.len() == 3 => runtime().block_on(noop(args[2].parse()?)),
        Some("serve") if args.len() == 4 => runtime().block_on(serve(&args[2], args[3] == "1")),
        Some("latency") if args.len() == 6 => runtime().block_on(latency(
            args[2].parse()?,
            args[3].parse()?,
            args[4] == "1",
            args[5] == "1",
        )),
        _ => bail!(
            "usage: gateway_bench prepare <file> <n> | noop <listen> | serve <listen> \
             | latency <rate> <count> <busy_poll 0|1> <verify_signatures 0|1>"
        ),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bodies(n: usize) -> Vec<(String, Vec<u8>)> {
    let payer = Keypair::new();
    let to = Pubkey::new_unique();
    let hash = Hash::new_unique();
    (0..n as u64)
        .map(|i| {
            let ix = system_instruction::transfer(&payer.pubkey(), &to, 1 + i);
            let tx =
                Transaction::new_signed_with_payer(&[ix], Some(&payer.pubkey()), &[&payer], hash);
            let wire = bincode::serialize(&tx).unwrap();
            let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
                "params": [base64::prelude::BASE64_STANDARD.encode(&wire),
                           {"encoding": "base64", "skipPreflight": true}]});
            (body.to_string(), wire)
        })
        .collect()
}

fn prepare(file: &str, n: usize) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for (body, _) in bodies(n) {
        writeln!(out, "{body}")?;
    }
    Ok(())
}

async fn noop(listen: std::net::SocketAddr) -> Result<()> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|_body: axum::body::Bytes| async {
            axum::Json(serde_json::json!({"jsonrpc": "2.0", "result":
                "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW",
                "id": 1}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ready");
    std::io::stdout().flush()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().lock().lines().count();
    })
    .await?;
    Ok(())
}

struct Rig {
    gateway: Gateway,
    server: support::AgaveServer,
    _dir: std::path::PathBuf,
}

async fn rig(listen: &str, busy_poll: bool, verify: bool) -> Result<Rig> {
    let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let identity = Keypair::new();
    let id = dir.join("id.json");
    solana_sdk::signer::keypair::write_keypair_file(&identity, &id)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let server =
        support::AgaveServer::start("127.0.0.1:0".parse()?, &[(identity.pubkey(), 1_000_000)]);
    // Every accepted transaction holds a place in the ledger until it ends (here one
    // retry interval after its one send): room for the whole run, since this
    // measures ingress, not the ledger's bound.
    let text = format!(
        "identity = \"{}\"\n[rpc]\nlisten = \"{listen}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\nstatic_leaders = [\"{}\"]\n[validation]\npreflight = \"refuse\"\nverify_signatures = {verify}\n\
         [packet_path]\nbind = \"127.0.0.1:0\"\n[limits]\nqueue = 100000\nmax_tracked = 1000000\n[retry]\ndefault_max_retries = 0\n\
         [engine]\nbusy_poll = {busy_poll}\nbusy_poll_idle_ms = 1000\n[log]\nlevel = \"warn\"\n",
        id.display(),
        server.addr
    );
    let gateway =
        Gateway::start_with_latency_samples(Config::from_toml(&text, [])?, 1_000_000).await?;
    Ok(Rig {
        gateway,
        server,
        _dir: dir,
    })
}

async fn serve(listen: &str, verify: bool) -> Result<()> {
    let rig = rig(listen, false, verify).await?;
    println!("ready {}", rig.gateway.rpc_addr);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().lock().lines().count();
    })
    .await?;
    let m = rig.gateway.service.metrics();
    println!(
        "accepted {} duplicates {} delivered {}",
        m.accounting.snapshot().accepted,
        m.duplicates.get(),
        rig.server.delivered_count()
    );
    rig.gateway.shutdown().await;
    Ok(())
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), at(0.999))
}

async fn latency(rate: f64, count: usize, busy_poll: bool, verify: bool) -> Result<()> {
    let rig = rig("127.0.0.1:0", busy_poll, verify).await?;
    let url = format!("http://{}/", rig.gateway.rpc_addr);
    let client = reqwest::Client::new();
    let prepared = bodies(count + 100);
    // Warm up: connection, handshake, stream credit.
    for (body, _) in &prepared[count..] {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rig.server.delivered_count();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent_at = Vec::with_capacity(count);
    let start = Instant::now();
    for (i, (body, _)) in prepared[..count].iter().enumerate() {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let t0 = Instant::now();
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        sent_at.push(t0);
        let _ = r.bytes().await?;
    }
    rig.server.wait_for(base + count, Duration::from_secs(10));
    let delivered = rig.server.delivered();
    let mut e2e = Vec::with_capacity(count);
    for (i, (_, wire)) in prepared[..count].iter().enumerate() {
        if let Some(d) = delivered[base..].iter().find(|d| &d.data == wire) {
            e2e.push(d.at.saturating_duration_since(sent_at[i]).as_secs_f64() * 1e6);
        }
    }
    let samples = rig.gateway.service.take_latency_samples();
    let us = |f: &dyn Fn(&tpu_gateway::service::LatencySample) -> Duration| {
        percentiles(samples.iter().map(|s| f(s).as_secs_f64() * 1e6).collect())
    };
    let (w50, w99, w999) = us(&|s| s.wire);
    let (v50, v99, _) = us(&|s| s.validated);
    let (h50, h99, _) = us(&|s| s.submitted.saturating_sub(s.validated));
    let (g50, g99, _) = us(&|s| s.wire.saturating_sub(s.submitted));
    let (e50, e99, e999) = percentiles(e2e.clone());
    println!(
        "latency rate {rate:.0}/s count {count} busy_poll {busy_poll} verify_signatures {verify}: request->wire p50 {w50:.1} p99 {w99:.1} \
         p999 {w999:.1} us ({} samples); request->agave receipt p50 {e50:.1} p99 {e99:.1} p999 {e999:.1} us \
         ({} delivered)",
        samples.len(),
        e2e.len()
    );
    println!(
        "  stages p50/p99 us: read->validated {v50:.1}/{v99:.1}, validated->submitted {h50:.1}/{h99:.1}, \
         submitted->wire (engine wake, QUIC, packet path) {g50:.1}/{g99:.1}"
    );
    rig.gateway.shutdown().await;
    Ok(())
}
