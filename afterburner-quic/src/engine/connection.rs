//! One connection's state machine: handshaking → established → closing, the
//! transactions waiting in it (for the handshake or for stream credit), and the
//! writes that turn each of them into one unidirectional stream with FIN.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rand::RngCore;

use super::{
    ConnectionInfo,
    payload::{PayloadBuf, PayloadFactory, Pending},
};
use crate::{
    config::EngineConfig,
    outcome::{DropReason, Outcome, OutcomeKind},
    protocol::close_code,
    stats::EngineStats,
};

/// A stream whose payload quiche only took in part (congestion window full).
pub(super) struct Partial {
    tx: Pending,
    stream_id: u64,
    written: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Handshaking {
        deadline: Instant,
    },
    Established {
        since: Instant,
    },
    /// Closed locally (evicted or shutting down); kept only to send CONNECTION_CLOSE.
    Closing,
}

pub(super) struct Conn {
    pub(super) q: quiche::Connection<PayloadFactory>,
    pub(super) peer: SocketAddr,
    pub(super) state: State,
    pub(super) queue: VecDeque<Pending>,
    partial: Option<Partial>,
    next_stream_id: u64,
    streams_opened: u64,
    /// LRU clock value of the last use (the table's).
    pub(super) last_used: u64,
    pub(super) last_ack_eliciting: Instant,
    waiting_for_credit: bool,
    /// Queued in the engine's dirty list.
    pub(super) dirty: bool,
    /// Lost and spuriously lost packets already counted in the engine's stats.
    pub(super) lost_counted: (usize, usize),
}

/// What one [`Conn::pump_streams`] call did.
pub(super) struct Pumped {
    /// Transactions taken from the queue (each now sent, partly written, or dropped).
    pub(super) dequeued: usize,
    /// It stopped at its limit with more that could go.
    pub(super) limited: bool,
}

impl Conn {
    /// Starts a handshake with `target` from `local`.
    pub(super) fn connect(
        quic: &mut quiche::Config,
        config: &EngineConfig,
        local: SocketAddr,
        target: SocketAddr,
        now: Instant,
    ) -> Result<Self, quiche::Error> {
        let mut scid = [0u8; quiche::MAX_CONN_ID_LEN];
        rand::thread_rng().fill_bytes(&mut scid);
        let scid = quiche::ConnectionId::from_ref(&scid);
        let sni = format!("{}.{}.sol", target.ip(), target.port());
        let q = quiche::connect_with_buffer_factory(Some(&sni), &scid, local, target, quic)?;
        Ok(Self {
            q,
            peer: target,
            state: State::Handshaking {
                deadline: now + config.handshake_timeout,
            },
            queue: VecDeque::new(),
            partial: None,
            // Client-initiated unidirectional streams: 2, 6, 10, …
            next_stream_id: 2,
            streams_opened: 0,
            last_used: 0,
            last_ack_eliciting: now,
            waiting_for_credit: false,
            lost_counted: (0, 0),
            dirty: false,
        })
    }

    /// The connection can carry nothing more: closed, or draining after a
    /// CONNECTION_CLOSE (quiche only reports `is_closed` once the draining period
    /// has passed).
    pub(super) fn is_over(&self) -> bool {
        self.q.is_closed() || self.q.is_draining()
    }

    /// When this connection next has timer work: its handshake deadline or
    /// keep-alive, or quiche's own timers.
    pub(super) fn deadline(&self, config: &EngineConfig) -> Option<Instant> {
        let own = match self.state {
            State::Handshaking { deadline } => Some(deadline),
            State::Established { .. } => Some(self.last_ack_eliciting + config.keep_alive_interval),
            State::Closing => None,
        };
        earliest(own, self.q.timeout_instant())
    }

    /// Transactions held: queued, and the one partly written.
    pub(super) fn held(&self) -> usize {
        self.queue.len() + usize::from(self.partial.is_some())
    }

    /// Takes every transaction it holds (the partly written one first).
    pub(super) fn take_held(&mut self) -> Vec<Pending> {
        let partial = self.partial.take().map(|p| p.tx);
        partial.into_iter().chain(self.queue.drain(..)).collect()
    }

