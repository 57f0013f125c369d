//! The transaction ledger: every accepted transaction from acceptance to its one
//! terminal state, owned by exactly one task (the forwarder). Sans-IO: the owner
//! feeds it what happened (accepted, handed to the engine for these leaders, the
//! engine's outcome, landed, the time) and performs what [`Ledger::tick`] asks for
//! (send this attempt, this one is retired). Every per-transaction operation is O(1)
//! or O(log n) in the number of tracked transactions: entries by id and by signature
//! in hash maps, what is due next in a time-ordered set, ended records in the order
//! they ended. Only the whole-ledger calls walk every record: the list of
//! signatures to poll (once per status interval) and shutdown.
//!
//! Two accountings meet here. The first send: accepted = sent + dropped{reason} +
//! in flight (the first attempt's outcomes still arriving). The life: every accepted
//! transaction ends in exactly one [`Terminal`] state, and nothing is sent after it.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use afterburner_quic::{DropReason, OutcomeKind};
use solana_sdk::{hash::Hash, pubkey::Pubkey, signature::Signature};
use strum::{EnumIter, IntoStaticStr};

#[cfg(test)]
mod tests;

/// A transaction's id in the ledger (and, times [`ATTEMPTS`] plus the attempt, in
/// the engine).
pub type TxId = u64;

/// Engine ids: a transaction's id times this, plus the attempt number.
pub const ATTEMPTS: u64 = 1 << 16;

/// How a transaction's life ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Terminal {
    /// Seen landed at the configured commitment.
    Landed,
    /// Too old to land: its blockhash is no longer valid (or, without an answer
    /// from the cluster, the slot backstop or a durable nonce's maximum age passed).
    Expired,
    /// A durable-nonce transaction whose nonce account holds another nonce: it can
    /// never land (as agave's send-transaction-service drops it).
    NonceAdvanced,
    /// Sent as many times as allowed (`maxRetries`; 0: only the first send).
    RetriesExhausted,
    /// The gateway shut down first.
    Shutdown,
}

impl Terminal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// Why a first send reached no leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FirstDrop {
    /// No leader was known to send to.
    NoLeader,
    /// The engine dropped it (the last reason among its targets).
    Engine(DropReason),
}

impl FirstDrop {
    /// The metric label (one of `metrics::FIRST_DROP_LABELS`).
    pub fn label(self) -> &'static str {
        match self {
            Self::NoLeader => "no_leader",
            Self::Engine(r) => r.label(),
        }
    }
}

/// Where a transaction is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Accepted; its first send has not been handed to the engine yet.
    Queued,
    /// Sent at least once (or tried to); rebroadcast until it ends.
    InFlight,
    /// Ended, at this time.
    Ended(Terminal, Instant),
}

/// One send of one attempt to one leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRecord {
    /// 0 for the first send, then one per rebroadcast.
    pub attempt: u32,
    /// The leader's TPU address (`None`: no leader was known).
    pub target: Option<SocketAddr>,
    /// The leader's identity, when the schedule named it for that address.
    pub leader: Option<Pubkey>,
    /// When it was handed to the engine.
    pub at: Instant,
    /// The engine's outcome, once reported.
    pub outcome: Option<OutcomeKind>,
}

/// What a new transaction brings.
#[derive(Clone, Debug)]
pub struct NewTx {
    /// Its first signature.
    pub signature: Signature,
    /// The wire bytes.
    pub wire: Arc<[u8]>,
    /// Rebroadcasts allowed after the first send (`None`: until it ends otherwise).
    pub max_retries: Option<usize>,
    /// When its request had been read.
    pub received_at: Instant,
    /// What keeps it valid.
    pub lifetime: Lifetime,
    /// Who sent it: its API key's index (`None`: no keys configured).
    pub client: Option<u16>,
}

/// What keeps a transaction valid, and so when the ledger gives up on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Its recent blockhash: it expires when the cluster says that is no longer
    /// valid (after [`LedgerConfig::blockhash_grace`]).
    Blockhash(Hash),
    /// A durable nonce (first instruction `AdvanceNonceAccount`): valid until the
    /// nonce account holds another nonce than `nonce` (for
    /// [`LedgerConfig::blockhash_grace`] in a row), and at most
    /// [`LedgerConfig::nonce_max_age`].
    Nonce {
        /// The nonce account (`None`: it comes from an address lookup table, so
        /// only the maximum age applies).
        account: Option<Pubkey>,
        /// The nonce it was signed with (the message's recent blockhash).
        nonce: Hash,
    },
}

