//! The send path: [`Service`] admits validated transactions (dedup, honest
//! checks, bounded queue) and answers at once; the [`Forwarder`] task owns the
//! [`Ledger`] and is the only one that sends: each transaction to the current
//! leaders through the QUIC engine, rebroadcast until it lands, runs out of retries
//! or expires, with every one accounted for: accepted = sent + dropped{reason} (+ in
//! flight).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use afterburner_quic::{
    Availability, DropReason, EngineHandle, EngineSubmitter, Identity, Outcome, OutcomeKind,
    Submission,
};
use arc_swap::ArcSwap;
use leader_schedule::LeaderPolicy;
use prometheus::IntCounter;
use serde_json::{Value, json};
use solana_commitment_config::CommitmentConfig;
use solana_sdk::{
    hash::Hash,
    pubkey::Pubkey,
    signature::{Keypair, Signature},
    signer::Signer as _,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

use crate::{
    auth,
    config::OnEngineFailure,
    dedup::Dedup,
    identity::{self, SharedIdentity},
    leader_book::LeaderBook,
    leaders::LeaderSource,
    ledger::{
        ATTEMPTS, Action, FirstSendDone, Ledger, LedgerConfig, Lifetime, NewTx, Record,
        State as LedgerState, Terminal, TxId,
    },
    metrics::Metrics,
    refusals::{Change, Refusals},
    rpc::{self, RejectReason, SendError, SendRequest},
    upstream::{ClusterRpc, Upstream},
    validate,
};

/// Retry policy and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Accepted transactions waiting for the forwarder.
    pub queue: usize,
    /// Transactions tracked for rebroadcast at most; past it, new ones are refused.
    pub max_tracked: usize,
    /// Rebroadcast interval.
    pub retry_interval: Duration,
    /// Rebroadcasts when the client gives no `maxRetries` (`None`: until expiry).
    pub default_max_retries: Option<usize>,
    /// Slots a transaction is kept after acceptance at the latest (agave: 150,
    /// `MAX_PROCESSING_AGE`); its blockhash normally expires it first.
    pub expiry_slots: u64,
    /// A blockhash the cluster calls invalid this long in a row expires its
    /// transactions.
    pub blockhash_grace: Duration,
    /// Durable-nonce transactions are given up this long after acceptance.
    pub nonce_max_age: Duration,
    /// Slot duration, for expiry when no slot is known (static leaders).
    pub slot_duration: Duration,
    /// Duplicate window.
    pub dedup_window: Duration,
    /// Duplicate memory bound.
    pub dedup_capacity: usize,
    /// What validation checks (`limits.max_transaction_size`,
    /// `validation.verify_signatures`).
    pub checks: validate::Checks,
    /// How often landed status is asked for (`getSignatureStatuses`).
    pub status_interval: Duration,
    /// Keep up to this many raw request -> wire latencies (benchmarks; 0: none).
    pub latency_samples: usize,
    /// This instance's name: every answer carries it (`x-afterburner-instance`), since
    /// a transaction's lifecycle lives in the instance that accepted it.
    pub instance: String,
    /// The identity presented to leaders (named when they refuse it).
    pub identity: Option<Pubkey>,
    /// Ended records kept for lifecycle queries: how long, and how many at most.
    pub keep_ended: Duration,
    /// See `keep_ended`.
    pub max_ended: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            queue: 10_000,
            max_tracked: 100_000,
            retry_interval: Duration::from_secs(2),
            default_max_retries: None,
            expiry_slots: 150,
            blockhash_grace: Duration::from_secs(10),
            nonce_max_age: Duration::from_secs(300),
            slot_duration: Duration::from_millis(400),
            dedup_window: Duration::from_secs(60),
            dedup_capacity: 200_000,
            checks: validate::Checks::default(),
            status_interval: Duration::from_secs(1),
            latency_samples: 0,
            instance: "afterburner".into(),
            identity: None,
            keep_ended: LedgerConfig::default().keep_ended,
            max_ended: LedgerConfig::default().max_ended,
        }
    }
}

/// What happens with `skipPreflight: false`.
#[derive(Clone, Debug)]
pub enum Preflight {
    /// Forwarded as `simulateTransaction` to the cluster RPC (with failover); a
    /// failure is agave's -32002.
    Forward(Arc<ClusterRpc>),
    /// Refused with a message telling the client to set `skipPreflight: true`.
    Refuse,
}

/// The engine as the front half sees it. The forwarder owns the engine; when it
/// replaces one that ended on its own, it swaps the submitter here, and while none
/// runs `down` says why.
#[derive(Debug)]
pub struct EngineView {
    submitter: ArcSwap<EngineSubmitter>,
    down: Mutex<Option<String>>,
}

impl EngineView {
    fn new(submitter: EngineSubmitter) -> Self {
        Self {
            submitter: ArcSwap::from_pointee(submitter),
            down: Mutex::new(None),
        }
    }

    fn availability(&self) -> Availability {
        if self.down().is_some() {
            Availability::Stopped
        } else {
            self.submitter.load().availability()
        }
    }

    /// Why no engine runs, while none does.
    fn down(&self) -> Option<String> {
        self.down.lock().ok().and_then(|d| d.clone())
    }

    fn set_down(&self, why: Option<String>) {
        if let Ok(mut d) = self.down.lock() {
            *d = why;
        }
    }
}

/// Starts a new engine over a freshly opened packet path, reporting to the same
/// outcome channel (for restarts).
pub type StartEngine = Box<dyn FnMut() -> anyhow::Result<EngineHandle> + Send>;

/// What the forwarder does when the engine thread ends on its own.
pub struct Supervisor {
    start: StartEngine,
    policy: OnEngineFailure,
    max_restarts: u32,
    window: Duration,
    fatal: watch::Sender<Option<String>>,
    restarts: std::collections::VecDeque<Instant>,
    /// When to try starting an engine next (`None`: one runs, or we are exiting).
    retry_at: Option<Instant>,
    /// Why the engine stopped, while it is down.
    why: Option<String>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("policy", &self.policy)
            .field("restarts", &self.restarts.len())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// `policy` with its bounds; `start` makes a new engine; `fatal` is told why
    /// when the process must exit (the binary waits on it).
    pub fn new(
        start: StartEngine,
        policy: OnEngineFailure,
        max_restarts: u32,
        window: Duration,
        fatal: watch::Sender<Option<String>>,
    ) -> Self {
        Self {
            start,
            policy,
            max_restarts,
            window,
            fatal,
            restarts: std::collections::VecDeque::new(),
            retry_at: None,
            why: None,
        }
    }
}

/// Why a transaction is refused when every current leader refuses our identity.
pub const REFUSED_TOO_MANY: &str = "every current leader refuses this identity's connection (too_many: \
     its connections per identity are taken by another sender presenting the same identity)";

/// Between failed attempts to start a new engine.
const RESTART_RETRY: Duration = Duration::from_secs(1);

/// One admitted transaction, on its way to the ledger. The handler has answered
/// the client already; from here the forwarder owns it.
#[derive(Debug)]
pub struct Admitted {
    signature: Signature,
    wire: Arc<[u8]>,
    max_retries: Option<usize>,
    received_at: Instant,
    /// What keeps it valid (its blockhash, or its durable nonce).
    lifetime: Lifetime,
    /// A place in the ledger, held until the transaction ends.
    room: OwnedSemaphorePermit,
    /// A place in its API key's share, held as long.
    key_place: Option<OwnedSemaphorePermit>,
    /// Its API key's index (lifecycle and events are scoped by it).
    client: Option<u16>,
}