    /// Diagnostics.
    pub(super) fn info(&self) -> ConnectionInfo {
        let path = self.q.path_stats().next();
        let stats = self.q.stats();
        ConnectionInfo {
            rtt: path.as_ref().map_or(Duration::ZERO, |p| p.rtt),
            cwnd: path.as_ref().map_or(0, |p| p.cwnd),
            packets_sent: stats.sent,
            packets_lost: stats.lost,
            established: matches!(self.state, State::Established { .. }),
            stream_limit_uni: self.streams_opened + self.q.peer_streams_left_uni(),
            streams_opened: self.streams_opened,
            queued: self.held(),
        }
    }

    /// Writes queued transactions to new streams while stream credit and the
    /// congestion window allow, at most `limit` new streams; each one written whole
    /// (or failing) gets its outcome in `outcomes`.
    pub(super) fn pump_streams(
        &mut self,
        now: Instant,
        limit: usize,
        outcomes: &mut Vec<Outcome>,
        stats: &EngineStats,
    ) -> Pumped {
        let mut sent = 0u64;
        let mut dequeued = 0;
        let mut limited = false;
        loop {
            if dequeued == limit {
                limited = self.partial.is_some() || !self.queue.is_empty();
                break;
            }
            let mut partial = match self.partial.take() {
                Some(p) => p,
                None => {
                    if self.queue.is_empty() {
                        break;
                    }
                    if self.q.peer_streams_left_uni() == 0 {
                        // Wait for MAX_STREAMS; a later recv marks us dirty again.
                        if !self.waiting_for_credit {
                            self.waiting_for_credit = true;
                            EngineStats::add(&stats.stream_credit_waits, 1);
                        }
                        break;
                    }
                    self.waiting_for_credit = false;
                    let Some(tx) = self.queue.pop_front() else {
                        break;
                    };
                    dequeued += 1;
                    let stream_id = self.next_stream_id;
                    self.next_stream_id += 4;
                    self.streams_opened += 1;
                    Partial {
                        tx,
                        stream_id,
                        written: 0,
                    }
                }
            };
            let rest = PayloadBuf::rest(&partial.tx.payload, partial.written);
            let left = rest.len();
            match self
                .q
                .stream_send_zc(partial.stream_id, rest, None, true)
                .map(|(n, _)| n)
            {
                Ok(n) if n == left => {
                    self.last_ack_eliciting = now;
                    sent += 1;
                    outcomes.push(Outcome {
                        id: partial.tx.id,
                        target: self.peer,
                        kind: OutcomeKind::Sent,
                    });
                }
                Ok(n) => {
                    // Congestion window full: keep the rest for this same stream.
                    partial.written += n;
                    self.partial = Some(partial);
                    break;
                }
                Err(quiche::Error::Done) => {
                    self.partial = Some(partial);
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %self.peer, error = %e, "stream write failed");
                    stats.record_drop(DropReason::LocalError);
                    outcomes.push(Outcome {
                        id: partial.tx.id,
                        target: self.peer,
                        kind: OutcomeKind::Dropped(DropReason::LocalError),
                    });
                }
            }
        }
        EngineStats::add(&stats.sent, sent);
        Pumped { dequeued, limited }
    }

    /// Why the (closed) connection ended, counted in `stats`; `None` when we closed
    /// it ourselves (already accounted for then).
    pub(super) fn end_reason(&self, stats: &EngineStats) -> Option<DropReason> {
        Some(match self.state {
            State::Closing => return None,
            State::Handshaking { .. } => {
                if self.q.is_timed_out() {
                    EngineStats::add(&stats.handshake_timeouts, 1);
                    DropReason::HandshakeTimeout
                } else {
                    EngineStats::add(&stats.handshake_failures, 1);
                    let err = self.q.peer_error().or(self.q.local_error());
                    tracing::warn!(target = %self.peer, error = ?err, "QUIC handshake failed");
                    DropReason::HandshakeFailed
                }
            }
            State::Established { .. } => match self.q.peer_error() {
                Some(e) if e.is_app => {
                    EngineStats::add(&stats.closed_by_peer, 1);
                    if e.error_code == close_code::INVALID_STREAM {
                        tracing::error!(target = %self.peer, "server says we broke stream framing (invalid_stream)");
                    } else {
                        tracing::info!(target = %self.peer, code = e.error_code, "server closed the connection");
                    }
                    DropReason::ClosedByPeer(e.error_code)
                }
                _ => {
                    EngineStats::add(&stats.connections_lost, 1);
                    tracing::info!(target = %self.peer, timed_out = self.q.is_timed_out(), "connection lost");
                    DropReason::ConnectionLost
                }
            },
        })
    }
}

/// The earlier of two optional instants.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
