//! The gateway end to end, in-process: real Solana clients (`solana-client`'s
//! `RpcClient`) send through it, and agave's own TPU QUIC server (`solana-streamer`)
//! receives. Leaders are static (the server's address): leader tracking against a
//! real validator is tested in `leader-schedule` and in the end-to-end suite.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use afterburner_test_support as support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use solana_client::{nonblocking::rpc_client::RpcClient, rpc_config::RpcSendTransactionConfig};
use solana_sdk::{
    hash::Hash,
    pubkey::Pubkey,
    signature::{Keypair, Signature},
    signer::Signer,
    transaction::Transaction,
};
use solana_system_interface::instruction as system_instruction;
use solana_transaction_status_client_types::UiTransactionEncoding;
use support::AgaveServer;
use tpu_gateway::{Gateway, config::Config};

struct Setup {
    gateway: Gateway,
    server: AgaveServer,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new directory of this test process, removed when dropped.
fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "tpu-gateway-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A gateway with a staked identity, sending to an agave server on loopback.
async fn setup(extra: &str) -> Setup {
    setup_env(extra, &[]).await
}

/// As [`setup`], with `AFTERBURNER_*` overrides.
async fn setup_env(extra: &str, env: &[(&str, &str)]) -> Setup {
    let identity = Keypair::new();
    let server = AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(identity.pubkey(), 1_000_000)],
    );
    setup_with(server, &identity, extra, env).await
}

/// A gateway presenting `identity` with `server` as its static leader.
async fn setup_with(
    server: AgaveServer,
    identity: &Keypair,
    extra: &str,
    env: &[(&str, &str)],
) -> Setup {
    let tmp = temp_dir("test");
    let dir = tmp.0.clone();
    let id_path = dir.join("identity.json");
    solana_sdk::signer::keypair::write_keypair_file(identity, &id_path).unwrap();
    let text = format!(
        r#"
identity = "{}"
[rpc]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[cluster]
static_leaders = ["{}"]
[validation]
preflight = "refuse"
[packet_path]
bind = "127.0.0.1:0"
{extra}
"#,
        id_path.display(),
        server.addr
    );
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::from_toml(&text, env).unwrap();
    let gateway = Gateway::start(config).await.unwrap();
    Setup {
        gateway,
        server,
        _dir: tmp,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn transfer(payer: &Keypair, lamports: u64) -> Transaction {
    let ix = system_instruction::transfer(&payer.pubkey(), &Pubkey::new_unique(), lamports);
    Transaction::new_signed_with_payer(&[ix], Some(&payer.pubkey()), &[payer], Hash::new_unique())
}

async fn post(url: &str, body: impl Into<reqwest::Body>, content_type: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn metric(gateway: &Gateway, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gateway.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::prom::sum(&text, name, "")
}

/// `accepted = sent + dropped` once nothing is in flight.
async fn assert_accounted(gateway: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let in_flight = metric(gateway, "afterburner_transactions_in_flight").await;
        if in_flight == 0.0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = metric(gateway, "afterburner_transactions_accepted_total").await;
    let sent = metric(gateway, "afterburner_transactions_sent_total").await;
    let dropped = metric(gateway, "afterburner_transactions_dropped_total").await;
    assert_eq!(
        metric(gateway, "afterburner_transactions_in_flight").await,
        0.0
    );
    assert_eq!(
        accepted,
        sent + dropped,
        "accepted {accepted} sent {sent} dropped {dropped}"
    );
}

/// solana-client's RpcClient sends through the gateway (base58 and base64); agave's
/// server receives every transaction, byte-identical, from the staked identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rpc_client_reaches_agave_as_staked() {
    let s = setup("").await;
    let client = RpcClient::new(format!("http://{}", s.gateway.rpc_addr));
    let payer = Keypair::new();
    let mut sent = Vec::new();
    for i in 0..20u64 {
        let tx = transfer(&payer, 1 + i);
        let config = RpcSendTransactionConfig {
            skip_preflight: true,
            encoding: Some(if i % 2 == 0 {
                UiTransactionEncoding::Base58
            } else {
                UiTransactionEncoding::Base64
            }),
            ..RpcSendTransactionConfig::default()
        };
        let sig = client
            .send_transaction_with_config(&tx, config)
            .await
            .unwrap();
        assert_eq!(sig, tx.signatures[0]);
        sent.push(bincode::serialize(&tx).unwrap());
    }
    assert_eq!(s.server.wait_for(20, Duration::from_secs(10)), 20);
    let delivered = s.server.delivered();
    assert!(
        delivered.iter().all(|d| d.staked),
        "every packet from the staked identity"
    );
    for tx in &sent {
        assert!(delivered.iter().any(|d| &d.data == tx), "byte-identical");
    }
    // The default config asks for preflight, which this gateway refuses, clearly.
    let err = client
        .send_transaction(&transfer(&payer, 99))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("skipPreflight: true"), "{err}");
    // getHealth / getVersion through the same client.
    client.get_health().await.unwrap();
    assert_eq!(
        client.get_version().await.unwrap().solana_core,
        env!("CARGO_PKG_VERSION")
    );
    assert_accounted(&s.gateway).await;
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_sent_total").await,
        20.0
    );
    s.gateway.shutdown().await;
}

