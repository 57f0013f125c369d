//! The AF_XDP backend against real kernels: two network namespaces joined by a veth
//! pair (made and removed by each test), our frames and the steering program on one
//! end, the peer's kernel on the other.
//!
//! These need root. Under `CI=true` they run and fail if they cannot; elsewhere they
//! skip with a printed reason.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failure should stop it loudly"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use afterburner_test_support::netns::{
    self, CLIENT_IF, CLIENT_IP, SERVER_IF, SERVER_IP, Topology, in_netns, root_or_skip,
};
use afterburner_xdp::{
    AnyIo, PacketPath,
    batch::{RxBatch, TxBatch},
    io::{IoCounters, PacketIo},
    xdp::{AttachMode, AttachPolicy, COUNTER_LABELS, XdpConfig, XdpIo},
};

fn xdp_config() -> XdpConfig {
    XdpConfig::new(CLIENT_IF)
}

fn open_xdp(topo: &Topology, config: XdpConfig) -> XdpIo {
    in_netns(&topo.client_ns, move || {
        XdpIo::open(config).expect("AF_XDP setup")
    })
}

fn program_counter(io: &XdpIo, label: &str) -> u64 {
    let i = COUNTER_LABELS.iter().position(|l| *l == label).unwrap();
    io.stats().snapshot().program[i]
}

/// Frames we build are accepted by the peer's kernel (which verifies the IPv4 and UDP
/// checksums and drops bad ones), for odd and even sizes up to the MTU.
#[test]
fn built_frames_pass_the_peer_kernels_checks() {
    if !root_or_skip("built_frames_pass_the_peer_kernels_checks") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let peer = in_netns(&topo.server_ns, || UdpSocket::bind((SERVER_IP, 0)).unwrap());
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let dst = peer.local_addr().unwrap();
    let mut io = open_xdp(&topo, xdp_config());
    let mut counters = IoCounters::default();

    let sizes: Vec<usize> = (0..=1472)
        .step_by(89)
        .chain([1, 2, 3, 1471, 1472])
        .collect();
    let mut batch = TxBatch::new(sizes.len());
    for (i, &len) in sizes.iter().enumerate() {
        let slot = batch.spare(len).unwrap();
        for (j, b) in slot.iter_mut().enumerate() {
            *b = (i * 31 + j) as u8;
        }
        batch.commit(len, dst);
    }
    // The first datagram may go through the kernel while ARP resolves; send again
    // until the neighbour is known, then count only what left as our frames.
    io.send(&mut batch, &mut counters).unwrap();
    assert!(batch.is_empty());
    let mut buf = [0u8; 2048];
    let mut received = 0;
    while received < sizes.len() {
        let (n, from) = peer.recv_from(&mut buf).expect("datagram within 2 s");
        assert_eq!(
            from,
            SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, io.local_addr().port()))
        );
        let i = sizes.iter().position(|&l| l == n).unwrap();
        assert!(
            buf[..n]
                .iter()
                .enumerate()
                .all(|(j, b)| *b == (i * 31 + j) as u8)
        );
        received += 1;
    }
    // Round 1 left through the kernel socket while ARP resolved; let the unresolved
    // entry's retry delay pass so the next send looks the neighbour up again.
    std::thread::sleep(Duration::from_millis(50));
    let before = io.stats().snapshot();
    for (i, &len) in sizes.iter().enumerate() {
        let slot = batch.spare(len).unwrap();
        for (j, b) in slot.iter_mut().enumerate() {
            *b = (i * 31 + j) as u8 ^ 0x5a;
        }
        batch.commit(len, dst);
    }
    io.send(&mut batch, &mut counters).unwrap();
    for _ in 0..sizes.len() {
        let (n, _) = peer
            .recv_from(&mut buf)
            .expect("every frame accepted by the peer kernel");
        let i = sizes.iter().position(|&l| l == n).unwrap();
        assert!(
            buf[..n]
                .iter()
                .enumerate()
                .all(|(j, b)| *b == (i * 31 + j) as u8 ^ 0x5a)
        );
    }
    let after = io.stats().snapshot();
    assert_eq!(
        after.tx_frames - before.tx_frames,
        sizes.len() as u64,
        "all as our own frames"
    );
    assert_eq!(after.kernel_tx, before.kernel_tx);
}

