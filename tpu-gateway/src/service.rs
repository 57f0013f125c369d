//! The send path: [`Service`] takes validated transactions (dedup, bounded queue),
//! and the forwarder task sends each one to the current leaders through the QUIC
//! engine, rebroadcasts it until it lands, runs out of retries or expires, and
//! accounts for every one: accepted = sent + dropped{reason} (+ in flight).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use afterburner_quic::{
    DropReason, EngineHandle, EngineSubmitter, Outcome, OutcomeKind, Submission,
};
use solana_client::nonblocking::rpc_client::RpcClient;
use solana_sdk::signature::Signature;
use tokio::sync::{mpsc, watch};

use crate::{
    dedup::Dedup,
    leaders::LeaderSource,
    metrics::Metrics,
    rpc::{self, RejectReason, SendError, SendRequest},
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
    /// Slots a transaction is kept after acceptance (agave: 150, `MAX_PROCESSING_AGE`).
    pub expiry_slots: u64,
    /// Slot duration, for expiry when no slot is known (static leaders).
    pub slot_duration: Duration,
    /// Duplicate window.
    pub dedup_window: Duration,
    /// Duplicate memory bound.
    pub dedup_capacity: usize,
    /// Verify signatures before sending.
    pub verify_signatures: bool,
    /// How often landed status is asked for (`getSignatureStatuses`).
    pub status_interval: Duration,
    /// Keep up to this many raw request -> wire latencies (benchmarks; 0: none).
    pub latency_samples: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            queue: 10_000,
            max_tracked: 100_000,
            retry_interval: Duration::from_secs(2),
            default_max_retries: None,
            expiry_slots: 150,
            slot_duration: Duration::from_millis(400),
            dedup_window: Duration::from_secs(60),
            dedup_capacity: 200_000,
            verify_signatures: true,
            status_interval: Duration::from_secs(1),
            latency_samples: 0,
        }
    }
}

/// What happens with `skipPreflight: false`.
#[derive(Clone)]
#[allow(missing_debug_implementations, reason = "RpcClient is not Debug")]
pub enum Preflight {
    /// Forwarded as `simulateTransaction` to this RPC; a failure is agave's -32002.
    Forward(Arc<RpcClient>),
    /// Refused with a message telling the client to set `skipPreflight: true`.
    Refuse,
}

/// One accepted transaction, registered with the forwarder (its first send was
/// already handed to the engine by the request handler).
#[derive(Debug)]
pub struct Accepted {
    id: u64,
    signature: Signature,
    wire: Arc<[u8]>,
    max_retries: Option<usize>,
    received_at: Instant,
    /// Leaders the first send went to (its outcomes to wait for).
    sent_to: usize,
    connect: Vec<SocketAddr>,
    slot: Option<u64>,
}

/// The front half: what request handlers call.
pub struct Service {
    queue: mpsc::Sender<Accepted>,
    engine: EngineSubmitter,
    outcomes: mpsc::UnboundedSender<(Outcome, Instant)>,
    next_id: AtomicU64,
    dedup: Mutex<Dedup>,
    config: ServiceConfig,
    leaders: Arc<dyn LeaderSource>,
    metrics: Metrics,
    preflight: Preflight,
    accepting: AtomicBool,
    path_up: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

impl Service {
    /// The service and the receiving end of its queue (for [`Forwarder::run`]).
    /// `outcomes` is the sender side of [`outcome_channel`] (for sends the engine
    /// refuses outright).
    pub fn new(
        config: ServiceConfig,
        leaders: Arc<dyn LeaderSource>,
        metrics: Metrics,
        preflight: Preflight,
        path_up: Arc<AtomicBool>,
        engine: EngineSubmitter,
        outcomes: OutcomeSender,
    ) -> (Arc<Self>, mpsc::Receiver<Accepted>) {
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let dedup = Mutex::new(Dedup::new(config.dedup_window, config.dedup_capacity));
        (
            Arc::new(Self {
                queue,
                engine,
                outcomes,
                next_id: AtomicU64::new(0),
                dedup,
                config,
                leaders,
                metrics,
                preflight,
                accepting: AtomicBool::new(true),
                path_up,
                samples: Arc::new(Mutex::new(Samples::default())),
            }),
            rx,
        )
    }