/// A question for the forwarder, answered from the ledger it owns.
#[derive(Debug)]
pub enum Query {
    /// The lifecycle record of the newest transaction with this signature (with a
    /// client: only if that API key sent it).
    Lifecycle(Signature, Option<u16>, oneshot::Sender<Option<Value>>),
    /// The upcoming leaders, our connections to them and their records.
    Leaders(oneshot::Sender<Value>),
    /// Present this keypair from now on (asked by `source`).
    SetIdentity(
        Box<Keypair>,
        identity::Source,
        oneshot::Sender<Result<Pubkey, String>>,
    ),
}

/// What the forwarder takes in: admitted transactions and questions.
#[derive(Debug)]
pub struct Intake {
    admitted: mpsc::Receiver<Admitted>,
    queries: mpsc::Receiver<Query>,
}

/// The front half: what request handlers call. It admits a transaction only when
/// it can be sent (leaders known, the engine running with room, the ledger with
/// room), without waiting on the forwarder: bounded, non-blocking checks, then a
/// `try_send` into the forwarder's queue.
pub struct Service {
    upstream: Option<Upstream>,
    queue: mpsc::Sender<Admitted>,
    queries: mpsc::Sender<Query>,
    events: broadcast::Sender<Arc<Event>>,
    engine: Arc<EngineView>,
    /// The identity presented to leaders (the forwarder switches it).
    identity: SharedIdentity,
    /// Leaders refusing our identity's connection (`too_many`), kept by the
    /// forwarder.
    refusing: Arc<ArcSwap<HashSet<SocketAddr>>>,
    /// Places in the ledger: one per live transaction, returned when it ends.
    room: Arc<Semaphore>,
    dedup: Mutex<Dedup>,
    config: ServiceConfig,
    leaders: Arc<dyn LeaderSource>,
    metrics: Metrics,
    preflight: Preflight,
    accepting: AtomicBool,
    /// Shutdown has begun: `/ready` says so while sends are still accepted.
    unready: AtomicBool,
    samples: Arc<Mutex<Samples>>,
    /// Reads the configuration again (set by the binary: file, environment, flags),
    /// for `reloadLeaderPolicy` and SIGHUP.
    config_loader: std::sync::OnceLock<ConfigLoader>,
}

/// Reads the configuration again, as at startup.
pub type ConfigLoader = Arc<dyn Fn() -> Result<crate::config::Config, String> + Send + Sync>;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

impl Service {
    /// The service and what its forwarder takes in (for [`Forwarder::new`]).
    pub fn new(
        config: ServiceConfig,
        leaders: Arc<dyn LeaderSource>,
        metrics: Metrics,
        preflight: Preflight,
        engine: EngineSubmitter,
        identity: SharedIdentity,
        upstream: Option<Upstream>,
    ) -> (Arc<Self>, Intake) {
        let (queue, admitted) = mpsc::channel(config.queue.max(1));
        let (queries, query_rx) = mpsc::channel(QUERY_QUEUE);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let dedup = Mutex::new(Dedup::new(config.dedup_window, config.dedup_capacity));
        (
            Arc::new(Self {
                upstream,
                queue,
                queries,
                events,
                engine: Arc::new(EngineView::new(engine)),
                identity,
                refusing: Arc::default(),
                room: Arc::new(Semaphore::new(config.max_tracked.max(1))),
                dedup,
                config,
                leaders,
                metrics,
                preflight,
                accepting: AtomicBool::new(true),
                unready: AtomicBool::new(false),
                samples: Arc::new(Mutex::new(Samples::default())),
                config_loader: std::sync::OnceLock::new(),
            }),
            Intake {
                admitted,
                queries: query_rx,
            },
        )
    }

    /// Lifecycle events from now on (each subscriber has its own bounded buffer of
    /// [`EVENT_BUFFER`]; one that falls behind loses the oldest and is told how
    /// many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The upcoming leaders, our connections to them and what each did with our
    /// transactions (`GET /v1/leaders`), asked of the forwarder.
    ///
    /// # Errors
    /// As [`Self::lifecycle`].
    pub async fn leaders(&self) -> Result<Value, SendError> {
        self.ask(Query::Leaders).await
    }

    /// This instance's name (see [`ServiceConfig::instance`]).
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// The lifecycle record of `signature` (`None`: not known here), asked of the
    /// forwarder that owns the ledger.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when too many questions wait; `NotReady` when the
    /// forwarder has stopped or does not answer in time.
    pub async fn lifecycle(&self, signature: Signature) -> Result<Option<Value>, SendError> {
        self.lifecycle_for(signature, None).await
    }

    /// As [`Self::lifecycle`], seen by API key `client` (`None`: no keys): another
    /// key's transaction is `None`, as one never seen.
    ///
    /// # Errors
    /// As [`Self::lifecycle`].
    pub async fn lifecycle_for(
        &self,
        signature: Signature,
        client: Option<u16>,
    ) -> Result<Option<Value>, SendError> {
        self.ask(|reply| Query::Lifecycle(signature, client, reply))
            .await
    }

