//! [`Engine`]: the sans-IO TPU QUIC connection manager.
//!
//! It owns the quiche connections (one per TPU address, LRU-bounded), turns each
//! submitted transaction into one unidirectional stream with FIN, waits for stream
//! credit and for handshakes with a bounded per-connection queue, applies reconnect
//! backoff per close code, and reports exactly one [`Outcome`] per submission.
//! It never touches a socket or sleeps: the driver hands it received datagrams and
//! the time, and sends the datagrams it writes into a [`TxBatch`].
//!
//! By role: [`table`] (the connection table and LRU eviction), [`connection`] (one
//! connection's state machine and stream writes), [`backoff`] (the reconnect
//! policy), [`payload`] (the buffers quiche keeps); this module ties them together.

mod backoff;
mod connection;
mod payload;
mod table;
#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use afterburner_xdp::batch::{MAX_DATAGRAM, RxBatch, TxBatch};

pub use self::payload::check_payload;
use self::{
    backoff::Backoffs,
    connection::{Conn, State, earliest},
    payload::Pending,
    table::Table,
};
use crate::{
    config::EngineConfig,
    identity::{Identity, IdentityError},
    outcome::{DropReason, Outcome, OutcomeKind},
    protocol::ALPN_TPU,
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
    /// The engine thread did not take the request (stopped, or busy past the wait).
    #[error("the engine thread did not answer: {0}")]
    Unavailable(&'static str),
}

/// Streams written per connection before the datagrams built so far are handed out.
const STREAM_SLICE: usize = 64;

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

/// The connection manager. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    quic: quiche::Config,
    local: SocketAddr,
    table: Table,
    backoff: Backoffs,
    /// Connections with something to send or to look at, each once.
    dirty: VecDeque<usize>,
    outcomes: Vec<Outcome>,
    stats: Arc<EngineStats>,
    /// Transactions held by all connections.
    queued: usize,
    next_deadline: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local", &self.local)
            .field("connections", &self.table.open_count())
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
        if !(1200..=MAX_DATAGRAM).contains(&config.max_udp_payload) {
            return Err(EngineError::Config(
                "max_udp_payload must be in 1200..=1500",
            ));
        }
        let quic = quic_config(&config, identity)?;
        Ok(Self {
            config,
            quic,
            local,
            table: Table::default(),
            backoff: Backoffs::default(),
            dirty: VecDeque::new(),
            outcomes: Vec::new(),
            stats,
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
        self.enqueue(id, payload, target, now);
    }

    /// Presents `identity` from now on. New connections carry its certificate at
    /// once; every open connection is closed (application code 0, "identity
    /// changed") and what it held moves, in order, to a new connection to the same
    /// leader, so no transaction is lost (one whose stream was partly written is
    /// written again whole: a leader may see it twice, which it deduplicates).
    /// Backoff is forgotten: a leader that refused the old identity may take the
    /// new one.
    ///
    /// # Errors
    /// The new identity's TLS context cannot be built; the old one stays.
    pub fn set_identity(&mut self, identity: &Identity, now: Instant) -> Result<(), EngineError> {
        self.quic = quic_config(&self.config, identity)?;
        self.backoff = Backoffs::default();
        let open: Vec<(usize, SocketAddr)> = (0..self.table.slot_count())
            .filter_map(|idx| {
                let c = self.table.get(idx)?;
                (c.state != State::Closing).then_some((idx, c.peer))
            })
            .collect();
        for (idx, peer) in open {
            let held = match self.table.get_mut(idx) {
                Some(conn) => {
                    self.queued -= conn.queue.len();
                    conn.take_held()
                }
                None => continue,
            };
            self.close_locally(idx, DropReason::Shutdown, b"identity changed");
            for tx in held {
                self.enqueue(tx.id, tx.payload, peer, now);
            }
        }
        Ok(())
    }

    fn enqueue(&mut self, id: u64, payload: Arc<[u8]>, target: SocketAddr, now: Instant) {
        if let Some(reason) = check_payload(&payload, self.config.max_transaction_size) {
            self.drop_tx(id, target, reason);
            return;
        }
        let Some(idx) = self.connection_for(target, now) else {
            self.drop_tx(id, target, DropReason::Backoff);
            return;
        };
        let max_queued = self.config.max_queued_per_connection;
        let Some(conn) = self.table.get_mut(idx) else {
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
        let Self { table, dirty, .. } = self;
        rx.for_each(|from, data| {
            received += 1;
            bytes += data.len() as u64;
            let Some(idx) = table.find(from) else {
                rejected += 1;
                return;
            };
            let Some(conn) = table.get_mut(idx) else {
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
        for idx in 0..self.table.slot_count() {
            let Some(conn) = self.table.get_mut(idx) else {
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
            next = earliest(next, conn.deadline(&self.config));
            if touched {
                self.mark_dirty(idx);
            }
        }
        self.next_deadline = next;
        self.backoff.prune(now, 4 * self.config.max_connections);
    }

    /// Moves queued transactions into streams and writes datagrams into `tx` until
    /// it is full or nothing is left to send. Returns true when work remains
    /// (call again once `tx` has been drained).
    pub fn flush(&mut self, tx: &mut TxBatch, now: Instant) -> bool {
        let max = self.config.max_udp_payload;
        while let Some(&idx) = self.dirty.front() {
            let Some(conn) = self.table.get_mut(idx) else {
                self.dirty.pop_front();
                continue;
            };
            if matches!(conn.state, State::Handshaking { .. }) && conn.q.is_established() {
                conn.state = State::Established { since: now };
                conn.last_ack_eliciting = now;
                EngineStats::add(&self.stats.handshakes_completed, 1);
                self.backoff.on_established(conn.peer, now);
            }
            if conn.state != State::Closing && conn.is_over() {
                self.dirty.pop_front();
                self.on_closed(idx, now);
                continue;
            }
            // A slice of streams at a time, so the first datagrams leave while later
            // ones are still being built: a busy server starts on them sooner and
            // returns stream credit sooner.
            let mut sliced = false;
            if matches!(conn.state, State::Established { .. }) {
                let pumped = conn.pump_streams(now, STREAM_SLICE, &mut self.outcomes, &self.stats);
                self.queued -= pumped.dequeued;
                sliced = pumped.limited;
            }
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
            let q = conn.q.stats();
            let (lost, spurious) = conn.lost_counted;
            if q.lost > lost || q.spurious_lost > spurious {
                EngineStats::add(&self.stats.packets_lost, q.lost.saturating_sub(lost) as u64);
                EngineStats::add(
                    &self.stats.packets_spurious_lost,
                    q.spurious_lost.saturating_sub(spurious) as u64,
                );
                conn.lost_counted = (q.lost.max(lost), q.spurious_lost.max(spurious));
            }
            self.next_deadline = earliest(self.next_deadline, conn.deadline(&self.config));
            if full || sliced {
                return true;
            }
            conn.dirty = false;
            let over = conn.is_over();
            self.dirty.pop_front();
            if over {
                self.on_closed(idx, now);
            }
        }
        EngineStats::set(&self.stats.queued, self.queued as u64);
        false
    }

    /// Closes every connection, dropping what is queued with [`DropReason::Shutdown`].
    /// Keep flushing until [`Self::is_idle`] to send the CONNECTION_CLOSE frames.
    pub fn shutdown(&mut self) {
        for idx in 0..self.table.slot_count() {
            if self.table.get(idx).is_some() {
                self.close_locally(idx, DropReason::Shutdown, b"shutdown");
            }
        }
    }

    /// No connection exists any more (all closed and drained).
    pub fn is_idle(&self) -> bool {
        self.table.is_empty()
    }

    /// Diagnostics for the connection to `target`, if one is open.
    pub fn connection_info(&self, target: SocketAddr) -> Option<ConnectionInfo> {
        Some(self.table.get(self.table.find(target)?)?.info())
    }

    /// Number of open (not closing) connections.
    pub fn connection_count(&self) -> usize {
        self.table.open_count()
    }

    /// The connection slot for `target`, opening one (and evicting the least recently
    /// used) if needed. `None` when `target` is in backoff.
    fn connection_for(&mut self, target: SocketAddr, now: Instant) -> Option<usize> {
        if let Some(idx) = self.table.use_open(target) {
            return Some(idx);
        }
        if self.backoff.blocks(target, now) {
            EngineStats::add(&self.stats.backoff_refusals, 1);
            return None;
        }
        if self.table.open_count() >= self.config.max_connections
            && let Some(victim) = self.table.lru_victim()
        {
            EngineStats::add(&self.stats.evictions, 1);
            self.close_locally(victim, DropReason::Evicted, b"evicted");
        }
        let conn = match Conn::connect(&mut self.quic, &self.config, self.local, target, now) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(%target, error = %e, "cannot start QUIC connection");
                EngineStats::add(&self.stats.handshake_failures, 1);
                self.backoff
                    .record_failure(&self.config, target, None, None, now);
                return None;
            }
        };
        EngineStats::add(&self.stats.connections_opened, 1);
        self.next_deadline = earliest(self.next_deadline, conn.deadline(&self.config));
        let idx = self.table.insert(conn);
        self.set_active_gauge();
        self.mark_dirty(idx);
        Some(idx)
    }

    /// The quiche connection closed: work out why, drop what it held, set backoff.
    fn on_closed(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.table.get(idx) else {
            return;
        };
        match conn.end_reason(&self.stats) {
            Some(reason) => self.finish(idx, reason, now),
            // Closed by us: already accounted for.
            None => self.release(idx),
        }
    }

    /// Ends connection `idx` for `reason`: reports its transactions, records backoff,
    /// frees the slot.
    fn finish(&mut self, idx: usize, reason: DropReason, now: Instant) {
        let Some(conn) = self.table.get(idx) else {
            return;
        };
        let peer = conn.peer;
        let since = match conn.state {
            State::Established { since } => Some(since),
            _ => None,
        };
        self.drop_held(idx, reason);
        self.backoff
            .record_failure(&self.config, peer, since, Some(reason), now);
        self.release(idx);
    }

    /// Closes connection `idx` from our side, keeping it only to send CONNECTION_CLOSE.
    fn close_locally(&mut self, idx: usize, reason: DropReason, why: &[u8]) {
        self.drop_held(idx, reason);
        match self.table.get(idx) {
            Some(conn) if conn.state != State::Closing => {}
            _ => return,
        }
        self.table.unmap(idx);
        let Some(conn) = self.table.get_mut(idx) else {
            return;
        };
        conn.state = State::Closing;
        // Already closed is fine: nothing more to send then.
        let _ = conn.q.close(true, 0, why);
        self.next_deadline = earliest(self.next_deadline, conn.deadline(&self.config));
        self.set_active_gauge();
        self.mark_dirty(idx);
    }

    /// Drops every transaction connection `idx` holds, for `reason`.
    fn drop_held(&mut self, idx: usize, reason: DropReason) {
        let Some(conn) = self.table.get_mut(idx) else {
            return;
        };
        let peer = conn.peer;
        self.queued -= conn.queue.len();
        for tx in conn.take_held() {
            self.drop_tx(tx.id, peer, reason);
        }
    }

    fn release(&mut self, idx: usize) {
        if self.table.remove(idx).is_some() {
            self.set_active_gauge();
        }
    }

    fn set_active_gauge(&self) {
        EngineStats::set(
            &self.stats.active_connections,
            self.table.open_count() as u64,
        );
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
        if let Some(conn) = self.table.get_mut(idx)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push_back(idx);
        }
    }
}

/// The quiche configuration of a client presenting `identity`.
fn quic_config(config: &EngineConfig, identity: &Identity) -> Result<quiche::Config, EngineError> {
    let mut quic = quiche::Config::with_boring_ssl_ctx_builder(
        quiche::PROTOCOL_VERSION,
        identity.tls_context()?,
    )?;
    quic.set_application_protos(&[ALPN_TPU])?;
    // Servers present self-signed identity certificates; nothing to verify against.
    quic.verify_peer(false);
    quic.set_max_idle_timeout(config.idle_timeout.as_millis() as u64);
    quic.set_max_recv_udp_payload_size(MAX_DATAGRAM);
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
    Ok(quic)
}
