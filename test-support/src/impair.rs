//! [`Impairment`]: loss, delay with jitter, and reordering on a UDP path, in user
//! space. A stand-in for `tc netem`, said plainly: this machine's kernel has no
//! netem (`CONFIG_NET_SCH_NETEM` is not set, and there are no modules), so the
//! impairment is a relay the client sends to instead of the server. It impairs
//! both directions, whatever the client's packet path (kernel UDP or AF_XDP, whose
//! transmit a qdisc would not see anyway).
//!
//! Like netem's `delay D J loss L reorder R`: each datagram is dropped with
//! probability L; otherwise a share R goes out at once and the rest after D ± J, so
//! the ones sent at once overtake the delayed ones.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// The impairment's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Share of datagrams dropped.
    pub loss: f64,
    /// Delay of the others.
    pub delay: Duration,
    /// Plus or minus this, uniformly.
    pub jitter: Duration,
    /// Share sent at once, overtaking the delayed ones.
    pub reorder: f64,
}

impl std::fmt::Display for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loss {:.0}%, delay {} ms ± {} ms, reorder {:.0}%",
            self.loss * 100.0,
            self.delay.as_millis(),
            self.jitter.as_millis(),
            self.reorder * 100.0
        )
    }
}

/// What the relay did, counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Datagrams that arrived.
    pub received: AtomicU64,
    /// Dropped on purpose.
    pub dropped: AtomicU64,
    /// Sent at once (reordered).
    pub reordered: AtomicU64,
}

/// A UDP relay that impairs what it carries, both ways, for one client.
#[derive(Debug)]
pub struct Impairment {
    /// Where the client sends (in place of the server).
    pub addr: SocketAddr,
    /// What it did.
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
}

type Due = Reverse<(Instant, u64, SocketAddr, Vec<u8>)>;

impl Impairment {
    /// Relays between the one client that sends to `bind` and `server`.
    pub fn start(bind: SocketAddr, server: SocketAddr, params: Params) -> Self {
        let socket = Arc::new(UdpSocket::bind(bind).unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let queue: Arc<Mutex<BinaryHeap<Due>>> = Arc::default();
        // The sender: datagrams out when due.
        {
            let (socket, queue, stop) = (socket.clone(), queue.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    let mut ready = Vec::new();
                    if let Ok(mut q) = queue.lock() {
                        while q.peek().is_some_and(|Reverse((at, ..))| *at <= now) {
                            if let Some(Reverse((_, _, to, data))) = q.pop() {
                                ready.push((to, data));
                            }
                        }
                    }
                    for (to, data) in ready {
                        let _ = socket.send_to(&data, to);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        // The receiver: decides each datagram's fate.
        {
            let (socket, stop, counts) = (socket.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
                let mut next = move || {
                    // xorshift64*: reproducible, no dependency.
                    rng ^= rng >> 12;
                    rng ^= rng << 25;
                    rng ^= rng >> 27;
                    (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
                };
                let mut client: Option<SocketAddr> = None;
                let mut seq = 0u64;
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    counts.received.fetch_add(1, Ordering::Relaxed);
                    let to = if from == server {
                        match client {
                            Some(c) => c,
                            None => continue,
                        }
                    } else {
                        client = Some(from);
                        server
                    };
                    if next() < params.loss {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let at = if next() < params.reorder {
                        counts.reordered.fetch_add(1, Ordering::Relaxed);
                        Instant::now()
                    } else {
                        let jitter = params.jitter.as_secs_f64() * (2.0 * next() - 1.0);
                        let d = (params.delay.as_secs_f64() + jitter).max(0.0);
                        Instant::now() + Duration::from_secs_f64(d)
                    };
                    seq += 1;
                    if let Ok(mut q) = queue.lock() {
                        q.push(Reverse((at, seq, to, buf[..n].to_vec())));
                    }
                }
            });
        }
        Self { addr, counts, stop }
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