/// The next hop's MAC is re-read from the kernel's neighbour table: when the peer's
/// MAC changes (and the table with it), our frames follow within the refresh
/// interval; frames to the old MAC are not accepted by the peer meanwhile.
#[test]
fn next_hop_mac_change_is_followed() {
    if !root_or_skip("next_hop_mac_change_is_followed") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let peer = in_netns(&topo.server_ns, || UdpSocket::bind((SERVER_IP, 0)).unwrap());
    peer.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let dst = peer.local_addr().unwrap();
    let mut io = open_xdp(
        &topo,
        XdpConfig {
            neighbour_refresh: Duration::from_millis(300),
            ..xdp_config()
        },
    );
    let mut counters = IoCounters::default();
    let mut batch = TxBatch::new(4);
    let mut buf = [0u8; 64];
    // Sends one datagram every 20 ms until the peer receives one; returns how long it took.
    let mut deliver = |io: &mut XdpIo, tag: u8| -> Duration {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "nothing arrived"
            );
            batch.spare(1).unwrap()[0] = tag;
            batch.commit(1, dst);
            io.send(&mut batch, &mut counters).unwrap();
            if let Ok((1, _)) = peer.recv_from(&mut buf)
                && buf[0] == tag
            {
                return started.elapsed();
            }
        }
    };
    deliver(&mut io, 1);
    std::thread::sleep(Duration::from_millis(400));
    deliver(&mut io, 2);
    let lookups = io.stats().snapshot().next_hop_lookups;
    let tx_before = io.stats().snapshot().tx_frames;

    // The peer gets a new MAC, and our side's neighbour table learns it.
    let new_mac = "02:ab:cd:00:00:01";
    netns::ip(&[
        "-n",
        &topo.server_ns,
        "link",
        "set",
        SERVER_IF,
        "address",
        new_mac,
    ])
    .unwrap();
    netns::ip(&[
        "-n",
        &topo.client_ns,
        "neigh",
        "replace",
        &SERVER_IP.to_string(),
        "lladdr",
        new_mac,
        "dev",
        CLIENT_IF,
        "nud",
        "reachable",
    ])
    .unwrap();
    let took = deliver(&mut io, 3);
    let s = io.stats().snapshot();
    assert!(s.next_hop_lookups > lookups, "looked up again: {s:?}");
    assert!(s.tx_frames > tx_before, "as our own frames: {s:?}");
    assert!(
        took < Duration::from_secs(1),
        "followed within the refresh interval: {took:?}"
    );
}

