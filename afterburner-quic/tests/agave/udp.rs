//! The engine over kernel UDP against agave's TPU QUIC server on loopback.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use afterburner_quic::{DropReason, EngineConfig, Identity, OutcomeKind};
use afterburner_test_support::{AgaveServer, payload};

use crate::client::{self, Client};

const LOCALHOST_ANY: &str = "127.0.0.1:0";

/// Staked identity: admitted as staked (512 streams, every packet flagged staked);
/// 20,000 distinct transactions arrive byte-identical; no `invalid_stream` close.
#[test]
fn staked_identity_delivers_20k_byte_identical() {
    let identity = Identity::random();
    let server = AgaveServer::start(
        LOCALHOST_ANY.parse().unwrap(),
        &[(identity.pubkey(), 1_000_000)],
    );
    let client = Client::start(&identity, EngineConfig::default());
    client::staked_delivery(&client, &server, 20_000);
}

/// Random (unstaked) certificate: 128 streams, packets not flagged staked, delivery
/// throttled by the server; every submission is accounted for: sent ones arrive,
/// the rest are dropped with a reason.
#[test]
fn unstaked_identity_is_throttled_and_everything_accounted() {
    let identity = Identity::random();
    let server = AgaveServer::start(LOCALHOST_ANY.parse().unwrap(), &[]);
    let config = EngineConfig {
        max_queued_per_connection: 200,
        ..EngineConfig::default()
    };
    let client = Client::start(&identity, config);
    client.engine.prewarm(server.addr).unwrap();
    assert_eq!(client.wait_for_credit(server.addr), 128);

    const N: usize = 600;
    for i in 0..N as u64 {
        client
            .engine
            .submit(i, payload(i, 200).into(), server.addr)
            .unwrap();
    }
    // The server admits 200 streams/s for unstaked peers (20 per 100 ms window).
    let sent_at = Instant::now();
    assert_eq!(
        client.wait_outcomes(N, Duration::from_secs(30)),
        N,
        "every submission has an outcome"
    );
    let sent = client.count(OutcomeKind::Sent);
    let queue_full = client.count(OutcomeKind::Dropped(DropReason::ConnectionQueueFull));
    assert_eq!(
        sent + queue_full,
        N,
        "only sent or dropped for a full queue"
    );
    // What the congestion window took at once, then the whole queue as credit returned.
    assert!(sent > 200, "the queue drained into streams: {sent}");
    assert_eq!(
        server.wait_for(sent, Duration::from_secs(30)),
        sent,
        "every sent transaction delivered"
    );
    let elapsed = sent_at.elapsed().as_secs_f64();
    let delivered = server.delivered();
    assert!(delivered.iter().all(|d| !d.staked));
    // Within the throttle: no faster than ~200/s plus one window of burst.
    assert!(
        (sent as f64) <= 200.0 * elapsed + 128.0,
        "{sent} delivered in {elapsed:.2}s is faster than agave's unstaked throttle"
    );
    let stats = client.engine.stats().snapshot();
    assert_eq!(stats.sent as usize, sent);
    assert_eq!(
        stats.dropped(DropReason::ConnectionQueueFull) as usize,
        queue_full
    );
    assert_eq!(stats.closed_by_peer, 0);
}

/// Empty and oversized payloads are refused locally, counted, and never reach a
/// stream; a payload of exactly 1232 bytes is delivered.
#[test]
fn empty_and_oversized_refused_locally() {
    let identity = Identity::random();
    let server = AgaveServer::start(LOCALHOST_ANY.parse().unwrap(), &[(identity.pubkey(), 1)]);
    let client = Client::start(&identity, EngineConfig::default());
    let empty = client
        .engine
        .submit(1, Vec::new().into(), server.addr)
        .unwrap_err();
    let big = client
        .engine
        .submit(2, vec![7u8; 1233].into(), server.addr)
        .unwrap_err();
    assert_eq!(empty.reason, DropReason::Empty);
    assert_eq!(big.reason, DropReason::TooLarge);
    let stats = client.engine.stats().snapshot();
    assert_eq!(
        stats.connections_opened, 0,
        "nothing opened for refused payloads"
    );
    assert_eq!(stats.dropped(DropReason::Empty), 1);
    assert_eq!(stats.dropped(DropReason::TooLarge), 1);

    client
        .engine
        .submit(3, vec![9u8; 1232].into(), server.addr)
        .unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(10)), 1);
    assert_eq!(server.delivered()[0].data, vec![9u8; 1232]);
    assert_eq!(client.engine.stats().snapshot().closed_by_peer, 0);
}

/// The server stops and a new one starts on the same port: the engine notices,
/// reconnects, and what is submitted after the restart arrives.
#[test]
fn reconnects_after_server_restart() {
    let identity = Identity::random();
    let stakes = [(identity.pubkey(), 1_000)];
    let config = EngineConfig {
        idle_timeout: Duration::from_secs(3),
        ..EngineConfig::default()
    };
    let client = Client::start(&identity, config);
    client::reconnects_after_restart(&client, LOCALHOST_ANY.parse().unwrap(), |addr| {
        AgaveServer::start(addr, &stakes)
    });
}

