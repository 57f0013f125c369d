//! A test client: the engine on any packet path, with its outcomes collected, and
//! conformance checks shared by the kernel UDP and AF_XDP test suites.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use afterburner_quic::{EngineConfig, EngineHandle, Identity, Outcome, OutcomeKind};
use afterburner_test_support::{AgaveServer, payload};
use afterburner_xdp::{io::PacketIo, udp::UdpIo};

/// An engine with outcomes collected.
pub struct Client {
    pub engine: EngineHandle,
    pub outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Client {
    /// An engine on a loopback UDP socket.
    pub fn start(identity: &Identity, config: EngineConfig) -> Self {
        Self::start_with_io(
            identity,
            config,
            UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
        )
    }

    /// An engine on `io`.
    pub fn start_with_io(
        identity: &Identity,
        config: EngineConfig,
        io: impl PacketIo + 'static,
    ) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let sink = outcomes.clone();
        let engine =
            EngineHandle::spawn(config, identity, io, move |o| sink.lock().unwrap().push(o))
                .unwrap();
        Self { engine, outcomes }
    }

    pub fn outcome_count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.kind == kind)
            .count()
    }

    /// Waits until `n` outcomes were reported.
    pub fn wait_outcomes(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.outcome_count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.outcome_count()
    }

    /// Submits `payloads` to `target`, keeping at most `window` without an outcome.
    pub fn send_windowed(
        &self,
        first_id: u64,
        payloads: &[Vec<u8>],
        target: SocketAddr,
        window: usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let base = self.outcome_count();
        for (i, p) in payloads.iter().enumerate() {
            while i - (self.outcome_count() - base) >= window {
                assert!(Instant::now() < deadline, "engine stalled");
                std::thread::sleep(Duration::from_micros(200));
            }
            self.engine
                .submit(first_id + i as u64, p.clone().into(), target)
                .unwrap();
        }
    }

    /// Waits for the connection to `target` to be established with stream credit.
    pub fn wait_for_credit(&self, target: SocketAddr) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(info) = self.engine.connection_info(target)
                && info.established
                && info.stream_limit_uni > 0
            {
                return info.stream_limit_uni;
            }
            assert!(Instant::now() < deadline, "no stream credit from {target}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The staked-identity conformance check: admitted as staked (512 streams, every
/// packet flagged staked); `n` distinct payloads of 8..1232 bytes arrive
/// byte-identical over one connection, with no close and no drop.
pub fn staked_delivery(client: &Client, server: &AgaveServer, n: usize) {
    client.engine.prewarm(server.addr).unwrap();
    // agave 3.1: staked streams = clamp(128 + share * (100000 - 128), 128, 512).
    assert_eq!(client.wait_for_credit(server.addr), 512);

    let payloads: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| payload(i, 8 + (i as usize * 7919) % (1232 - 7)))
        .collect();
    // Stay inside the per-connection queue (1024): the caller's backpressure.
    client.send_windowed(0, &payloads, server.addr, 1_000);
    assert_eq!(client.wait_outcomes(n, Duration::from_secs(60)), n);
    assert_eq!(
        client.count(OutcomeKind::Sent),
        n,
        "every transaction written to a stream: {:?}",
        client.engine.stats().snapshot()
    );
    assert_eq!(
        server.wait_for(n, Duration::from_secs(30)),
        n,
        "every transaction delivered"
    );

    let delivered = server.delivered();
    assert!(
        delivered.iter().all(|d| d.staked),
        "every packet flagged from a staked node"
    );
    let got: HashSet<&[u8]> = delivered.iter().map(|d| d.data.as_slice()).collect();
    let want: HashSet<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    assert_eq!(got.len(), n, "no duplicates");
    assert!(got == want, "delivered bytes differ from what was sent");

    let stats = client.engine.stats().snapshot();
    assert_eq!(stats.closed_by_peer, 0, "{stats:?}");
    assert_eq!(stats.dropped_total(), 0, "{stats:?}");
    assert_eq!(stats.connections_opened, 1, "one connection, reused");
}

/// The restart check: 100 delivered to a server, the server stops and a new one
/// starts on the same address; submissions after the restart are delivered over a
/// second connection, and everything submitted has exactly one outcome. `start`
/// starts a server on an address (port 0 the first time).
pub fn reconnects_after_restart(
    client: &Client,
    bind: SocketAddr,
    start: impl Fn(SocketAddr) -> AgaveServer,
) {
    let first = start(bind);
    let addr = first.addr;
    for i in 0..100 {
        client
            .engine
            .submit(i, payload(i, 300).into(), addr)
            .unwrap();
    }
    assert_eq!(first.wait_for(100, Duration::from_secs(10)), 100);
    first.stop();

    let second = start(addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next = 1_000u64;
    // Submit after the restart until the new server has 100 from us.
    while second.delivered_count() < 100 {
        assert!(
            Instant::now() < deadline,
            "no delivery after restart: {:?}",
            client.engine.stats().snapshot()
        );
        let _ = client.engine.submit(next, payload(next, 300).into(), addr);
        next += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = client.engine.stats().snapshot();
    assert_eq!(stats.connections_opened, 2, "{stats:?}");
    // Everything submitted has exactly one outcome.
    assert_eq!(
        client.wait_outcomes(next as usize - 900, Duration::from_secs(10)),
        next as usize - 900
    );
}
