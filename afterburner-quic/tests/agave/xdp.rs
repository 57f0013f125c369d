//! The engine over AF_XDP against real kernels: two network namespaces joined by a
//! veth pair (made and removed by each test), agave's TPU QUIC server in one, our
//! engine over AF_XDP attached to the other end.
//!
//! These need root. Under `CI=true` they run and fail if they cannot; elsewhere they
//! skip with a printed reason.

use std::{net::SocketAddr, time::Duration};

use afterburner_quic::{EngineConfig, Identity};
use afterburner_test_support::{
    AgaveServer,
    netns::{CLIENT_IF, SERVER_IP, Topology, in_netns, root_or_skip},
};
use afterburner_xdp::xdp::{XdpConfig, XdpIo};

use crate::client::{self, Client, staked_delivery};

fn xdp_config() -> XdpConfig {
    XdpConfig::new(CLIENT_IF)
}

fn open_xdp(topo: &Topology, config: XdpConfig) -> XdpIo {
    in_netns(&topo.client_ns, move || {
        XdpIo::open(config).expect("AF_XDP setup")
    })
}

/// The staked conformance check over AF_XDP: 20,000 transactions through agave's
/// server in the other namespace, byte-identical, as the staked identity; the frames
/// really went through the rings and the program really steered the replies.
#[test]
fn staked_20k_over_af_xdp() {
    if !root_or_skip("staked_20k_over_af_xdp") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let identity = Identity::random();
    let stakes = [(identity.pubkey(), 1_000_000)];
    let server = in_netns(&topo.server_ns, move || {
        AgaveServer::start(SocketAddr::from((SERVER_IP, 0)), &stakes)
    });
    let io = open_xdp(&topo, xdp_config());
    assert_eq!(io.link().rx_queues, 1);
    let stats = io.stats();
    let client = Client::start_with_io(&identity, EngineConfig::default(), io);
    staked_delivery(&client, &server, 20_000);

    let s = stats.snapshot();
    eprintln!("xdp stats: {s:?}");
    assert!(s.tx_frames > 3_000, "frames built and sent by us: {s:?}");
    assert!(s.rx_frames > 100, "replies came through the RX ring: {s:?}");
    // Only what goes out before ARP resolved may take the kernel path: one missed
    // lookup, then its 5 ms retry window (the handshake and first streams fit in it
    // on veth with optimized builds: 8 datagrams seen), a sliver of the whole.
    assert!(s.neighbour_misses <= 2, "{s:?}");
    assert!(s.kernel_tx * 100 <= s.tx_frames, "{s:?}");
    assert_eq!(s.rx_malformed, 0, "{s:?}");
}

/// Two RX queues: one AF_XDP socket each, and the conformance check still holds
/// whichever queue the replies arrive on; the engine thread busy-polls here.
#[test]
fn multi_queue_interface_gets_a_socket_per_queue() {
    if !root_or_skip("multi_queue_interface_gets_a_socket_per_queue") {
        return;
    }
    let topo = Topology::create(2).unwrap();
    let identity = Identity::random();
    let stakes = [(identity.pubkey(), 1_000_000)];
    let server = in_netns(&topo.server_ns, move || {
        AgaveServer::start(SocketAddr::from((SERVER_IP, 0)), &stakes)
    });
    let io = open_xdp(&topo, xdp_config());
    assert_eq!(io.link().rx_queues, 2);
    let stats = io.stats();
    assert_eq!(stats.snapshot().queues, 2);
    let config = EngineConfig {
        busy_poll: true,
        ..EngineConfig::default()
    };
    let client = Client::start_with_io(&identity, config, io);
    staked_delivery(&client, &server, 2_000);
    let s = stats.snapshot();
    assert!(s.rx_frames + s.kernel_rx > 10, "{s:?}");
}

/// The restart check over AF_XDP: the server in the other namespace stops and a
/// new one starts on the same address; the engine reconnects and delivers.
#[test]
fn reconnects_after_server_restart_over_af_xdp() {
    if !root_or_skip("reconnects_after_server_restart_over_af_xdp") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let identity = Identity::random();
    let stakes = [(identity.pubkey(), 1_000)];
    let io = open_xdp(&topo, xdp_config());
    let config = EngineConfig {
        idle_timeout: Duration::from_secs(3),
        ..EngineConfig::default()
    };
    let client = Client::start_with_io(&identity, config, io);
    let ns = topo.server_ns.clone();
    client::reconnects_after_restart(&client, SocketAddr::from((SERVER_IP, 0)), |addr| {
        in_netns(&ns, move || AgaveServer::start(addr, &stakes))
    });
}
