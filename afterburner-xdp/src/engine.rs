//! [`Engine`]: the sans-IO TPU QUIC connection manager.
//!
//! It owns the quiche connections (one per TPU address, LRU-bounded), turns each
//! submitted transaction into one unidirectional stream with FIN, waits for stream
//! credit and for handshakes with a bounded per-connection queue, applies reconnect
//! backoff per close code, and reports exactly one [`Outcome`] per submission.
//! It never touches a socket or sleeps: the driver hands it received datagrams and
//! the time, and sends the datagrams it writes into a [`TxBatch`].

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::RngCore;

use crate::{
    batch::{RxBatch, TxBatch},
    config::{ALPN_TPU, EngineConfig, PACKET_DATA_SIZE, close_code},
    identity::{Identity, IdentityError},
    outcome::{DropReason, Outcome, OutcomeKind},
    stats::EngineStats,
};

/// Errors creating an [`Engine`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The identity's TLS context could not be built.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// quiche rejected the configuration.
    #[error("QUIC configuration rejected: {0}")]
    Quic(#[from] quiche::Error),
    /// The configuration is inconsistent.
    #[error("invalid engine configuration: {0}")]
    Config(&'static str),
}

/// A connection established after this long is healthy: its failure history is forgotten.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Streams written per connection before the datagrams built so far are handed out.
const STREAM_SLICE: usize = 64;

/// Backoff entries idle this long are forgotten.
const BACKOFF_FORGET: Duration = Duration::from_secs(600);

/// What the engine knows about one connection (for tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The handshake completed.
    pub established: bool,
    /// Unidirectional streams the peer allows us in total so far (opened + left):
    /// agave grants 128 to unstaked peers and up to 512 to staked ones.
    pub stream_limit_uni: u64,
    /// Streams opened so far.
    pub streams_opened: u64,
    /// Transactions waiting in this connection.
    pub queued: usize,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: usize,
    /// Packets sent and lost so far.
    pub packets_sent: usize,
    /// Packets declared lost so far.
    pub packets_lost: usize,
}

struct Pending {
    id: u64,
    payload: Arc<[u8]>,
}

/// A stream whose payload quiche only took in part (congestion window full).
struct Partial {
    tx: Pending,
    stream_id: u64,
    written: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshaking {
        deadline: Instant,
    },
    Established {
        since: Instant,
    },
    /// Closed locally (evicted or shutting down); kept only to send CONNECTION_CLOSE.
    Closing,
}

/// Lets quiche keep our transaction buffers instead of copying each one
/// (`stream_send_zc`): a stream's data is a shared view of the submitted payload.
#[derive(Clone, Debug, Default)]
struct PayloadFactory;

#[derive(Clone, Debug)]
struct PayloadBuf {
    data: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for PayloadBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
}

impl quiche::BufSplit for PayloadBuf {
    fn split_at(&mut self, at: usize) -> Self {
        let mid = (self.start + at).min(self.end);
        let tail = Self {
            data: self.data.clone(),
            start: mid,
            end: self.end,
        };
        self.end = mid;
        tail
    }
}

impl quiche::BufFactory for PayloadFactory {
    type Buf = PayloadBuf;

    fn buf_from_slice(buf: &[u8]) -> PayloadBuf {
        PayloadBuf {
            data: buf.into(),
            start: 0,
            end: buf.len(),
        }
    }
}

struct Conn {
    q: quiche::Connection<PayloadFactory>,
    peer: SocketAddr,
    state: State,
    queue: VecDeque<Pending>,
    partial: Option<Partial>,
    next_stream_id: u64,
    streams_opened: u64,
    /// LRU clock value of the last use.
    last_used: u64,
    last_ack_eliciting: Instant,
    waiting_for_credit: bool,
    dirty: bool,
}

struct Backoff {
    until: Instant,
    failures: u32,
}

/// The connection manager. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    quic: quiche::Config,
    local: SocketAddr,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_addr: HashMap<SocketAddr, usize>,
    backoff: HashMap<SocketAddr, Backoff>,
    dirty: VecDeque<usize>,
    outcomes: Vec<Outcome>,
    stats: Arc<EngineStats>,
    lru_clock: u64,
    /// The last target looked up and its slot: consecutive submissions usually share one.
    last_lookup: Option<(SocketAddr, usize)>,
    queued: usize,
    next_deadline: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local", &self.local)
            .field("connections", &self.by_addr.len())
            .field("queued", &self.queued)
            .finish()
    }
}

