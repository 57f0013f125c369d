//! [`LeaderTracker`]: the background tasks that keep the slot estimate, the leader
//! window and the TPU addresses fresh, and [`TrackerHandle`], the cheap, lock-free
//! read side the gateway calls on every transaction.
//!
//! Tasks: websocket slot updates (`slotsUpdatesSubscribe`, else `slotSubscribe`) with
//! resubscription and backoff; `getSlot` polling whenever the websocket is down or
//! silent; `getSlotLeaders` refetched before the window runs out; `getClusterNodes`
//! on an interval. An RPC failure keeps the last good data.
//!
//! [`TrackerHandle::health`] says two things, separately: whether the data can be
//! used to send now (the window covers the estimated slot and the slots ahead the
//! fanout needs) and whether it is *stale* (the last refresh attempt failed, or no
//! slot was observed for `stale_after`). Stale is a reason to show, not a refusal:
//! an RPC outage alone does not stop sending while the last window still covers
//! the slots ahead. The window's age plays no part: it is refetched on coverage,
//! not on a clock.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use solana_client::{nonblocking::pubsub_client::PubsubClient, rpc_response::SlotUpdate};
use solana_sdk::{clock::Slot, epoch_schedule::EpochSchedule, pubkey::Pubkey};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    addresses::TpuAddresses,
    fanout::{Fanout, Leaders, upcoming_leaders},
    policy::LeaderPolicy,
    slot::SlotEstimator,
    source::RpcSource,
    stats::{SlotSource, TrackerStats},
    window::{LeaderWindow, fetch_range},
};

/// Tracker configuration.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Websocket (pubsub) endpoints, tried in turn; empty: polling only.
    pub websocket_urls: Vec<String>,
    /// Slot duration of the cluster (400 ms today; lower on newer clusters).
    pub slot_duration: Duration,
    /// Slots of leaders fetched per `getSlotLeaders` (at most 5,000).
    pub lookahead_slots: u64,
    /// Refetch when fewer slots than this remain in the window.
    pub refetch_below_slots: u64,
    /// How often to refresh `getClusterNodes`.
    pub cluster_nodes_interval: Duration,
    /// No slot observation for this long: reported stale (the estimate runs on the
    /// clock meanwhile).
    pub stale_after: Duration,
    /// Longest wait between websocket reconnection attempts.
    pub websocket_backoff_max: Duration,
    /// Which leaders to send to, and address overrides (swappable at runtime with
    /// [`TrackerHandle::set_policy`]).
    pub policy: LeaderPolicy,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            websocket_urls: Vec::new(),
            slot_duration: Duration::from_millis(400),
            // tpu-client-next fetches 200 and refetches below 100.
            lookahead_slots: 200,
            refetch_below_slots: 100,
            cluster_nodes_interval: Duration::from_secs(300),
            stale_after: Duration::from_secs(30),
            websocket_backoff_max: Duration::from_secs(30),
            policy: LeaderPolicy::default(),
        }
    }
}

struct Shared {
    slots: ArcSwap<SlotEstimator>,
    /// Serialises writers of `slots` (websocket and polling tasks).
    slots_write: Mutex<()>,
    window: ArcSwapOption<LeaderWindow>,
    addresses: ArcSwap<TpuAddresses>,
    policy: ArcSwap<LeaderPolicy>,
    stats: Arc<TrackerStats>,
    stale_after: Duration,
    /// Consecutive failed refreshes of the window and of the addresses, and since
    /// when (`None`: the last attempt worked).
    schedule_failing: Mutex<Option<Failing>>,
    nodes_failing: Mutex<Option<Failing>>,
}

/// A run of failed refresh attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failing {
    /// When the first of them failed.
    pub since: Instant,
    /// How many in a row.
    pub attempts: u64,
}

impl Failing {
    fn record(slot: &Mutex<Option<Self>>, ok: bool, now: Instant) {
        let Ok(mut f) = slot.lock() else {
            return;
        };
        *f = if ok {
            None
        } else {
            Some(match *f {
                Some(f) => Self {
                    attempts: f.attempts + 1,
                    ..f
                },
                None => Self {
                    since: now,
                    attempts: 1,
                },
            })
        };
    }