    /// This service as seen by a request from `key` (`None`: no API keys
    /// configured): sends charge the key's rate and share, lifecycles are its own.
    pub fn as_caller(&self, key: Option<Arc<auth::Key>>) -> AsCaller<'_> {
        AsCaller { service: self, key }
    }

    /// Asks the forwarder `query` (made with the reply channel) and waits for the
    /// answer, bounded in queue and time.
    async fn ask<T>(
        &self,
        query: impl FnOnce(oneshot::Sender<T>) -> Query,
    ) -> Result<T, SendError> {
        let (reply, answer) = oneshot::channel();
        self.queries.try_send(query(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SendError::NotReady("shutting down"),
        })?;
        match tokio::time::timeout(QUERY_TIMEOUT, answer).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(SendError::NotReady("shutting down")),
            Err(_) => Err(SendError::NotReady("the forwarder did not answer in time")),
        }
    }

    /// The per-stage latencies kept so far (see [`ServiceConfig::latency_samples`]),
    /// for transactions whose first frame reached the packet path; emptied.
    pub fn take_latency_samples(&self) -> Vec<LatencySample> {
        let Ok(mut s) = self.samples.lock() else {
            return Vec::new();
        };
        let s = std::mem::take(&mut *s);
        let validated: HashMap<Signature, Duration> = s.validated.into_iter().collect();
        let submitted: HashMap<Signature, Duration> = s.submitted.into_iter().collect();
        s.wire
            .into_iter()
            .filter_map(|(sig, wire)| {
                Some(LatencySample {
                    validated: *validated.get(&sig)?,
                    submitted: *submitted.get(&sig)?,
                    wire,
                })
            })
            .collect()
    }

    /// The identity presented to leaders now.
    pub fn identity(&self) -> Pubkey {
        self.identity.load().pubkey()
    }

    /// Presents `keypair` from now on: new connections carry it at once, open
    /// ones are replaced and what they held goes out on the new ones (no tracked
    /// transaction is lost). Returns the new public key.
    ///
    /// # Errors
    /// The engine did not take it (the old identity stays), or the forwarder is
    /// busy or stopped.
    pub async fn set_identity(
        &self,
        keypair: Keypair,
        source: identity::Source,
    ) -> Result<Pubkey, String> {
        self.ask(|reply| Query::SetIdentity(Box::new(keypair), source, reply))
            .await
            .map_err(|e| e.to_string())?
    }

    /// The leader policy in force (`None`: static leaders).
    pub fn leader_policy(&self) -> Option<Arc<LeaderPolicy>> {
        self.leaders.policy()
    }

    /// Replaces the leader policy: the next fanout answer follows it.
    ///
    /// # Errors
    /// Static leaders (no identities to apply it to).
    pub fn set_leader_policy(&self, policy: LeaderPolicy, source: &str) -> Result<(), String> {
        let (deny, allow, overrides) = (
            policy.deny.len(),
            policy.allow.len(),
            policy.overrides.len(),
        );
        self.leaders.set_policy(policy)?;
        for (list, n) in [("deny", deny), ("allow", allow), ("overrides", overrides)] {
            self.metrics
                .leader_policy_entries
                .with_label_values(&[list])
                .set(n as i64);
        }
        tracing::info!(source, deny, allow, overrides, "leader policy in force");
        Ok(())
    }

    /// Sets how the configuration is read again (the binary: file, environment,
    /// flags); without one, `reloadLeaderPolicy` and SIGHUP leave the policy alone.
    pub fn set_config_loader(&self, loader: ConfigLoader) {
        let _ = self.config_loader.set(loader);
    }

    /// Reads the configuration again and applies its `[leaders]` policy.
    ///
    /// # Errors
    /// No loader set, the configuration does not load (the old policy stays), or
    /// static leaders.
    pub fn reload_leader_policy(&self, source: &str) -> Result<Arc<LeaderPolicy>, String> {
        let loader = self
            .config_loader
            .get()
            .ok_or("the configuration cannot be reloaded here (no loader)")?;
        let config = loader()?;
        let policy = config.leaders.policy().map_err(|e| format!("{e:#}"))?;
        self.set_leader_policy(policy, source)?;
        self.leader_policy()
            .ok_or_else(|| "static leaders have no policy".to_string())
    }

    /// Counts a refused identity change from `source`.
    pub fn count_identity_error(&self, source: identity::Source) {
        self.metrics
            .identity_errors
            .with_label_values(&[source.label()])
            .inc();
    }

    /// Shutdown begins: `/ready` answers 503 while sends are still accepted (load
    /// balancers stop routing here before the drain).
    pub fn mark_unready(&self) {
        self.unready.store(true, Ordering::SeqCst);
    }

    /// Stops accepting (shutdown): new sends get -32005.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// `Ok` when transactions can be sent: accepting, the engine running, the
    /// leader source ready, and a leader to send to (what admission checks too, so
    /// a ready gateway admits); else why not.
    pub fn ready(&self) -> Result<(), String> {
        if !self.accepting.load(Ordering::SeqCst) || self.unready.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        self.liveness()?;
        self.leaders.ready()?;
        let targets = self.leaders.targets();
        if targets.send.is_empty() {
            return Err("no leader known to send to".into());
        }
        if self.all_refuse(&targets.send) {
            return Err(format!(
                "{REFUSED_TOO_MANY} ({} current leaders)",
                targets.send.len()
            ));
        }
        Ok(())
    }

    /// Whether every one of `send` refuses our identity's connection right now.
    fn all_refuse(&self, send: &[SocketAddr]) -> bool {
        let refusing = self.refusing.load();
        !refusing.is_empty() && send.iter().all(|t| refusing.contains(t))
    }

    /// `Err` while the engine thread is not running (liveness: `/health`), with
    /// why.
    pub fn liveness(&self) -> Result<(), String> {
        if let Some(why) = self.engine.down() {
            return Err(format!("the QUIC engine has stopped: {why}"));
        }
        if self.engine.availability() == Availability::Stopped {
            return Err("the QUIC engine has stopped".into());
        }
        Ok(())
    }

    /// Why the leader schedule is stale, if it is (shown, not a refusal).
    pub fn stale(&self) -> Option<String> {
        self.leaders.stale()
    }

    /// Why a transaction cannot be admitted right now, if it cannot: the checks
    /// that make an accepted transaction one that can leave.
    fn admission(&self) -> Result<(), SendError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SendError::NotReady("shutting down"));
        }
        match self.engine.availability() {
            Availability::Ready => {}
            Availability::Full => return Err(SendError::QueueFull),
            Availability::Stopped => {
                return Err(SendError::NotReady("the QUIC engine has stopped"));
            }
        }
        let targets = self.leaders.targets();
        if targets.send.is_empty() {
            return Err(SendError::NotReady("no leader known to send to"));
        }
        if self.all_refuse(&targets.send) {
            return Err(SendError::NotReady(REFUSED_TOO_MANY));
        }
        Ok(())
    }

    /// Sets the gauges that are read rather than counted (scrape time): ready, the
    /// current slot, the schedule's age.
    pub fn update_gauges(&self) {
        let m = &self.metrics;
        m.ready.set(i64::from(self.ready().is_ok()));
        m.schedule_stale.set(i64::from(self.stale().is_some()));
        if let Some(slot) = self.leaders.current_slot() {
            m.current_slot.set(i64::try_from(slot).unwrap_or(i64::MAX));
        }
        m.schedule_age.set(
            self.leaders
                .schedule_age()
                .map_or(f64::INFINITY, |d| d.as_secs_f64()),
        );
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a refusal under its reason.
    pub fn count_reject(&self, reason: RejectReason) {
        self.metrics
            .rejected
            .with_label_values(&[reason.label()])
            .inc();
    }
}

impl Service {
    /// Admits `request` for API key `key` (`None`: no keys configured).
    fn send_keyed(
        &self,
        request: SendRequest,
        key: Option<&auth::Key>,
    ) -> Result<String, SendError> {
        let validated = request.received_at.elapsed();
        let sig = request.tx.signature;
        let sig_text = sig.to_string();
        if let Some(min) = request.options.min_context_slot
            && let Some(slot) = self.leaders.current_slot()
            && slot < min
        {
            return Err(SendError::MinContextSlotNotReached { context_slot: slot });
        }
        self.admission()?;
        let fresh = self
            .dedup
            .lock()
            .map_err(|_| SendError::Internal("dedup lock poisoned"))?
            .insert(sig, Instant::now());
        if !fresh {
            // Already accepted: its signature, whatever the queues hold now.
            self.metrics.duplicates.inc();
            return Ok(sig_text);
        }
        let forget = |e: SendError| {
            if let Ok(mut d) = self.dedup.lock() {
                d.remove(&sig);
            }
            e
        };
        let Ok(room) = self.room.clone().try_acquire_owned() else {
            // Every place in the ledger is taken: they free up as transactions end.
            return Err(forget(SendError::QueueFull));
        };
        // The key last, so a refusal for a full ledger costs it no token.
        let key_place = match key.map(|k| (k, k.admit(Instant::now()))) {
            None => None,
            Some((_, Ok(place))) => Some(place),
            Some((k, Err(limit))) => {
                let (result, e) = match limit {
                    auth::KeyLimit::Rate(wait) => {
                        ("rate_limited", SendError::RateLimited { retry_after: wait })
                    }
                    auth::KeyLimit::Share => ("share_full", SendError::KeyShareFull),
                };
                self.count_key(k, result);
                return Err(forget(e));
            }
        };
        let permit = self.queue.try_reserve().map_err(|e| {
            forget(match e {
                mpsc::error::TrySendError::Closed(()) => SendError::NotReady("shutting down"),
                mpsc::error::TrySendError::Full(()) => SendError::QueueFull,
            })
        })?;
        self.metrics.accounting.accept();
        self.metrics.queue_depth.inc();
        if let Some(k) = key {
            self.count_key(k, "accepted");
        }
        if self.config.latency_samples > 0
            && let Ok(mut s) = self.samples.lock()
            && s.validated.len() < self.config.latency_samples
        {
            s.validated.push((sig, validated));
        }
        permit.send(Admitted {
            signature: sig,
            wire: request.tx.wire.clone(),
            max_retries: request
                .options
                .max_retries
                .or(self.config.default_max_retries),
            received_at: request.received_at,
            lifetime: {
                let tx = &request.tx.transaction;
                let hash = *tx.message.recent_blockhash();
                match validate::durable_nonce_account(tx) {
                    None => Lifetime::Blockhash(hash),
                    Some(account) => Lifetime::Nonce {
                        account,
                        nonce: hash,
                    },
                }
            },
            room,
            key_place,
            client: key.map(|k| k.index),
        });
        Ok(sig_text)
    }

