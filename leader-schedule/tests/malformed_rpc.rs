//! Broken RPC answers: malformed JSON, wrong types, missing fields, absurd sizes.
//!
//! A real validator cannot be made to send these, so a small JSON-RPC responder on
//! loopback stands in for a broken or hostile endpoint; the client side is the real
//! `solana-client` through [`ClientRpc`] and [`Failover`], and the tracker is the real
//! one. Every bad answer must become a counted error, never a panic, and the last good
//! schedule and addresses must stay in use.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use leader_schedule::{
    ClientRpc, Failover, Fanout, LeaderTracker, Method, RpcSource, TrackerConfig, TrackerStats,
};
use serde_json::{Value, json};
use solana_sdk::pubkey::Pubkey;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

/// What the responder answers per method: a raw `result` JSON text, or a raw body.
#[derive(Clone)]
enum Answer {
    Result(String),
    Body(String),
}

type Script = Arc<Mutex<Box<dyn Fn(&str, &Value) -> Answer + Send>>>;

async fn responder(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let method = request["method"].as_str().unwrap_or("").to_string();
                    let answer = (script.lock().unwrap())(&method, &request["params"]);
                    let text = match answer {
                        Answer::Result(r) => {
                            format!(r#"{{"jsonrpc":"2.0","result":{r},"id":{}}}"#, request["id"])
                        }
                        Answer::Body(b) => b,
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn good(leader: Pubkey, slot: &AtomicU64) -> impl Fn(&str, &Value) -> Answer + Send + use<'_> {
    move |method, params| match method {
        "getSlot" => Answer::Result(slot.load(Ordering::Relaxed).to_string()),
        "getEpochSchedule" => Answer::Result(
            json!({"slotsPerEpoch": 432000, "leaderScheduleSlotOffset": 432000,
                   "warmup": false, "firstNormalEpoch": 0, "firstNormalSlot": 0})
            .to_string(),
        ),
        "getSlotLeaders" => {
            let n = params[1].as_u64().unwrap_or(0) as usize;
            Answer::Result(json!(vec![leader.to_string(); n]).to_string())
        }
        "getClusterNodes" => Answer::Result(
            json!([{"pubkey": leader.to_string(), "gossip": null, "tpu": "127.0.0.1:8003",
                    "tpuQuic": "127.0.0.1:8009", "rpc": null, "pubsub": null,
                    "version": null, "featureSet": null, "shredVersion": null}])
            .to_string(),
        ),
        _ => Answer::Body("{}".into()),
    }
}

fn client(addr: SocketAddr, stats: &Arc<TrackerStats>) -> Failover<ClientRpc> {
    Failover::new(
        vec![ClientRpc::new(
            &format!("http://{addr}"),
            Duration::from_secs(2),
        )],
        stats.clone(),
    )
}

#[tokio::test]
async fn each_malformed_answer_is_a_counted_error() {
    let cases: Vec<(&str, Answer)> = vec![
        ("getSlot", Answer::Body("this is not json".into())),
        ("getSlot", Answer::Result(r#""seven""#.into())),
        (
            "getEpochSchedule",
            Answer::Result(r#"{"slotsPerEpoch": "many"}"#.into()),
        ),
        (
            "getEpochSchedule",
            Answer::Result(
                json!({"slotsPerEpoch": 0, "leaderScheduleSlotOffset": 0, "warmup": false,
                   "firstNormalEpoch": 0, "firstNormalSlot": 0})
                .to_string(),
            ),
        ),
        ("getSlotLeaders", Answer::Result("[1, 2, 3]".into())),
        (
            "getSlotLeaders",
            Answer::Result(r#"["not a pubkey"]"#.into()),
        ),
        // Far more leaders than asked for.
        (
            "getSlotLeaders",
            Answer::Result(json!(vec![Pubkey::new_unique().to_string(); 100_000]).to_string()),
        ),
        (
            "getSlotLeaders",
            Answer::Body(r#"{"jsonrpc":"2.0","id":1}"#.into()),
        ),
        (
            "getClusterNodes",
            Answer::Result(r#"[{"tpuQuic": "127.0.0.1:1"}]"#.into()),
        ),
        ("getClusterNodes", Answer::Result(r#"{"pubkey": 5}"#.into())),
    ];
    for (method, answer) in cases {
        let stats = Arc::new(TrackerStats::default());
        let script: Script = Arc::new(Mutex::new(Box::new(move |_: &str, _: &Value| {
            answer.clone()
        })));
        let rpc = client(responder(script).await, &stats);
        let (result, m) = match method {
            "getSlot" => (rpc.get_slot().await.map(|_| ()), Method::GetSlot),
            "getEpochSchedule" => (
                rpc.get_epoch_schedule().await.map(|_| ()),
                Method::GetEpochSchedule,
            ),
            "getSlotLeaders" => (
                rpc.get_slot_leaders(0, 10).await.map(|_| ()),
                Method::GetSlotLeaders,
            ),
            _ => (
                rpc.get_cluster_nodes().await.map(|_| ()),
                Method::GetClusterNodes,
            ),
        };
        let e = result.expect_err(method);
        assert_eq!(e.method, m);
        assert_eq!(stats.rpc_errors(m), 1, "{method}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_keeps_the_last_good_schedule_when_answers_turn_bad() {
    let leader = Pubkey::new_unique();
    let slot: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(1_000)));
    let bad = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = good(leader, slot);
    let flag = bad.clone();
    let script: Script = Arc::new(Mutex::new(Box::new(move |method: &str, params: &Value| {
        if flag.load(Ordering::Relaxed) && method != "getSlot" {
            Answer::Result(r#"{"garbage": true}"#.into())
        } else {
            answers(method, params)
        }
    })));
    let addr = responder(script).await;
    let stats = Arc::new(TrackerStats::default());
    let rpc = Arc::new(client(addr, &stats));
    let config = TrackerConfig {
        slot_duration: Duration::from_millis(50),
        lookahead_slots: 100,
        refetch_below_slots: 80,
        cluster_nodes_interval: Duration::from_millis(100),
        ..TrackerConfig::default()
    };
    let tracker = LeaderTracker::spawn(config, rpc, stats.clone());
    let handle = tracker.handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle
        .leaders(Fanout::default())
        .send
        .first()
        .and_then(|l| l.tpu_quic)
        .is_none()
    {
        assert!(Instant::now() < deadline, "never got a schedule");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bad.store(true, Ordering::Relaxed);
    // Let the slot move to where a refetch is due, then give the tracker time to try.
    slot.fetch_add(30, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.rpc_errors(Method::GetSlotLeaders) == 0
        || stats.rpc_errors(Method::GetClusterNodes) == 0
    {
        assert!(
            Instant::now() < deadline,
            "bad answers were never requested"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leaders = handle.leaders(Fanout::default());
    assert_eq!(
        leaders.send[0].identity, leader,
        "last good schedule still answers"
    );
    assert_eq!(
        leaders.send[0].tpu_quic,
        Some("127.0.0.1:8009".parse().unwrap())
    );
    tracker.shutdown().await;
}