    /// The per-stage latencies kept so far (see [`ServiceConfig::latency_samples`]),
    /// for transactions whose first frame reached the packet path; emptied.
    pub fn take_latency_samples(&self) -> Vec<LatencySample> {
        let Ok(mut s) = self.samples.lock() else {
            return Vec::new();
        };
        let s = std::mem::take(&mut *s);
        let handled: HashMap<u64, (Duration, Duration)> = s
            .handled
            .into_iter()
            .map(|(id, v, sub)| (id, (v, sub)))
            .collect();
        s.wire
            .into_iter()
            .filter_map(|(id, wire)| {
                let &(validated, submitted) = handled.get(&id)?;
                Some(LatencySample {
                    validated,
                    submitted,
                    wire,
                })
            })
            .collect()
    }

    /// Stops accepting (shutdown): new sends get -32005.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// `Ok` when transactions can be sent: schedule fresh, packet path up, accepting.
    pub fn ready(&self) -> Result<(), String> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if !self.path_up.load(Ordering::SeqCst) {
            return Err("packet path down".into());
        }
        self.leaders.ready()
    }

    /// Sets the gauges that are read rather than counted (scrape time): ready, the
    /// current slot, the schedule's age.
    pub fn update_gauges(&self) {
        let m = &self.metrics;
        m.ready.set(i64::from(self.ready().is_ok()));
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

    /// Accepts raw wire bytes (the `/v1/transactions` route), through the same
    /// path as `sendTransaction` ([`rpc::submit`]).
    ///
    /// # Errors
    /// The same refusals `sendTransaction` gives.
    pub fn send_wire(
        &self,
        wire: Vec<u8>,
        received_at: Instant,
        options: rpc::SendOptions,
    ) -> Result<String, SendError> {
        rpc::submit(self, wire, options, received_at)
    }

    /// Counts a refusal under its reason.
    pub fn count_reject(&self, reason: RejectReason) {
        self.metrics
            .rejected
            .with_label_values(&[reason.label()])
            .inc();
    }
}

impl rpc::Sender for Service {
    fn send(&self, request: SendRequest) -> Result<String, SendError> {
        let validated = request.received_at.elapsed();
        let sig = request.tx.signature;
        let sig_text = sig.to_string();
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SendError::NotReady("shutting down"));
        }
        if let Some(min) = request.options.min_context_slot
            && let Some(slot) = self.leaders.current_slot()
            && slot < min
        {
            return Err(SendError::MinContextSlotNotReached { context_slot: slot });
        }
        let fresh = self
            .dedup
            .lock()
            .map_err(|_| SendError::Internal("dedup lock poisoned"))?
            .insert(sig, Instant::now());
        if !fresh {
            self.metrics.duplicates.inc();
            return Ok(sig_text);
        }
        let permit = match self.queue.try_reserve() {
            Ok(p) => p,
            Err(e) => {
                if let Ok(mut d) = self.dedup.lock() {
                    d.remove(&sig);
                }
                return Err(match e {
                    mpsc::error::TrySendError::Closed(()) => SendError::NotReady("shutting down"),
                    mpsc::error::TrySendError::Full(()) => SendError::QueueFull,
                });
            }
        };
        // The first send goes to the engine from here, without a hop through the
        // forwarder task; the forwarder is told first, so it knows the transaction
        // before any of its outcomes can exist.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let targets = self.leaders.targets();
        self.metrics.accounting.accept();
        self.metrics.queue_depth.inc();
        permit.send(Accepted {
            id,
            signature: sig,
            wire: request.tx.wire.clone(),
            max_retries: request
                .options
                .max_retries
                .or(self.config.default_max_retries),
            received_at: request.received_at,
            sent_to: targets.send.len(),
            connect: targets.connect,
            slot: targets.slot,
        });
        if !targets.send.is_empty() {
            let batch: Vec<Submission> = targets
                .send
                .iter()
                .map(|&target| Submission {
                    id: id * ATTEMPTS,
                    payload: request.tx.wire.clone(),
                    target,
                })
                .collect();
            if let Err((e, refused)) = self.engine.submit_batch(batch) {
                let now = Instant::now();
                for s in refused {
                    let refusal = Outcome {
                        id: s.id,
                        target: s.target,
                        kind: OutcomeKind::Dropped(e.reason),
                    };
                    let _ = self.outcomes.send((refusal, now));
                }
            }
            let submitted = request.received_at.elapsed();
            self.metrics
                .accept_to_engine
                .observe(submitted.as_secs_f64());
            if self.config.latency_samples > 0
                && let Ok(mut s) = self.samples.lock()
                && s.handled.len() < self.config.latency_samples
            {
                s.handled.push((id, validated, submitted));
            }
        }
        Ok(sig_text)
    }

    fn verify_signatures(&self) -> bool {
        self.config.verify_signatures
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
                        rpc.simulate_transaction_with_config(&tx, config).await
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

/// Raw per-stage samples, joined by transaction id when taken.
#[derive(Debug, Default)]
struct Samples {
    /// (id, validated, submitted), recorded by the request handler.
    handled: Vec<(u64, Duration, Duration)>,
    /// (id, wire), recorded by the forwarder.
    wire: Vec<(u64, Duration)>,
}

/// A transaction in the retry set.
#[derive(Debug)]
struct Tracked {
    signature: Signature,
    wire: Arc<[u8]>,
    accepted_at: Instant,
    retries_left: Option<usize>,
    next_send: Instant,
    expires: Expiry,
    attempts: u64,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Slot(u64),
    At(Instant),
}

/// The first attempt's outcomes, still arriving.
#[derive(Debug)]
struct FirstAttempt {
    pending: usize,
    sent: bool,
    last_drop: Option<&'static str>,
    received_at: Instant,
}

/// Engine ids: transaction id times this plus the attempt number.
const ATTEMPTS: u64 = 1 << 16;

/// The back half: owns the engine handle and the retry set.
pub struct Forwarder {
    queue: mpsc::Receiver<Accepted>,
    outcomes: mpsc::UnboundedReceiver<(Outcome, Instant)>,
    engine: Option<EngineHandle>,
    samples: Arc<Mutex<Samples>>,
    leaders: Arc<dyn LeaderSource>,
    metrics: Metrics,
    config: ServiceConfig,
    status_rpc: Option<Arc<RpcClient>>,
    tracked: HashMap<u64, Tracked>,
    /// When each tracked transaction is next due (send or retire), in time order.
    schedule: BTreeSet<(Instant, u64)>,
    first: HashMap<u64, FirstAttempt>,
    /// First-attempt outcomes that arrived before their transaction's `Accepted`
    /// (two channels: the forwarder may see the engine's report first). Applied by
    /// `accept`; bounded by the sends in flight between the two.
    early: HashMap<u64, Vec<(Outcome, Instant)>>,
    warm: Vec<SocketAddr>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("tracked", &self.tracked.len())
            .finish()
    }
}