impl Engine {
    /// An engine whose datagrams leave from `local`, presenting `identity`.
    ///
    /// # Errors
    /// When the TLS context or the QUIC configuration cannot be built.
    pub fn new(
        config: EngineConfig,
        identity: &Identity,
        local: SocketAddr,
        stats: Arc<EngineStats>,
    ) -> Result<Self, EngineError> {
        if config.max_connections == 0 {
            return Err(EngineError::Config("max_connections must be at least 1"));
        }
        if !(1200..=crate::batch::MAX_DATAGRAM).contains(&config.max_udp_payload) {
            return Err(EngineError::Config(
                "max_udp_payload must be in 1200..=1500",
            ));
        }
        let mut quic = quiche::Config::with_boring_ssl_ctx_builder(
            quiche::PROTOCOL_VERSION,
            identity.tls_context()?,
        )?;
        quic.set_application_protos(&[ALPN_TPU])?;
        // Servers present self-signed identity certificates; nothing to verify against.
        quic.verify_peer(false);
        quic.set_max_idle_timeout(config.idle_timeout.as_millis() as u64);
        quic.set_max_recv_udp_payload_size(crate::batch::MAX_DATAGRAM);
        quic.set_max_send_udp_payload_size(config.max_udp_payload);
        // We only send: the server may open no streams and send no stream data.
        quic.set_initial_max_data(0);
        quic.set_initial_max_streams_bidi(0);
        quic.set_initial_max_streams_uni(0);
        quic.set_disable_active_migration(true);
        // Pacing only yields send-time hints we do not use.
        quic.enable_pacing(false);
        quic.set_initial_congestion_window_packets(config.initial_congestion_window_packets);
        quic.enable_hystart(config.hystart);
        Ok(Self {
            config,
            quic,
            local,
            slots: Vec::new(),
            free: Vec::new(),
            by_addr: HashMap::new(),
            backoff: HashMap::new(),
            dirty: VecDeque::new(),
            outcomes: Vec::new(),
            stats,
            lru_clock: 0,
            last_lookup: None,
            queued: 0,
            next_deadline: None,
        })
    }

