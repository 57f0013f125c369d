//! [`ScriptedCluster`]: a cluster RPC endpoint whose leaders are scripted, for tests
//! that need several leaders with their own TPU servers (a policy, leader churn).
//!
//! A stand-in, said plainly: the test validator is one node and always its own
//! leader, and no real cluster of several agave validators fits on this machine, so
//! this answers the calls the leader tracker and the gateway make (`getSlot`,
//! `getEpochSchedule`, `getSlotLeaders`, `getClusterNodes`, `getSignatureStatuses`,
//! `isBlockhashValid`, `getVersion`) over real HTTP JSON-RPC, with the shapes agave's
//! RPC gives them. The slot advances with the wall clock at `slot_ms`, and leaders
//! rotate every [`SLOTS_PER_LEADER`] slots in the order given.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use solana_sdk::pubkey::Pubkey;

/// Consecutive slots each leader holds (as on mainnet).
pub const SLOTS_PER_LEADER: u64 = 4;

/// The first slot answered.
const FIRST_SLOT: u64 = 1_000;

/// A scripted cluster RPC endpoint on loopback.
#[derive(Debug)]
pub struct ScriptedCluster {
    /// Where it listens (`http://{addr}`).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    script: Arc<Script>,
}

#[derive(Debug)]
struct Script {
    leaders: Vec<(Pubkey, SocketAddr)>,
    slot_ms: u64,
    started: Instant,
}

impl Script {
    fn slot(&self) -> u64 {
        FIRST_SLOT + self.started.elapsed().as_millis() as u64 / self.slot_ms.max(1)
    }

    fn leader_at(&self, slot: u64) -> Pubkey {
        let i = (slot / SLOTS_PER_LEADER) as usize % self.leaders.len().max(1);
        self.leaders[i].0
    }

    fn answer(&self, method: &str, params: &Value) -> Result<Value, (i64, String)> {
        let context = json!({"slot": self.slot(), "apiVersion": "3.1.0"});
        Ok(match method {
            "getSlot" => json!(self.slot()),
            "getEpochSchedule" => {
                json!({"slotsPerEpoch": 432000, "leaderScheduleSlotOffset": 432000,
                   "warmup": false, "firstNormalEpoch": 0, "firstNormalSlot": 0})
            }
            "getSlotLeaders" => {
                let start = params[0].as_u64().unwrap_or(0);
                let limit = params[1].as_u64().unwrap_or(0).min(5_000);
                let ids: Vec<String> = (start..start + limit)
                    .map(|s| self.leader_at(s).to_string())
                    .collect();
                json!(ids)
            }
            "getClusterNodes" => json!(
                self.leaders
                    .iter()
                    .map(|(id, tpu_quic)| json!({
                        "pubkey": id.to_string(), "gossip": null, "tpu": null,
                        "tpuQuic": tpu_quic.to_string(), "rpc": null, "pubsub": null,
                        "version": "3.1.0", "featureSet": null, "shredVersion": null
                    }))
                    .collect::<Vec<_>>()
            ),
            "getSignatureStatuses" => {
                let n = params[0].as_array().map_or(0, Vec::len);
                json!({"context": context, "value": vec![Value::Null; n]})
            }
            "isBlockhashValid" => json!({"context": context, "value": true}),
            "getVersion" => json!({"solana-core": "3.1.0", "feature-set": 0}),
            _ => return Err((-32601, "Method not found".into())),
        })
    }
}

impl ScriptedCluster {
    /// Serves `leaders` (identity, TPU QUIC address), rotating every
    /// [`SLOTS_PER_LEADER`] slots of `slot_ms`.
    pub fn start(leaders: Vec<(Pubkey, SocketAddr)>, slot_ms: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(Script {
            leaders,
            slot_ms,
            started: Instant::now(),
        });
        let stopping = stop.clone();
        let serving = script.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let script = serving.clone();
                        let stopping = stopping.clone();
                        std::thread::spawn(move || serve(stream, &script, &stopping));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop, script }
    }

    /// The slot it answers now.
    pub fn slot(&self) -> u64 {
        self.script.slot()
    }

    /// When `slot` begins, on this process's clock.
    pub fn slot_start(&self, slot: u64) -> Instant {
        let n = slot.saturating_sub(FIRST_SLOT);
        self.script.started + Duration::from_millis(n * self.script.slot_ms)
    }

    /// The leader it names for `slot`.
    pub fn leader_at(&self, slot: u64) -> Pubkey {
        self.script.leader_at(slot)
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ScriptedCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One keep-alive connection: requests in, answers out, until it closes or the
/// endpoint stops.
fn serve(stream: TcpStream, script: &Script, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut write = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut read = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let mut len = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match read.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some(v) = trimmed.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len.min(1 << 20)];
        if read.read_exact(&mut body).is_err() {
            return;
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = |r: &Value| {
            let method = r["method"].as_str().unwrap_or("");
            match script.answer(method, &r["params"]) {
                Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": r["id"]}),
                Err((code, message)) => json!({"jsonrpc": "2.0",
                    "error": {"code": code, "message": message}, "id": r["id"]}),
            }
        };
        let text = match &request {
            Value::Array(batch) => Value::Array(batch.iter().map(answer).collect()),
            r => answer(r),
        }
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if write.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