    fn count_key(&self, key: &auth::Key, result: &str) {
        self.metrics
            .api_key_transactions
            .with_label_values(&[key.name.as_str(), result])
            .inc();
    }
}

/// The service as one API key's request sees it (see [`Service::as_caller`]).
#[derive(Debug)]
pub struct AsCaller<'a> {
    service: &'a Service,
    key: Option<Arc<auth::Key>>,
}

impl rpc::Sender for AsCaller<'_> {
    fn send(&self, request: SendRequest) -> Result<String, SendError> {
        self.service.send_keyed(request, self.key.as_deref())
    }
    fn checks(&self) -> validate::Checks {
        self.service.checks()
    }
    fn forwards(&self, method: &str) -> bool {
        self.service.forwards(method)
    }
    fn forward(&self, method: &str, params: Value) -> Result<Value, rpc::RpcError> {
        self.service.forward(method, params)
    }
    fn lifecycle(&self, signature: Signature) -> Result<Option<Value>, SendError> {
        let client = self.key.as_ref().map(|k| k.index);
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(SendError::Internal(
                "lifecycle needs a multi-threaded runtime",
            ));
        }
        // Handlers run on the runtime: block in place for the forwarder's answer.
        tokio::task::block_in_place(|| {
            handle.block_on(self.service.lifecycle_for(signature, client))
        })
    }
    fn health(&self) -> Result<(), String> {
        self.service.health()
    }
    fn preflight(&self, request: &SendRequest) -> Result<(), SendError> {
        self.service.preflight(request)
    }
}

impl rpc::Sender for Service {
    fn send(&self, request: SendRequest) -> Result<String, SendError> {
        self.send_keyed(request, None)
    }

    fn checks(&self) -> validate::Checks {
        self.config.checks
    }

    fn forwards(&self, method: &str) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.allows(method))
    }

    fn forward(&self, method: &str, params: Value) -> Result<Value, rpc::RpcError> {
        let Some(upstream) = &self.upstream else {
            return Err(rpc::RpcError::plain(
                rpc::code::METHOD_NOT_FOUND,
                "Method not found",
            ));
        };
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(rpc::RpcError::plain(
                rpc::code::INTERNAL_ERROR,
                "Internal error: forwarding needs a multi-threaded runtime",
            ));
        }
        let result = tokio::task::block_in_place(|| handle.block_on(upstream.call(method, params)));
        let label = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code.to_string(),
        };
        self.metrics
            .forwarded
            .with_label_values(&[method, label.as_str()])
            .inc();
        result
    }

    fn lifecycle(&self, signature: Signature) -> Result<Option<Value>, SendError> {
        rpc::Sender::lifecycle(&self.as_caller(None), signature)
    }

    fn health(&self) -> Result<(), String> {
        self.ready()
    }

    fn preflight(&self, request: &SendRequest) -> Result<(), SendError> {
        match &self.preflight {
            Preflight::Refuse => Err(SendError::PreflightRefused),
            Preflight::Forward(rpc) => {
                let rpc = rpc.clone();
                let tx = request.tx.transaction.clone();
                let commitment = request.options.preflight_commitment.clone();
                // Handlers run on the runtime: block in place for the simulation.
                let result = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async move {
                        let config = solana_client::rpc_config::RpcSimulateTransactionConfig {
                            sig_verify: true,
                            commitment: commitment.as_deref().and_then(|c| c.parse().ok()),
                            ..Default::default()
                        };
                        rpc.call(|c| c.simulate_transaction_with_config(&tx, config.clone()))
                            .await
                    })
                });
                match result {
                    Ok(r) => match r.value.err.clone() {
                        None => Ok(()),
                        Some(err) => Err(SendError::PreflightFailed {
                            error: err.to_string(),
                            simulation: serde_json::to_value(&r.value).ok(),
                        }),
                    },
                    Err(e) => Err(SendError::PreflightUnavailable(e.to_string())),
                }
            }
        }
    }
}

/// Where one transaction's first send spent its time, each measured from the moment
/// its HTTP request had been read (benchmarks; see [`ServiceConfig::latency_samples`]).
#[derive(Clone, Copy, Debug)]
pub struct LatencySample {
    /// Decoded, deserialized, sanitized and signatures verified.
    pub validated: Duration,
    /// Handed to the engine's queue (dedup, accounting, targets done).
    pub submitted: Duration,
    /// The engine wrote it into a QUIC packet that went to the packet path.
    pub wire: Duration,
}

/// Raw per-stage samples, joined by signature when taken.
#[derive(Debug, Default)]
struct Samples {
    /// Validated, recorded by the request handler.
    validated: Vec<(Signature, Duration)>,
    /// Handed to the engine, recorded by the forwarder.
    submitted: Vec<(Signature, Duration)>,
    /// First frame to the packet path, recorded by the forwarder.
    wire: Vec<(Signature, Duration)>,
}

/// The back half: owns the ledger (every accepted transaction until it ends) and the
/// engine handle. It is the only task that sends.
pub struct Forwarder {
    queue: mpsc::Receiver<Admitted>,
    queries: mpsc::Receiver<Query>,
    events: broadcast::Sender<Arc<Event>>,
    outcomes: OutcomeReceiver,
    engine: Option<EngineHandle>,
    view: Arc<EngineView>,
    identity: SharedIdentity,
    refusals: Refusals,
    refusing: Arc<ArcSwap<HashSet<SocketAddr>>>,
    supervisor: Option<Supervisor>,
    samples: Arc<Mutex<Samples>>,
    leaders: Arc<dyn LeaderSource>,
    metrics: Metrics,
    config: ServiceConfig,
    status_rpc: Option<Arc<ClusterRpc>>,
    ledger: Ledger,
    /// Each live transaction's place in the ledger, released when it ends.
    /// Each live transaction's places (the ledger's, its API key's), given back
    /// when it ends.
    rooms: HashMap<TxId, (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
    /// Per-leader sends and landings.
    book: LeaderBook,
    /// `leader_sends_total` counters by leader (sent, dropped), looked up once each:
    /// bounded like the book's identities.
    leader_sends: HashMap<Option<Pubkey>, [IntCounter; 2]>,
    actions: Vec<Action>,
    warm: Vec<SocketAddr>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("live", &self.ledger.live())
            .finish()
    }
}

/// Engine outcomes with the time they were reported.
pub type OutcomeSender = mpsc::UnboundedSender<(Outcome, Instant)>;
/// The forwarder's end of [`OutcomeSender`].
pub type OutcomeReceiver = mpsc::UnboundedReceiver<(Outcome, Instant)>;

/// The channel engine outcomes reach the forwarder through (one per gateway: a
/// restarted engine reports into the same one, see [`outcome_sink`]).
pub fn outcome_channel() -> (OutcomeSender, OutcomeReceiver) {
    mpsc::unbounded_channel()
}

/// An outcome sink that hands engine outcomes to the forwarder, stamped with the
/// time the engine reported them (the engine reports a send after the pass that
/// handed its frames to the packet path).
pub fn outcome_sink(tx: OutcomeSender) -> impl FnMut(Outcome) + Send + 'static {
    move |o: Outcome| {
        // The receiver lives as long as the forwarder, which outlives the engine.
        let _ = tx.send((o, Instant::now()));
    }
}