    /// The engine's counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Outcomes reported since the last call, oldest first.
    pub fn drain_outcomes(&mut self) -> std::vec::Drain<'_, Outcome> {
        self.outcomes.drain(..)
    }

    /// Whether outcomes are waiting in [`Self::drain_outcomes`].
    pub fn has_outcomes(&self) -> bool {
        !self.outcomes.is_empty()
    }

    /// Queues `payload` for `target` as one unidirectional stream with FIN. The
    /// outcome is reported through [`Self::drain_outcomes`], possibly at once.
    pub fn submit(&mut self, id: u64, payload: Arc<[u8]>, target: SocketAddr, now: Instant) {
        EngineStats::add(&self.stats.submitted, 1);
        if let Some(reason) = check_payload(&payload) {
            self.drop_tx(id, target, reason);
            return;
        }
        let Some(idx) = self.connection_for(target, now) else {
            self.drop_tx(id, target, DropReason::Backoff);
            return;
        };
        let max_queued = self.config.max_queued_per_connection;
        let Some(conn) = self.slots[idx].as_mut() else {
            // connection_for only returns occupied slots; never lose a transaction anyway.
            self.drop_tx(id, target, DropReason::LocalError);
            return;
        };
        if conn.queue.len() >= max_queued {
            self.drop_tx(id, target, DropReason::ConnectionQueueFull);
            return;
        }
        // The next flush moves it into a stream (the driver flushes after every
        // bounded pass of submissions, so the queue only holds what really waits).
        conn.queue.push_back(Pending { id, payload });
        self.queued += 1;
        self.mark_dirty(idx);
    }

    /// Opens a connection to `target` without sending anything, so that a later
    /// transaction skips the handshake. Returns false when `target` is in backoff.
    pub fn prewarm(&mut self, target: SocketAddr, now: Instant) -> bool {
        self.connection_for(target, now).is_some()
    }

    /// Feeds received datagrams to their connections (quiche reads the clock itself).
    pub fn recv(&mut self, rx: &mut RxBatch) {
        let local = self.local;
        let mut received = 0u64;
        let mut bytes = 0u64;
        let mut rejected = 0u64;
        let Self {
            slots,
            by_addr,
            dirty,
            ..
        } = self;
        rx.for_each(|from, data| {
            received += 1;
            bytes += data.len() as u64;
            let Some(&idx) = by_addr.get(&from) else {
                rejected += 1;
                return;
            };
            let Some(conn) = slots[idx].as_mut() else {
                rejected += 1;
                return;
            };
            if conn
                .q
                .recv(data, quiche::RecvInfo { from, to: local })
                .is_err()
            {
                rejected += 1;
            }
            if !conn.dirty {
                conn.dirty = true;
                dirty.push_back(idx);
            }
        });
        rx.clear();
        EngineStats::add(&self.stats.packets_received, received);
        EngineStats::add(&self.stats.bytes_received, bytes);
        if rejected > 0 {
            EngineStats::add(&self.stats.packets_rejected, rejected);
        }
    }

    /// The earliest instant at which [`Self::on_timeout`] has work (QUIC timers,
    /// handshake deadlines, keep-alives). `None` when no connection exists.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Runs due timers: quiche loss/idle timers, handshake timeouts, keep-alives.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        for idx in 0..self.slots.len() {
            let Some(conn) = self.slots[idx].as_mut() else {
                continue;
            };
            let mut touched = false;
            if conn.q.timeout_instant().is_some_and(|t| t <= now) {
                conn.q.on_timeout();
                touched = true;
            }
            match conn.state {
                State::Handshaking { deadline } if deadline <= now && !conn.q.is_established() => {
                    EngineStats::add(&self.stats.handshake_timeouts, 1);
                    self.finish(idx, DropReason::HandshakeTimeout, now);
                    continue;
                }
                State::Established { .. }
                    if now.duration_since(conn.last_ack_eliciting)
                        >= self.config.keep_alive_interval =>
                {
                    if conn.q.send_ack_eliciting().is_ok() {
                        EngineStats::add(&self.stats.keepalives, 1);
                    }
                    conn.last_ack_eliciting = now;
                    touched = true;
                }
                _ => {}
            }
            next = earliest(next, conn_deadline(conn, &self.config));
            if touched {
                self.mark_dirty(idx);
            }
        }
        self.next_deadline = next;
        if self.backoff.len() > 4 * self.config.max_connections {
            self.backoff
                .retain(|_, b| now.saturating_duration_since(b.until) < BACKOFF_FORGET);
        }
    }

    /// Moves queued transactions into streams and writes datagrams into `tx` until
    /// it is full or nothing is left to send. Returns true when work remains
    /// (call again once `tx` has been drained).
    pub fn flush(&mut self, tx: &mut TxBatch, now: Instant) -> bool {
        let max = self.config.max_udp_payload;
        while let Some(&idx) = self.dirty.front() {
            let Some(conn) = self.slots[idx].as_mut() else {
                self.dirty.pop_front();
                continue;
            };
            if matches!(conn.state, State::Handshaking { .. }) && conn.q.is_established() {
                conn.state = State::Established { since: now };
                conn.last_ack_eliciting = now;
                EngineStats::add(&self.stats.handshakes_completed, 1);
                if let Some(b) = self.backoff.get_mut(&conn.peer) {
                    b.until = now;
                }
            }
            if conn.state != State::Closing && is_over(&conn.q) {
                self.dirty.pop_front();
                self.on_closed(idx, now);
                continue;
            }
            // A slice of streams at a time, so the first datagrams leave while later
            // ones are still being built: a busy server starts on them sooner and
            // returns stream credit sooner.
            let sliced = matches!(conn.state, State::Established { .. })
                && self.pump_streams(idx, now, STREAM_SLICE);
            let Some(conn) = self.slots[idx].as_mut() else {
                self.dirty.pop_front();
                continue;
            };
            let mut packets = 0u64;
            let mut bytes = 0u64;
            let mut full = false;
            loop {
                let Some(out) = tx.spare(max) else {
                    full = true;
                    break;
                };
                match conn.q.send(out) {
                    Ok((n, info)) => {
                        tx.commit(n, info.to);
                        packets += 1;
                        bytes += n as u64;
                    }
                    Err(quiche::Error::Done) => break,
                    Err(_) => {
                        // quiche closes the connection itself on a send error.
                        break;
                    }
                }
            }
            EngineStats::add(&self.stats.packets_sent, packets);
            EngineStats::add(&self.stats.bytes_sent, bytes);
            self.next_deadline = earliest(self.next_deadline, conn_deadline(conn, &self.config));
            if full || sliced {
                return true;
            }
            conn.dirty = false;
            self.dirty.pop_front();
            if is_over(&conn.q) {
                self.on_closed(idx, now);
            }
        }
        EngineStats::set(&self.stats.queued, self.queued as u64);
        false
    }

    /// Closes every connection, dropping what is queued with [`DropReason::Shutdown`].
    /// Keep flushing until [`Self::is_idle`] to send the CONNECTION_CLOSE frames.
    pub fn shutdown(&mut self) {
        for idx in 0..self.slots.len() {
            if self.slots[idx].is_some() {
                self.close_locally(idx, DropReason::Shutdown, b"shutdown");
            }
        }
    }

    /// No connection exists any more (all closed and drained).
    pub fn is_idle(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Diagnostics for the connection to `target`, if one is open.
    pub fn connection_info(&self, target: SocketAddr) -> Option<ConnectionInfo> {
        let conn = self.slots[*self.by_addr.get(&target)?].as_ref()?;
        let path = conn.q.path_stats().next();
        let stats = conn.q.stats();
        Some(ConnectionInfo {
            rtt: path.as_ref().map_or(Duration::ZERO, |p| p.rtt),
            cwnd: path.as_ref().map_or(0, |p| p.cwnd),
            packets_sent: stats.sent,
            packets_lost: stats.lost,
            established: matches!(conn.state, State::Established { .. }),
            stream_limit_uni: conn.streams_opened + conn.q.peer_streams_left_uni(),
            streams_opened: conn.streams_opened,
            queued: conn.queue.len() + usize::from(conn.partial.is_some()),
        })
    }

    /// Number of open (not closing) connections.
    pub fn connection_count(&self) -> usize {
        self.by_addr.len()
    }

    /// The connection slot for `target`, opening one (and evicting the least recently
    /// used) if needed. `None` when `target` is in backoff.
    fn connection_for(&mut self, target: SocketAddr, now: Instant) -> Option<usize> {
        self.lru_clock += 1;
        let cached = match self.last_lookup {
            Some((addr, idx)) if addr == target => Some(idx),
            _ => self.by_addr.get(&target).copied(),
        };
        if let Some(idx) = cached {
            if let Some(conn) = self.slots[idx].as_mut() {
                conn.last_used = self.lru_clock;
            }
            self.last_lookup = Some((target, idx));
            return Some(idx);
        }
        if self.backoff.get(&target).is_some_and(|b| b.until > now) {
            EngineStats::add(&self.stats.backoff_refusals, 1);
            return None;
        }
        if self.by_addr.len() >= self.config.max_connections {
            self.evict_lru();
        }
        let mut scid = [0u8; quiche::MAX_CONN_ID_LEN];
        rand::thread_rng().fill_bytes(&mut scid);
        let scid = quiche::ConnectionId::from_ref(&scid);
        let sni = format!("{}.{}.sol", target.ip(), target.port());
        let q = match quiche::connect_with_buffer_factory(
            Some(&sni),
            &scid,
            self.local,
            target,
            &mut self.quic,
        ) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(%target, error = %e, "cannot start QUIC connection");
                EngineStats::add(&self.stats.handshake_failures, 1);
                self.record_failure(target, None, None, now);
                return None;
            }
        };
        EngineStats::add(&self.stats.connections_opened, 1);
        let conn = Conn {
            q,
            peer: target,
            state: State::Handshaking {
                deadline: now + self.config.handshake_timeout,
            },
            queue: VecDeque::new(),
            partial: None,
            // Client-initiated unidirectional streams: 2, 6, 10, …
            next_stream_id: 2,
            streams_opened: 0,
            last_used: self.lru_clock,
            last_ack_eliciting: now,
            waiting_for_credit: false,
            dirty: false,
        };
        self.next_deadline = earliest(self.next_deadline, conn_deadline(&conn, &self.config));
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        };
        self.by_addr.insert(target, idx);
        EngineStats::set(&self.stats.active_connections, self.by_addr.len() as u64);
        self.mark_dirty(idx);
        Some(idx)
    }

    /// Writes queued transactions to new streams while stream credit and the
    /// congestion window allow.
    /// Returns true when it stopped at `limit` with more that could go.
    fn pump_streams(&mut self, idx: usize, now: Instant, limit: usize) -> bool {
        let Some(conn) = self.slots[idx].as_mut() else {
            return false;
        };
        let mut sent = 0u64;
        let mut opened = 0;
        let mut limited = false;
        loop {
            if opened == limit {
                limited = conn.partial.is_some() || !conn.queue.is_empty();
                break;
            }
            let mut partial = match conn.partial.take() {
                Some(p) => p,
                None => {
                    if conn.queue.is_empty() {
                        break;
                    }
                    if conn.q.peer_streams_left_uni() == 0 {
                        // Wait for MAX_STREAMS; a later recv marks us dirty again.
                        if !conn.waiting_for_credit {
                            conn.waiting_for_credit = true;
                            EngineStats::add(&self.stats.stream_credit_waits, 1);
                        }
                        break;
                    }
                    conn.waiting_for_credit = false;
                    let Some(tx) = conn.queue.pop_front() else {
                        break;
                    };
                    self.queued -= 1;
                    opened += 1;
                    let stream_id = conn.next_stream_id;
                    conn.next_stream_id += 4;
                    conn.streams_opened += 1;
                    Partial {
                        tx,
                        stream_id,
                        written: 0,
                    }
                }
            };
            let rest = PayloadBuf {
                data: partial.tx.payload.clone(),
                start: partial.written,
                end: partial.tx.payload.len(),
            };
            let left = rest.end - rest.start;
            match conn
                .q
                .stream_send_zc(partial.stream_id, rest, None, true)
                .map(|(n, _)| n)
            {
                Ok(n) if n == left => {
                    conn.last_ack_eliciting = now;
                    sent += 1;
                    self.outcomes.push(Outcome {
                        id: partial.tx.id,
                        target: conn.peer,
                        kind: OutcomeKind::Sent,
                    });
                }
                Ok(n) => {
                    // Congestion window full: keep the rest for this same stream.
                    partial.written += n;
                    conn.partial = Some(partial);
                    break;
                }
                Err(quiche::Error::Done) => {
                    conn.partial = Some(partial);
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %conn.peer, error = %e, "stream write failed");
                    self.stats.record_drop(DropReason::LocalError);
                    self.outcomes.push(Outcome {
                        id: partial.tx.id,
                        target: conn.peer,
                        kind: OutcomeKind::Dropped(DropReason::LocalError),
                    });
                }
            }
        }
        EngineStats::add(&self.stats.sent, sent);
        limited
    }

    /// The quiche connection closed: work out why, drop what it held, set backoff.
    fn on_closed(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.slots[idx].as_ref() else {
            return;
        };
        let reason = match conn.state {
            State::Closing => {
                // Already accounted for when we closed it.
                self.release(idx);
                return;
            }
            State::Handshaking { .. } => {
                if conn.q.is_timed_out() {
                    EngineStats::add(&self.stats.handshake_timeouts, 1);
                    DropReason::HandshakeTimeout
                } else {
                    EngineStats::add(&self.stats.handshake_failures, 1);
                    let err = conn.q.peer_error().or(conn.q.local_error());
                    tracing::warn!(target = %conn.peer, error = ?err, "QUIC handshake failed");
                    DropReason::HandshakeFailed
                }
            }
            State::Established { .. } => match conn.q.peer_error() {
                Some(e) if e.is_app => {
                    EngineStats::add(&self.stats.closed_by_peer, 1);
                    if e.error_code == close_code::INVALID_STREAM {
                        tracing::error!(target = %conn.peer, "server says we broke stream framing (invalid_stream)");
                    } else {
                        tracing::info!(target = %conn.peer, code = e.error_code, "server closed the connection");
                    }
                    DropReason::ClosedByPeer(e.error_code)
                }
                _ => {
                    EngineStats::add(&self.stats.connections_lost, 1);
                    tracing::info!(target = %conn.peer, timed_out = conn.q.is_timed_out(), "connection lost");
                    DropReason::ConnectionLost
                }
            },
        };
        self.finish(idx, reason, now);
    }

    /// Ends connection `idx` for `reason`: reports its transactions, records backoff,
    /// frees the slot.
    fn finish(&mut self, idx: usize, reason: DropReason, now: Instant) {
        let Some(conn) = self.slots[idx].as_ref() else {
            return;
        };
        let peer = conn.peer;
        let since = match conn.state {
            State::Established { since } => Some(since),
            _ => None,
        };
        self.drop_queued(idx, reason);
        self.record_failure(peer, since, Some(reason), now);
        self.release(idx);
    }

    /// Closes connection `idx` from our side, keeping it only to send CONNECTION_CLOSE.
    fn close_locally(&mut self, idx: usize, reason: DropReason, why: &[u8]) {
        self.drop_queued(idx, reason);
        let Some(conn) = self.slots[idx].as_mut() else {
            return;
        };
        if conn.state == State::Closing {
            return;
        }
        if self.by_addr.get(&conn.peer) == Some(&idx) {
            self.by_addr.remove(&conn.peer);
        }
        self.last_lookup = None;
        conn.state = State::Closing;
        // Already closed is fine: nothing more to send then.
        let _ = conn.q.close(true, 0, why);
        EngineStats::set(&self.stats.active_connections, self.by_addr.len() as u64);
        self.next_deadline = earliest(self.next_deadline, conn_deadline(conn, &self.config));
        self.mark_dirty(idx);
    }

    fn evict_lru(&mut self) {
        let victim = self
            .by_addr
            .values()
            .filter_map(|&i| Some((self.slots[i].as_ref()?.last_used, i)))
            .min()
            .map(|(_, i)| i);
        if let Some(idx) = victim {
            EngineStats::add(&self.stats.evictions, 1);
            self.close_locally(idx, DropReason::Evicted, b"evicted");
        }
    }

    fn drop_queued(&mut self, idx: usize, reason: DropReason) {
        let Some(conn) = self.slots[idx].as_mut() else {
            return;
        };
        let peer = conn.peer;
        let partial = conn.partial.take().map(|p| p.tx);
        let queued = conn.queue.len();
        self.queued -= queued;
        let drained: Vec<Pending> = partial.into_iter().chain(conn.queue.drain(..)).collect();
        for tx in drained {
            self.drop_tx(tx.id, peer, reason);
        }
    }

    fn release(&mut self, idx: usize) {
        let Some(conn) = self.slots[idx].take() else {
            return;
        };
        if self.by_addr.get(&conn.peer) == Some(&idx) {
            self.by_addr.remove(&conn.peer);
        }
        self.last_lookup = None;
        self.free.push(idx);
        EngineStats::set(&self.stats.active_connections, self.by_addr.len() as u64);
    }

    /// Backoff policy. A connection that ended after being healthy for a while may
    /// reconnect at once; repeated failures back off exponentially; `disallowed` and
    /// `too_many` impose their own delays. This is what prevents a reconnect storm.
    fn record_failure(
        &mut self,
        peer: SocketAddr,
        established_since: Option<Instant>,
        reason: Option<DropReason>,
        now: Instant,
    ) {
        let entry = self.backoff.entry(peer).or_insert(Backoff {
            until: now,
            failures: 0,
        });
        if established_since.is_some_and(|s| now.duration_since(s) >= HEALTHY_AFTER) {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        let exponential = || {
            let shift = entry.failures.saturating_sub(1).min(16);
            (self.config.backoff_initial * (1u32 << shift)).min(self.config.backoff_max)
        };
        let delay = match reason {
            Some(DropReason::ClosedByPeer(close_code::DISALLOWED)) => {
                self.config.backoff_disallowed
            }
            Some(DropReason::ClosedByPeer(close_code::TOO_MANY)) => self.config.backoff_too_many,
            // First loss of a connection that was working: reconnect right away.
            _ if established_since.is_some() && entry.failures == 1 => Duration::ZERO,
            _ => exponential(),
        };
        entry.until = now + delay;
    }

    fn drop_tx(&mut self, id: u64, target: SocketAddr, reason: DropReason) {
        self.stats.record_drop(reason);
        self.outcomes.push(Outcome {
            id,
            target,
            kind: OutcomeKind::Dropped(reason),
        });
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(conn) = self.slots[idx].as_mut()
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push_back(idx);
        }
    }
}