    fn get(slot: &Mutex<Option<Self>>) -> Option<Self> {
        slot.lock().ok().and_then(|f| *f)
    }
}

/// Why the tracker's data cannot be used to send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// No leader window fetched yet.
    #[error("no leader schedule yet")]
    NoSchedule,
    /// No slot observed yet.
    #[error("no slot yet")]
    NoSlot,
    /// The window does not cover the current slot and the slots ahead.
    #[error(
        "the leader schedule ends at slot {window_end}, short of slot {slot} + {needed} slots ahead"
    )]
    NotCovered {
        /// The estimated current slot.
        slot: Slot,
        /// One past the window's last slot.
        window_end: Slot,
        /// Slots ahead of `slot` it must cover.
        needed: u64,
    },
}

/// Why the tracker's data is stale (shown and exported, not a refusal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// The last attempts to refetch the leader window failed.
    #[error("leader schedule refresh failing ({} attempts, for {:.0?})", .0.attempts, .1)]
    ScheduleRefresh(Failing, Duration),
    /// The last attempts to refetch the TPU addresses failed.
    #[error("cluster nodes refresh failing ({} attempts, for {:.0?})", .0.attempts, .1)]
    NodesRefresh(Failing, Duration),
    /// No slot observed for longer than `stale_after` (the estimate runs on the
    /// clock).
    #[error("no slot observed for {0:.0?}")]
    SlotSilent(Duration),
}

/// The tracker's data at one moment: see [`TrackerHandle::health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Why it cannot be used to send (`None`: it can).
    pub unusable: Option<Unusable>,
    /// Why it is stale (`None`: the last refreshes worked and slots arrive).
    pub stale: Option<Stale>,
}

/// The read side: cheap to clone, never waits on the network.
#[derive(Clone)]
pub struct TrackerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TrackerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerHandle")
            .field("slot", &self.current_slot())
            .finish()
    }
}

impl TrackerHandle {
    /// The estimated current slot.
    pub fn current_slot(&self) -> Option<Slot> {
        self.shared.slots.load().estimate(Instant::now())
    }

