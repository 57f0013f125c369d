//! The `tpu-gateway` binary: configuration checks, and SIGTERM under load (exits 0
//! within the deadline, with every accepted transaction accounted for).
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use afterburner_test_support as support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use solana_sdk::{
    hash::Hash, pubkey::Pubkey, signature::Keypair, signer::Signer, transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;

const BIN: &str = env!("CARGO_BIN_EXE_tpu-gateway");

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpu-gateway-bin-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn keypair_file(dir: &Path) -> (Keypair, PathBuf) {
    let k = Keypair::new();
    let p = dir.join("identity.json");
    solana_sdk::signer::keypair::write_keypair_file(&k, &p).unwrap();
    (k, p)
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tpu-gateway.toml")
}

#[test]
fn the_example_config_passes_check() {
    let dir = temp_dir("check");
    let (_, id) = keypair_file(&dir);
    // The example names /etc/afterburner/identity.json; point it at a real file.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(example_config())
        .arg("--identity")
        .arg(&id)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration ok"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_keys_and_bad_keypair_paths_are_named() {
    let dir = temp_dir("bad");
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nrpc_urls = [\"http://127.0.0.1:1\"]\n[retry]\nintervall_ms = 3\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("intervall_ms"), "{err}");

    std::fs::write(
        &cfg,
        "identity = \"/nonexistent/id.json\"\n[cluster]\nrpc_urls = [\"http://127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/id.json"), "{err}");

    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Under a steady stream of sends, SIGTERM: the process stops accepting, sends what
/// is queued, exits 0 within the deadline, and its final accounting balances
/// (accepted = sent + dropped, nothing in flight) and covers every transaction a
/// client was told was accepted.
/// The binary, started with its JSON-RPC on a free port, `static_leaders` =
/// `leader`, `identity` and `extra` top-level keys; its stdout comes back line by
/// line. Returns once `/ready` answers 200.
struct Running {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

fn start_binary(dir: &Path, identity: &Path, leader: std::net::SocketAddr, extra: &str) -> Running {
    start_binary_env(dir, identity, leader, extra, &[])
}

/// As [`start_binary`], with `AFTERBURNER_*` variables for the child.
fn start_binary_env(
    dir: &Path,
    identity: &Path,
    leader: std::net::SocketAddr,
    extra: &str,
    env: &[(&str, &str)],
) -> Running {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "identity = \"{}\"\n{extra}[rpc]\nlisten = \"127.0.0.1:{port}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[cluster]\nstatic_leaders = [\"{leader}\"]\n\
             [validation]\npreflight = \"refuse\"\n[packet_path]\nbind = \"127.0.0.1:0\"\n",
            identity.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(l);
        }
    });
    let client = reqwest::blocking_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("http://127.0.0.1:{port}/ready")) != Some(200) {
        assert!(Instant::now() < deadline, "gateway not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { child, port, lines }
}

#[test]
fn sigterm_under_load_exits_cleanly_and_accounts_for_everything() {
    let dir = temp_dir("sigterm");
    let (identity, id_path) = keypair_file(&dir);
    let server = support::AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(identity.pubkey(), 1_000_000)],
    );
    let Running {
        mut child,
        port,
        lines,
    } = start_binary(&dir, &id_path, server.addr, "shutdown_deadline_ms = 2000\n");
    let url = format!("http://127.0.0.1:{port}/");
    // Load: senders until the process goes away.
    let payer = Keypair::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = vec![];
    for t in 0..4u64 {
        let url = url.clone();
        let payer = payer.insecure_clone();
        let stop = stop.clone();
        senders.push(std::thread::spawn(move || {
            let client = reqwest::blocking_client();
            let mut ok = 0u64;
            for i in 0..100_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let ix = system_instruction::transfer(&payer.pubkey(), &Pubkey::new_unique(), 1 + i * 4 + t);
                let tx = Transaction::new_signed_with_payer(&[ix], Some(&payer.pubkey()), &[&payer], Hash::new_unique());
                let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
                    "params": [bs58::encode(bincode::serialize(&tx).unwrap()).into_string(), {"skipPreflight": true}]});
                match client.post_json(&url, &body.to_string()) {
                    Some(v) if v.get("result").is_some() => ok += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            ok
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(8),
            "did not exit within the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let told_ok: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(status.success(), "exit status {status}");
    let exit_time = signalled.elapsed();
    let log: Vec<String> = lines.try_iter().collect();
    let line = log
        .iter()
        .find(|l| l.contains("final accounting"))
        .unwrap_or_else(|| panic!("no final accounting in {log:?}"));
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (accepted, sent, dropped, in_flight) = (
        field("accepted"),
        field("sent"),
        field("dropped"),
        field("in_flight"),
    );
    println!("SIGTERM: exit after {exit_time:?}; clients told ok {told_ok}; {line}");
    assert!(told_ok > 100, "load was running: {told_ok}");
    assert_eq!(in_flight, 0);
    assert_eq!(accepted, sent + dropped);
    assert_eq!(
        accepted, told_ok,
        "every transaction a client was told was accepted is counted"
    );
    assert!(server.wait_for(sent as usize, Duration::from_secs(10)) >= sent as usize);
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP re-reads the identity file (with the file watch off): the binary starts
/// with an unstaked keypair, the file is rewritten with the staked one, and after
/// SIGHUP agave's server sees our packets as staked; the switch is logged.
#[test]
fn sighup_reloads_the_identity_file() {
    let dir = temp_dir("sighup");
    let (_, id_path) = keypair_file(&dir);
    let staked = Keypair::new();
    let server = support::AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(staked.pubkey(), 1_000_000)],
    );
    let Running {
        mut child,
        port,
        lines,
    } = start_binary(&dir, &id_path, server.addr, "identity_watch_ms = 0\n");
    let url = format!("http://127.0.0.1:{port}/");
    let client = reqwest::blocking_client();
    let payer = Keypair::new();
    let send = |i: u64| {
        let ix = system_instruction::transfer(&payer.pubkey(), &Pubkey::new_unique(), 1 + i);
        let tx = Transaction::new_signed_with_payer(
            &[ix],
            Some(&payer.pubkey()),
            &[&payer],
            Hash::new_unique(),
        );
        let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
            "params": [bs58::encode(bincode::serialize(&tx).unwrap()).into_string(), {"skipPreflight": true}]});
        let v = client.post_json(&url, &body.to_string()).unwrap();
        assert!(v.get("result").is_some(), "{v}");
    };
    send(0);
    assert_eq!(server.wait_for(1, Duration::from_secs(10)), 1);
    assert!(!server.delivered()[0].staked, "starts unstaked");

    solana_sdk::signer::keypair::write_keypair_file(&staked, &id_path).unwrap();
    // The watch is off: nothing changes until SIGHUP.
    std::thread::sleep(Duration::from_millis(300));
    send(1);
    assert_eq!(server.wait_for(2, Duration::from_secs(10)), 2);
    assert!(!server.delivered()[1].staked, "no switch without SIGHUP");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log: Vec<String> = lines.try_iter().collect();
        if let Some(l) = log.iter().find(|l| l.contains("SIGHUP: identity reloaded")) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no reload logged");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(log.contains(&staked.pubkey().to_string()), "{log}");
    send(2);
    assert_eq!(server.wait_for(3, Duration::from_secs(10)), 3);
    assert!(server.delivered()[2].staked, "staked after SIGHUP");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// A tiny blocking HTTP client over reqwest's async one (no extra features needed).
