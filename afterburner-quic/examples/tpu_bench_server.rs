//! Benchmark server: agave's TPU QUIC server (`solana-streamer` 3.1) in its own
//! process, counting what it delivers. Driven by `cargo xtask bench` over
//! stdin/stdout:
//!
//! - prints `ready <addr>` once listening;
//! - `expect <n>` resets the count and answers `ok`; when `n` packets have been
//!   delivered it prints `done <count> <staked> <last_ns> <first_ns>` (`CLOCK_MONOTONIC`);
//! - `report` prints the same line at once (the driver's timeout).
#![allow(
    clippy::unwrap_used,
    reason = "test and benchmark code: a failure should stop it loudly"
)]

use afterburner_test_support as support;

use std::{
    io::{BufRead, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use solana_sdk::signer::Signer;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tpu_bench_server --staked-keypair <file> [--bind <addr>]";
    let (keypair, bind) = match args.as_slice() {
        [_, flag, keypair] if flag == "--staked-keypair" => (keypair, "127.0.0.1:0"),
        [_, flag, keypair, bflag, bind] if flag == "--staked-keypair" && bflag == "--bind" => {
            (keypair, bind.as_str())
        }
        _ => bail!(usage),
    };
    let staked = solana_sdk::signature::read_keypair_file(keypair)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading {keypair}"))?;
    let server = support::AgaveServer::start(bind.parse()?, &[(staked.pubkey(), 1_000_000)]);
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(stdout.lock().unwrap(), "ready {}", server.addr)?;
    stdout.lock().unwrap().flush()?;

    let base = Arc::new(AtomicUsize::new(0));
    let expect = Arc::new(AtomicUsize::new(usize::MAX));
    let report = {
        let stdout = stdout.clone();
        let base = base.clone();
        move |server: &support::AgaveServer| -> Result<()> {
            let delivered = server.delivered();
            let mine = &delivered[base.load(Ordering::SeqCst).min(delivered.len())..];
            let staked = mine.iter().filter(|d| d.staked).count();
            let last = mine.last().map_or(0, |d| mono_ns_of(d.at));
            let first = mine.first().map_or(0, |d| mono_ns_of(d.at));
            if std::env::var_os("BENCH_VERBOSE").is_some()
                && let Some(start) = mine.first().map(|d| d.at)
            {
                // Deliveries per 5 ms, to see stalls.
                let mut buckets = vec![0usize; 1];
                for d in mine {
                    let b = (d.at.duration_since(start).as_micros() / 5_000) as usize;
                    if b >= buckets.len() {
                        buckets.resize(b + 1, 0);
                    }
                    buckets[b] += 1;
                }
                eprintln!("server: deliveries per 5 ms: {buckets:?}");
            }
            let mut out = stdout.lock().unwrap();
            writeln!(out, "done {} {} {} {}", mine.len(), staked, last, first)?;
            out.flush()?;
            Ok(())
        }
    };
    let server = Arc::new(server);
    {
        let server = server.clone();
        let base = base.clone();
        let expect = expect.clone();
        let report = report.clone();
        std::thread::spawn(move || {
            loop {
                let want = expect.load(Ordering::SeqCst);
                if want != usize::MAX
                    && server.delivered_count() >= base.load(Ordering::SeqCst) + want
                {
                    expect.store(usize::MAX, Ordering::SeqCst);
                    if report(&server).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    }
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("expect"), Some(n)) => {
                base.store(server.delivered_count(), Ordering::SeqCst);
                expect.store(n.parse()?, Ordering::SeqCst);
                let mut out = stdout.lock().unwrap();
                writeln!(out, "ok")?;
                out.flush()?;
            }
            (Some("report"), _) => {
                expect.store(usize::MAX, Ordering::SeqCst);
                report(&server)?;
            }
            _ => bail!("unknown command: {line}"),
        }
    }
    Ok(())
}

/// `Instant` → CLOCK_MONOTONIC nanoseconds (both are CLOCK_MONOTONIC on Linux).
fn mono_ns_of(at: std::time::Instant) -> u64 {
    let now = std::time::Instant::now();
    support::mono_ns().saturating_sub(now.duration_since(at).as_nanos() as u64)
}