/// Engine outcomes with the time they were reported.
pub type OutcomeSender = mpsc::UnboundedSender<(Outcome, Instant)>;
/// The forwarder's end of [`OutcomeSender`].
pub type OutcomeReceiver = mpsc::UnboundedReceiver<(Outcome, Instant)>;

/// An outcome sink that hands engine outcomes to the forwarder, stamped with the
/// time the engine reported them (the engine reports a send after the pass that
/// handed its frames to the packet path).
pub fn outcome_channel() -> (
    impl FnMut(Outcome) + Send + 'static,
    OutcomeSender,
    OutcomeReceiver,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink_tx = tx.clone();
    (
        move |o: Outcome| {
            // The receiver lives as long as the forwarder, which outlives the engine.
            let _ = sink_tx.send((o, Instant::now()));
        },
        tx,
        rx,
    )
}

impl Forwarder {
    /// The forwarder for `service`'s queue.
    pub fn new(
        queue: mpsc::Receiver<Accepted>,
        outcomes: mpsc::UnboundedReceiver<(Outcome, Instant)>,
        engine: EngineHandle,
        service: &Service,
        status_rpc: Option<Arc<RpcClient>>,
    ) -> Self {
        Self {
            queue,
            outcomes,
            engine: Some(engine),
            samples: service.samples.clone(),
            leaders: service.leaders.clone(),
            metrics: service.metrics.clone(),
            config: service.config.clone(),
            status_rpc,
            tracked: HashMap::new(),
            schedule: BTreeSet::new(),
            first: HashMap::new(),
            early: HashMap::new(),
            warm: Vec::new(),
        }
    }

