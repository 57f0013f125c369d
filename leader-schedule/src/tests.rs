//! The tracker's logic over a scripted cluster.
//!
//! A real multi-leader cluster cannot run on this machine (one test validator is its
//! only leader), so rotation, epoch boundaries, fanout merging, missing addresses,
//! staleness and failover are exercised here against [`ScriptedRpc`], which answers
//! like agave's RPC does: leaders only up to the end of the epoch after the current
//! one, an error beyond. The real-validator tests live in `tests/validator.rs`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use solana_client::rpc_response::RpcContactInfo;
use solana_sdk::{clock::Slot, epoch_schedule::EpochSchedule, pubkey::Pubkey};

use crate::{
    Failover, Fanout, Method, RpcError, RpcSource, TrackerConfig, TrackerHandle, TrackerStats,
    tracker::{refresh_nodes, refresh_window},
};

/// Slots per epoch of the scripted cluster (the minimum agave allows).
const EPOCH: u64 = 32;

/// A cluster of four leaders per epoch, each holding 4 consecutive slots; every
/// epoch has its own four identities, so crossing an epoch boundary is visible.
struct ScriptedRpc {
    slot: AtomicU64,
    down: AtomicBool,
    identities: Vec<[Pubkey; 4]>,
    nodes: Mutex<Vec<RpcContactInfo>>,
    calls: AtomicU64,
}

impl ScriptedRpc {
    fn new(epochs: usize) -> Self {
        let identities: Vec<[Pubkey; 4]> = (0..epochs)
            .map(|_| std::array::from_fn(|_| Pubkey::new_unique()))
            .collect();
        let nodes = identities
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, id)| node(id, Some(addr(i))))
            .collect();
        Self {
            slot: AtomicU64::new(0),
            down: AtomicBool::new(false),
            identities,
            nodes: Mutex::new(nodes),
            calls: AtomicU64::new(0),
        }
    }

    fn schedule() -> EpochSchedule {
        EpochSchedule::custom(EPOCH, EPOCH, false)
    }

    fn leader(&self, slot: Slot) -> Pubkey {
        let epoch = (slot / EPOCH) as usize;
        self.identities[epoch % self.identities.len()][((slot % EPOCH) / 4 % 4) as usize]
    }

    fn check(&self, method: Method) -> Result<(), RpcError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err(RpcError {
                method,
                message: "connection refused".into(),
            });
        }
        Ok(())
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8009))
}

fn node(id: &Pubkey, quic: Option<SocketAddr>) -> RpcContactInfo {
    RpcContactInfo {
        pubkey: id.to_string(),
        gossip: None,
        tvu: None,
        tpu: None,
        tpu_quic: quic,
        tpu_forwards: None,
        tpu_forwards_quic: None,
        tpu_vote: None,
        serve_repair: None,
        rpc: None,
        pubsub: None,
        version: None,
        feature_set: None,
        shred_version: None,
    }
}

impl RpcSource for ScriptedRpc {
    async fn get_slot(&self) -> Result<Slot, RpcError> {
        self.check(Method::GetSlot)?;
        Ok(self.slot.load(Ordering::Relaxed))
    }

    async fn get_epoch_schedule(&self) -> Result<EpochSchedule, RpcError> {
        self.check(Method::GetEpochSchedule)?;
        Ok(Self::schedule())
    }

    async fn get_slot_leaders(&self, start: Slot, limit: u64) -> Result<Vec<Pubkey>, RpcError> {
        self.check(Method::GetSlotLeaders)?;
        // agave: the schedule is known up to the end of the next epoch.
        let current_epoch = self.slot.load(Ordering::Relaxed) / EPOCH;
        let known_end = (current_epoch + 2) * EPOCH;
        if start + limit > known_end {
            return Err(RpcError {
                method: Method::GetSlotLeaders,
                message: format!(
                    "Invalid slot range: leader schedule for epoch {} is unavailable",
                    current_epoch + 2
                ),
            });
        }
        Ok((start..start + limit).map(|s| self.leader(s)).collect())
    }