impl Forwarder {
    /// The forwarder for `service`'s queue.
    pub fn new(
        intake: Intake,
        outcomes: OutcomeReceiver,
        engine: EngineHandle,
        service: &Service,
        status_rpc: Option<Arc<ClusterRpc>>,
    ) -> Self {
        let config = service.config.clone();
        let ledger = Ledger::new(LedgerConfig {
            retry_interval: config.retry_interval,
            expiry_slots: config.expiry_slots,
            blockhash_grace: config.blockhash_grace,
            nonce_max_age: config.nonce_max_age,
            slot_duration: config.slot_duration,
            keep_ended: config.keep_ended,
            max_ended: config.max_ended,
            ..LedgerConfig::default()
        });
        Self {
            queue: intake.admitted,
            queries: intake.queries,
            events: service.events.clone(),
            outcomes,
            engine: Some(engine),
            view: service.engine.clone(),
            identity: service.identity.clone(),
            refusals: Refusals::default(),
            refusing: service.refusing.clone(),
            supervisor: None,
            samples: service.samples.clone(),
            leaders: service.leaders.clone(),
            metrics: service.metrics.clone(),
            config,
            status_rpc,
            ledger,
            rooms: HashMap::new(),
            book: LeaderBook::default(),
            leader_sends: HashMap::new(),
            actions: Vec::new(),
            warm: Vec::new(),
        }
    }

