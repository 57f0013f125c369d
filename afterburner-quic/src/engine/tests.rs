//! Socketless tests: the engine against an in-process quiche server, datagrams moved
//! by hand (quiche's `Pipe` pattern). A quiche server stands in for agave's here only
//! because it can be stepped deterministically; `tests/agave` runs the same
//! behaviours against agave's real server.

use std::collections::HashMap;

use super::*;
use crate::protocol::{PACKET_DATA_SIZE, close_code};

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
                            quiche::Header::from_slice(&mut data, quiche::MAX_CONN_ID_LEN).unwrap();
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

    /// The outcomes so far, by transaction id.
    fn kinds(&mut self) -> Vec<OutcomeKind> {
        self.outcomes.sort_by_key(|o| o.id);
        self.outcomes.iter().map(|o| o.kind).collect()
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
    assert_eq!(
        p.kinds(),
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

/// `max_transaction_size` is the engine's limit too (one knob with validation).
#[test]
fn a_smaller_transaction_size_limit_is_enforced() {
    let config = EngineConfig {
        max_transaction_size: 100,
        ..EngineConfig::default()
    };
    let mut p = Pipe::with_config(config, 10);
    p.submit(1, 101);
    p.submit(2, 100);
    p.exchange(true);
    p.exchange(true);
    let kinds = p.kinds();
    assert_eq!(
        kinds,
        [
            OutcomeKind::Dropped(DropReason::TooLarge),
            OutcomeKind::Sent
        ]
    );
    assert_eq!(p.received, vec![vec![2u8; 100]]);
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