impl Lifetime {
    fn blockhash(self) -> Option<Hash> {
        match self {
            Self::Blockhash(h) => Some(h),
            Self::Nonce { .. } => None,
        }
    }

    fn nonce_account(self) -> Option<Pubkey> {
        match self {
            Self::Nonce { account, .. } => account,
            Self::Blockhash(_) => None,
        }
    }
}

/// What the owner must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand attempt `attempt` of `id` to the engine (for the current leaders), then
    /// report it with [`Ledger::on_submitted`].
    Send {
        /// The transaction.
        id: TxId,
        /// Its attempt number.
        attempt: u32,
        /// The bytes.
        wire: Arc<[u8]>,
    },
    /// `id` ended (count it, release what it held).
    Retired {
        /// The transaction.
        id: TxId,
        /// How.
        terminal: Terminal,
        /// From acceptance to its end.
        age: Duration,
    },
}

/// Bounds and policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Rebroadcast interval.
    pub retry_interval: Duration,
    /// Slots after acceptance a transaction is given up at the latest (agave: a
    /// blockhash lands for 150 slots, so none accepted with a valid one can land
    /// later); normally the blockhash check ends it first.
    pub expiry_slots: u64,
    /// A blockhash the cluster calls invalid for this long expires its transactions
    /// (a client may be ahead of the RPC we ask: a blockhash it has not seen yet is
    /// "invalid" for a moment).
    pub blockhash_grace: Duration,
    /// A durable-nonce transaction is given up this long after acceptance (or at
    /// `maxRetries`, or when it lands).
    pub nonce_max_age: Duration,
    /// Slot duration, for expiry while no slot is known.
    pub slot_duration: Duration,
    /// Sends recorded per transaction (the lifecycle keeps the first ones).
    pub max_send_records: usize,
    /// Ended transactions kept for lookups this long...
    pub keep_ended: Duration,
    /// ...and at most this many.
    pub max_ended: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(2),
            expiry_slots: 150,
            blockhash_grace: Duration::from_secs(10),
            nonce_max_age: Duration::from_secs(300),
            slot_duration: Duration::from_millis(400),
            // 16 x ~80 bytes per transaction: the first sends (the first attempt's
            // fanout and a few rebroadcasts) are what a lifecycle needs, and 100,000
            // tracked transactions stay within ~130 MB at worst.
            max_send_records: 16,
            keep_ended: Duration::from_secs(600),
            max_ended: 100_000,
        }
    }
}

/// The first send's accounting, until every target reported.
#[derive(Clone, Copy, Debug)]
struct First {
    /// Outcomes still to come (`None`: not handed to the engine yet).
    pending: Option<usize>,
    sent: bool,
    last_drop: Option<FirstDrop>,
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Slot(u64),
    At(Instant),
}

/// One transaction's record.
#[derive(Clone, Debug)]
pub struct Record {
    /// Its first signature.
    pub signature: Signature,
    /// When its request had been read.
    pub received_at: Instant,
    /// When the ledger took it.
    pub accepted_at: Instant,
    /// Where it is.
    pub state: State,
    /// Its sends, oldest first (at most [`LedgerConfig::max_send_records`]).
    pub sends: Vec<SendRecord>,
    /// How its first send ended (`None`: still in flight; `Some(Ok)`: sent).
    pub first_send: Option<Result<(), FirstDrop>>,
    /// The slot it landed in, when it did.
    pub landed_slot: Option<u64>,
    /// The leader of the slot it landed in, when the schedule knew it.
    pub landed_leader: Option<Pubkey>,
    /// What keeps it valid.
    pub lifetime: Lifetime,
    /// Who sent it (see [`NewTx::client`]).
    pub client: Option<u16>,
    /// Since when its nonce account has held another nonce (durable nonces only).
    nonce_moved_since: Option<Instant>,
    wire: Arc<[u8]>,
    retries_left: Option<usize>,
    attempts: u32,
    expires: Expiry,
    next_due: Option<Instant>,
    first: First,
}