/// Every malformed-input class gets agave's code and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_get_agaves_errors() {
    let s = setup("").await;
    let url = format!("http://{}/", s.gateway.rpc_addr);
    let payer = Keypair::new();
    let good = bincode::serialize(&transfer(&payer, 1)).unwrap();
    let b58 = |b: &[u8]| bs58::encode(b).into_string();
    let b64 = |b: &[u8]| base64::prelude::BASE64_STANDARD.encode(b);
    let mut bad_sig = good.clone();
    bad_sig[1] ^= 1;
    let name = "solana_transaction::versioned::VersionedTransaction";
    let send = |data: String, opts: Value| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [data, opts]})
            .to_string()
    };
    let skip = json!({"skipPreflight": true});
    let skip64 = json!({"skipPreflight": true, "encoding": "base64"});
    let dup = transfer(&payer, 2);
    let dup_wire = bincode::serialize(&dup).unwrap();
    let cases: Vec<(&str, String, i64, String)> = vec![
        (
            "bad json",
            "{\"jsonrpc\": \"2.0\", ".into(),
            -32700,
            "Parse error".into(),
        ),
        (
            "not a request",
            "[1]".into(),
            -32600,
            "Invalid request".into(),
        ),
        (
            "unknown method",
            json!({"jsonrpc": "2.0", "id": 1, "method": "getBlock"}).to_string(),
            -32601,
            "Method not found".into(),
        ),
        (
            "bad encoding name",
            send(
                b58(&good),
                json!({"skipPreflight": true, "encoding": "jsonParsed"}),
            ),
            -32602,
            "unsupported encoding: jsonParsed. Supported encodings: base58, base64".into(),
        ),
        (
            "bad base58",
            send("0OIl".into(), skip.clone()),
            -32602,
            "invalid base58 encoding: InvalidCharacter { character: '0', index: 0 }".into(),
        ),
        (
            "bad base64",
            send("!!!!".into(), skip64.clone()),
            -32602,
            "invalid base64 encoding: InvalidByte(0, 33)".into(),
        ),
        (
            "too large encoded",
            send("1".repeat(1684), skip.clone()),
            -32602,
            format!("base58 encoded {name} too large: 1684 bytes (max: encoded/raw 1683/1232)"),
        ),
        (
            "too large decoded",
            send(b64(&[1u8; 1233]), skip64.clone()),
            -32602,
            format!("decoded {name} too large: 1233 bytes (max: 1232 bytes)"),
        ),
        // The next three inputs are agave's own test vectors (rpc.rs,
        // test_decode_and_deserialize_too_large_payloads_fail), with its messages.
        (
            "undeserializable",
            send(b64(&[0xffu8; 1230]), skip64.clone()),
            -32602,
            format!(
                "failed to deserialize {name}: invalid value: continue signal on byte-three, \
                 expected a terminal signal on or before byte-three"
            ),
        ),
        (
            "bad base64 late in the string",
            send(format!("{}!", b64(&[0xffu8; 1230])), skip64.clone()),
            -32602,
            "invalid base64 encoding: InvalidByte(1640, 33)".into(),
        ),
        (
            "too large decoded, base58",
            send(b58(&[0u8; 1233]), skip.clone()),
            -32602,
            format!("decoded {name} too large: 1233 bytes (max: 1232 bytes)"),
        ),
        (
            "bad signature",
            send(b58(&bad_sig), skip.clone()),
            -32002,
            "Transaction simulation failed: Transaction signature verification failure".into(),
        ),
    ];
    for (what, body, code, message) in cases {
        let (status, v) = post(&url, body, "application/json").await;
        assert_eq!(status, 200, "{what}");
        let e = if v.is_array() {
            &v[0]["error"]
        } else {
            &v["error"]
        };
        assert_eq!(e["code"], code, "{what}: {v}");
        assert_eq!(e["message"], message, "{what}: {v}");
    }
    // A duplicate returns the same signature, and is sent once.
    for _ in 0..3 {
        let (_, v) = post(&url, send(b58(&dup_wire), skip.clone()), "application/json").await;
        assert_eq!(v["result"], dup.signatures[0].to_string());
    }
    assert_eq!(s.server.wait_for(1, Duration::from_secs(5)), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.server.delivered_count(),
        1,
        "a duplicate is not sent again"
    );
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_duplicate_total").await,
        2.0
    );
    // Batches: one response per request, in order.
    let batch = format!(
        "[{}, {}]",
        json!({"jsonrpc": "2.0", "id": 7, "method": "getHealth"}),
        json!({"jsonrpc": "2.0", "id": 8, "method": "nope"})
    );
    let (_, v) = post(&url, batch, "application/json").await;
    assert_eq!(v[0]["id"], 7);
    assert_eq!(v[0]["result"], "ok");
    assert_eq!(v[1]["error"]["code"], -32601);
    // Over the body limit: refused before parsing.
    let (status, _) = post(&url, vec![b' '; 60 * 1024], "application/json").await;
    assert_eq!(status, 413);
    // The raw route: wire bytes in, signature out.
    let raw = transfer(&payer, 3);
    let (status, v) = post(
        &format!("http://{}/v1/transactions", s.gateway.rpc_addr),
        bincode::serialize(&raw).unwrap(),
        "application/octet-stream",
    )
    .await;
    assert_eq!(
        (status, v["signature"].clone()),
        (200, json!(raw.signatures[0].to_string()))
    );
    let (status, v) = post(
        &format!("http://{}/v1/transactions", s.gateway.rpc_addr),
        bad_sig.clone(),
        "application/octet-stream",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], -32002);
    assert!(metric(&s.gateway, "afterburner_transactions_rejected_total").await >= 9.0);
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// A burst beyond the queue bound gets -32090 for what does not fit (per item in a
/// batch), not memory growth; what was accepted is all accounted for.
#[tokio::test(flavor = "current_thread")]
async fn burst_beyond_the_queue_is_refused_and_accounted() {
    // One runtime thread: the forwarder cannot drain while the batch is handled, so
    // the bound is what decides.
    let s = setup("[limits]\nqueue = 8\n").await;
    let url = format!("http://{}/", s.gateway.rpc_addr);
    let payer = Keypair::new();
    let batch: Vec<Value> = (0..50u64)
        .map(|i| {
            let wire = bincode::serialize(&transfer(&payer, 1 + i)).unwrap();
            json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
                   "params": [bs58::encode(wire).into_string(), {"skipPreflight": true}]})
        })
        .collect();
    let (status, v) = post(&url, Value::Array(batch).to_string(), "application/json").await;
    // A batch answers per item: its successes are not turned into a 429.
    assert_eq!(status, 200);
    let items = v.as_array().unwrap();
    let ok = items.iter().filter(|i| i.get("result").is_some()).count();
    let full = items
        .iter()
        .filter(|i| i["error"]["code"] == -32090)
        .count();
    assert_eq!(ok, 8, "exactly the queue bound accepted");
    assert_eq!(ok + full, 50);
    assert_eq!(s.server.wait_for(8, Duration::from_secs(10)), 8);
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_accepted_total").await,
        8.0
    );
    assert_eq!(
        metric(
            &s.gateway,
            "afterburner_transactions_rejected_total{reason=\"queue_full\"}"
        )
        .await,
        42.0
    );
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// Rebroadcast: `maxRetries: 2` means three sends in all, then the transaction is
/// retired as out of retries; `maxRetries: 0` means one send; without it, it is
/// rebroadcast until it expires (here 25 slots of 20 ms, every 50 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebroadcast_until_retries_run_out_or_expiry() {
    let s = setup_env(
        "[retry]\ninterval_ms = 50\nexpiry_slots = 25\n",
        &[("AFTERBURNER_CLUSTER__SLOT_DURATION_MS", "20")],
    )
    .await;
    let url = format!("http://{}/", s.gateway.rpc_addr);
    let payer = Keypair::new();
    let send = |tx: &Transaction, opts: Value| {
        let data = bs58::encode(bincode::serialize(tx).unwrap()).into_string();
        json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [data, opts]})
            .to_string()
    };
    let (three, once, until_expiry) = (
        transfer(&payer, 1),
        transfer(&payer, 2),
        transfer(&payer, 3),
    );
    for (tx, opts) in [
        (&three, json!({"skipPreflight": true, "maxRetries": 2})),
        (&once, json!({"skipPreflight": true, "maxRetries": 0})),
        (&until_expiry, json!({"skipPreflight": true})),
    ] {
        let (_, v) = post(&url, send(tx, opts), "application/json").await;
        assert_eq!(v["result"], tx.signatures[0].to_string());
    }
    // Expiry after 500 ms: about 10 sends of the third, one every 50 ms.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let count = |tx: &Transaction| {
        let wire = bincode::serialize(tx).unwrap();
        s.server
            .delivered()
            .iter()
            .filter(|d| d.data == wire)
            .count()
    };
    assert_eq!(count(&three), 3, "sent, then rebroadcast twice");
    assert_eq!(count(&once), 1, "maxRetries 0: sent once");
    let n = count(&until_expiry);
    assert!((6..=11).contains(&n), "rebroadcast until expiry: {n}");
    // Every accepted transaction ends in one state: the one with maxRetries 2, and
    // the one with maxRetries 0 (sent once, no retry left).
    assert_eq!(
        metric(
            &s.gateway,
            "afterburner_transactions_retired_total{state=\"retries_exhausted\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &s.gateway,
            "afterburner_transactions_retired_total{state=\"expired\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_tracked").await,
        0.0
    );
    assert_eq!(
        metric(&s.gateway, "afterburner_retries_total").await,
        (2 + n - 1) as f64
    );
    // Accounting counts transactions, not sends.
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_sent_total").await,
        3.0
    );
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// A leader that never answers: the first send cannot reach it, and the transaction
/// is counted as dropped with the engine's reason; /ready and /health answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_leader_is_a_counted_drop() {
    // Nothing listens on this UDP port: the handshake times out.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let static_leaders = format!("[\"{dead_addr}\"]");
    let s = setup_env(
        "",
        &[("AFTERBURNER_CLUSTER__STATIC_LEADERS", &static_leaders)],
    )
    .await;
    let (status, _) = (
        reqwest::get(format!("http://{}/ready", s.gateway.rpc_addr))
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(status.as_u16(), 200);
    let url = format!("http://{}/", s.gateway.rpc_addr);
    let payer = Keypair::new();
    let tx = transfer(&payer, 1);
    let data = bs58::encode(bincode::serialize(&tx).unwrap()).into_string();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                      "params": [data, {"skipPreflight": true, "maxRetries": 0}]});
    let (_, v) = post(&url, body.to_string(), "application/json").await;
    assert_eq!(v["result"], tx.signatures[0].to_string());
    // The engine gives up after its 2 s handshake timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while metric(&s.gateway, "afterburner_transactions_dropped_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no drop counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(
            &s.gateway,
            "afterburner_transactions_dropped_total{reason=\"handshake_timeout\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_sent_total").await,
        0.0
    );
    assert_accounted(&s.gateway).await;
    assert_eq!(s.server.delivered_count(), 0);
    s.gateway.shutdown().await;
}