    /// Watches the engine with `supervisor`: an engine thread that ends on its own
    /// is restarted or the process told to exit, as its policy says. Without one,
    /// a dead engine stays dead (sends are refused and `/health` says why).
    #[must_use]
    pub fn with_supervisor(mut self, supervisor: Supervisor) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Runs until `stop` turns true, then takes what is queued (each sent once),
    /// shuts the engine down and accounts for the rest, within `deadline`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, deadline: Duration) {
        // Cheap: only what is due is looked at (the ledger orders it by time).
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        let (landed_tx, mut landed_rx) = mpsc::channel::<Statuses>(16);
        let mut status_busy = false;
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                Some(a) = self.queue.recv() => {
                    self.admit(a);
                    // And whatever else waits, so that a burst goes out in one step.
                    for _ in 1..BATCH {
                        let Ok(a) = self.queue.try_recv() else { break };
                        self.admit(a);
                    }
                    // Their first sends go out now, not at the next tick.
                    self.step(Instant::now());
                }
                Some((o, at)) = self.outcomes.recv() => {
                    self.outcome(o, at);
                    for _ in 1..BATCH {
                        let Ok((o, at)) = self.outcomes.try_recv() else { break };
                        self.outcome(o, at);
                    }
                    self.perform(Instant::now());
                }
                Some(q) = self.queries.recv() => self.answer(q),
                Some(statuses) = landed_rx.recv() => {
                    status_busy = false;
                    let now = Instant::now();
                    for (sig, slot) in statuses.landed {
                        self.ledger.on_landed(&sig, Some(slot), now, &mut self.actions);
                    }
                    for (hash, valid) in statuses.blockhashes {
                        self.ledger.on_blockhash_status(&hash, valid, now, &mut self.actions);
                    }
                    for (account, nonce) in statuses.nonces {
                        self.ledger.on_nonce_status(&account, nonce, now, &mut self.actions);
                    }
                    self.perform(now);
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.supervise(now);
                    self.publish_refusals(now);
                    self.step(now);
                }
                _ = status_tick.tick() => {
                    if !status_busy && let Some(rpc) = self.status_rpc.clone() {
                        let sigs = self.ledger.in_flight_signatures();
                        let hashes = self.ledger.blockhashes();
                        let accounts = self.ledger.nonce_accounts();
                        if !sigs.is_empty() || !hashes.is_empty() {
                            status_busy = true;
                            let tx = landed_tx.clone();
                            tokio::spawn(async move {
                                // Nonces before landings: a transaction that
                                // advanced its nonce is then seen landed, not
                                // given up.
                                let nonces = current_nonces(&rpc, accounts).await;
                                let statuses = Statuses {
                                    landed: landed_among(&rpc, sigs).await,
                                    blockhashes: blockhash_validity(&rpc, hashes).await,
                                    nonces,
                                };
                                let _ = tx.send(statuses).await;
                            });
                        }
                    }
                }
            }
        }
        self.finish(deadline).await;
    }

    /// Notices an engine thread that ended on its own and acts on it: accounts for
    /// what it held, then restarts it or asks the process to exit.
    fn supervise(&mut self, now: Instant) {
        if let Some(engine) = self.engine.take_if(|e| !e.is_running()) {
            let why = match engine.shutdown() {
                Err(e) => e.to_string(),
                Ok(()) => "the engine thread ended".into(),
            };
            tracing::error!(error = %why, "the QUIC engine thread ended");
            self.metrics.engine_up.set(0);
            self.view.set_down(Some(why.clone()));
            // What it reported before it ended, then what it never will.
            while let Ok((o, at)) = self.outcomes.try_recv() {
                self.outcome(o, at);
            }
            self.ledger.engine_lost(now);
            self.warm.clear();
            self.perform(now);
            match &mut self.supervisor {
                Some(sup) if sup.policy == OnEngineFailure::Restart => {
                    sup.retry_at = Some(now);
                    sup.why = Some(why);
                }
                Some(sup) => {
                    self.metrics
                        .engine_failures
                        .with_label_values(&["exit"])
                        .inc();
                    tracing::error!(
                        "engine.on_failure = \"exit\": exiting for the service manager to restart"
                    );
                    let _ = sup.fatal.send(Some(why));
                }
                None => {}
            }
        }
        let Some(sup) = &mut self.supervisor else {
            return;
        };
        if self.engine.is_some() || sup.retry_at.is_none_or(|t| now < t) {
            return;
        }
        let why = sup.why.clone().unwrap_or_default();
        while sup
            .restarts
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= sup.window)
        {
            sup.restarts.pop_front();
        }
        if sup.restarts.len() >= sup.max_restarts as usize {
            sup.retry_at = None;
            self.metrics
                .engine_failures
                .with_label_values(&["exit"])
                .inc();
            let why = format!(
                "{why} ({} restarts within {:?}: giving up)",
                sup.restarts.len(),
                sup.window
            );
            tracing::error!(error = %why, "the QUIC engine keeps failing: exiting");
            self.view.set_down(Some(why.clone()));
            let _ = sup.fatal.send(Some(why));
            return;
        }
        sup.restarts.push_back(now);
        match (sup.start)() {
            Ok(engine) => {
                sup.retry_at = None;
                sup.why = None;
                self.metrics
                    .engine_failures
                    .with_label_values(&["restarted"])
                    .inc();
                self.metrics.engine_up.set(1);
                tracing::warn!(after = %why, local = %engine.local_addr(), "the QUIC engine restarted");
                self.view.submitter.store(Arc::new(engine.submitter()));
                self.view.set_down(None);
                self.engine = Some(engine);
            }
            Err(e) => {
                sup.retry_at = Some(now + RESTART_RETRY);
                self.metrics
                    .engine_failures
                    .with_label_values(&["restart_failed"])
                    .inc();
                tracing::error!(error = %format!("{e:#}"), "the QUIC engine could not be restarted; retrying");
                self.view
                    .set_down(Some(format!("{why}; restart failed: {e:#}")));
            }
        }
    }

    /// Publishes the leaders refusing us now, for admission and `/ready`.
    fn publish_refusals(&mut self, now: Instant) {
        let refusing = self.refusals.refusing(now);
        self.metrics.leaders_refusing.set(refusing.len() as i64);
        if **self.refusing.load() != refusing {
            self.refusing.store(Arc::new(refusing));
        }
    }

    /// Switches the identity (see [`Service::set_identity`]).
    fn switch_identity(
        &mut self,
        keypair: Keypair,
        source: identity::Source,
    ) -> Result<Pubkey, String> {
        let new = keypair.pubkey();
        let old = self.identity.load().pubkey();
        if new == old {
            return Ok(new);
        }
        if let Some(engine) = &self.engine {
            // Waits on the engine thread (briefly): not on a one-thread runtime.
            let can_wait = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if !can_wait {
                return Err("switching the identity needs a multi-threaded runtime".into());
            }
            let for_engine = Identity::from_keypair(keypair.insecure_clone());
            tokio::task::block_in_place(|| engine.set_identity(for_engine))
                .map_err(|e| format!("the engine did not take the new identity: {e}"))?;
        }
        // With no engine running, the next restart presents it.
        self.identity
            .store(Arc::new(Identity::from_keypair(keypair)));
        self.config.identity = Some(new);
        let m = &self.metrics;
        m.identity_info.reset();
        m.identity_info
            .with_label_values(&[new.to_string().as_str()])
            .set(1);
        m.identity_switches
            .with_label_values(&[source.label()])
            .inc();
        tracing::info!(%old, %new, source = source.label(), "identity switched");
        Ok(new)
    }

    fn answer(&mut self, q: Query) {
        match q {
            Query::SetIdentity(keypair, source, reply) => {
                let result = self.switch_identity(*keypair, source);
                if result.is_err() {
                    self.metrics
                        .identity_errors
                        .with_label_values(&[source.label()])
                        .inc();
                }
                let _ = reply.send(result);
            }
            Query::Lifecycle(signature, client, reply) => {
                let now = Instant::now();
                let record = self
                    .ledger
                    .find(&signature)
                    .filter(|r| client.is_none() || r.client == client)
                    .map(|r| lifecycle_json(r, now, &self.config.instance));
                // The asker may have given up: nothing to do then.
                let _ = reply.send(record);
            }
            Query::Leaders(reply) => {
                let _ = reply.send(self.leaders_json());
            }
        }
    }

    /// `GET /v1/leaders`: the leaders to send to and to keep warm now, each with its
    /// identity, TPU address, our connection to it and its record.
    fn leaders_json(&self) -> Value {
        let targets = self.leaders.targets();
        // Asking the engine thread waits on it (briefly); not on a one-thread runtime.
        let can_ask = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let connection = |addr: SocketAddr| -> Value {
            let info = match &self.engine {
                Some(engine) if can_ask => {
                    tokio::task::block_in_place(|| engine.connection_info(addr))
                }
                _ => None,
            };
            match info {
                None => Value::Null,
                Some(c) => json!({
                    "established": c.established,
                    "rttMs": c.rtt.as_secs_f64() * 1e3,
                    "streamsOpened": c.streams_opened,
                    "streamLimit": c.stream_limit_uni,
                    "queued": c.queued,
                }),
            }
        };
        let leaders: Vec<Value> = targets
            .connect
            .iter()
            .map(|&addr| {
                let identity = targets
                    .identities
                    .iter()
                    .find(|(a, _)| *a == addr)
                    .map(|(_, id)| *id);
                json!({
                    "identity": identity.map(|i| i.to_string()),
                    "tpu": addr.to_string(),
                    "sendingNow": targets.send.contains(&addr),
                    "refusingUs": self.refusing.load().contains(&addr),
                    "connection": connection(addr),
                    "record": identity.map(|i| self.book.json(&i)),
                })
            })
            .collect();
        json!({
            "instance": self.config.instance,
            "slot": targets.slot,
            "leaders": leaders,
        })
    }

    /// Takes an admitted transaction into the ledger.
    fn admit(&mut self, a: Admitted) {
        self.metrics.queue_depth.dec();
        let now = Instant::now();
        if let Some(slot) = self.leaders.current_slot() {
            self.ledger.on_slot(slot);
        }
        let id = self.ledger.accept(
            NewTx {
                signature: a.signature,
                wire: a.wire,
                max_retries: a.max_retries,
                received_at: a.received_at,
                lifetime: a.lifetime,
                client: a.client,
            },
            now,
        );
        self.rooms.insert(id, (a.room, a.key_place));
        self.metrics.tracked.set(self.ledger.live() as i64);
        self.emit(id, now, || json!({"event": "accepted"}));
    }

    /// Publishes a lifecycle event of `id` (built only when someone listens).
    fn emit(&self, id: TxId, at: Instant, event: impl FnOnce() -> Value) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let Some(r) = self.ledger.get(id) else {
            return;
        };
        let mut event = event();
        if let Value::Object(fields) = &mut event {
            fields.insert("signature".into(), json!(r.signature.to_string()));
            fields.insert(
                "atMs".into(),
                json!(at.saturating_duration_since(r.accepted_at).as_secs_f64() * 1e3),
            );
        }
        // No receiver left since the check: nothing to do.
        let _ = self.events.send(Arc::new(Event {
            signature: r.signature,
            client: r.client,
            data: event,
        }));
    }

    /// Runs what is due in the ledger at `now`.
    fn step(&mut self, now: Instant) {
        if let Some(slot) = self.leaders.current_slot() {
            self.ledger.on_slot(slot);
        }
        self.ledger.tick(now, &mut self.actions);
        self.perform(now);
    }

    /// Carries out the ledger's actions, then counts the first sends that finished.
    fn perform(&mut self, now: Instant) {
        let mut actions = std::mem::take(&mut self.actions);
        let mut targets = None;
        for action in actions.drain(..) {
            match action {
                Action::Send { id, attempt, wire } => {
                    let targets = targets.get_or_insert_with(|| {
                        let t = self.leaders.targets();
                        self.book.learn(&t.identities);
                        t
                    });
                    let send = targets.send.clone();
                    let connect = targets.connect.clone();
                    self.prewarm(&connect);
                    self.submit(id, attempt, wire, &send, now);
                }
                Action::Retired { id, terminal, age } => {
                    self.rooms.remove(&id);
                    let slot = self.ledger.get(id).and_then(|r| r.landed_slot);
                    self.emit(
                        id,
                        now,
                        || json!({"event": "ended", "state": terminal.label(), "slot": slot}),
                    );
                    if terminal == Terminal::Landed {
                        self.metrics.landing.observe(age.as_secs_f64());
                        self.attribute_landing(id, age);
                    }
                    self.metrics
                        .retired
                        .with_label_values(&[terminal.label()])
                        .inc();
                }
            }
        }
        // Reuse the allocation.
        self.actions = actions;
        // Sends refused by the engine may have produced more actions: none are
        // produced by `on_send_outcome`, so one pass suffices.
        let settled: Vec<(TxId, FirstSendDone)> = self.ledger.take_first_sends().collect();
        for (id, done) in settled {
            let result = match done {
                FirstSendDone::Sent => Ok(()),
                FirstSendDone::Dropped(reason) => Err(reason.label()),
            };
            self.metrics.accounting.first_send_done(result);
            self.emit(id, now, || match result {
                Ok(()) => json!({"event": "first_send", "result": "sent"}),
                Err(reason) => {
                    json!({"event": "first_send", "result": "dropped", "reason": reason})
                }
            });
        }
        self.metrics.tracked.set(self.ledger.live() as i64);
    }

    /// Credits the leader of the slot `id` landed in, and whether we sent to it.
    fn attribute_landing(&mut self, id: TxId, age: Duration) {
        let Some(r) = self.ledger.get(id) else {
            return;
        };
        let leader = r.landed_slot.and_then(|slot| self.leaders.leader_at(slot));
        let sent_to = leader.is_some_and(|leader| r.sends.iter().any(|s| s.leader == Some(leader)));
        if let Some(leader) = leader {
            self.book.on_landed(leader, sent_to, age);
            self.ledger.set_landed_leader(id, leader);
        }
        let label = self.book.label(leader);
        self.metrics
            .leader_landed
            .with_label_values(&[label.as_str(), if sent_to { "yes" } else { "no" }])
            .inc();
    }

    /// Hands attempt `attempt` of `id` to the engine for each of `targets`.
    fn submit(
        &mut self,
        id: TxId,
        attempt: u32,
        wire: Arc<[u8]>,
        targets: &[SocketAddr],
        now: Instant,
    ) {
        let book = &self.book;
        self.ledger
            .on_submitted_to(id, attempt, targets, |t| book.identity_of(t), now);
        if attempt > 0 {
            self.metrics.retries.inc();
        }
        if targets.is_empty() {
            self.metrics.sends.with_label_values(&["no_leader"]).inc();
            return;
        }
        let Some(engine) = &self.engine else {
            // Shutting down, or the engine failed and none runs yet.
            let reason = if self.view.down().is_some() {
                DropReason::EngineFailed
            } else {
                DropReason::Shutdown
            };
            for &target in targets {
                self.send_outcome(id, attempt, target, OutcomeKind::Dropped(reason), now);
            }
            return;
        };
        let engine_id = id * ATTEMPTS + u64::from(attempt).min(ATTEMPTS - 1);
        let batch: Vec<Submission> = targets
            .iter()
            .map(|&target| Submission {
                id: engine_id,
                payload: wire.clone(),
                target,
            })
            .collect();
        match engine.submit_batch(batch) {
            Ok(()) => {
                if attempt == 0 {
                    self.sample_submitted(id, now);
                }
            }
            Err((e, refused)) => {
                // Refused outright: these are their outcomes.
                for s in refused {
                    self.send_outcome(id, attempt, s.target, OutcomeKind::Dropped(e.reason), now);
                }
            }
        }
    }

    fn sample_submitted(&mut self, id: TxId, now: Instant) {
        let Some(r) = self.ledger.get(id) else {
            return;
        };
        let d = now.saturating_duration_since(r.received_at);
        self.metrics.accept_to_engine.observe(d.as_secs_f64());
        if self.config.latency_samples > 0
            && let Ok(mut s) = self.samples.lock()
            && s.submitted.len() < self.config.latency_samples
        {
            s.submitted.push((r.signature, d));
        }
    }

    fn prewarm(&mut self, connect: &[SocketAddr]) {
        if connect == self.warm.as_slice() {
            return;
        }
        if let Some(engine) = &self.engine {
            for addr in connect.iter().filter(|a| !self.warm.contains(a)) {
                let _ = engine.prewarm(*addr);
            }
        }
        self.warm = connect.to_vec();
    }

    /// An engine outcome, reported at `at`.
    /// An engine outcome, reported at `at` (counted by the next [`Self::perform`]).
    fn outcome(&mut self, o: Outcome, at: Instant) {
        let (id, attempt) = (o.id / ATTEMPTS, o.id % ATTEMPTS);
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        self.send_outcome(id, attempt, o.target, o.kind, at);
    }

    fn send_outcome(
        &mut self,
        id: TxId,
        attempt: u32,
        target: SocketAddr,
        kind: OutcomeKind,
        at: Instant,
    ) {
        let label = match kind {
            OutcomeKind::Sent => "sent",
            OutcomeKind::Dropped(r) => r.label(),
        };
        self.metrics.sends.with_label_values(&[label]).inc();
        self.book.on_send(target, kind);
        let leader = self.book.identity_of(target);
        match self.refusals.on_outcome(target, kind, at) {
            Change::None => {}
            change @ (Change::Started | Change::Again) => {
                let label = self.book.label(leader);
                self.metrics
                    .leader_refusals
                    .with_label_values(&[label.as_str()])
                    .inc();
                if change == Change::Started {
                    // Once per episode, not per attempt.
                    tracing::warn!(
                        leader = ?leader,
                        tpu = %target,
                        identity = ?self.config.identity,
                        "leader refuses our connection with close code 4 (too_many): its \
                         connections per identity are taken by another sender presenting this \
                         identity (the validator's own RPC send path or forwarding, or another \
                         gateway of the fleet); give this gateway its own staked identity or \
                         size the fleet (deploy/README.md)"
                    );
                }
            }
            Change::Ended => {
                tracing::info!(leader = ?leader, tpu = %target, "leader takes our connection again");
            }
        }
        let counters = match self.leader_sends.get(&leader) {
            Some(c) => c,
            None => {
                if self.leader_sends.len() >= crate::leader_book::MAX_LEADERS {
                    self.leader_sends.clear();
                }
                let label = self.book.label(leader);
                let m = &self.metrics.leader_sends;
                let c = [
                    m.with_label_values(&[label.as_str(), "sent"]),
                    m.with_label_values(&[label.as_str(), "dropped"]),
                ];
                self.leader_sends.entry(leader).or_insert(c)
            }
        };
        counters[usize::from(kind != OutcomeKind::Sent)].inc();
        let first_frame = self.ledger.on_send_outcome(id, attempt, target, kind);
        self.emit(id, at, || {
            json!({"event": "send", "attempt": attempt, "target": target.to_string(), "outcome": label})
        });
        if first_frame && let Some(r) = self.ledger.get(id) {
            // The transaction's first frame on the wire: request -> wire latency.
            let d = at.saturating_duration_since(r.received_at);
            self.metrics.request_to_wire.observe(d.as_secs_f64());
            if self.config.latency_samples > 0
                && let Ok(mut s) = self.samples.lock()
                && s.wire.len() < self.config.latency_samples
            {
                s.wire.push((r.signature, d));
            }
        }
    }

    async fn finish(mut self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        // What was admitted but not yet taken is sent once.
        self.queue.close();
        while let Ok(a) = self.queue.try_recv() {
            self.admit(a);
        }
        let now = Instant::now();
        self.step(now);
        self.ledger.shutdown(now, &mut self.actions);
        self.perform(now);
        // Let the engine finish what it holds, then stop it: what remains is reported
        // as dropped (shutdown).
        while self.ledger.first_sends_pending() && tokio::time::Instant::now() < until {
            match tokio::time::timeout_at(until, self.outcomes.recv()).await {
                Ok(Some((o, at))) => self.outcome(o, at),
                _ => break,
            }
        }
        if let Some(engine) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        self.metrics.engine_up.set(0);
        while let Ok((o, at)) = self.outcomes.try_recv() {
            self.outcome(o, at);
        }
        // Anything still without an outcome cannot get one now.
        self.ledger.abandon_first_sends(DropReason::Shutdown);
        self.perform(Instant::now());
    }
}