/// What a step changed in the first-send accounting, for the owner to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstSendDone {
    /// Reached at least one leader.
    Sent,
    /// Reached none.
    Dropped(FirstDrop),
}

/// The live transactions of one blockhash.
#[derive(Debug, Default)]
struct Blockhash {
    ids: HashSet<TxId>,
    invalid_since: Option<Instant>,
}

/// The ledger. See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    config: LedgerConfig,
    next_id: TxId,
    records: HashMap<TxId, Record>,
    by_signature: HashMap<Signature, TxId>,
    /// When each live transaction is next due, in time order.
    due: BTreeSet<(Instant, TxId)>,
    /// Ended transactions, in the order they ended (for forgetting them).
    ended: VecDeque<TxId>,
    /// Live transactions by blockhash, and since when the cluster calls it invalid.
    by_blockhash: HashMap<Hash, Blockhash>,
    /// Live durable-nonce transactions by nonce account.
    by_nonce_account: HashMap<Pubkey, HashSet<TxId>>,
    slot: Option<u64>,
    live: usize,
    /// Transactions whose first send has not settled.
    unsettled: usize,
    /// First sends that finished since the last [`Self::take_first_sends`].
    first_done: Vec<(TxId, FirstSendDone)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(config: LedgerConfig) -> Self {
        Self {
            config,
            next_id: 0,
            records: HashMap::new(),
            by_signature: HashMap::new(),
            due: BTreeSet::new(),
            ended: VecDeque::new(),
            by_blockhash: HashMap::new(),
            by_nonce_account: HashMap::new(),
            slot: None,
            live: 0,
            unsettled: 0,
            first_done: Vec::new(),
        }
    }

    /// Transactions not yet ended.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Takes `tx`; its first send is due at once (the next [`Self::tick`]).
    pub fn accept(&mut self, tx: NewTx, now: Instant) -> TxId {
        let id = self.next_id;
        self.next_id += 1;
        let expires = match (tx.lifetime, self.slot) {
            (Lifetime::Nonce { .. }, _) => Expiry::At(now + self.config.nonce_max_age),
            (Lifetime::Blockhash(_), Some(s)) => Expiry::Slot(s + self.config.expiry_slots),
            (Lifetime::Blockhash(_), None) => Expiry::At(
                now + self
                    .config
                    .slot_duration
                    .saturating_mul(u32::try_from(self.config.expiry_slots).unwrap_or(u32::MAX)),
            ),
        };
        // A signature seen again after its record was forgotten is a new life; the
        // lookup follows the newest.
        self.by_signature.insert(tx.signature, id);
        if let Some(hash) = tx.lifetime.blockhash() {
            self.by_blockhash.entry(hash).or_default().ids.insert(id);
        }
        if let Some(account) = tx.lifetime.nonce_account() {
            self.by_nonce_account.entry(account).or_default().insert(id);
        }
        self.records.insert(
            id,
            Record {
                signature: tx.signature,
                received_at: tx.received_at,
                accepted_at: now,
                state: State::Queued,
                sends: Vec::new(),
                first_send: None,
                landed_slot: None,
                landed_leader: None,
                lifetime: tx.lifetime,
                client: tx.client,
                nonce_moved_since: None,
                wire: tx.wire,
                retries_left: tx.max_retries,
                attempts: 0,
                expires,
                next_due: Some(now),
                first: First {
                    pending: None,
                    sent: false,
                    last_drop: None,
                },
            },
        );
        self.due.insert((now, id));
        self.live += 1;
        self.unsettled += 1;
        id
    }

    /// The record of `id`.
    pub fn get(&self, id: TxId) -> Option<&Record> {
        self.records.get(&id)
    }

    /// The newest record for `signature`.
    pub fn find(&self, signature: &Signature) -> Option<&Record> {
        self.get(*self.by_signature.get(signature)?)
    }

    /// The signatures of every live transaction that has been sent (for status
    /// polling).
    pub fn in_flight_signatures(&self) -> Vec<Signature> {
        self.records
            .values()
            .filter(|r| r.state == State::InFlight)
            .map(|r| r.signature)
            .collect()
    }

    /// The newest slot known.
    pub fn on_slot(&mut self, slot: u64) {
        self.slot = Some(self.slot.map_or(slot, |s| s.max(slot)));
    }

    /// Everything due at `now`: sends (first and rebroadcasts) and retirements, in
    /// `out`.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(&(at, id)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            let Some(r) = self.records.get_mut(&id) else {
                continue;
            };
            r.next_due = None;
            if matches!(r.state, State::Ended(..)) {
                continue;
            }
            let first = r.attempts == 0;
            let expired = !first
                && match r.expires {
                    Expiry::Slot(s) => self.slot.is_some_and(|cur| cur > s),
                    Expiry::At(at) => now >= at,
                };
            if expired {
                self.end(id, Terminal::Expired, now, out);
            } else if !first && r.retries_left == Some(0) {
                self.end(id, Terminal::RetriesExhausted, now, out);
            } else {
                if !first {
                    r.retries_left = r.retries_left.map(|n| n.saturating_sub(1));
                }
                let attempt = r.attempts;
                r.attempts += 1;
                r.state = State::InFlight;
                let next = now + self.config.retry_interval;
                r.next_due = Some(next);
                self.due.insert((next, id));
                out.push(Action::Send {
                    id,
                    attempt,
                    wire: r.wire.clone(),
                });
            }
        }
        self.forget_ended(now);
    }

    /// Attempt `attempt` of `id` was handed to the engine for `targets` at `now`
    /// (empty: no leader was known). Its outcomes follow through
    /// [`Self::on_send_outcome`], one per target.
    pub fn on_submitted(&mut self, id: TxId, attempt: u32, targets: &[SocketAddr], now: Instant) {
        self.on_submitted_to(id, attempt, targets, |_| None, now);
    }

    /// [`Self::on_submitted`], recording each target's leader identity as
    /// `leader_of` names it.
    pub fn on_submitted_to(
        &mut self,
        id: TxId,
        attempt: u32,
        targets: &[SocketAddr],
        leader_of: impl Fn(SocketAddr) -> Option<Pubkey>,
        now: Instant,
    ) {
        let max = self.config.max_send_records;
        let Some(r) = self.records.get_mut(&id) else {
            return;
        };
        if targets.is_empty() {
            if r.sends.len() < max {
                r.sends.push(SendRecord {
                    attempt,
                    target: None,
                    leader: None,
                    at: now,
                    outcome: None,
                });
            }
        } else {
            let room = max.saturating_sub(r.sends.len());
            r.sends
                .extend(targets.iter().take(room).map(|&t| SendRecord {
                    attempt,
                    target: Some(t),
                    leader: leader_of(t),
                    at: now,
                    outcome: None,
                }));
        }
        if attempt == 0 && r.first.pending.is_none() {
            r.first.pending = Some(targets.len());
            if targets.is_empty() {
                r.first.last_drop = Some(FirstDrop::NoLeader);
                self.settle_first(id);
            }
        }
    }

    /// The engine's outcome for attempt `attempt` of `id` to `target`. Returns true
    /// when this is the transaction's first stream written (its first frame on the
    /// wire: the request -> wire latency ends here).
    pub fn on_send_outcome(
        &mut self,
        id: TxId,
        attempt: u32,
        target: SocketAddr,
        kind: OutcomeKind,
    ) -> bool {
        let Some(r) = self.records.get_mut(&id) else {
            return false;
        };
        if let Some(s) = r
            .sends
            .iter_mut()
            .find(|s| s.attempt == attempt && s.target == Some(target) && s.outcome.is_none())
        {
            s.outcome = Some(kind);
        }
        if attempt != 0 {
            return false;
        }
        let Some(pending) = r.first.pending.as_mut() else {
            return false;
        };
        if *pending == 0 {
            return false;
        }
        *pending -= 1;
        let first_frame = kind == OutcomeKind::Sent && !r.first.sent;
        match kind {
            OutcomeKind::Sent => r.first.sent = true,
            OutcomeKind::Dropped(reason) => r.first.last_drop = Some(FirstDrop::Engine(reason)),
        }
        if *pending == 0 {
            self.settle_first(id);
        }
        first_frame
    }

    /// The distinct blockhashes of live transactions (to ask the cluster about).
    pub fn blockhashes(&self) -> Vec<Hash> {
        self.by_blockhash.keys().copied().collect()
    }

    /// The cluster says `hash` is (not) valid at `now`. Invalid for
    /// [`LedgerConfig::blockhash_grace`] in a row: its live transactions expire.
    pub fn on_blockhash_status(
        &mut self,
        hash: &Hash,
        valid: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let grace = self.config.blockhash_grace;
        let Some(b) = self.by_blockhash.get_mut(hash) else {
            return;
        };
        if valid {
            b.invalid_since = None;
            return;
        }
        let since = *b.invalid_since.get_or_insert(now);
        if now.saturating_duration_since(since) < grace {
            return;
        }
        let ids: Vec<TxId> = b.ids.iter().copied().collect();
        for id in ids {
            // Not before its first send: a transaction is sent at least once.
            if self.records.get(&id).is_some_and(|r| r.attempts > 0) {
                self.end(id, Terminal::Expired, now, out);
            }
        }
    }

    /// The nonce accounts of live durable-nonce transactions (to read from the
    /// cluster).
    pub fn nonce_accounts(&self) -> Vec<Pubkey> {
        self.by_nonce_account.keys().copied().collect()
    }

    /// The cluster says nonce account `account` holds `current` at `now` (`None`: no
    /// such account, or not an initialized nonce account). Its live transactions
    /// signed with another nonce end as [`Terminal::NonceAdvanced`] once that has
    /// been so for [`LedgerConfig::blockhash_grace`] in a row (a client may be
    /// ahead of the RPC we ask). Feed landings first: a transaction that advanced
    /// the nonce itself has landed.
    pub fn on_nonce_status(
        &mut self,
        account: &Pubkey,
        current: Option<Hash>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let grace = self.config.blockhash_grace;
        let Some(ids) = self.by_nonce_account.get(account) else {
            return;
        };
        let mut advanced = Vec::new();
        for &id in ids {
            let Some(r) = self.records.get_mut(&id) else {
                continue;
            };
            let Lifetime::Nonce { nonce, .. } = r.lifetime else {
                continue;
            };
            if current == Some(nonce) {
                r.nonce_moved_since = None;
                continue;
            }
            let since = *r.nonce_moved_since.get_or_insert(now);
            // Not before its first send: a transaction is sent at least once.
            if now.saturating_duration_since(since) >= grace && r.attempts > 0 {
                advanced.push(id);
            }
        }
        for id in advanced {
            self.end(id, Terminal::NonceAdvanced, now, out);
        }
    }

    /// The leader of the slot `id` landed in (the owner looks it up in the
    /// schedule when the landing is reported).
    pub fn set_landed_leader(&mut self, id: TxId, leader: Pubkey) {
        if let Some(r) = self.records.get_mut(&id) {
            r.landed_leader = Some(leader);
        }
    }

    /// `signature` was seen landed at the configured commitment, in `slot` if known.
    pub fn on_landed(
        &mut self,
        signature: &Signature,
        slot: Option<u64>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(&id) = self.by_signature.get(signature) else {
            return;
        };
        if let Some(r) = self.records.get_mut(&id)
            && r.state == State::InFlight
        {
            r.landed_slot = slot;
            self.end(id, Terminal::Landed, now, out);
        }
    }

    /// Ends every live transaction with [`Terminal::Shutdown`]. First sends still
    /// in flight keep waiting for their outcomes; [`Self::abandon_first_sends`] ends
    /// that wait.
    pub fn shutdown(&mut self, now: Instant, out: &mut Vec<Action>) {
        let live: Vec<TxId> = self
            .records
            .iter()
            .filter(|(_, r)| !matches!(r.state, State::Ended(..)))
            .map(|(id, _)| *id)
            .collect();
        for id in live {
            self.end(id, Terminal::Shutdown, now, out);
        }
    }

    /// Whether any first send still waits for outcomes (or was never made).
    pub fn first_sends_pending(&self) -> bool {
        self.unsettled > 0
    }

    /// Counts every first send still without all its outcomes as dropped with
    /// `reason` (they cannot arrive any more).
    pub fn abandon_first_sends(&mut self, reason: DropReason) {
        let ids: Vec<TxId> = self
            .records
            .iter()
            .filter(|(_, r)| r.first_send.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.records.get_mut(&id)
                && !r.first.sent
            {
                r.first.last_drop = Some(FirstDrop::Engine(reason));
            }
            self.settle_first(id);
        }
    }

    /// The engine thread ended on its own at `now`: the outcomes of what it held
    /// will never come. First sends handed to it and still waiting settle now (sent
    /// if a target took it already, else dropped as `engine_failed`); first sends
    /// not handed over yet are untouched. Every transaction in flight is due again
    /// at `now`, so that it goes out on the next engine's connections. O(n): once
    /// per engine failure.
    pub fn engine_lost(&mut self, now: Instant) {
        let ids: Vec<TxId> = self
            .records
            .iter()
            .filter(|(_, r)| r.first_send.is_none() && r.first.pending.is_some_and(|n| n > 0))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.records.get_mut(&id)
                && !r.first.sent
            {
                r.first.last_drop = Some(FirstDrop::Engine(DropReason::EngineFailed));
            }
            self.settle_first(id);
        }
        let in_flight: Vec<TxId> = self
            .records
            .iter()
            .filter(|(_, r)| r.state == State::InFlight)
            .map(|(id, _)| *id)
            .collect();
        for id in in_flight {
            if let Some(r) = self.records.get_mut(&id) {
                if let Some(at) = r.next_due.replace(now) {
                    self.due.remove(&(at, id));
                }
                self.due.insert((now, id));
            }
        }
    }

    /// First sends that finished since the last call (each exactly once).
    pub fn take_first_sends(&mut self) -> std::vec::Drain<'_, (TxId, FirstSendDone)> {
        self.first_done.drain(..)
    }

    fn settle_first(&mut self, id: TxId) {
        let Some(r) = self.records.get_mut(&id) else {
            return;
        };
        if r.first_send.is_some() {
            return;
        }
        r.first.pending = Some(0);
        self.unsettled -= 1;
        let done = if r.first.sent {
            r.first_send = Some(Ok(()));
            FirstSendDone::Sent
        } else {
            let reason = r.first.last_drop.unwrap_or(FirstDrop::NoLeader);
            r.first_send = Some(Err(reason));
            FirstSendDone::Dropped(reason)
        };
        self.first_done.push((id, done));
    }

    fn end(&mut self, id: TxId, terminal: Terminal, now: Instant, out: &mut Vec<Action>) {
        let Some(r) = self.records.get_mut(&id) else {
            return;
        };
        if matches!(r.state, State::Ended(..)) {
            return;
        }
        r.state = State::Ended(terminal, now);
        if let Some(at) = r.next_due.take() {
            self.due.remove(&(at, id));
        }
        if let Some(hash) = r.lifetime.blockhash()
            && let Some(b) = self.by_blockhash.get_mut(&hash)
        {
            b.ids.remove(&id);
            if b.ids.is_empty() {
                self.by_blockhash.remove(&hash);
            }
        }
        if let Some(account) = r.lifetime.nonce_account()
            && let Some(ids) = self.by_nonce_account.get_mut(&account)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_nonce_account.remove(&account);
            }
        }
        self.live -= 1;
        self.ended.push_back(id);
        out.push(Action::Retired {
            id,
            terminal,
            age: now.saturating_duration_since(r.accepted_at),
        });
    }

    /// Forgets ended records past the retention time or count; a record whose first
    /// send still waits for outcomes is kept until they are in.
    fn forget_ended(&mut self, now: Instant) {
        while let Some(&id) = self.ended.front() {
            let Some(r) = self.records.get(&id) else {
                self.ended.pop_front();
                continue;
            };
            let State::Ended(_, at) = r.state else {
                self.ended.pop_front();
                continue;
            };
            let old = now.saturating_duration_since(at) >= self.config.keep_ended;
            if !old && self.ended.len() <= self.config.max_ended {
                break;
            }
            if r.first_send.is_none() {
                // Its outcomes are still coming (for at most the engine's handshake
                // timeout); a later tick forgets it, and what ended after it.
                break;
            }
            self.ended.pop_front();
            self.remove(id);
        }
    }

    fn remove(&mut self, id: TxId) {
        if let Some(r) = self.records.remove(&id)
            && self.by_signature.get(&r.signature) == Some(&id)
        {
            self.by_signature.remove(&r.signature);
        }
    }
}