/// A transaction's lifecycle, from the instance that accepted it: over REST
/// (`GET /v1/transactions/{signature}`) and JSON-RPC (`afterburner_getTransaction`),
/// with its sends, their targets and outcomes; the answer names the instance; an
/// unknown signature is a 404 (REST) or `null` (JSON-RPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_of_an_accepted_transaction() {
    let s = setup("[retry]\ninterval_ms = 100\n").await;
    let base = format!("http://{}", s.gateway.rpc_addr);
    let tx = transfer(&Keypair::new(), 7);
    let sig = tx.signatures[0].to_string();
    let data = bs58::encode(bincode::serialize(&tx).unwrap()).into_string();
    // Watch its events from before it is sent.
    let mut events = reqwest::get(format!("{base}/v1/transactions/events?signature={sig}"))
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let send = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                      "params": [data, {"skipPreflight": true, "maxRetries": 1}]});
    let r = reqwest::Client::new()
        .post(format!("{base}/"))
        .header("content-type", "application/json")
        .body(send.to_string())
        .send()
        .await
        .unwrap();
    let instance = r
        .headers()
        .get("x-afterburner-instance")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .expect("the answer names its instance");
    assert!(!instance.is_empty());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"], sig);
    assert_eq!(
        s.server.wait_for(2, Duration::from_secs(10)),
        2,
        "sent, then once more"
    );

    // Both sends reported and the transaction retired (maxRetries 1).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let r = reqwest::get(format!("{base}/v1/transactions/{sig}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let record: Value = r.json().await.unwrap();
        if record["state"] == "retries_exhausted" {
            break record;
        }
        assert!(std::time::Instant::now() < deadline, "{record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["signature"], sig);
    assert_eq!(record["instance"], instance);
    assert_eq!(record["firstSend"]["result"], "sent");
    let sends = record["sends"].as_array().unwrap();
    assert_eq!(sends.len(), 2, "{record}");
    for (attempt, send) in sends.iter().enumerate() {
        assert_eq!(send["attempt"], attempt);
        assert_eq!(send["target"], s.server.addr.to_string());
        assert_eq!(send["outcome"], "sent");
    }
    assert!(record["landed"].is_null());
    assert!(record["endedAfterMs"].as_f64().unwrap() >= 100.0);

    // The event stream told the same story, in order.
    let mut text = String::new();
    let mut seen: Vec<Value> = Vec::new();
    while !seen.iter().any(|e| e["event"] == "ended") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen.extend(afterburner_test_support::sse::take_events(&mut text));
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        ["accepted", "send", "first_send", "send", "ended"],
        "{seen:?}"
    );
    assert!(seen.iter().all(|e| e["signature"] == sig));
    assert_eq!(seen[1]["outcome"], "sent");
    assert_eq!(seen[2]["result"], "sent");
    assert_eq!(seen[4]["state"], "retries_exhausted");

    let rpc = |params: Value| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "afterburner_getTransaction", "params": params})
            .to_string()
    };
    let (_, v) = post(&format!("{base}/"), rpc(json!([sig])), "application/json").await;
    assert_eq!(v["result"]["state"], "retries_exhausted");
    assert_eq!(v["result"]["sends"], record["sends"]);
    let unknown = Signature::new_unique().to_string();
    let (_, v) = post(
        &format!("{base}/"),
        rpc(json!([unknown])),
        "application/json",
    )
    .await;
    assert!(v["result"].is_null(), "{v}");
    let (_, v) = post(
        &format!("{base}/"),
        rpc(json!(["not a signature"])),
        "application/json",
    )
    .await;
    assert_eq!(v["error"]["code"], -32602);

    let r = reqwest::get(format!("{base}/v1/transactions/{unknown}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(format!("{base}/v1/transactions/xyz"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// A free UDP port on loopback (bound, then released).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Breaks the engine's kernel UDP socket under it, as a vanished device would:
/// the descriptor bound to `127.0.0.1:port` is replaced by `/dev/null`
/// (`dup2`), so the engine's next `recvmmsg` fails with ENOTSOCK, a real error
/// from the kernel on the real I/O path, and its thread ends.
fn break_engine_socket(port: u16) {
    // The socket's inode, from /proc/net/udp (local address 0100007F:PORT).
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    let local = format!("0100007F:{port:04X}");
    let inode = table
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&local.as_str())).then(|| f[9].to_string())
        })
        .unwrap_or_else(|| panic!("no UDP socket on 127.0.0.1:{port}"));
    let link = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == link))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("the engine's socket descriptor");
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup2 on two open descriptors; the engine's descriptor number stays
    // valid (now /dev/null), so nothing else can reuse it under the engine.
    #[allow(unsafe_code, reason = "fault injection: dup2 has no safe wrapper here")]
    let rc = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
    assert_eq!(rc, fd, "dup2: {}", std::io::Error::last_os_error());
}