/// A lifecycle event: its transaction, and the JSON clients get (`event`:
/// `accepted`, `send` (one per leader and attempt, with the engine's outcome),
/// `first_send` (the first send's result), `ended` (the terminal state); `atMs`
/// from acceptance).
#[derive(Debug)]
pub struct Event {
    /// The transaction.
    pub signature: Signature,
    /// Its API key's index (subscribers with a key see their own only).
    pub client: Option<u16>,
    /// What happened.
    pub data: Value,
}

/// Events a subscriber may fall behind by before it loses the oldest.
pub const EVENT_BUFFER: usize = 4096;

/// Admitted transactions (or engine outcomes) the forwarder takes in one step.
const BATCH: usize = 256;

/// Questions waiting for the forwarder at most (more: 429).
const QUERY_QUEUE: usize = 1024;
/// How long a question waits for the forwarder's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A transaction's lifecycle as `GET /v1/transactions/{signature}` and
/// `afterburner_getTransaction` answer it (documented in docs/api.md). Times are
/// milliseconds from acceptance; `acceptedAt` is the wall clock (Unix ms).
pub fn lifecycle_json(r: &Record, now: Instant, instance: &str) -> Value {
    let ms = |at: Instant| at.saturating_duration_since(r.accepted_at).as_secs_f64() * 1e3;
    let wall = SystemTime::now()
        .checked_sub(now.saturating_duration_since(r.accepted_at))
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (state, ended) = match r.state {
        LedgerState::Queued => ("queued", None),
        LedgerState::InFlight => ("in_flight", None),
        LedgerState::Ended(t, at) => (t.label(), Some(ms(at))),
    };
    let outcome = |o: Option<OutcomeKind>| match o {
        None => Value::Null,
        Some(OutcomeKind::Sent) => json!("sent"),
        Some(OutcomeKind::Dropped(reason)) => json!(format!("dropped: {}", reason.label())),
    };
    let sends: Vec<Value> = r
        .sends
        .iter()
        .map(|s| {
            json!({
                "attempt": s.attempt,
                "target": s.target.map(|t| t.to_string()),
                "leader": s.leader.map(|l| l.to_string()),
                "atMs": ms(s.at),
                "outcome": outcome(s.outcome),
            })
        })
        .collect();
    let first_send = match r.first_send {
        None => Value::Null,
        Some(Ok(())) => json!({"result": "sent"}),
        Some(Err(drop)) => json!({"result": "dropped", "reason": drop.label()}),
    };
    let landed = match (r.state, r.landed_slot) {
        (LedgerState::Ended(Terminal::Landed, at), slot) => {
            json!({
                "slot": slot,
                "leader": r.landed_leader.map(|l| l.to_string()),
                "sentToLeader": r.landed_leader.is_some_and(|l| r.sends.iter().any(|s| s.leader == Some(l))),
                "afterMs": ms(at),
            })
        }
        _ => Value::Null,
    };
    json!({
        "signature": r.signature.to_string(),
        "instance": instance,
        "state": state,
        "acceptedAt": wall,
        "requestToAcceptMs": r.accepted_at.saturating_duration_since(r.received_at).as_secs_f64() * 1e3,
        "firstSend": first_send,
        "sends": sends,
        "landed": landed,
        "endedAfterMs": ended,
    })
}