mod reqwest {
    pub struct Blocking {
        rt: tokio::runtime::Runtime,
        client: ::reqwest::Client,
    }

    pub fn blocking_client() -> Blocking {
        Blocking {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: ::reqwest::Client::new(),
        }
    }

    impl Blocking {
        pub fn get(&self, url: String) -> Option<u16> {
            self.rt.block_on(async {
                self.client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16())
            })
        }

        pub fn post_json(&self, url: &str, body: &str) -> Option<serde_json::Value> {
            self.rt.block_on(async {
                let r = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .ok()?;
                let bytes = r.bytes().await.ok()?;
                serde_json::from_slice(&bytes).ok()
            })
        }
    }
}

/// The capability sets of every thread of process `pid`, as /proc shows them.
fn thread_capabilities(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for line in status.lines().filter(|l| l.starts_with("Cap")) {
            let (k, v) = line.split_once(':').unwrap();
            out.push((k.to_string(), v.trim().to_string()));
        }
    }
    out
}

/// After the packet path is open the process keeps no capability (kernel UDP
/// needs none to run): every set of every thread is empty in /proc. With
/// `packet_path.drop_capabilities = false` a root process keeps its own. Root only
/// (elsewhere there is nothing to drop); under `CI=true` it must run.
#[test]
fn capabilities_are_dropped_after_setup() {
    if !support::netns::root_or_skip("capabilities_are_dropped_after_setup") {
        return;
    }
    let dir = temp_dir("caps");
    let (identity, id_path) = keypair_file(&dir);
    let server = support::AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(identity.pubkey(), 1_000_000)],
    );
    let mut running = start_binary(&dir, &id_path, server.addr, "");
    let caps = thread_capabilities(running.child.id());
    let threads = caps.iter().filter(|(k, _)| k == "CapEff").count();
    println!(
        "{threads} threads; CapEff/CapPrm/CapBnd/CapInh/CapAmb all 0: {:?}",
        &caps[..5]
    );
    assert!(threads > 1, "the runtime's threads are checked too");
    for (set, value) in &caps {
        assert_eq!(value, "0000000000000000", "{set} still holds {value}");
    }
    let log: Vec<String> = running.lines.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("capabilities dropped")),
        "{log:?}"
    );
    // It still works without them: /ready and a send.
    let client = reqwest::blocking_client();
    assert_eq!(
        client.get(format!("http://127.0.0.1:{}/ready", running.port)),
        Some(200)
    );
    let _ = running.child.kill();
    let _ = running.child.wait();

    let mut kept = start_binary_env(
        &dir,
        &id_path,
        server.addr,
        "",
        &[("AFTERBURNER_PACKET_PATH__DROP_CAPABILITIES", "false")],
    );
    let caps = thread_capabilities(kept.child.id());
    let eff = caps.iter().find(|(k, _)| k == "CapEff").unwrap();
    assert_ne!(
        eff.1, "0000000000000000",
        "a root process keeps its set when asked"
    );
    let _ = kept.child.kill();
    let _ = kept.child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