async fn get_text(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// An engine failure with `engine.on_failure = "exit"`: the gateway says why on
/// `/health` and `/ready` (503), refuses new sends with -32005, accounts for what
/// the engine held, and asks the process to exit (`Gateway::failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failure_with_exit_policy_is_honest_and_asks_to_exit() {
    let port = free_udp_port();
    let bind = format!("\"127.0.0.1:{port}\"");
    let mut s = setup_env(
        "[engine]\non_failure = \"exit\"\n",
        &[("AFTERBURNER_PACKET_PATH__BIND", bind.as_str())],
    )
    .await;
    let base = format!("http://{}", s.gateway.rpc_addr);
    let send = |tx: &Transaction| {
        let data = bs58::encode(bincode::serialize(tx).unwrap()).into_string();
        json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
               "params": [data, {"skipPreflight": true}]})
        .to_string()
    };
    let (_, v) = post(
        &format!("{base}/"),
        send(&transfer(&Keypair::new(), 1)),
        "application/json",
    )
    .await;
    assert!(v["result"].is_string(), "{v}");
    assert_eq!(s.server.wait_for(1, Duration::from_secs(10)), 1);
    assert_eq!(get_text(format!("{base}/health")).await, (200, "ok".into()));
    assert_eq!(metric(&s.gateway, "afterburner_engine_up").await, 1.0);

    break_engine_socket(port);
    let why = tokio::time::timeout(Duration::from_secs(10), s.gateway.failed())
        .await
        .expect("the gateway gives up within 10 s");
    assert!(why.contains("non-socket"), "{why}");
    let (code, body) = get_text(format!("{base}/health")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("the QUIC engine has stopped") && body.contains("non-socket"),
        "{body}"
    );
    let (code, body) = get_text(format!("{base}/ready")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the QUIC engine has stopped"), "{body}");
    let accepted = metric(&s.gateway, "afterburner_transactions_accepted_total").await;
    let (_, v) = post(
        &format!("{base}/"),
        send(&transfer(&Keypair::new(), 2)),
        "application/json",
    )
    .await;
    assert_eq!(v["error"]["code"], -32005, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the QUIC engine has stopped"),
        "{v}"
    );
    assert_eq!(
        metric(&s.gateway, "afterburner_transactions_accepted_total").await,
        accepted,
        "a refusal counts nothing as accepted"
    );
    assert_eq!(metric(&s.gateway, "afterburner_engine_up").await, 0.0);
    assert_eq!(
        metric(
            &s.gateway,
            "afterburner_engine_failures_total{action=\"exit\"}"
        )
        .await,
        1.0
    );
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// An engine failure with the default `engine.on_failure = "restart"`: a new engine
/// (a new socket on the same port) takes over within moments; the transaction it
/// was tracking goes out again at once on the new connection (not a retry interval
/// later), new sends are accepted and delivered, and health is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failure_is_restarted_and_tracked_transactions_go_out_again() {
    let port = free_udp_port();
    let bind = format!("\"127.0.0.1:{port}\"");
    // A minute between rebroadcasts: a second delivery within seconds can only be
    // the restart's.
    let s = setup_env(
        "[retry]\ninterval_ms = 60000\n",
        &[("AFTERBURNER_PACKET_PATH__BIND", bind.as_str())],
    )
    .await;
    let base = format!("http://{}", s.gateway.rpc_addr);
    let tracked = transfer(&Keypair::new(), 1);
    let wire = bincode::serialize(&tracked).unwrap();
    let data = bs58::encode(&wire).into_string();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                      "params": [data, {"skipPreflight": true}]});
    let (_, v) = post(&format!("{base}/"), body.to_string(), "application/json").await;
    assert!(v["result"].is_string(), "{v}");
    assert_eq!(s.server.wait_for(1, Duration::from_secs(10)), 1);

    break_engine_socket(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &s.gateway,
        "afterburner_engine_failures_total{action=\"restarted\"}",
    )
    .await
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not restarted within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&s.gateway, "afterburner_engine_up").await, 1.0);
    assert_eq!(get_text(format!("{base}/health")).await, (200, "ok".into()));
    // The tracked transaction again, through the new engine.
    assert_eq!(
        s.server.wait_for(2, Duration::from_secs(10)),
        2,
        "rebroadcast on the new connection"
    );
    let delivered = s.server.delivered();
    assert!(delivered.iter().all(|d| d.data == wire), "byte-identical");
    // New sends work.
    let fresh = transfer(&Keypair::new(), 2);
    let data = bs58::encode(bincode::serialize(&fresh).unwrap()).into_string();
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "sendTransaction",
                      "params": [data, {"skipPreflight": true}]});
    let (_, v) = post(&format!("{base}/"), body.to_string(), "application/json").await;
    assert!(v["result"].is_string(), "{v}");
    assert_eq!(s.server.wait_for(3, Duration::from_secs(10)), 3);
    assert_accounted(&s.gateway).await;
    s.gateway.shutdown().await;
}