    async fn get_cluster_nodes(&self) -> Result<Vec<RpcContactInfo>, RpcError> {
        self.check(Method::GetClusterNodes)?;
        Ok(self.nodes.lock().unwrap().clone())
    }
}

fn config() -> TrackerConfig {
    TrackerConfig {
        lookahead_slots: 200,
        refetch_below_slots: 20,
        ..TrackerConfig::default()
    }
}

/// Sets the cluster's slot and lets the tracker observe it until its estimate (a
/// median of recent observations) is there, in steps it accepts (at most 48 ahead).
fn at_slot(rpc: &ScriptedRpc, handle: &TrackerHandle, slot: Slot) {
    rpc.slot.store(slot, Ordering::Relaxed);
    let mut current = handle.current_slot().unwrap_or(slot);
    loop {
        let step = if slot > current {
            slot.min(current + 40)
        } else {
            slot
        };
        for _ in 0..12 {
            handle.observe_for_tests(step);
        }
        current = step;
        if current == slot {
            break;
        }
    }
    assert_eq!(handle.current_slot(), Some(slot));
}

async fn refresh(handle: &TrackerHandle, rpc: &ScriptedRpc, config: &TrackerConfig) {
    let slot = handle.current_slot().expect("a slot was observed");
    refresh_window(
        handle,
        rpc,
        config,
        &ScriptedRpc::schedule(),
        slot,
        Instant::now(),
    )
    .await;
}

#[tokio::test]
async fn rotation_follows_the_slot() {
    let rpc = ScriptedRpc::new(4);
    let config = config();
    let handle = TrackerHandle::for_tests(&config);
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 33);
    refresh(&handle, &rpc, &config).await;

    let leaders = handle.leaders(Fanout::default());
    assert_eq!(leaders.slot, Some(33));
    assert_eq!(leaders.send[0].identity, rpc.leader(33));
    assert_eq!(
        (leaders.send[0].first_slot, leaders.send[0].last_slot),
        (33, 35)
    );
    assert_eq!(leaders.send[1].identity, rpc.leader(36));
    assert_eq!(leaders.connect.len(), 3);
    assert!(leaders.send.iter().all(|l| l.tpu_quic.is_some()));

    at_slot(&rpc, &handle, 37);
    let leaders = handle.leaders(Fanout::default());
    assert_eq!(leaders.send[0].identity, rpc.leader(37));
    assert_eq!(leaders.send[1].identity, rpc.leader(40));
}

#[tokio::test]
async fn window_is_fetched_across_an_epoch_boundary() {
    let rpc = ScriptedRpc::new(4);
    let config = config();
    let handle = TrackerHandle::for_tests(&config);
    // Slot 60 is in epoch 1 (32..=63); agave knows leaders up to the end of epoch 2.
    at_slot(&rpc, &handle, 60);
    refresh(&handle, &rpc, &config).await;
    let window = handle
        .window_for_tests()
        .expect("a window despite the 200-slot lookahead");
    assert_eq!((window.start, window.end()), (60, 96));
    // Into epoch 2: its own leaders, not epoch 1's.
    at_slot(&rpc, &handle, 66);
    let leaders = handle.leaders(Fanout::default());
    assert_eq!(leaders.send[0].identity, rpc.leader(66));
    assert_ne!(rpc.leader(66), rpc.leader(66 - EPOCH));
    // Fewer than 20 slots left: the next refresh fetches through the end of epoch 3.
    at_slot(&rpc, &handle, 80);
    refresh(&handle, &rpc, &config).await;
    let window = handle.window_for_tests().unwrap();
    assert_eq!((window.start, window.end()), (80, 128));
    assert_eq!(handle.stats().rpc_errors(Method::GetSlotLeaders), 0);
}

