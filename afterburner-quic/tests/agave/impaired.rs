//! Loss, delay and reordering between the namespaces (5% loss, 20 ms ± 5 ms delay,
//! 10% reordering, both directions): 20,000 transactions through agave's server,
//! byte-identical, over kernel UDP and over AF_XDP. This kernel has no `tc netem`
//! (`CONFIG_NET_SCH_NETEM` is not set, no modules), so a user-space impairment
//! relay in the server's namespace (test-support `impair`) stands in: the client
//! sends to it, it drops, delays and reorders both ways. Dropped transactions (a
//! handshake that timed out under loss, say) are submitted again, as the gateway's
//! ledger would. Printed: delivery time, QUIC packets declared lost, submissions.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use afterburner_quic::{EngineConfig, Identity, OutcomeKind};
use afterburner_test_support::{
    AgaveServer,
    impair::{Impairment, Params},
    netns::{CLIENT_IF, CLIENT_IP, SERVER_IP, Topology, in_netns, root_or_skip},
    payload,
};
use afterburner_xdp::{
    io::PacketIo,
    udp::UdpIo,
    xdp::{XdpConfig, XdpIo},
};

use crate::client::Client;

const PARAMS: Params = Params {
    loss: 0.05,
    delay: Duration::from_millis(20),
    jitter: Duration::from_millis(5),
    reorder: 0.10,
};

/// agave's server in the server namespace, behind the impairment relay there.
fn impaired_server(topo: &Topology, identity: &Identity) -> (AgaveServer, Impairment) {
    let stakes = [(identity.pubkey(), 1_000_000)];
    let server = in_netns(&topo.server_ns, move || {
        AgaveServer::start(SocketAddr::from((SERVER_IP, 0)), &stakes)
    });
    let target = server.addr;
    let relay = in_netns(&topo.server_ns, move || {
        Impairment::start(SocketAddr::from((SERVER_IP, 0)), target, PARAMS)
    });
    (server, relay)
}

/// Sends `n` distinct payloads until each is delivered (resubmitting dropped ones,
/// at most 5 rounds), checks them byte-identical, and prints the figures.
fn deliver_impaired(
    path: &str,
    client: &Client,
    server: &AgaveServer,
    relay: &Impairment,
    n: usize,
) {
    let started = Instant::now();
    let payloads: Vec<Vec<u8>> = (0..n as u64)
        // Transfer-sized (100 to 500 bytes), as most transactions are.
        .map(|i| payload(i, 100 + (i as usize * 7919) % 400))
        .collect();
    let want: HashSet<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let mut todo: Vec<u64> = (0..n as u64).collect();
    let mut submissions = 0usize;
    let mut base = 0u64;
    for round in 0..5 {
        if todo.is_empty() {
            break;
        }
        let outcomes_before = client.outcome_count();
        let batch: Vec<Vec<u8>> = todo.iter().map(|&i| payloads[i as usize].clone()).collect();
        submissions += batch.len();
        // Ids are unique per submission: round r uses base + position; at most 1,000
        // without an outcome (the caller's backpressure), for up to 5 minutes.
        let deadline = Instant::now() + Duration::from_secs(300);
        for (i, p) in batch.iter().enumerate() {
            while i.saturating_sub(client.outcome_count() - outcomes_before) >= 1_000 {
                assert!(Instant::now() < deadline, "round {round}: engine stalled");
                std::thread::sleep(Duration::from_micros(500));
            }
            client
                .engine
                .submit(base + i as u64, p.clone().into(), relay.addr)
                .unwrap();
        }
        let done = client.wait_outcomes(outcomes_before + batch.len(), Duration::from_secs(300));
        assert_eq!(
            done,
            outcomes_before + batch.len(),
            "round {round}: outcomes"
        );
        let dropped: Vec<u64> = client
            .outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.id >= base && o.id < base + batch.len() as u64)
            .filter(|o| matches!(o.kind, OutcomeKind::Dropped(_)))
            .map(|o| todo[(o.id - base) as usize])
            .collect();
        base += batch.len() as u64;
        todo = dropped;
    }
    assert!(
        todo.is_empty(),
        "{} still dropped after 5 rounds",
        todo.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let got: HashSet<Vec<u8>> = loop {
        let got: HashSet<Vec<u8>> = server.delivered().into_iter().map(|d| d.data).collect();
        if got.len() >= n || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let s = client.engine.stats().snapshot();
    println!(
        "impaired ({PARAMS}) over {path}: {n} transactions delivered in {:.1} s ({:.0}/s), \
         {} submissions, QUIC packets sent {} declared lost {} ({:.1}%, of them {} spuriously: \
         acknowledged after all), connections {}; relay: {} datagrams, {} dropped, {} reordered",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        submissions,
        s.packets_sent,
        s.packets_lost,
        100.0 * s.packets_lost as f64 / s.packets_sent.max(1) as f64,
        s.packets_spurious_lost,
        s.connections_opened,
        relay.counts.received.load(Ordering::Relaxed),
        relay.counts.dropped.load(Ordering::Relaxed),
        relay.counts.reordered.load(Ordering::Relaxed),
    );
    assert_eq!(got.len(), n, "every transaction delivered");
    assert!(
        got.iter().all(|d| want.contains(d.as_slice())),
        "delivered bytes differ from what was sent"
    );
    assert!(s.packets_lost > 0, "the path really lost packets");
}

/// Kernel UDP.
#[test]
fn loss_delay_and_reordering_over_kernel_udp() {
    if !root_or_skip("loss_delay_and_reordering_over_kernel_udp") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let identity = Identity::random();
    let (server, relay) = impaired_server(&topo, &identity);
    let io = in_netns(&topo.client_ns, || {
        UdpIo::bind(SocketAddr::from((CLIENT_IP, 0))).unwrap()
    });
    assert_eq!(io.local_addr().ip(), CLIENT_IP);
    let client = Client::start_with_io(&identity, EngineConfig::default(), io);
    deliver_impaired("kernel UDP", &client, &server, &relay, 20_000);
}

/// AF_XDP.
#[test]
fn loss_delay_and_reordering_over_af_xdp() {
    if !root_or_skip("loss_delay_and_reordering_over_af_xdp") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let identity = Identity::random();
    let (server, relay) = impaired_server(&topo, &identity);
    let io = in_netns(&topo.client_ns, || {
        XdpIo::open(XdpConfig::new(CLIENT_IF)).expect("AF_XDP setup")
    });
    let client = Client::start_with_io(&identity, EngineConfig::default(), io);
    deliver_impaired("AF_XDP", &client, &server, &relay, 20_000);
}