    /// Leaders to send to and to keep warm, right now.
    pub fn leaders(&self, fanout: Fanout) -> Leaders {
        let now = Instant::now();
        let slots = self.shared.slots.load();
        let slot = slots.estimate(now);
        let window = self.shared.window.load();
        let stale = self.is_stale_at(now);
        let (Some(slot), Some(window)) = (slot, window.as_deref()) else {
            return Leaders {
                slot,
                stale,
                ..Leaders::default()
            };
        };
        let addresses = self.shared.addresses.load();
        let policy = self.shared.policy.load();
        let up = upcoming_leaders(window, &addresses, &policy, slot, fanout);
        for k in &up.skipped {
            self.shared.stats.policy_skips[k.reason.index()]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Leaders {
            slot: Some(slot),
            send: up.send,
            connect: up.connect,
            stale,
            skipped: up.skipped,
        }
    }

    /// Replaces the leader policy; the next fanout answer follows it.
    pub fn set_policy(&self, policy: LeaderPolicy) {
        self.shared.policy.store(Arc::new(policy));
        update_missing_gauge(self);
    }

    /// The leader policy in force.
    pub fn policy(&self) -> Arc<LeaderPolicy> {
        self.shared.policy.load_full()
    }

    /// The leader of `slot`, when the current window covers it (a slot that landed
    /// a moment ago usually is; one before the last refetch may not be).
    pub fn leader_at(&self, slot: Slot) -> Option<Pubkey> {
        self.shared.window.load().as_ref()?.leader_at(slot)
    }

    /// Age of the leader window, if one was fetched.
    pub fn schedule_age(&self) -> Option<Duration> {
        self.shared
            .window
            .load()
            .as_ref()
            .map(|w| w.fetched_at.elapsed())
    }

    /// Whether the data is stale (see [`Health::stale`]).
    pub fn is_stale(&self) -> bool {
        self.is_stale_at(Instant::now())
    }

    fn is_stale_at(&self, now: Instant) -> bool {
        self.stale_at(now).is_some()
    }

    /// Whether the data can be used to send now, needing `needed` slots ahead of the
    /// current one, and whether it is stale.
    pub fn health(&self, needed: u64) -> Health {
        self.health_at(Instant::now(), needed)
    }

    /// [`Self::health`] at `now`.
    pub fn health_at(&self, now: Instant, needed: u64) -> Health {
        let window = self.shared.window.load();
        let slot = self.shared.slots.load().estimate(now);
        let unusable = match (window.as_deref(), slot) {
            (None, _) => Some(Unusable::NoSchedule),
            (_, None) => Some(Unusable::NoSlot),
            (Some(w), Some(slot)) => {
                (w.remaining_from(slot) < needed.max(1)).then_some(Unusable::NotCovered {
                    slot,
                    window_end: w.end(),
                    needed,
                })
            }
        };
        Health {
            unusable,
            stale: self.stale_at(now),
        }
    }

    fn stale_at(&self, now: Instant) -> Option<Stale> {
        if let Some(f) = Failing::get(&self.shared.schedule_failing) {
            return Some(Stale::ScheduleRefresh(
                f,
                now.saturating_duration_since(f.since),
            ));
        }
        if let Some(f) = Failing::get(&self.shared.nodes_failing) {
            return Some(Stale::NodesRefresh(
                f,
                now.saturating_duration_since(f.since),
            ));
        }
        let silent = self
            .shared
            .slots
            .load()
            .last_observed_at()
            .map(|t| now.saturating_duration_since(t));
        match silent {
            Some(d) if d > self.shared.stale_after => Some(Stale::SlotSilent(d)),
            _ => None,
        }
    }

    /// The tracker's counters.
    pub fn stats(&self) -> &Arc<TrackerStats> {
        &self.shared.stats
    }

    fn observe(&self, slot: Slot) {
        self.observe_at(slot, Instant::now());
    }

    fn observe_at(&self, slot: Slot, now: Instant) {
        let Ok(_guard) = self.shared.slots_write.lock() else {
            return;
        };
        let mut next = SlotEstimator::clone(&self.shared.slots.load());
        if next.observe(slot, now) {
            self.shared.slots.store(Arc::new(next));
            self.shared
                .stats
                .slot_observations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.shared
                .stats
                .slot_observations_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn last_observed_at(&self) -> Option<Instant> {
        self.shared.slots.load().last_observed_at()
    }
}

/// Starts and owns the tracker's tasks.
#[derive(Debug)]
pub struct LeaderTracker {
    handle: TrackerHandle,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl LeaderTracker {
    /// Spawns the tracker's tasks on the current tokio runtime.
    pub fn spawn<S: RpcSource>(
        config: TrackerConfig,
        source: Arc<S>,
        stats: Arc<TrackerStats>,
    ) -> Self {
        let shared = Arc::new(Shared {
            slots: ArcSwap::from_pointee(SlotEstimator::new(config.slot_duration)),
            slots_write: Mutex::new(()),
            window: ArcSwapOption::empty(),
            addresses: ArcSwap::from_pointee(TpuAddresses::default()),
            policy: ArcSwap::from_pointee(config.policy.clone()),
            stats,
            stale_after: config.stale_after,
            schedule_failing: Mutex::new(None),
            nodes_failing: Mutex::new(None),
        });
        let handle = TrackerHandle { shared };
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if !config.websocket_urls.is_empty() {
            tasks.spawn(websocket_task(
                handle.clone(),
                config.clone(),
                cancel.clone(),
            ));
        }
        tasks.spawn(poll_task(
            handle.clone(),
            source.clone(),
            config.clone(),
            cancel.clone(),
        ));
        tasks.spawn(schedule_task(
            handle.clone(),
            source.clone(),
            config.clone(),
            cancel.clone(),
        ));
        tasks.spawn(nodes_task(handle.clone(), source, config, cancel.clone()));
        Self {
            handle,
            tasks,
            cancel,
        }
    }

    /// The read side.
    pub fn handle(&self) -> TrackerHandle {
        self.handle.clone()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for LeaderTracker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Sleeps `d` unless cancelled; returns false when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn websocket_task(handle: TrackerHandle, config: TrackerConfig, cancel: CancellationToken) {
    let stats = handle.stats().clone();
    let mut backoff = Duration::from_millis(250);
    let mut url_index = 0;
    while !cancel.is_cancelled() {
        let url = &config.websocket_urls[url_index % config.websocket_urls.len()];
        url_index += 1;
        let connected =
            tokio::time::timeout(Duration::from_secs(5), PubsubClient::new(url.as_str())).await;
        match connected {
            Ok(Ok(client)) => {
                if follow_slots(&handle, &client, &cancel, &stats).await {
                    // It worked for a while: start the backoff over.
                    backoff = Duration::from_millis(250);
                }
                client.shutdown().await.ok();
            }
            Ok(Err(e)) => tracing::debug!(url, error = %e, "websocket connect failed"),
            Err(_) => tracing::debug!(url, "websocket connect timed out"),
        }
        if stats.slot_source() == SlotSource::Websocket {
            stats.set_slot_source(SlotSource::Polling);
        }
        if !pause(&cancel, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(config.websocket_backoff_max);
    }
}

/// Follows slot updates until the stream ends. Returns whether anything was received.
async fn follow_slots(
    handle: &TrackerHandle,
    client: &PubsubClient,
    cancel: &CancellationToken,
    stats: &TrackerStats,
) -> bool {
    let mut received = false;
    match client.slot_updates_subscribe().await {
        Ok((mut updates, unsubscribe)) => {
            stats
                .websocket_subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            loop {
                let update = tokio::select! {
                    _ = cancel.cancelled() => break,
                    u = updates.next() => u,
                };
                let Some(update) = update else { break };
                let slot = match update {
                    SlotUpdate::FirstShredReceived { slot, .. } => slot,
                    // The slot after a completed one is being produced now.
                    SlotUpdate::Completed { slot, .. } => slot.saturating_add(1),
                    _ => continue,
                };
                received = true;
                stats.set_slot_source(SlotSource::Websocket);
                handle.observe(slot);
            }
            unsubscribe().await;
        }
        Err(e) => {
            tracing::debug!(error = %e, "slotsUpdatesSubscribe refused; trying slotSubscribe");
            let Ok((mut slots, unsubscribe)) = client.slot_subscribe().await else {
                return false;
            };
            stats
                .websocket_subscriptions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            loop {
                let info = tokio::select! {
                    _ = cancel.cancelled() => break,
                    s = slots.next() => s,
                };
                let Some(info) = info else { break };
                received = true;
                stats.set_slot_source(SlotSource::Websocket);
                handle.observe(info.slot.saturating_add(1));
            }
            unsubscribe().await;
        }
    }
    received
}

async fn poll_task<S: RpcSource>(
    handle: TrackerHandle,
    source: Arc<S>,
    config: TrackerConfig,
    cancel: CancellationToken,
) {
    let quiet = config.slot_duration * 3;
    loop {
        let websocket_alive = handle.stats().slot_source() == SlotSource::Websocket
            && handle
                .last_observed_at()
                .is_some_and(|t| t.elapsed() < quiet);
        if !websocket_alive {
            match source.get_slot().await {
                Ok(slot) => {
                    if handle.stats().slot_source() != SlotSource::Websocket {
                        handle.stats().set_slot_source(SlotSource::Polling);
                    }
                    // The processed slot is done; the next one is being produced.
                    handle.observe(slot.saturating_add(1));
                }
                Err(e) => tracing::debug!(error = %e, "slot poll failed"),
            }
        }
        if !pause(&cancel, config.slot_duration).await {
            return;
        }
    }
}

async fn schedule_task<S: RpcSource>(
    handle: TrackerHandle,
    source: Arc<S>,
    config: TrackerConfig,
    cancel: CancellationToken,
) {
    let mut epoch_schedule: Option<EpochSchedule> = None;
    loop {
        if epoch_schedule.is_none() {
            match source.get_epoch_schedule().await {
                Ok(s) => epoch_schedule = Some(s),
                Err(e) => tracing::warn!(error = %e, "no epoch schedule yet"),
            }
        }
        if let (Some(schedule), Some(slot)) = (&epoch_schedule, handle.current_slot()) {
            refresh_window(
                &handle,
                source.as_ref(),
                &config,
                schedule,
                slot,
                Instant::now(),
            )
            .await;
        }
        if !pause(&cancel, config.slot_duration).await {
            return;
        }
    }
}

/// Fetches a new leader window when the current one runs low (at `now`); keeps the
/// old one on error, and records the failure (stale).
pub(crate) async fn refresh_window<S: RpcSource>(
    handle: &TrackerHandle,
    source: &S,
    config: &TrackerConfig,
    schedule: &EpochSchedule,
    slot: Slot,
    now: Instant,
) {
    let current = handle.shared.window.load_full();
    let Some((start, limit)) = fetch_range(
        current.as_deref(),
        slot,
        schedule,
        config.lookahead_slots,
        config.refetch_below_slots,
    ) else {
        return;
    };
    match source.get_slot_leaders(start, limit).await {
        Ok(leaders) => {
            let window = LeaderWindow {
                start,
                leaders,
                fetched_at: now,
            };
            Failing::record(&handle.shared.schedule_failing, true, now);
            handle
                .stats()
                .schedule_fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            handle.shared.window.store(Some(Arc::new(window)));
            update_missing_gauge(handle);
        }
        Err(e) => {
            Failing::record(&handle.shared.schedule_failing, false, now);
            tracing::warn!(error = %e, start, limit, "leader window not refreshed; keeping the last one")
        }
    }
}

async fn nodes_task<S: RpcSource>(
    handle: TrackerHandle,
    source: Arc<S>,
    config: TrackerConfig,
    cancel: CancellationToken,
) {
    loop {
        let wait = match refresh_nodes(&handle, source.as_ref()).await {
            true => config.cluster_nodes_interval,
            // Retry sooner while we have nothing or the last call failed.
            false => config.cluster_nodes_interval.min(Duration::from_secs(5)),
        };
        if !pause(&cancel, wait).await {
            return;
        }
    }
}

/// Refreshes the TPU address map; keeps the old one on error. Returns success.
pub(crate) async fn refresh_nodes<S: RpcSource>(handle: &TrackerHandle, source: &S) -> bool {
    match source.get_cluster_nodes().await {
        Ok(nodes) => {
            let (map, report) = TpuAddresses::from_cluster_nodes(&nodes);
            if report.bad_pubkey > 0 || report.no_tpu > 0 {
                tracing::debug!(?report, "getClusterNodes entries skipped");
            }
            handle.shared.addresses.store(Arc::new(map));
            Failing::record(&handle.shared.nodes_failing, true, Instant::now());
            handle
                .stats()
                .cluster_node_fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            update_missing_gauge(handle);
            true
        }
        Err(e) => {
            Failing::record(&handle.shared.nodes_failing, false, Instant::now());
            tracing::warn!(error = %e, "cluster nodes not refreshed; keeping the last list");
            false
        }
    }
}

fn update_missing_gauge(handle: &TrackerHandle) {
    let Some(window) = handle.shared.window.load_full() else {
        return;
    };
    let addresses = handle.shared.addresses.load();
    let policy = handle.shared.policy.load();
    let distinct: HashSet<&Pubkey> = window.leaders.iter().collect();
    let missing = distinct
        .iter()
        .filter(|id| policy.excludes(id).is_none())
        .filter(|id| addresses.get(id).is_none() && !policy.overrides.contains_key(id))
        .count();
    handle
        .stats()
        .leaders_without_address
        .store(missing as u64, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
impl TrackerHandle {
    /// A handle with no tasks, for driving the refresh functions by hand.
    pub(crate) fn for_tests(config: &TrackerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: ArcSwap::from_pointee(SlotEstimator::new(config.slot_duration)),
                slots_write: Mutex::new(()),
                window: ArcSwapOption::empty(),
                addresses: ArcSwap::from_pointee(TpuAddresses::default()),
                policy: ArcSwap::from_pointee(config.policy.clone()),
                stats: Arc::new(TrackerStats::default()),
                stale_after: config.stale_after,
                schedule_failing: Mutex::new(None),
                nodes_failing: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn observe_for_tests(&self, slot: Slot) {
        self.observe(slot);
    }

    pub(crate) fn observe_at_for_tests(&self, slot: Slot, at: Instant) {
        self.observe_at(slot, at);
    }

    pub(crate) fn window_for_tests(&self) -> Option<Arc<LeaderWindow>> {
        self.shared.window.load_full()
    }
}