/// Another sender presenting the gateway's identity holds the leader's connections
/// for it (agave's `max_connections_per_peer`): with a limit of 1 the leader closes
/// the gateway's connection with code 4 (`too_many`). The gateway counts it per
/// leader, shows the leader as refusing, says so on `/ready`, and refuses its
/// clients with -32005 instead of accepting what cannot leave. With a limit of 2,
/// both senders deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_identity_over_the_leaders_limit_is_reported_and_refused() {
    for per_peer in [1usize, 2] {
        let identity = Keypair::new();
        let server = AgaveServer::start_with_peer_limit(
            "127.0.0.1:0".parse().unwrap(),
            &[(identity.pubkey(), 1_000_000)],
            per_peer,
        );
        // The other sender (as a validator's own send path would be): connected
        // first, kept open by keep-alives.
        let (sink, outcomes) = std::sync::mpsc::channel();
        let other = afterburner_quic::EngineHandle::spawn(
            afterburner_quic::EngineConfig::default(),
            &afterburner_quic::Identity::from_keypair(identity.insecure_clone()),
            afterburner_xdp::udp::UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
            move |o| {
                let _ = sink.send(o);
            },
        )
        .unwrap();
        let first = bincode::serialize(&transfer(&Keypair::new(), 1)).unwrap();
        other.submit(1, first.into(), server.addr).unwrap();
        let o = outcomes.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(o.kind, afterburner_quic::OutcomeKind::Sent, "{o:?}");
        assert_eq!(server.wait_for(1, Duration::from_secs(10)), 1);

        let s = setup_with(server, &identity, "", &[]).await;
        let base = format!("http://{}", s.gateway.rpc_addr);
        let send = |lamports: u64| {
            let tx = transfer(&Keypair::new(), lamports);
            let data = bs58::encode(bincode::serialize(&tx).unwrap()).into_string();
            json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                   "params": [data, {"skipPreflight": true}]})
            .to_string()
        };
        let (_, v) = post(&format!("{base}/"), send(2), "application/json").await;
        assert!(
            v["result"].is_string(),
            "before anything is known: accepted: {v}"
        );
        if per_peer == 2 {
            assert_eq!(
                s.server.wait_for(2, Duration::from_secs(10)),
                2,
                "both deliver"
            );
            assert_eq!(
                metric(&s.gateway, "afterburner_leader_refusals_total").await,
                0.0
            );
            assert_eq!(get_text(format!("{base}/ready")).await.0, 200);
            assert_accounted(&s.gateway).await;
            s.gateway.shutdown().await;
            other.shutdown().unwrap();
            continue;
        }
        // Refused with code 4: counted, and the leader shown refusing.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&s.gateway, "afterburner_leaders_refusing").await < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal seen within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(metric(&s.gateway, "afterburner_leader_refusals_total").await >= 1.0);
        assert!(
            metric(
                &s.gateway,
                "afterburner_transactions_dropped_total{reason=\"closed_too_many\"}"
            )
            .await
                >= 1.0,
            "the accepted one is accounted as dropped for it"
        );
        let (code, body) = get_text(format!("{base}/ready")).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("too_many"), "{body}");
        let accepted = metric(&s.gateway, "afterburner_transactions_accepted_total").await;
        let (_, v) = post(&format!("{base}/"), send(3), "application/json").await;
        assert_eq!(v["error"]["code"], -32005, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("too_many"),
            "{v}"
        );
        assert_eq!(
            metric(&s.gateway, "afterburner_transactions_accepted_total").await,
            accepted,
            "a refusal counts nothing as accepted"
        );
        assert_eq!(s.server.delivered_count(), 1, "only the other sender's");
        assert_accounted(&s.gateway).await;
        // What an operator sees.
        let text = reqwest::get(format!("http://{}/metrics", s.gateway.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines().filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("afterburner_leader_refusals_total")
                    || l.starts_with("afterburner_leaders_refusing")
                    || l.contains("closed_too_many"))
        }) {
            println!("{line}");
        }
        println!("/ready: {body}");
        println!("sendTransaction: {v}");
        s.gateway.shutdown().await;
        other.shutdown().unwrap();
    }
}

