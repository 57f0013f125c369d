//! agave's real TPU QUIC server (`solana-streamer` 3.1), in this process: what the
//! engine's conformance tests and benchmarks send to.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, Mutex, RwLock},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use solana_sdk::{pubkey::Pubkey, signature::Keypair};
use solana_streamer::{
    nonblocking::swqos::SwQosConfig,
    quic::{QuicStreamerConfig, spawn_server_with_cancel},
    streamer::StakedNodes,
};
use tokio_util::sync::CancellationToken;

/// One packet as agave's server handed it to the validator pipeline.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub data: Vec<u8>,
    pub staked: bool,
    pub at: Instant,
}

/// agave's TPU QUIC server, running in this process.
#[expect(
    missing_debug_implementations,
    reason = "holds the server's threads and channels; nothing to print"
)]
pub struct AgaveServer {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    server_thread: Option<JoinHandle<()>>,
    collector: Option<JoinHandle<()>>,
    delivered: Arc<Mutex<Vec<Delivered>>>,
}

impl AgaveServer {
    /// Starts a server on `addr` (port 0: any). `stakes` fills its staked-nodes map.
    pub fn start(addr: SocketAddr, stakes: &[(Pubkey, u64)]) -> Self {
        Self::start_with_threads(addr, stakes, 1)
    }

    /// As [`Self::start`], with `threads` runtime threads for the server (agave's
    /// default is 1).
    pub fn start_with_threads(addr: SocketAddr, stakes: &[(Pubkey, u64)], threads: usize) -> Self {
        Self::start_with(addr, stakes, threads, 8)
    }

    /// As [`Self::start`], accepting at most `per_peer` connections per identity
    /// (agave's `max_connections_per_peer`: 1 in `QuicStreamerConfig::default()`,
    /// which the test validator uses; 8 in agave 3.x validators).
    pub fn start_with_peer_limit(
        addr: SocketAddr,
        stakes: &[(Pubkey, u64)],
        per_peer: usize,
    ) -> Self {
        Self::start_with(addr, stakes, 1, per_peer)
    }

    /// As [`Self::start`], refusing every unstaked peer: agave closes their
    /// connections with code 2, `disallowed` (`max_unstaked_connections` 0).
    pub fn start_disallowing_unstaked(addr: SocketAddr, stakes: &[(Pubkey, u64)]) -> Self {
        Self::start_configured(addr, stakes, 1, 8, 0)
    }

    fn start_with(
        addr: SocketAddr,
        stakes: &[(Pubkey, u64)],
        threads: usize,
        per_peer: usize,
    ) -> Self {
        let unstaked = QuicStreamerConfig::default().max_unstaked_connections;
        Self::start_configured(addr, stakes, threads, per_peer, unstaked)
    }

    fn start_configured(
        addr: SocketAddr,
        stakes: &[(Pubkey, u64)],
        threads: usize,
        per_peer: usize,
        max_unstaked: usize,
    ) -> Self {
        let socket = UdpSocket::bind(addr).expect("bind agave server socket");
        // On loopback the server's socket overflows under bursts: give it room
        // (SO_RCVBUFFORCE needs root; otherwise the plain request, capped by rmem_max).
        let size: i32 = 64 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: pointer to a live i32 with its size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const i32).cast(),
                    4,
                )
            };
            if rc == 0 {
                break;
            }
        }
        let addr = socket.local_addr().unwrap();
        let stakes: HashMap<Pubkey, u64> = stakes.iter().copied().collect();
        let staked_nodes = Arc::new(RwLock::new(StakedNodes::new(
            Arc::new(stakes),
            HashMap::new(),
        )));
        let (sender, receiver) = crossbeam_channel::unbounded();
        let cancel = CancellationToken::new();
        let config = QuicStreamerConfig {
            // Tests and benchmarks reconnect from 127.0.0.1 many times a minute.
            max_connections_per_ipaddr_per_min: 10_000,
            max_connections_per_peer: per_peer,
            max_unstaked_connections: max_unstaked,
            num_threads: std::num::NonZeroUsize::new(threads)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            ..QuicStreamerConfig::default()
        };
        let server = spawn_server_with_cancel(
            "abTestQuic",
            "afterburner_test_quic",
            [socket],
            &Keypair::new(),
            sender,
            staked_nodes,
            config,
            SwQosConfig::default(),
            cancel.clone(),
        )
        .expect("spawn agave QUIC server");
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let sink = delivered.clone();
        let collector = std::thread::spawn(move || {
            while let Ok(batch) = receiver.recv() {
                let at = Instant::now();
                let mut out = sink.lock().unwrap();
                for p in batch.iter() {
                    if let Some(data) = p.data(..) {
                        out.push(Delivered {
                            data: data.to_vec(),
                            staked: p.meta().is_from_staked_node(),
                            at,
                        });
                    }
                }
            }
        });
        Self {
            addr,
            cancel,
            server_thread: Some(server.thread),
            collector: Some(collector),
            delivered,
        }
    }

    pub fn delivered_count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    /// Waits until `n` packets arrived or `timeout` passed; returns the count.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered_count();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the server and releases its port.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.server_thread.take() {
            t.join().expect("agave server thread");
        }
        if let Some(t) = self.collector.take() {
            t.join().expect("collector thread");
        }
    }
}

impl Drop for AgaveServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