/// While our program is attached: a UDP exchange on another port and a TCP
/// connection keep working; a datagram to our port from an unrelated flow reaches us
/// and is refused by QUIC, nothing else; a fragmented datagram to our port is passed
/// to the kernel, reassembled and received on our reserved socket (no ICMP).
#[test]
fn other_traffic_on_the_interface_is_untouched() {
    if !root_or_skip("other_traffic_on_the_interface_is_untouched") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let mut io = open_xdp(&topo, xdp_config());
    let ours = io.local_addr();
    assert!(Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
    // Our port is reserved: nobody else can bind it.
    let taken = in_netns(&topo.client_ns, move || UdpSocket::bind(ours).unwrap_err());
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);

    // UDP on another port of the same address, both directions.
    let cli_udp = in_netns(&topo.client_ns, || UdpSocket::bind((CLIENT_IP, 0)).unwrap());
    let srv_udp = in_netns(&topo.server_ns, || UdpSocket::bind((SERVER_IP, 0)).unwrap());
    for s in [&cli_udp, &srv_udp] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let mut buf = [0u8; 4096];
    for i in 0..50u8 {
        srv_udp
            .send_to(&[i; 100], cli_udp.local_addr().unwrap())
            .unwrap();
        let (n, from) = cli_udp.recv_from(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (100, i));
        cli_udp.send_to(&buf[..n], from).unwrap();
        let (n, _) = srv_udp.recv_from(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (100, i));
    }

    // TCP, client side in the XDP namespace connecting out and the server side in it too.
    let listener = in_netns(&topo.server_ns, || {
        TcpListener::bind((SERVER_IP, 0)).unwrap()
    });
    let laddr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = vec![0u8; 100_000];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let mut tcp = in_netns(&topo.client_ns, move || TcpStream::connect(laddr).unwrap());
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    tcp.write_all(&data).unwrap();
    let mut back = vec![0u8; data.len()];
    tcp.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    echo.join().unwrap();

    // Unrelated datagrams to our port: steered to us (they are for our address and
    // port) and handed up as received datagrams for QUIC to refuse.
    let stranger = in_netns(&topo.server_ns, || UdpSocket::bind((SERVER_IP, 0)).unwrap());
    for _ in 0..5 {
        stranger.send_to(b"not quic at all", ours).unwrap();
    }
    // A 3,000-byte datagram to our port: fragmented on the wire, so the program
    // passes it, the kernel reassembles it and our reserved socket receives it.
    stranger.send_to(&[7u8; 3000], ours).unwrap();
    let mut rx = RxBatch::new(64);
    let mut got = vec![];
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < 6 && Instant::now() < deadline {
        io.recv(&mut rx).unwrap();
        rx.for_each(|from, d| got.push((from, d.len())));
        std::thread::sleep(Duration::from_millis(5));
    }
    let stranger_addr = stranger.local_addr().unwrap();
    assert_eq!(
        got.iter().filter(|g| **g == (stranger_addr, 15)).count(),
        5,
        "{got:?}"
    );
    // The reassembled datagram exceeds our batch slot (1500): received on the kernel
    // socket, truncated to the slot, and counted; QUIC would refuse it like any junk.
    io.refresh_stats();
    let s = io.stats().snapshot();
    assert!(
        s.kernel_rx >= 1,
        "reassembled datagram received on the reserved socket: {s:?}"
    );
    assert!(
        program_counter(&io, "pass_ip_options_or_fragment") >= 2,
        "{s:?}"
    );
    assert!(program_counter(&io, "redirected") >= 5, "{s:?}");
    // The 50 inbound datagrams of the other-port exchange; TCP segments are not UDP.
    assert!(program_counter(&io, "pass_not_ours") >= 50, "{s:?}");
    assert!(program_counter(&io, "pass_not_udp") >= 10, "{s:?}");
    // No ICMP port-unreachable was provoked: the stranger's socket has no error queued.
    stranger.set_nonblocking(true).unwrap();
    let err = stranger.recv_from(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
}

/// Dropping the backend detaches the program.
#[test]
fn program_detached_on_drop() {
    if !root_or_skip("program_detached_on_drop") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let io = open_xdp(&topo, xdp_config());
    assert!(Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
    drop(io);
    assert!(!Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
}

/// Generic mode on request; driver mode is what veth gives by default.
#[test]
fn attach_modes() {
    if !root_or_skip("attach_modes") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let io = open_xdp(&topo, xdp_config());
    assert_eq!(
        io.attach_mode(),
        AttachMode::Driver,
        "veth supports native XDP"
    );
    drop(io);
    let io = open_xdp(
        &topo,
        XdpConfig {
            attach: AttachPolicy::Generic,
            ..xdp_config()
        },
    );
    assert_eq!(io.attach_mode(), AttachMode::Generic);
    assert!(
        Topology::link_details(&topo.client_ns, CLIENT_IF)
            .unwrap()
            .contains("xdpgeneric")
    );
    assert!(!io.zero_copy(), "veth has no zero-copy AF_XDP");
}

/// Setup failures name their cause.
#[test]
fn setup_errors_name_the_cause() {
    if !root_or_skip("setup_errors_name_the_cause") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let e = in_netns(&topo.client_ns, || {
        XdpIo::open(XdpConfig::new("nope0")).unwrap_err()
    });
    assert!(e.to_string().contains("nope0"), "{e}");
    // The other end's address is not ours to bind.
    let e = in_netns(&topo.client_ns, || {
        XdpIo::open(XdpConfig {
            address: Some(SERVER_IP),
            ..xdp_config()
        })
        .unwrap_err()
    });
    assert!(e.to_string().contains("reserving UDP port"), "{e}");
    // A second backend on the same interface: the queue's socket slot is taken.
    let first = open_xdp(&topo, xdp_config());
    let e = in_netns(&topo.client_ns, || XdpIo::open(xdp_config()).unwrap_err());
    let msg = e.to_string();
    assert!(
        msg.contains("queue 0") || msg.contains("XDP program"),
        "{msg}"
    );
    drop(first);
    let _ = Ipv4Addr::LOCALHOST;
    let _ = SERVER_IF;
}

/// An interface that already has another XDP program (as a validator's own, from
/// agave 4.2): AF_XDP is refused with a message naming that program, the other
/// program stays attached, and with a fallback configured the packet path is kernel
/// UDP instead.
#[test]
fn an_interface_with_another_xdp_program_is_refused_or_falls_back() {
    if !root_or_skip("an_interface_with_another_xdp_program_is_refused_or_falls_back") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    let foreign = netns::ForeignXdp::attach(&topo.client_ns, CLIENT_IF, "validator_xdp").unwrap();
    assert!(Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
    let e = in_netns(&topo.client_ns, || XdpIo::open(xdp_config()).unwrap_err());
    let msg = e.to_string();
    println!("refused: {msg}");
    assert!(
        msg.contains("already has an XDP program") && msg.contains("\"validator_xdp\""),
        "{msg}"
    );
    let fallback: SocketAddr = SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, 0));
    let io = in_netns(&topo.client_ns, move || {
        AnyIo::open(&PacketPath::Xdp {
            config: xdp_config(),
            fallback: Some(fallback),
        })
        .unwrap()
    });
    assert!(matches!(io, AnyIo::Udp(_)), "fell back to kernel UDP");
    let refused = in_netns(&topo.client_ns, || {
        AnyIo::open(&PacketPath::Xdp {
            config: xdp_config(),
            fallback: None,
        })
        .unwrap_err()
        .to_string()
    });
    assert!(refused.contains("validator_xdp"), "{refused}");
    assert!(
        Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap(),
        "the other program is left alone"
    );
    drop(io);
    drop(foreign);
    assert!(!Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
}

/// Child process for the signal tests: attaches in the namespace given by
/// `AB_XDP_CHILD_NS`, prints "attached", and waits to be killed. Not a test on its
/// own (ignored); the tests below run it.
#[test]
#[ignore = "helper process for program_detached_when_the_process_is_killed"]
fn xdp_child_process() {
    let Ok(ns) = std::env::var("AB_XDP_CHILD_NS") else {
        return;
    };
    let io = in_netns(&ns, || XdpIo::open(XdpConfig::new(CLIENT_IF)).unwrap());
    println!("attached {}", io.local_addr());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(io);
}

/// SIGTERM and SIGKILL: the process dies without running any destructor, and the
/// interface is left without our program (the kernel drops the BPF link).
#[test]
fn program_detached_when_the_process_is_killed() {
    if !root_or_skip("program_detached_when_the_process_is_killed") {
        return;
    }
    let topo = Topology::create(1).unwrap();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "xdp_child_process", "--nocapture"])
            .env("AB_XDP_CHILD_NS", &topo.client_ns)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let attached = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("attached")));
        assert!(attached.is_some(), "child attached");
        assert!(Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(!status.success());
        // The link is released as the process's descriptors close.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Topology::has_xdp(&topo.client_ns, CLIENT_IF).unwrap() {
            assert!(
                Instant::now() < deadline,
                "program still attached after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