/// What one status poll learned.
#[derive(Debug)]
struct Statuses {
    /// Signatures landed at `confirmed`, with their slots.
    landed: Vec<(Signature, u64)>,
    /// Blockhashes and whether the cluster still calls them valid.
    blockhashes: Vec<(Hash, bool)>,
    /// Nonce accounts and the nonce each holds (`None`: none, or not a nonce
    /// account).
    nonces: Vec<(Pubkey, Option<Hash>)>,
}

/// The nonce each of `accounts` holds at `confirmed` (`getMultipleAccounts`, 100 at
/// a time); accounts the RPC could not answer for are left out.
async fn current_nonces(rpc: &ClusterRpc, accounts: Vec<Pubkey>) -> Vec<(Pubkey, Option<Hash>)> {
    let mut out = Vec::with_capacity(accounts.len());
    for chunk in accounts.chunks(100) {
        match rpc
            .call(|c| c.get_multiple_accounts_with_commitment(chunk, CommitmentConfig::confirmed()))
            .await
        {
            Ok(r) => {
                for (account, data) in chunk.iter().zip(r.value) {
                    let nonce = data.and_then(|a| {
                        solana_rpc_client_nonce_utils::nonblocking::data_from_account(&a)
                            .ok()
                            .map(|d| d.blockhash())
                    });
                    out.push((*account, nonce));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "getMultipleAccounts failed");
                break;
            }
        }
    }
    out
}

/// Whether each of `hashes` is still valid (`isBlockhashValid` at `processed`, as
/// agave's send-transaction-service asks: the most lenient view), one call per
/// distinct blockhash; those the RPC could not answer are left out.
async fn blockhash_validity(rpc: &ClusterRpc, hashes: Vec<Hash>) -> Vec<(Hash, bool)> {
    let mut out = Vec::with_capacity(hashes.len());
    for hash in hashes {
        match rpc
            .call(|c| c.is_blockhash_valid(&hash, CommitmentConfig::processed()))
            .await
        {
            Ok(valid) => out.push((hash, valid)),
            Err(e) => {
                tracing::debug!(error = %e, "isBlockhashValid failed");
                break;
            }
        }
    }
    out
}

/// The signatures among `sigs` that landed at `confirmed` or better, with their
/// slots (a status seen only at `processed` may still be on a fork that is dropped:
/// those keep being rebroadcast).
async fn landed_among(rpc: &ClusterRpc, sigs: Vec<Signature>) -> Vec<(Signature, u64)> {
    let mut landed = Vec::new();
    for chunk in sigs.chunks(256) {
        match rpc.call(|c| c.get_signature_statuses(chunk)).await {
            Ok(r) => {
                for (sig, status) in chunk.iter().zip(r.value) {
                    if let Some(status) = status
                        && status.satisfies_commitment(CommitmentConfig::confirmed())
                    {
                        landed.push((*sig, status.slot));
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "getSignatureStatuses failed");
                break;
            }
        }
    }
    landed
}

/// Honest acceptance against the real engine thread: each refusal answers its
/// documented error and counts nothing as accepted.
#[cfg(test)]
mod tests {
    use afterburner_quic::Identity;
    use afterburner_xdp::udp::UdpIo;
    use solana_sdk::signature::Keypair;

    use super::*;
    use crate::{leaders::StaticLeaders, rpc::Sender as _, validate};

    fn request() -> SendRequest {
        let wire = afterburner_test_support::signed_transfers(&Keypair::new(), 1).remove(0);
        SendRequest {
            tx: validate::validate(wire, validate::Checks::default()).expect("valid"),
            options: rpc::SendOptions {
                skip_preflight: true,
                ..rpc::SendOptions::default()
            },
            received_at: Instant::now(),
        }
    }

    fn engine() -> EngineHandle {
        let io = UdpIo::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        EngineHandle::spawn(
            afterburner_quic::EngineConfig::default(),
            &Identity::random(),
            io,
            |_: Outcome| {},
        )
        .expect("engine")
    }

    fn service(
        leaders: Vec<SocketAddr>,
        config: ServiceConfig,
        engine: &EngineHandle,
    ) -> (Arc<Service>, Intake) {
        Service::new(
            config,
            Arc::new(StaticLeaders(leaders)),
            Metrics::new().expect("metrics"),
            Preflight::Refuse,
            engine.submitter(),
            Arc::new(ArcSwap::from_pointee(Identity::random())),
            None,
        )
    }

    fn leader() -> Vec<SocketAddr> {
        vec![([127, 0, 0, 1], 9).into()]
    }

    #[tokio::test]
    async fn no_leader_is_refused_as_unhealthy() {
        let engine = engine();
        let (s, _queue) = service(Vec::new(), ServiceConfig::default(), &engine);
        let e = s.send(request()).expect_err("refused");
        assert_eq!(e, SendError::NotReady("no leader known to send to"));
        assert_eq!(e.rpc_error().code, rpc::code::NODE_UNHEALTHY);
        assert_eq!(
            e.rpc_error().message,
            "Node is unhealthy: no leader known to send to"
        );
        assert_eq!(s.metrics.accounting.snapshot().accepted, 0);
        assert!(s.ready().is_err());
    }

    #[tokio::test]
    async fn a_stopped_engine_is_refused_as_unhealthy() {
        let engine = engine();
        let (s, _queue) = service(leader(), ServiceConfig::default(), &engine);
        assert!(s.ready().is_ok());
        engine.shutdown().expect("shutdown");
        let e = s.send(request()).expect_err("refused");
        assert_eq!(e, SendError::NotReady("the QUIC engine has stopped"));
        assert_eq!(e.rpc_error().code, rpc::code::NODE_UNHEALTHY);
        assert_eq!(s.metrics.accounting.snapshot().accepted, 0);
        assert_eq!(s.ready(), Err("the QUIC engine has stopped".into()));
    }

    #[tokio::test]
    async fn a_full_ledger_is_refused_as_too_many() {
        let engine = engine();
        let config = ServiceConfig {
            max_tracked: 2,
            ..ServiceConfig::default()
        };
        let (s, _queue) = service(leader(), config, &engine);
        assert!(s.send(request()).is_ok());
        assert!(s.send(request()).is_ok());
        let e = s.send(request()).expect_err("refused");
        assert_eq!(e, SendError::QueueFull);
        assert_eq!(e.rpc_error().code, rpc::code::QUEUE_FULL);
        assert_eq!(s.metrics.accounting.snapshot().accepted, 2);
    }
}