#[tokio::test]
async fn extra_leader_near_the_end_of_a_leaders_slots() {
    let rpc = ScriptedRpc::new(2);
    let config = config();
    let handle = TrackerHandle::for_tests(&config);
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 3); // the last of slots 0..=3
    refresh(&handle, &rpc, &config).await;
    let leaders = handle.leaders(Fanout::default());
    let ids: Vec<Pubkey> = leaders.send.iter().map(|l| l.identity).collect();
    assert_eq!(ids, vec![rpc.leader(3), rpc.leader(4), rpc.leader(8)]);
}

#[tokio::test]
async fn leaders_without_an_address_are_reported() {
    let rpc = ScriptedRpc::new(2);
    let missing = rpc.leader(4);
    rpc.nodes
        .lock()
        .unwrap()
        .retain(|n| n.pubkey != missing.to_string());
    let config = config();
    let handle = TrackerHandle::for_tests(&config);
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 0);
    refresh(&handle, &rpc, &config).await;
    let leaders = handle.leaders(Fanout::default());
    assert_eq!(leaders.send[1].identity, missing);
    assert_eq!(leaders.send[1].tpu_quic, None);
    assert_eq!(leaders.send_addresses().count(), 1);
    assert_eq!(leaders.missing_addresses().count(), 1);
    assert_eq!(
        handle
            .stats()
            .leaders_without_address
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn overrides_win_over_gossip() {
    let rpc = ScriptedRpc::new(1);
    let private: SocketAddr = "192.168.7.7:9009".parse().unwrap();
    let config = TrackerConfig {
        policy: crate::LeaderPolicy {
            overrides: HashMap::from([(rpc.leader(0), private)]),
            ..crate::LeaderPolicy::default()
        },
        ..config()
    };
    let handle = TrackerHandle::for_tests(&config);
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 0);
    refresh(&handle, &rpc, &config).await;
    assert_eq!(
        handle.leaders(Fanout::default()).send[0].tpu_quic,
        Some(private)
    );
}

/// The gateway swaps the policy at runtime (SIGHUP, admin socket): the next answer
/// passes over a denied leader, and the pass is counted.
#[tokio::test]
async fn a_policy_swapped_at_runtime_applies_to_the_next_answer() {
    let rpc = ScriptedRpc::new(4);
    let config = config();
    let handle = TrackerHandle::for_tests(&config);
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 0);
    refresh(&handle, &rpc, &config).await;
    let first = handle.leaders(Fanout::default()).send[0].identity;
    handle.set_policy(crate::LeaderPolicy {
        deny: [first].into(),
        ..crate::LeaderPolicy::default()
    });
    let after = handle.leaders(Fanout::default());
    assert!(!after.send.is_empty());
    assert!(
        after
            .send
            .iter()
            .chain(&after.connect)
            .all(|l| l.identity != first)
    );
    assert_eq!(after.skipped.len(), 1);
    assert_eq!(handle.stats().policy_skips(crate::Excluded::Denied), 1);
    assert_eq!(handle.policy().deny.len(), 1);
}