/// Why a payload can never be sent, if it cannot (checked before any stream opens).
pub fn check_payload(payload: &[u8]) -> Option<DropReason> {
    if payload.is_empty() {
        Some(DropReason::Empty)
    } else if payload.len() > PACKET_DATA_SIZE {
        Some(DropReason::TooLarge)
    } else {
        None
    }
}

/// The connection can carry nothing more: closed, or draining after a CONNECTION_CLOSE
/// (quiche only reports `is_closed` once the draining period has passed).
fn is_over(q: &quiche::Connection<PayloadFactory>) -> bool {
    q.is_closed() || q.is_draining()
}

fn conn_deadline(conn: &Conn, config: &EngineConfig) -> Option<Instant> {
    let own = match conn.state {
        State::Handshaking { deadline } => Some(deadline),
        State::Established { .. } => Some(conn.last_ack_eliciting + config.keep_alive_interval),
        State::Closing => None,
    };
    earliest(own, conn.q.timeout_instant())
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Socketless tests: the engine against an in-process quiche server, datagrams moved
/// by hand (quiche's `Pipe` pattern). A quiche server stands in for agave's here only
/// because it can be stepped deterministically; `tests/agave_server.rs` runs the same
/// behaviours against agave's real server.
#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "127.0.0.1:40000";
    const SERVER: &str = "127.0.0.1:40001";

    struct Pipe {
        engine: Engine,
        server_config: quiche::Config,
        server: Option<quiche::Connection>,
        server_addr: SocketAddr,
        received: Vec<Vec<u8>>,
        partial: HashMap<u64, Vec<u8>>,
        tx: TxBatch,
        rx: RxBatch,
        outcomes: Vec<Outcome>,
    }

    impl Pipe {
        fn new(streams: u64) -> Self {
            let config = EngineConfig::default();
            Self::with_config(config, streams)
        }

        fn with_config(config: EngineConfig, streams: u64) -> Self {
            let client_id = Identity::random();
            let engine = Engine::new(
                config,
                &client_id,
                CLIENT.parse().unwrap(),
                Arc::new(EngineStats::default()),
            )
            .unwrap();
            let server_id = Identity::random();
            let mut server_config = quiche::Config::with_boring_ssl_ctx_builder(
                quiche::PROTOCOL_VERSION,
                server_id.tls_context().unwrap(),
            )
            .unwrap();
            server_config.set_application_protos(&[ALPN_TPU]).unwrap();
            server_config.verify_peer(false);
            server_config.set_initial_max_data(10 << 20);
            server_config.set_initial_max_stream_data_uni(PACKET_DATA_SIZE as u64);
            server_config.set_initial_max_streams_uni(streams);
            server_config.set_max_idle_timeout(60_000);
            Self {
                engine,
                server_config,
                server: None,
                server_addr: SERVER.parse().unwrap(),
                received: Vec::new(),
                partial: HashMap::new(),
                tx: TxBatch::new(64),
                rx: RxBatch::new(64),
                outcomes: Vec::new(),
            }
        }

        /// Moves datagrams both ways until neither side has anything to say.
        /// `read` lets the server consume (and so free) streams.
        fn exchange(&mut self, read: bool) {
            for _ in 0..200 {
                let now = Instant::now();
                let mut moved = false;
                loop {
                    let more = self.engine.flush(&mut self.tx, now);
                    for m in self.tx.pending().to_vec() {
                        moved = true;
                        let mut data = self.tx.payload(&m).to_vec();
                        let from: SocketAddr = CLIENT.parse().unwrap();
                        if self.server.is_none() {
                            let hdr =
                                quiche::Header::from_slice(&mut data, quiche::MAX_CONN_ID_LEN)
                                    .unwrap();
                            let scid = [7u8; quiche::MAX_CONN_ID_LEN];
                            let mut conn = quiche::accept(
                                &quiche::ConnectionId::from_ref(&scid),
                                None,
                                self.server_addr,
                                from,
                                &mut self.server_config,
                            )
                            .unwrap();
                            let _ = hdr;
                            conn.recv(
                                &mut data,
                                quiche::RecvInfo {
                                    from,
                                    to: self.server_addr,
                                },
                            )
                            .ok();
                            self.server = Some(conn);
                        } else if let Some(s) = self.server.as_mut() {
                            s.recv(
                                &mut data,
                                quiche::RecvInfo {
                                    from,
                                    to: self.server_addr,
                                },
                            )
                            .ok();
                        }
                    }
                    self.tx.clear();
                    if !more {
                        break;
                    }
                }
                if let Some(s) = self.server.as_mut() {
                    if read {
                        let readable: Vec<u64> = s.readable().collect();
                        for id in readable {
                            let mut buf = [0u8; 2048];
                            while let Ok((n, fin)) = s.stream_recv(id, &mut buf) {
                                self.partial
                                    .entry(id)
                                    .or_default()
                                    .extend_from_slice(&buf[..n]);
                                if fin {
                                    self.received.push(self.partial.remove(&id).unwrap());
                                }
                            }
                        }
                    }
                    let mut out = [0u8; 1500];
                    while let Ok((n, _)) = s.send(&mut out) {
                        moved = true;
                        self.rx.push(self.server_addr, &out[..n]);
                        if self.rx.len() == self.rx.capacity() {
                            self.engine.recv(&mut self.rx);
                        }
                    }
                    self.engine.recv(&mut self.rx);
                }
                self.outcomes.extend(self.engine.drain_outcomes());
                if !moved {
                    return;
                }
            }
            panic!("pipe did not settle");
        }

        fn submit(&mut self, id: u64, len: usize) {
            let payload: Arc<[u8]> = vec![id as u8; len].into();
            self.engine
                .submit(id, payload, self.server_addr, Instant::now());
        }

        fn sent(&self) -> usize {
            self.outcomes
                .iter()
                .filter(|o| o.kind == OutcomeKind::Sent)
                .count()
        }

        fn dropped(&self, reason: DropReason) -> usize {
            self.outcomes
                .iter()
                .filter(|o| o.kind == OutcomeKind::Dropped(reason))
                .count()
        }
    }

    #[test]
    fn waits_for_stream_credit_then_sends_everything() {
        let mut p = Pipe::new(2);
        for id in 0..5 {
            p.submit(id, 100 + id as usize);
        }
        // Handshake done, server grants 2 streams and reads nothing yet.
        p.exchange(false);
        assert_eq!(p.sent(), 2, "{:?}", p.outcomes);
        let info = p.engine.connection_info(p.server_addr).unwrap();
        assert!(info.established);
        assert_eq!(info.queued, 3);
        assert_eq!(p.engine.stats().snapshot().stream_credit_waits, 1);
        // The server reads, quiche returns credit with MAX_STREAMS, the rest go out.
        p.exchange(true);
        p.exchange(true);
        assert_eq!(p.sent(), 5, "{:?}", p.outcomes);
        let mut got = p.received.clone();
        got.sort_by_key(|d| d.len());
        let want: Vec<Vec<u8>> = (0..5u64)
            .map(|id| vec![id as u8; 100 + id as usize])
            .collect();
        assert_eq!(got, want);
        // One stream per transaction: stream ids 2, 6, 10, 14, 18.
        assert_eq!(
            p.engine
                .connection_info(p.server_addr)
                .unwrap()
                .streams_opened,
            5
        );
    }

    #[test]
    fn refuses_empty_and_oversized_before_any_stream() {
        let mut p = Pipe::new(10);
        p.submit(1, 0);
        p.submit(2, PACKET_DATA_SIZE + 1);
        assert_eq!(
            p.engine.connection_count(),
            0,
            "no connection for refused payloads"
        );
        p.submit(3, PACKET_DATA_SIZE);
        p.exchange(true);
        p.exchange(true);
        p.outcomes.sort_by_key(|o| o.id);
        assert_eq!(
            p.outcomes.iter().map(|o| o.kind).collect::<Vec<_>>(),
            vec![
                OutcomeKind::Dropped(DropReason::Empty),
                OutcomeKind::Dropped(DropReason::TooLarge),
                OutcomeKind::Sent
            ]
        );
        assert_eq!(p.received, vec![vec![3u8; PACKET_DATA_SIZE]]);
        let s = p.engine.stats().snapshot();
        assert_eq!(s.dropped(DropReason::Empty), 1);
        assert_eq!(s.dropped(DropReason::TooLarge), 1);
    }

    #[test]
    fn connection_queue_is_bounded() {
        let config = EngineConfig {
            max_queued_per_connection: 3,
            ..EngineConfig::default()
        };
        let mut p = Pipe::with_config(config, 0);
        for id in 0..5 {
            p.submit(id, 50);
        }
        assert_eq!(p.dropped(DropReason::ConnectionQueueFull), 0);
        p.outcomes.extend(p.engine.drain_outcomes());
        assert_eq!(p.dropped(DropReason::ConnectionQueueFull), 2);
        p.exchange(true);
        assert_eq!(p.sent(), 0, "no stream credit was ever granted");
        assert_eq!(p.engine.connection_info(p.server_addr).unwrap().queued, 3);
    }

    /// `disallowed` (code 2): queued transactions are dropped with the code, and no
    /// new connection is attempted until the configured backoff has passed.
    #[test]
    fn disallowed_close_backs_off() {
        let mut p = Pipe::new(0);
        for id in 0..3 {
            p.submit(id, 50);
        }
        p.exchange(true);
        assert!(p.engine.connection_info(p.server_addr).unwrap().established);
        p.server
            .as_mut()
            .unwrap()
            .close(true, close_code::DISALLOWED, b"disallowed")
            .unwrap();
        p.exchange(true);
        assert_eq!(
            p.dropped(DropReason::ClosedByPeer(close_code::DISALLOWED)),
            3
        );
        assert!(p.engine.connection_info(p.server_addr).is_none());
        let opened = p.engine.stats().snapshot().connections_opened;
        let now = Instant::now();
        p.engine.submit(9, vec![1u8; 10].into(), p.server_addr, now);
        p.engine.submit(
            10,
            vec![1u8; 10].into(),
            p.server_addr,
            now + Duration::from_secs(4),
        );
        p.outcomes.extend(p.engine.drain_outcomes());
        assert_eq!(p.dropped(DropReason::Backoff), 2);
        assert_eq!(p.engine.stats().snapshot().connections_opened, opened);
        // After the backoff a new connection is opened.
        p.engine.submit(
            11,
            vec![1u8; 10].into(),
            p.server_addr,
            now + Duration::from_secs(6),
        );
        assert_eq!(p.engine.stats().snapshot().connections_opened, opened + 1);
    }

    /// `dropped` (code 1) on a working connection: reconnect at once; the same again
    /// straight away: exponential backoff, not a reconnect storm.
    #[test]
    fn repeated_closes_back_off_exponentially() {
        let mut p = Pipe::new(10);
        p.submit(1, 50);
        p.exchange(true);
        assert_eq!(p.sent(), 1);
        for round in 0..3u32 {
            p.server
                .as_mut()
                .unwrap()
                .close(true, close_code::DROPPED, b"dropped")
                .unwrap();
            p.exchange(true);
            p.server = None;
            assert!(
                p.engine.connection_info(p.server_addr).is_none(),
                "round {round}"
            );
            let opened = p.engine.stats().snapshot().connections_opened;
            let now = Instant::now();
            if round == 0 {
                // First loss of a healthy connection: immediate reconnect.
                p.engine
                    .submit(100, vec![1u8; 10].into(), p.server_addr, now);
                assert_eq!(p.engine.stats().snapshot().connections_opened, opened + 1);
            } else {
                // Repeated quick failures: 100 ms, then 200 ms.
                let delay = EngineConfig::default().backoff_initial * (1 << round);
                p.engine
                    .submit(100, vec![1u8; 10].into(), p.server_addr, now);
                assert_eq!(p.engine.stats().snapshot().connections_opened, opened);
                p.engine
                    .submit(100, vec![1u8; 10].into(), p.server_addr, now + delay);
                assert_eq!(p.engine.stats().snapshot().connections_opened, opened + 1);
            }
            p.exchange(true);
            assert!(p.engine.connection_info(p.server_addr).unwrap().established);
        }
    }

    #[test]
    fn invalid_stream_close_is_reported_with_its_code() {
        let mut p = Pipe::new(0);
        p.submit(1, 50);
        p.exchange(true);
        p.server
            .as_mut()
            .unwrap()
            .close(true, close_code::INVALID_STREAM, b"invalid_stream")
            .unwrap();
        p.exchange(true);
        assert_eq!(
            p.dropped(DropReason::ClosedByPeer(close_code::INVALID_STREAM)),
            1
        );
        assert_eq!(p.engine.stats().snapshot().closed_by_peer, 1);
    }

    #[test]
    fn lru_bound_evicts_least_recently_used() {
        let config = EngineConfig {
            max_connections: 2,
            ..EngineConfig::default()
        };
        let mut p = Pipe::with_config(config, 0);
        let now = Instant::now();
        let a: SocketAddr = "127.0.0.1:50001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:50002".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:50003".parse().unwrap();
        p.engine.submit(1, vec![1u8; 10].into(), a, now);
        p.engine.submit(2, vec![1u8; 10].into(), b, now);
        p.engine.submit(3, vec![1u8; 10].into(), a, now); // a is now the most recent
        p.engine.submit(4, vec![1u8; 10].into(), c, now); // evicts b
        assert_eq!(p.engine.connection_count(), 2);
        assert!(p.engine.connection_info(b).is_none());
        assert!(p.engine.connection_info(a).is_some());
        let outcomes: Vec<Outcome> = p.engine.drain_outcomes().collect();
        assert_eq!(
            outcomes,
            vec![Outcome {
                id: 2,
                target: b,
                kind: OutcomeKind::Dropped(DropReason::Evicted)
            }]
        );
        assert_eq!(p.engine.stats().snapshot().evictions, 1);
    }

    #[test]
    fn handshake_timeout_drops_queue() {
        let config = EngineConfig {
            handshake_timeout: Duration::from_millis(50),
            ..EngineConfig::default()
        };
        let mut p = Pipe::with_config(config, 10);
        let now = Instant::now();
        p.engine.submit(1, vec![1u8; 10].into(), p.server_addr, now);
        p.engine.on_timeout(now + Duration::from_millis(60));
        let outcomes: Vec<Outcome> = p.engine.drain_outcomes().collect();
        assert_eq!(
            outcomes[0].kind,
            OutcomeKind::Dropped(DropReason::HandshakeTimeout)
        );
        assert_eq!(p.engine.stats().snapshot().handshake_timeouts, 1);
        assert_eq!(p.engine.connection_count(), 0);
    }
}