/// One admin JSON-RPC call over the unix socket (a line out, a line back).
async fn admin(socket: &std::path::Path, method: &str, params: Value) -> Value {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let line = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    write
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(read).lines();
    serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
}

/// Identity hot-swap against agave's TPU server. The gateway starts unstaked (its
/// identity file a symlink to an unstaked keypair) while transactions flow; the
/// symlink is swapped to the staked keypair; after the switch every packet the
/// server sees is staked, and no transaction is lost or sent twice in the
/// accounting. Then the admin socket (mode 0600): getIdentity, a bad keypair
/// refused with the old identity kept, setIdentity to another file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_hot_swap_by_file_symlink_and_admin_socket() {
    let staked = Keypair::new();
    let unstaked = Keypair::new();
    let server = AgaveServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &[(staked.pubkey(), 1_000_000)],
    );
    let dir = temp_dir("identity");
    let staked_file = dir.0.join("staked.json");
    let unstaked_file = dir.0.join("unstaked.json");
    solana_sdk::signer::keypair::write_keypair_file(&staked, &staked_file).unwrap();
    solana_sdk::signer::keypair::write_keypair_file(&unstaked, &unstaked_file).unwrap();
    let identity = dir.0.join("identity.json");
    std::os::unix::fs::symlink(&unstaked_file, &identity).unwrap();
    let socket = dir.0.join("admin.sock");
    let text = format!(
        "identity = \"{}\"\nidentity_watch_ms = 100\n[admin]\nsocket = \"{}\"\n\
         [rpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [cluster]\nstatic_leaders = [\"{}\"]\n[validation]\npreflight = \"refuse\"\n\
         [packet_path]\nbind = \"127.0.0.1:0\"\n",
        identity.display(),
        socket.display(),
        server.addr
    );
    let gateway = Gateway::start(Config::from_toml(&text, []).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", gateway.rpc_addr);
    let payer = Keypair::new();
    let mut wires = Vec::new();
    let send = async |lamports: u64| -> Vec<u8> {
        let tx = transfer(&payer, lamports);
        let wire = bincode::serialize(&tx).unwrap();
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                          "params": [bs58::encode(&wire).into_string(), {"skipPreflight": true}]});
        let (_, v) = post(&format!("{base}/"), body.to_string(), "application/json").await;
        assert!(v["result"].is_string(), "{v}");
        wire
    };
    for i in 0..20 {
        wires.push(send(i + 1).await);
    }
    assert_eq!(server.wait_for(20, Duration::from_secs(10)), 20);
    assert!(
        server.delivered().iter().all(|d| !d.staked),
        "unstaked first"
    );

    // The swap, as operators do it: a new symlink renamed over the old one, while
    // transactions keep coming.
    let next = dir.0.join("identity.json.next");
    std::os::unix::fs::symlink(&staked_file, &next).unwrap();
    std::fs::rename(&next, &identity).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut i = 20;
    while metric(
        &gateway,
        "afterburner_identity_switches_total{source=\"file\"}",
    )
    .await
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no switch within 10 s"
        );
        i += 1;
        wires.push(send(i).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        i += 1;
        wires.push(send(i).await);
    }
    let total = wires.len();
    server.wait_for(total, Duration::from_secs(10));
    let delivered = server.delivered();
    let distinct: std::collections::HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert_eq!(distinct.len(), total, "every transaction delivered");
    assert!(wires.iter().all(|w| distinct.contains(w)), "byte-identical");
    let first_staked = delivered
        .iter()
        .position(|d| d.staked)
        .expect("staked after the swap");
    assert!(
        delivered[first_staked..].iter().all(|d| d.staked),
        "nothing unstaked after the first staked packet"
    );
    assert!(
        delivered[delivered.len() - 20..].iter().all(|d| d.staked),
        "the last 20 (sent after the switch) are staked"
    );
    println!(
        "identity swap: {total} transactions, {} deliveries ({} unstaked before the swap, {} staked after)",
        delivered.len(),
        first_staked,
        delivered.len() - first_staked
    );
    assert_accounted(&gateway).await;
    assert_eq!(
        metric(&gateway, "afterburner_transactions_dropped_total").await,
        0.0
    );
    assert_eq!(
        metric(&gateway, "afterburner_transactions_accepted_total").await,
        total as f64
    );
    assert_eq!(
        metric(
            &gateway,
            &format!(
                "afterburner_identity_info{{pubkey=\"{}\"}}",
                staked.pubkey()
            )
        )
        .await,
        1.0
    );

    // The admin socket.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode {mode:o}");
    let v = admin(&socket, "getIdentity", json!([])).await;
    assert_eq!(v["result"]["identity"], staked.pubkey().to_string(), "{v}");
    let v = admin(&socket, "setIdentityFromBytes", json!([vec![7u8; 63]])).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("63 bytes"),
        "{v}"
    );
    let not_a_keypair = dir.0.join("not-a-keypair.json");
    std::fs::write(&not_a_keypair, "{}").unwrap();
    let v = admin(
        &socket,
        "setIdentity",
        json!([not_a_keypair.display().to_string()]),
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a keypair"),
        "{v}"
    );
    let v = admin(&socket, "getIdentity", json!([])).await;
    assert_eq!(
        v["result"]["identity"],
        staked.pubkey().to_string(),
        "old identity kept: {v}"
    );
    assert!(
        metric(
            &gateway,
            "afterburner_identity_errors_total{source=\"admin\"}"
        )
        .await
            >= 2.0
    );
    let v = admin(
        &socket,
        "setIdentityFromBytes",
        json!([unstaked.to_bytes().to_vec()]),
    )
    .await;
    assert_eq!(
        v["result"]["identity"],
        unstaked.pubkey().to_string(),
        "{v}"
    );
    let _ = send(9_999).await;
    assert_eq!(
        server.wait_for(delivered.len() + 1, Duration::from_secs(10)),
        delivered.len() + 1
    );
    assert!(!server.delivered().last().unwrap().staked, "unstaked again");
    let v = admin(&socket, "resetIdentity", json!([])).await;
    assert_eq!(
        v["result"]["identity"],
        staked.pubkey().to_string(),
        "back to the file: {v}"
    );
    assert_accounted(&gateway).await;
    gateway.shutdown().await;
}