    /// Runs until `stop` turns true, then drains the queue (each transaction sent
    /// once), shuts the engine down and accounts for the rest, within `deadline`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, deadline: Duration) {
        // Cheap: only what is due is looked at (the schedule is ordered by time).
        let mut retry_tick = tokio::time::interval(Duration::from_millis(10));
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        let (landed_tx, mut landed_rx) = mpsc::channel::<Vec<Signature>>(16);
        let mut status_busy = false;
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                Some(a) = self.queue.recv() => self.accept(a),
                Some((o, at)) = self.outcomes.recv() => self.outcome(o, at),
                Some(landed) = landed_rx.recv() => {
                    status_busy = false;
                    self.landed(&landed);
                }
                _ = retry_tick.tick() => self.retry_due(),
                _ = status_tick.tick() => {
                    if !status_busy && let Some(rpc) = self.status_rpc.clone() {
                        let sigs: Vec<Signature> = self.tracked.values().map(|t| t.signature).collect();
                        if !sigs.is_empty() {
                            status_busy = true;
                            let tx = landed_tx.clone();
                            tokio::spawn(async move {
                                let _ = tx.send(landed_among(&rpc, sigs).await).await;
                            });
                        }
                    }
                }
            }
        }
        self.finish(deadline).await;
    }

    /// Registers a transaction whose first send the request handler already made.
    fn accept(&mut self, a: Accepted) {
        self.metrics.queue_depth.dec();
        let now = Instant::now();
        self.prewarm(&a.connect);
        let expires = match a.slot {
            Some(s) => Expiry::Slot(s + self.config.expiry_slots),
            None => Expiry::At(now + self.config.slot_duration * self.config.expiry_slots as u32),
        };
        let id = a.id;
        self.first.insert(
            id,
            FirstAttempt {
                pending: a.sent_to,
                sent: false,
                last_drop: None,
                received_at: a.received_at,
            },
        );
        if a.sent_to == 0 {
            self.metrics.sends.with_label_values(&["no_leader"]).inc();
            self.first_outcome(id, Err("no_leader"));
        }
        for (o, at) in self.early.remove(&id).unwrap_or_default() {
            self.outcome(o, at);
        }
        if self.tracked.len() >= self.config.max_tracked {
            tracing::debug!("retry set full; sent once without rebroadcast");
        } else if a.max_retries != Some(0) {
            let next_send = now + self.config.retry_interval;
            self.schedule.insert((next_send, id));
            self.tracked.insert(
                id,
                Tracked {
                    signature: a.signature,
                    wire: a.wire,
                    accepted_at: a.received_at,
                    retries_left: a.max_retries,
                    next_send,
                    expires,
                    attempts: 1,
                },
            );
            self.metrics.tracked.set(self.tracked.len() as i64);
        }
    }

    /// Hands one attempt to the engine for each target; returns how many were taken.
    fn submit(&mut self, id: u64, attempt: u64, wire: &Arc<[u8]>, targets: &[SocketAddr]) -> usize {
        let Some(engine) = &self.engine else {
            return 0;
        };
        if targets.is_empty() {
            self.metrics.sends.with_label_values(&["no_leader"]).inc();
            return 0;
        }
        let engine_id = id * ATTEMPTS + attempt.min(ATTEMPTS - 1);
        let batch: Vec<Submission> = targets
            .iter()
            .map(|&target| Submission {
                id: engine_id,
                payload: wire.clone(),
                target,
            })
            .collect();
        let n = batch.len();
        match engine.submit_batch(batch) {
            Ok(()) => n,
            Err((e, refused)) => {
                // Refused outright: these are their outcomes.
                let now = Instant::now();
                for s in refused {
                    self.outcome(
                        Outcome {
                            id: s.id,
                            target: s.target,
                            kind: OutcomeKind::Dropped(e.reason),
                        },
                        now,
                    );
                }
                0
            }
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

    fn outcome(&mut self, o: Outcome, at: Instant) {
        let (id, attempt) = (o.id / ATTEMPTS, o.id % ATTEMPTS);
        // Every first-attempt outcome belongs to a transaction in `first` (its
        // entry goes only once all of them are in), unless it overtook its Accepted.
        if attempt == 0 && !self.first.contains_key(&id) {
            self.early.entry(id).or_default().push((o, at));
            return;
        }
        let label = match o.kind {
            OutcomeKind::Sent => "sent",
            OutcomeKind::Dropped(r) => r.label(),
        };
        self.metrics.sends.with_label_values(&[label]).inc();
        if attempt == 0 {
            // The first frame of a transaction on the wire: request -> wire latency.
            if let (OutcomeKind::Sent, Some(f)) = (o.kind, self.first.get(&id))
                && !f.sent
            {
                let d = at.saturating_duration_since(f.received_at);
                self.metrics.request_to_wire.observe(d.as_secs_f64());
                if self.config.latency_samples > 0
                    && let Ok(mut s) = self.samples.lock()
                    && s.wire.len() < self.config.latency_samples
                {
                    s.wire.push((id, d));
                }
            }
            let result = match o.kind {
                OutcomeKind::Sent => Ok(()),
                OutcomeKind::Dropped(r) => Err(r.label()),
            };
            self.first_outcome(id, result);
        }
    }

    /// Folds one first-attempt outcome in; counts the transaction once all are in.
    fn first_outcome(&mut self, id: u64, result: Result<(), &'static str>) {
        let Some(f) = self.first.get_mut(&id) else {
            return;
        };
        match result {
            Ok(()) => f.sent = true,
            Err(reason) => f.last_drop = Some(reason),
        }
        f.pending = f.pending.saturating_sub(1);
        if f.pending > 0 {
            return;
        }
        let Some(done) = self.first.remove(&id) else {
            return;
        };
        self.metrics.accounting.first_send_done(if done.sent {
            Ok(())
        } else {
            Err(done.last_drop.unwrap_or("no_leader"))
        });
    }

    /// Handles every tracked transaction that is due: retired when expired or out of
    /// retries, else rebroadcast and rescheduled.
    fn retry_due(&mut self) {
        let now = Instant::now();
        let slot = self.leaders.current_slot();
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let Some(t) = self.tracked.get(&id) else {
                continue; // landed meanwhile
            };
            let expired = match t.expires {
                Expiry::Slot(s) => slot.is_some_and(|cur| cur > s),
                Expiry::At(at) => now >= at,
            };
            if expired {
                self.retire(id, "expired");
            } else if t.retries_left == Some(0) {
                self.retire(id, "retries_exhausted");
            } else {
                due.push(id);
            }
        }
        if due.is_empty() {
            return;
        }
        let targets = self.leaders.targets();
        self.prewarm(&targets.connect);
        for id in due {
            let Some(t) = self.tracked.get_mut(&id) else {
                continue;
            };
            t.retries_left = t.retries_left.map(|r| r.saturating_sub(1));
            t.next_send = now + self.config.retry_interval;
            self.schedule.insert((t.next_send, id));
            let attempt = t.attempts;
            t.attempts += 1;
            let wire = t.wire.clone();
            self.metrics.retries.inc();
            self.submit(id, attempt, &wire, &targets.send);
        }
    }

    fn retire(&mut self, id: u64, state: &'static str) {
        if let Some(t) = self.tracked.remove(&id) {
            if state == "landed" {
                self.metrics
                    .landing
                    .observe(t.accepted_at.elapsed().as_secs_f64());
            }
            self.metrics.retired.with_label_values(&[state]).inc();
            self.metrics.tracked.set(self.tracked.len() as i64);
        }
    }

    fn landed(&mut self, sigs: &[Signature]) {
        let ids: Vec<u64> = self
            .tracked
            .iter()
            .filter(|(_, t)| sigs.contains(&t.signature))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.retire(id, "landed");
        }
    }

    async fn finish(mut self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        // Send what was accepted but not yet sent, once each.
        self.queue.close();
        while let Ok(a) = self.queue.try_recv() {
            self.accept(a);
        }
        let ids: Vec<u64> = self.tracked.keys().copied().collect();
        for id in ids {
            self.retire(id, "shutdown");
        }
        // Let the engine finish what it holds, then stop it: what remains is reported
        // as dropped (shutdown).
        while !self.first.is_empty() && tokio::time::Instant::now() < until {
            match tokio::time::timeout_at(until, self.outcomes.recv()).await {
                Ok(Some((o, at))) => self.outcome(o, at),
                _ => break,
            }
        }
        if let Some(engine) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        while let Ok((o, at)) = self.outcomes.try_recv() {
            self.outcome(o, at);
        }
        // Anything still without an outcome cannot get one now.
        let ids: Vec<u64> = self.first.keys().copied().collect();
        for id in ids {
            if let Some(f) = self.first.get_mut(&id) {
                f.pending = 1;
            }
            self.first_outcome(id, Err(DropReason::Shutdown.label()));
        }
    }
}

/// The signatures among `sigs` that have a status (processed or better).
async fn landed_among(rpc: &RpcClient, sigs: Vec<Signature>) -> Vec<Signature> {
    let mut landed = Vec::new();
    for chunk in sigs.chunks(256) {
        match rpc.get_signature_statuses(chunk).await {
            Ok(r) => {
                for (sig, status) in chunk.iter().zip(r.value) {
                    if status.is_some() {
                        landed.push(*sig);
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