#[tokio::test]
async fn outage_keeps_the_last_schedule_and_marks_it_stale() {
    let rpc = ScriptedRpc::new(4);
    let config = TrackerConfig {
        stale_after: Duration::from_millis(100),
        ..config()
    };
    let handle = TrackerHandle::for_tests(&config);
    assert_eq!(
        handle.health(8).unusable,
        Some(crate::Unusable::NoSchedule),
        "nothing fetched yet"
    );
    refresh_nodes(&handle, &rpc).await;
    at_slot(&rpc, &handle, 10);
    refresh(&handle, &rpc, &config).await;
    assert!(!handle.is_stale());
    assert_eq!(handle.health(8).unusable, None);

    rpc.down.store(true, Ordering::Relaxed);
    // Past the window: a refetch is attempted, and fails.
    at_slot(&rpc, &handle, 200);
    let calls = rpc.calls.load(Ordering::Relaxed);
    refresh(&handle, &rpc, &config).await;
    assert_eq!(
        rpc.calls.load(Ordering::Relaxed),
        calls + 1,
        "a refetch was attempted"
    );
    assert!(
        matches!(handle.health(8).stale, Some(crate::Stale::ScheduleRefresh(f, _)) if f.attempts == 1),
        "{:?}",
        handle.health(8)
    );
    assert!(handle.leaders(Fanout::default()).stale);
    assert!(
        matches!(
            handle.health(8).unusable,
            Some(crate::Unusable::NotCovered { slot: 200, .. })
        ),
        "slot 200 is past the window: {:?}",
        handle.health(8)
    );
    assert!(!refresh_nodes(&handle, &rpc).await);
    let window = handle.window_for_tests().unwrap();
    assert_eq!(window.start, 10, "last good window kept");
    at_slot(&rpc, &handle, 12);
    let leaders = handle.leaders(Fanout::default());
    assert_eq!(
        leaders.send[0].identity,
        rpc.leader(12),
        "still answering from it"
    );
    assert!(
        leaders.send[0].tpu_quic.is_some(),
        "last good addresses kept"
    );
    // Stale (refreshes failing), yet usable: the window still covers the slots
    // ahead.
    let health = handle.health(8);
    assert_eq!(health.unusable, None, "{health:?}");
    assert!(health.stale.is_some(), "{health:?}");

    // Slots silent past `stale_after`: stale for that too (the estimate runs on).
    assert!(
        matches!(
            handle
                .health_at(Instant::now() + Duration::from_millis(150), 8)
                .stale,
            Some(crate::Stale::ScheduleRefresh(..))
        ),
        "the failing refresh is named first"
    );

    // Back: the next refresh clears it.
    rpc.down.store(false, Ordering::Relaxed);
    assert!(refresh_nodes(&handle, &rpc).await);
    at_slot(&rpc, &handle, 200);
    refresh(&handle, &rpc, &config).await;
    assert_eq!(
        handle.health(8),
        crate::Health {
            unusable: None,
            stale: None
        }
    );
    assert!(matches!(
        handle
            .health_at(Instant::now() + Duration::from_millis(150), 8)
            .stale,
        Some(crate::Stale::SlotSilent(_))
    ));
}

/// `/ready`'s old rule called a window stale 30 s after it was fetched, while the
/// default lookahead (200 slots, refetched below 100) refetches about every 40 s:
/// not ready for ~10 s of every 40. Driven on a simulated clock through five
/// refetch periods at 400 ms slots with the defaults, the tracker is usable and not
/// stale at every 100 ms step, although windows grow older than 30 s.
#[tokio::test]
async fn failover_moves_to_a_working_endpoint_and_counts_errors() {
    let stats = Arc::new(TrackerStats::default());
    let dead = ScriptedRpc::new(1);
    dead.down.store(true, Ordering::Relaxed);
    let alive = ScriptedRpc::new(1);
    alive.slot.store(42, Ordering::Relaxed);
    let rpc = Failover::new(vec![dead, alive], stats.clone());
    assert_eq!(rpc.get_slot().await.unwrap(), 42);
    assert_eq!(rpc.preferred(), 1);
    assert_eq!(stats.rpc_errors(Method::GetSlot), 1);
    // The working endpoint is now tried first: no further error.
    assert_eq!(rpc.get_slot().await.unwrap(), 42);
    assert_eq!(stats.rpc_errors(Method::GetSlot), 1);
}