/// The leader policy against three agave TPU servers named as leaders by a scripted
/// cluster RPC (`support::cluster`: the test validator is one node, always its own
/// leader; see that module). Leaders A, B, C rotate every 4 slots of 50 ms; C's
/// override sends to a fourth server D instead of C's gossip address. With B denied:
/// B never receives a packet, C's gossip address never does, A and D do, and B's
/// passes are counted. Then `setLeaderPolicy` over the admin socket allows only A:
/// from then on only A receives. `reloadLeaderPolicy` reads the configuration
/// again through the loader the binary sets (here: a test closure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_allow_and_overrides_steer_every_packet() {
    let identity = Keypair::new();
    let stakes = [(identity.pubkey(), 1_000_000)];
    let server = || AgaveServer::start("127.0.0.1:0".parse().unwrap(), &stakes);
    let (a, b, c, d) = (server(), server(), server(), server());
    let (ia, ib, ic) = (
        Pubkey::new_unique(),
        Pubkey::new_unique(),
        Pubkey::new_unique(),
    );
    let cluster = support::cluster::ScriptedCluster::start(
        vec![(ia, a.addr), (ib, b.addr), (ic, c.addr)],
        50,
    );
    let dir = temp_dir("policy");
    let id_path = dir.0.join("identity.json");
    solana_sdk::signer::keypair::write_keypair_file(&identity, &id_path).unwrap();
    let socket = dir.0.join("admin.sock");
    let text = |deny: &Pubkey| {
        format!(
            "identity = \"{}\"\n[admin]\nsocket = \"{}\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n\
             websocket_proxy = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nrpc_urls = [\"{}\"]\nslot_duration_ms = 50\n[validation]\npreflight = \"refuse\"\n\
             [packet_path]\nbind = \"127.0.0.1:0\"\n[fanout]\nsend = 2\nconnect = 3\n\
             [leaders]\ndeny = [\"{deny}\"]\ntpu_overrides = {{ \"{ic}\" = \"{}\" }}\n",
            id_path.display(),
            socket.display(),
            cluster.url(),
            d.addr
        )
    };
    let gateway = Gateway::start(Config::from_toml(&text(&ib), []).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", gateway.rpc_addr);
    // Ready once the schedule covers the slots ahead.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{url}/ready")).await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payer = Keypair::new();
    let send = |n: u64| {
        let url = url.clone();
        let payer = payer.insecure_clone();
        async move {
            for i in 0..n {
                let tx = bincode::serialize(&transfer(&payer, 1 + i)).unwrap();
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "sendTransaction",
                    "params": [base64::engine::general_purpose::STANDARD.encode(tx),
                               {"encoding": "base64", "skipPreflight": true, "maxRetries": 0}]});
                let (status, answer) = post(&url, body.to_string(), "application/json").await;
                assert_eq!(status, 200, "{answer}");
                assert!(answer["result"].is_string(), "{answer}");
                // Spread over several rotations (A B C is 600 ms).
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    };
    send(40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (na, nd) = (a.delivered_count(), d.delivered_count());
    println!(
        "deny B, C overridden to D: A {na} B {} C {} D {nd}",
        b.delivered_count(),
        c.delivered_count()
    );
    assert_eq!(b.delivered_count(), 0, "a denied leader never receives");
    assert_eq!(
        c.delivered_count(),
        0,
        "an overridden address is never used"
    );
    assert!(na > 0 && nd > 0, "A {na} D {nd}");
    let skips = metric(&gateway, "afterburner_leader_policy_skips_total").await;
    assert!(skips > 0.0, "denied passes counted");
    assert_eq!(
        metric(&gateway, "afterburner_leader_policy_entries").await,
        2.0,
        "one denied, one override"
    );

    let answer = admin(
        &socket,
        "setLeaderPolicy",
        json!([{"allow": [ia.to_string()]}]),
    )
    .await;
    assert_eq!(
        answer["result"]["allow"],
        json!([ia.to_string()]),
        "{answer}"
    );
    assert_eq!(answer["result"]["deny"], json!([]), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (na, nd) = (a.delivered_count(), d.delivered_count());
    send(30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "allow A only: A +{} D +{}",
        a.delivered_count() - na,
        d.delivered_count() - nd
    );
    assert_eq!(d.delivered_count(), nd, "only the allowed leader receives");
    assert_eq!(b.delivered_count() + c.delivered_count(), 0);
    assert!(a.delivered_count() > na);

    // reloadLeaderPolicy: without a loader it says so; with one, it applies the
    // configuration's [leaders] (deny A now).
    let answer = admin(&socket, "reloadLeaderPolicy", json!([])).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no loader"),
        "{answer}"
    );
    let reloaded = text(&ia);
    gateway
        .service
        .set_config_loader(std::sync::Arc::new(move || {
            Config::from_toml(&reloaded, []).map_err(|e| format!("{e:#}"))
        }));
    let answer = admin(&socket, "reloadLeaderPolicy", json!([])).await;
    assert_eq!(
        answer["result"]["deny"],
        json!([ia.to_string()]),
        "{answer}"
    );
    let bad = admin(&socket, "setLeaderPolicy", json!([{"deny": ["nope"]}])).await;
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("nope"),
        "{bad}"
    );
    let answer = admin(&socket, "getLeaderPolicy", json!([])).await;
    assert_eq!(
        answer["result"]["deny"],
        json!([ia.to_string()]),
        "a bad policy changes nothing"
    );
    gateway.shutdown().await;
}