/// An address where nothing answers: the handshake times out (counted, queue dropped,
/// backoff), while a live connection keeps delivering meanwhile.
#[test]
fn dead_address_times_out_while_live_one_delivers() {
    let identity = Identity::random();
    let server = AgaveServer::start(LOCALHOST_ANY.parse().unwrap(), &[(identity.pubkey(), 1)]);
    // A socket that swallows every datagram: no QUIC server behind it.
    let black_hole = UdpSocket::bind(LOCALHOST_ANY).unwrap();
    let dead = black_hole.local_addr().unwrap();
    let config = EngineConfig {
        handshake_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_secs(30),
        ..EngineConfig::default()
    };
    let client = Client::start(&identity, config);
    for i in 0..10 {
        client
            .engine
            .submit(i, payload(i, 100).into(), dead)
            .unwrap();
    }
    // Keep the live connection busy while the dead one times out.
    let start = Instant::now();
    let mut live = 0u64;
    while start.elapsed() < Duration::from_millis(800) {
        client
            .engine
            .submit(100 + live, payload(100 + live, 100).into(), server.addr)
            .unwrap();
        live += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = server
        .delivered()
        .iter()
        .filter(|d| d.at < start + Duration::from_millis(500))
        .count();
    assert!(
        during > 10,
        "live deliveries continued during the handshake wait: {during}"
    );
    assert_eq!(
        server.wait_for(live as usize, Duration::from_secs(10)),
        live as usize
    );

    let timed_out = |c: &Client| {
        c.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| {
                o.target == dead && o.kind == OutcomeKind::Dropped(DropReason::HandshakeTimeout)
            })
            .count()
    };
    assert_eq!(timed_out(&client), 10);
    assert_eq!(client.engine.stats().snapshot().handshake_timeouts, 1);
    // Straight after the failure the address is in backoff: no new attempt.
    client
        .engine
        .submit(999, payload(999, 100).into(), dead)
        .unwrap();
    client.wait_outcomes(10 + live as usize + 1, Duration::from_secs(5));
    let last = *client.outcomes.lock().unwrap().last().unwrap();
    assert_eq!(last.kind, OutcomeKind::Dropped(DropReason::Backoff));
    assert_eq!(client.engine.stats().snapshot().connections_opened, 2);
}

/// Keep-alives hold an idle connection open well past the idle timeout, so the next
/// transaction needs no new handshake.
#[test]
fn keep_alive_outlives_idle_timeout() {
    let identity = Identity::random();
    let server = AgaveServer::start(LOCALHOST_ANY.parse().unwrap(), &[(identity.pubkey(), 1)]);
    let config = EngineConfig {
        idle_timeout: Duration::from_millis(600),
        keep_alive_interval: Duration::from_millis(150),
        ..EngineConfig::default()
    };
    let client = Client::start(&identity, config);
    client.engine.prewarm(server.addr).unwrap();
    client.wait_for_credit(server.addr);
    std::thread::sleep(Duration::from_millis(2_000));
    let info = client
        .engine
        .connection_info(server.addr)
        .expect("still connected");
    assert!(info.established);
    client
        .engine
        .submit(1, payload(1, 100).into(), server.addr)
        .unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(5)), 1);
    let stats = client.engine.stats().snapshot();
    assert_eq!(stats.connections_opened, 1, "{stats:?}");
    assert_eq!(stats.connections_lost, 0, "{stats:?}");
    assert!(stats.keepalives >= 5, "{stats:?}");
}

/// Without keep-alives the idle timeout closes the connection (counted as lost), and
/// the next transaction reconnects at once (a working connection was lost, no backoff).
#[test]
fn idle_timeout_closes_and_next_send_reconnects() {
    let identity = Identity::random();
    let server = AgaveServer::start(LOCALHOST_ANY.parse().unwrap(), &[(identity.pubkey(), 1)]);
    let config = EngineConfig {
        idle_timeout: Duration::from_millis(500),
        keep_alive_interval: Duration::from_secs(600),
        ..EngineConfig::default()
    };
    let client = Client::start(&identity, config);
    client.engine.prewarm(server.addr).unwrap();
    client.wait_for_credit(server.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.engine.stats().snapshot().connections_lost == 0 {
        assert!(Instant::now() < deadline, "idle timeout never fired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(client.engine.connection_info(server.addr).is_none());
    client
        .engine
        .submit(1, payload(1, 100).into(), server.addr)
        .unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(5)), 1);
    assert_eq!(client.engine.stats().snapshot().connections_opened, 2);
    assert_eq!(client.count(OutcomeKind::Sent), 1);
}