#[tokio::test]
async fn all_endpoints_down_is_an_error_not_a_panic() {
    let stats = Arc::new(TrackerStats::default());
    let endpoints: Vec<ScriptedRpc> = (0..3)
        .map(|_| {
            let r = ScriptedRpc::new(1);
            r.down.store(true, Ordering::Relaxed);
            r
        })
        .collect();
    let rpc = Failover::new(endpoints, stats.clone());
    let e = rpc.get_cluster_nodes().await.unwrap_err();
    assert_eq!(e.method, Method::GetClusterNodes);
    assert_eq!(stats.rpc_errors(Method::GetClusterNodes), 3);
    let none: Failover<ScriptedRpc> = Failover::new(Vec::new(), stats);
    assert!(none.get_slot().await.is_err());
}

/// Mainnet-sized epochs (432,000 slots; windows are never cut short by an epoch
/// end), four leaders of four slots each.
struct LongEpochs {
    identities: [Pubkey; 4],
}

impl LongEpochs {
    const EPOCH: u64 = 432_000;

    fn schedule() -> EpochSchedule {
        EpochSchedule::custom(Self::EPOCH, Self::EPOCH, false)
    }
}

impl RpcSource for LongEpochs {
    async fn get_slot(&self) -> Result<Slot, RpcError> {
        Err(RpcError {
            method: Method::GetSlot,
            message: "the test observes slots itself".into(),
        })
    }

    async fn get_epoch_schedule(&self) -> Result<EpochSchedule, RpcError> {
        Ok(Self::schedule())
    }

    async fn get_slot_leaders(&self, start: Slot, limit: u64) -> Result<Vec<Pubkey>, RpcError> {
        Ok((start..start + limit)
            .map(|s| self.identities[(s / 4 % 4) as usize])
            .collect())
    }

    async fn get_cluster_nodes(&self) -> Result<Vec<RpcContactInfo>, RpcError> {
        Ok(self
            .identities
            .iter()
            .enumerate()
            .map(|(i, id)| node(id, Some(addr(i))))
            .collect())
    }
}

/// `/ready`'s old rule called a window stale 30 s after it was fetched, while the
/// default lookahead (200 slots, refetched below 100) refetches about every 40 s:
/// not ready for ~10 s of every 40. Driven on a simulated clock through five
/// refetch periods at 400 ms slots with the defaults, the tracker is usable and not
/// stale at every 100 ms step, although windows grow older than 30 s.
#[tokio::test]
async fn usable_through_many_refetch_periods_under_the_defaults() {
    let rpc = LongEpochs {
        identities: std::array::from_fn(|_| Pubkey::new_unique()),
    };
    let config = TrackerConfig::default();
    let handle = TrackerHandle::for_tests(&config);
    assert!(refresh_nodes(&handle, &rpc).await);
    let t0 = Instant::now();
    let slot_ms = 400u64;
    // What the gateway's default fanout needs: 2 leaders of 4 slots ahead.
    let needed = 8;
    let mut oldest_window = Duration::ZERO;
    let periods = 5;
    // One refetch period: (200 - 100) slots.
    let steps = periods * 100 * slot_ms / 100;
    for step in 0..=steps {
        let now = t0 + Duration::from_millis(step * 100);
        let slot = 1_000_000 + step * 100 / slot_ms;
        if step % (slot_ms / 100) == 0 {
            // The slot poll and the schedule task, once per slot.
            handle.observe_at_for_tests(slot, now);
            refresh_window(&handle, &rpc, &config, &LongEpochs::schedule(), slot, now).await;
        }
        let health = handle.health_at(now, needed);
        assert_eq!(
            health,
            crate::Health {
                unusable: None,
                stale: None
            },
            "at {} ms, slot {slot}",
            step * 100
        );
        let window = handle.window_for_tests().unwrap();
        oldest_window = oldest_window.max(now.saturating_duration_since(window.fetched_at));
    }
    let fetches = handle.stats().schedule_fetches.load(Ordering::Relaxed);
    assert!(fetches >= periods, "{fetches} fetches");
    assert!(
        oldest_window > Duration::from_secs(30),
        "the old rule would have flapped: windows reached {oldest_window:?}"
    );
}