/// Slow and idle clients cannot hold the service: 60 connections from 127.0.0.1
/// that never finish their headers hit the per-address cap (20) and are closed
/// after the header deadline (500 ms), while a client from 127.0.0.2 is answered
/// at once; refused connections are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stop_a_normal_client() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = setup_env(
        "",
        &[
            ("AFTERBURNER_RPC__MAX_CONNECTIONS_PER_IP", "20"),
            ("AFTERBURNER_RPC__HEADER_READ_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let addr = s.gateway.rpc_addr;
    let mut slow = Vec::new();
    for _ in 0..60 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The start of a request, never finished.
        let _ = c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(c);
    }
    let client = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "getHealth"}).to_string();
    let answer = client
        .post(format!("http://{addr}/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    println!("normal client answered in {took:?} beside 60 slow connections");
    assert_eq!(answer.status(), 200);
    assert!(took < Duration::from_millis(400), "{took:?}");
    let refused = metric(&s.gateway, "afterburner_http_connections_refused_total").await;
    assert_eq!(
        refused, 40.0,
        "60 slow connections, 20 admitted from one address"
    );
    // The admitted slow ones are closed at the header deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    for c in &mut slow {
        let mut buf = [0u8; 256];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n = tokio::time::timeout(left, c.read(&mut buf))
            .await
            .expect("closed by the header deadline")
            .unwrap_or(0);
        // hyper may answer 408 before closing; either way the connection ends.
        if n > 0 {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(left, c.read_to_end(&mut rest)).await;
        }
    }
    // An idle keep-alive connection is closed too: the places are free again.
    let again = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(again.status(), 200);
    s.gateway.shutdown().await;
}

/// API keys on every client-facing surface: no key or an unknown one is 401
/// (`/health` and `/ready` stay open); a key over its rate gets 429 with
/// `Retry-After`, one over its share of the queue 429 too; a key sees only its own
/// transactions' lifecycles; the websocket upgrade needs a key (`?api-key=` works);
/// per-key counters are exported by name, never by secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_surface_with_rates_and_shares() {
    let dir = temp_dir("keys");
    let keys = dir.0.join("keys.toml");
    let (alice, bob) = ("alice-secret-0123456789", "bob-secret-0123456789");
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nname = \"alice\"\nsecret = \"{alice}\"\ntx_per_sec = 2\nburst = 5\n\
             [[key]]\nname = \"bob\"\nsecret = \"{bob}\"\ntx_per_sec = 1000\nqueue_share = 0.03\n"
        ),
    )
    .unwrap();
    // A websocket upstream that is never reached: only the upgrade is checked.
    let extra = format!(
        "[auth]\nkeys_file = \"{}\"\n[limits]\nmax_tracked = 100\n",
        keys.display()
    );
    let s = setup_env(
        &extra,
        &[
            (
                "AFTERBURNER_CLUSTER__WEBSOCKET_URLS",
                "[\"ws://127.0.0.1:9\"]",
            ),
            ("AFTERBURNER_RPC__WEBSOCKET_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    let base = format!("http://{}", s.gateway.rpc_addr);
    let client = reqwest::Client::new();
    let payer = Keypair::new();
    let mut n = 0u64;
    let mut send = async |key: Option<&str>| {
        n += 1;
        let tx = bincode::serialize(&transfer(&payer, n)).unwrap();
        let body = json!({"jsonrpc": "2.0", "id": n, "method": "sendTransaction",
            "params": [bs58::encode(tx).into_string(), {"skipPreflight": true}]});
        let mut r = client
            .post(format!("{base}/"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let v: Value = r.json().await.unwrap();
        (status, retry, v)
    };
    let (status, _, v) = send(None).await;
    assert_eq!(status, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key is required")
    );
    let (status, _, _) = send(Some("not-a-key-0123456789")).await;
    assert_eq!(status, 401);
    for path in ["/health", "/ready"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} stays open for probes");
    }
    let r = client
        .get(format!("{base}/v1/transactions/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the event stream needs a key");
    let r = client
        .post(format!("{base}/v1/transactions"))
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the raw route needs a key");

    // alice: a burst of 5, then her rate (2/s): the 6th is 429 with Retry-After.
    let mut alice_sigs = Vec::new();
    for _ in 0..5 {
        let (status, _, v) = send(Some(alice)).await;
        assert_eq!(status, 200, "{v}");
        alice_sigs.push(v["result"].as_str().unwrap().to_string());
    }
    let (status, retry, v) = send(Some(alice)).await;
    println!("alice over her rate: {status} Retry-After {retry:?} {v}");
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(v["error"]["code"], -32090);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over this API key's rate")
    );

    // bob: 3 places of 100 (queue_share 0.03), held while his transactions live.
    for _ in 0..3 {
        let (status, _, v) = send(Some(bob)).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, retry, v) = send(Some(bob)).await;
    assert_eq!(status, 429, "{v}");
    assert!(retry.is_some());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("share of the send queue")
    );

    // Lifecycles: alice's transaction is hers alone.
    let url = format!("{base}/v1/transactions/{}", alice_sigs[0]);
    let status_as = async |key: &str| {
        let r = client.get(&url).header("x-api-key", key).send().await;
        r.unwrap().status().as_u16()
    };
    assert_eq!(status_as(alice).await, 200);
    let as_bob = status_as(bob).await;
    assert_eq!(as_bob, 404, "another key's transaction is unknown to bob");

    // The websocket upgrade.
    let ws = s.gateway.ws_addr.unwrap();
    let refused = tokio_tungstenite::connect_async(format!("ws://{ws}/")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/?api-key={alice}"))
        .await
        .expect("a key in the query parameter opens the websocket");
    let _ = socket.close(None).await;

    let text = reqwest::get(format!("http://{}/metrics", s.gateway.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "afterburner_api_key_transactions_total{key=\"alice\",result=\"accepted\"} 5",
        "afterburner_api_key_transactions_total{key=\"alice\",result=\"rate_limited\"} 1",
        "afterburner_api_key_transactions_total{key=\"bob\",result=\"share_full\"} 1",
        "afterburner_api_unauthorized_total{reason=\"missing\"} 4",
        "afterburner_api_unauthorized_total{reason=\"unknown\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    assert!(
        !text.contains("secret-0123456789"),
        "no secret in the metrics"
    );
    s.gateway.shutdown().await;
}
