//! [`XdpIo`]: the AF_XDP backend of [`PacketIo`].
//!
//! Setup (needs `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_BPF`, or root):
//! 1. look the interface up over netlink (index, MAC, IPv4 address, RX queues);
//! 2. reserve our QUIC client port with an ordinary kernel UDP socket bound to it, so
//!    no other process can take it and a packet that misses the AF_XDP socket is
//!    received there instead of being answered with ICMP port-unreachable;
//! 3. open one AF_XDP socket per RX queue (each with its own UMEM; queue 0's also
//!    transmits), zero-copy where the driver supports it, else copy mode;
//! 4. attach the steering program (native, else generic) and tell it our address and
//!    the sockets.
//!
//! Transmit: each datagram becomes an Ethernet/IPv4/UDP frame we build in a UMEM
//! frame; the next hop's MAC comes from the kernel's route and neighbour tables
//! (cached, re-read every `neighbour_refresh`). A datagram whose next hop is not
//! resolved yet, or whose route leaves by another interface, goes through the kernel
//! socket instead (which also makes the kernel resolve it); a neighbour probe is sent
//! too. Receive: frames from every queue's RX ring, plus anything that reached the
//! kernel socket. IPv4 only.
//!
//! Everything is released on drop; the program is detached by the kernel when this
//! process's link descriptor closes, on any exit.

pub mod frame;
pub mod netlink;
pub mod program;
mod queue;
mod ring;
mod socket;
pub mod stats;
mod umem;

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    batch::{MAX_DATAGRAM, RxBatch, TxBatch},
    io::{IoCounters, PacketIo},
};
pub use netlink::{LinkInfo, Netlink};
pub use program::{AttachMode, AttachPolicy, COUNTER_LABELS, ProgramError, SteeringProgram};
use socket::{SocketOptions, XskSocket};
pub use stats::{XdpStats, XdpStatsSnapshot};

/// Configuration of the AF_XDP backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface to attach to (the one the route to the leaders leaves by).
    pub interface: String,
    /// Our IPv4 address on it; `None` takes the interface's first.
    pub address: Option<Ipv4Addr>,
    /// Our QUIC client port; 0 lets the kernel pick one.
    pub port: u16,
    /// Native or generic XDP.
    pub attach: AttachPolicy,
    /// Try zero-copy before copy mode.
    pub zero_copy: bool,
    /// UMEM frame size (2048 or 4096).
    pub frame_size: u32,
    /// Frames for transmitting (on queue 0's socket).
    pub tx_frames: u32,
    /// Frames for receiving, per RX queue.
    pub rx_frames_per_queue: u32,
    /// Most RX queues we open sockets on; an interface with more is refused at start.
    pub max_queues: u32,
    /// How long a resolved next hop is trusted before it is looked up again.
    pub neighbour_refresh: Duration,
    /// How often the kernel's socket statistics and the program's counters are read.
    pub stats_interval: Duration,
}

impl XdpConfig {
    /// Defaults for `interface`.
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            address: None,
            port: 0,
            attach: AttachPolicy::Auto,
            zero_copy: true,
            frame_size: 4096,
            tx_frames: 4096,
            rx_frames_per_queue: 1024,
            max_queues: 64,
            neighbour_refresh: Duration::from_secs(1),
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// Why the AF_XDP backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The interface is not there (or netlink failed).
    #[error("interface {interface:?}: {source}")]
    Interface {
        /// The configured interface.
        interface: String,
        /// What netlink said.
        source: io::Error,
    },
    /// The interface has no IPv4 address (AF_XDP here is IPv4 only).
    #[error("interface {0:?} has no IPv4 address; set xdp address or add one")]
    NoAddress(String),
    /// More RX queues than configured.
    #[error(
        "interface {interface:?} has {queues} RX queues, more than max_queues = {max}; raise it \
         or reduce the queues (ethtool -L)"
    )]
    TooManyQueues {
        /// The interface.
        interface: String,
        /// Its RX queues.
        queues: u32,
        /// The configured limit.
        max: u32,
    },
    /// Another XDP program is attached to the interface: a NIC takes one unless a
    /// dispatcher shares it, and replacing a validator's own program would break it.
    #[error(
        "interface {interface:?} already has an XDP program attached (id {id}, name {name:?}); \
         a NIC takes one XDP program unless a dispatcher (libxdp's xdp-dispatcher) shares the \
         hook, and agave 4.2+ validators attach their own for transmit. Not replacing it: \
         use the kernel UDP path (packet_path.xdp_fallback_to_udp = true, or kind = \"udp\"), \
         or see deploy/README.md, \"Sharing the NIC's XDP hook\""
    )]
    HookTaken {
        /// The interface.
        interface: String,
        /// The attached program's id.
        id: u32,
        /// Its name, when it can be read.
        name: String,
    },
    /// The configuration is unusable.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// Reserving the UDP port failed.
    #[error("reserving UDP port {addr}: {source}")]
    Reserve {
        /// The address.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// An AF_XDP socket could not be set up.
    #[error("AF_XDP socket for queue {queue}: {step}: {source}{}", hint(source))]
    Socket {
        /// RX queue.
        queue: u32,
        /// The step that failed.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The steering program could not be set up.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// Creating the epoll set failed.
    #[error("epoll: {0}")]
    Epoll(io::Error),
}

/// A short hint for the common causes of AF_XDP setup failures.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_RAW and CAP_NET_ADMIN, or root)",
        Some(libc::EAFNOSUPPORT) => " (kernel without AF_XDP: CONFIG_XDP_SOCKETS, Linux 4.18+)",
        Some(libc::ENOMEM | libc::ENOBUFS) => {
            " (UMEM too large for RLIMIT_MEMLOCK? raise LimitMEMLOCK)"
        }
        Some(libc::EBUSY) => " (another AF_XDP socket is bound to this queue)",
        _ => "",
    }
}

/// How a destination is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Frames we build, to this MAC.
    Xdp([u8; 6]),
    /// The kernel socket (unresolved neighbour, another interface, or too large).
    Kernel,
}

#[derive(Clone, Copy, Debug)]
struct NextHop {
    via: Via,
    expires: Instant,
}

/// While a neighbour is unresolved, how soon to look again.
const UNRESOLVED_RETRY: Duration = Duration::from_millis(5);
/// Bound on cached next hops (TPU destinations are few; this only caps growth).
const MAX_NEXT_HOPS: usize = 4096;
/// Frames per TX kick batch we aim for.
const TX_BATCH: u32 = 64;
/// How often the kernel UDP socket is read. Only what the program does not steer
/// arrives there (fragments, IP options, a queue without a socket), so it is read
/// on a timer rather than with a system call on every pass of the packet loop.
const KERNEL_RX_INTERVAL: Duration = Duration::from_millis(1);

/// The AF_XDP packet path.
pub struct XdpIo {
    // Declared first, dropped first: detach the program before closing the sockets.
    program: SteeringProgram,
    sockets: Vec<XskSocket>,
    kernel: UdpSocket,
    local: SocketAddrV4,
    link: LinkInfo,
    netlink: Netlink,
    next_hops: HashMap<Ipv4Addr, NextHop>,
    epoll: OwnedFd,
    want_write: bool,
    ip_id: u16,
    stats: Arc<XdpStats>,
    next_stats: Instant,
    /// When the kernel socket is read next (see [`KERNEL_RX_INTERVAL`]).
    next_kernel_rx: Instant,
    config: XdpConfig,
    copy_mode: bool,
}

impl std::fmt::Debug for XdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpIo")
            .field("interface", &self.config.interface)
            .field("local", &self.local)
            .field("queues", &self.sockets.len())
            .field("mode", &self.program.mode())
            .field("copy_mode", &self.copy_mode)
            .finish()
    }
}

impl XdpIo {
    /// Sets up the AF_XDP path on `config.interface` (in the calling thread's network
    /// namespace).
    ///
    /// # Errors
    /// An [`XdpError`] naming the cause; the caller may fall back to [`crate::udp::UdpIo`].
    pub fn open(config: XdpConfig) -> Result<Self, XdpError> {
        if !config.frame_size.is_power_of_two()
            || !(2048..=4096).contains(&config.frame_size)
            || config.tx_frames == 0
            || config.rx_frames_per_queue == 0
        {
            return Err(XdpError::Config(format!(
                "frame_size must be 2048 or 4096 and frame counts non-zero (got frame_size {}, \
                 tx_frames {}, rx_frames_per_queue {})",
                config.frame_size, config.tx_frames, config.rx_frames_per_queue
            )));
        }
        let iface_err = |source| XdpError::Interface {
            interface: config.interface.clone(),
            source,
        };
        let mut netlink = Netlink::open().map_err(iface_err)?;
        let link = netlink.link(&config.interface).map_err(iface_err)?;
        if let Some(id) = link.xdp_program {
            return Err(XdpError::HookTaken {
                interface: config.interface.clone(),
                id,
                name: program::program_name(id).unwrap_or_else(|| "unknown".into()),
            });
        }
        if link.rx_queues > config.max_queues {
            return Err(XdpError::TooManyQueues {
                interface: config.interface.clone(),
                queues: link.rx_queues,
                max: config.max_queues,
            });
        }
        let ip = match config.address {
            Some(ip) => ip,
            None => *netlink
                .ipv4_addrs(link.index)
                .map_err(iface_err)?
                .first()
                .ok_or_else(|| XdpError::NoAddress(config.interface.clone()))?,
        };
        let want = SocketAddrV4::new(ip, config.port);
        let kernel =
            UdpSocket::bind(want).map_err(|source| XdpError::Reserve { addr: want, source })?;
        kernel
            .set_nonblocking(true)
            .map_err(|source| XdpError::Reserve { addr: want, source })?;
        let local = match kernel.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            Ok(SocketAddr::V6(_)) => unreachable!("bound to an IPv4 address"),
            Err(source) => return Err(XdpError::Reserve { addr: want, source }),
        };

        let mut sockets = Vec::with_capacity(link.rx_queues as usize);
        for queue in 0..link.rx_queues {
            let opts = SocketOptions {
                frame_size: config.frame_size,
                rx_frames: config.rx_frames_per_queue,
                tx_frames: if queue == 0 { config.tx_frames } else { 0 },
                try_zero_copy: config.zero_copy,
            };
            let s = XskSocket::open(link.index, queue, opts).map_err(|e| XdpError::Socket {
                queue,
                step: e.step,
                source: e.source,
            })?;
            sockets.push(s);
        }
        let huge = sockets.iter().all(|s| s.queue.umem().huge_pages());
        if !huge {
            tracing::info!("no huge pages reserved; UMEM on normal pages");
        }
        let copy_mode = sockets.iter().any(|s| !s.zero_copy);
        if let Some(reason) = sockets.iter().find_map(|s| s.zero_copy_refusal.as_ref()) {
            tracing::info!(
                interface = %config.interface,
                %reason,
                "AF_XDP zero-copy unavailable on this driver; using copy mode"
            );
        }

        let mut program = SteeringProgram::attach(link.index, config.attach)?;
        for s in &sockets {
            program.set_queue_socket(s.queue_id, s.as_raw_fd())?;
        }
        program.add_socket_addr(local)?;

        // SAFETY: plain epoll_create1.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(XdpError::Epoll(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        for fd in sockets
            .iter()
            .map(|s| s.as_raw_fd())
            .chain([kernel.as_raw_fd()])
        {
            epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32)
                .map_err(XdpError::Epoll)?;
        }

        let stats = Arc::new(XdpStats::default());
        XdpStats::set(&stats.queues, sockets.len() as u64);
        XdpStats::set(&stats.zero_copy, u64::from(!copy_mode));
        XdpStats::set(
            &stats.driver_mode,
            u64::from(program.mode() == AttachMode::Driver),
        );
        XdpStats::set(&stats.huge_pages, u64::from(huge));
        tracing::info!(
            interface = %config.interface,
            %local,
            queues = sockets.len(),
            mode = ?program.mode(),
            zero_copy = !copy_mode,
            huge_pages = huge,
            "AF_XDP packet path up"
        );
        Ok(Self {
            program,
            sockets,
            kernel,
            local,
            link,
            netlink,
            next_hops: HashMap::new(),
            epoll,
            want_write: false,
            ip_id: 0,
            stats,
            next_stats: Instant::now(),
            next_kernel_rx: Instant::now(),
            config,
            copy_mode,
        })
    }

    /// The backend's counters (shared; updated by whoever drives it).
    pub fn stats(&self) -> Arc<XdpStats> {
        Arc::clone(&self.stats)
    }

    /// How the program is attached.
    pub fn attach_mode(&self) -> AttachMode {
        self.program.mode()
    }

    /// Whether every socket is zero-copy.
    pub fn zero_copy(&self) -> bool {
        !self.copy_mode
    }

    /// The interface as found at setup.
    pub fn link(&self) -> &LinkInfo {
        &self.link
    }

    /// Reads the kernel's socket statistics and the program's counters now.
    pub fn refresh_stats(&mut self) {
        let mut sum = [0u64; 6];
        for s in &self.sockets {
            match s.statistics() {
                Ok(st) => {
                    for (acc, v) in sum.iter_mut().zip([
                        st.rx_dropped,
                        st.rx_invalid_descs,
                        st.tx_invalid_descs,
                        st.rx_ring_full,
                        st.rx_fill_ring_empty_descs,
                        st.tx_ring_empty_descs,
                    ]) {
                        *acc += v;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "XDP_STATISTICS failed"),
            }
        }
        let st = &self.stats;
        for (counter, v) in [
            &st.rx_dropped,
            &st.invalid_descs[0],
            &st.invalid_descs[1],
            &st.rx_ring_full,
            &st.fill_ring_empty,
            &st.tx_ring_empty,
        ]
        .into_iter()
        .zip(sum)
        {
            XdpStats::set(counter, v);
        }
        if let Ok(c) = self.program.counters() {
            for (slot, v) in st.program.iter().zip(c) {
                XdpStats::set(slot, v);
            }
        }
        self.next_stats = Instant::now() + self.config.stats_interval;
    }

    /// How to reach `ip`, from the cache or the kernel's tables.
    fn via(&mut self, ip: Ipv4Addr, now: Instant) -> Via {
        if let Some(h) = self.next_hops.get(&ip)
            && now < h.expires
        {
            return h.via;
        }
        let (via, ttl) = self.resolve(ip);
        if self.next_hops.len() >= MAX_NEXT_HOPS {
            self.next_hops.clear();
        }
        self.next_hops.insert(
            ip,
            NextHop {
                via,
                expires: now + ttl,
            },
        );
        via
    }

    fn resolve(&mut self, ip: Ipv4Addr) -> (Via, Duration) {
        XdpStats::add(&self.stats.next_hop_lookups, 1);
        let refresh = self.config.neighbour_refresh;
        let route = match self.netlink.route(ip) {
            Ok(r) => r,
            Err(e) => {
                XdpStats::add(&self.stats.netlink_errors, 1);
                tracing::debug!(%ip, error = %e, "route lookup failed; using the kernel socket");
                return (Via::Kernel, refresh);
            }
        };
        if route.oif != self.link.index {
            return (Via::Kernel, refresh);
        }
        match self.netlink.neighbour(self.link.index, route.next_hop) {
            Ok(netlink::Neighbour::Known(mac)) => (Via::Xdp(mac), refresh),
            Ok(netlink::Neighbour::Unknown) => {
                XdpStats::add(&self.stats.neighbour_misses, 1);
                if let Err(e) = self.netlink.probe(self.link.index, route.next_hop) {
                    tracing::debug!(next_hop = %route.next_hop, error = %e, "neighbour probe failed");
                }
                (Via::Kernel, UNRESOLVED_RETRY)
            }
            Err(e) => {
                XdpStats::add(&self.stats.netlink_errors, 1);
                tracing::debug!(%ip, error = %e, "neighbour lookup failed; using the kernel socket");
                (Via::Kernel, UNRESOLVED_RETRY)
            }
        }
    }

    /// Kicks the TX ring until the kernel took everything (copy mode handles a bounded
    /// number of frames per kick) or refuses for now.
    fn kick(&mut self, counters: &mut IoCounters) -> io::Result<()> {
        let tx = &mut self.sockets[0];
        if !(self.copy_mode || tx.queue.tx_needs_wakeup()) {
            return Ok(());
        }
        for _ in 0..64 {
            counters.send_calls += 1;
            XdpStats::add(&self.stats.tx_kicks, 1);
            if !tx.kick_tx()? {
                XdpStats::add(&self.stats.tx_kicks_transient, 1);
                break;
            }
            if !self.copy_mode || tx.queue.tx_pending() == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Registers or clears interest in the TX socket becoming writable.
    fn set_want_write(&mut self, want: bool) -> io::Result<()> {
        if want == self.want_write {
            return Ok(());
        }
        let events = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
        epoll_ctl(
            &self.epoll,
            libc::EPOLL_CTL_MOD,
            self.sockets[0].as_raw_fd(),
            events,
        )?;
        self.want_write = want;
        Ok(())
    }

    fn send_kernel(
        &self,
        payload: &[u8],
        dst: SocketAddrV4,
        counters: &mut IoCounters,
    ) -> Result<(), ()> {
        counters.send_calls += 1;
        match self.kernel.send_to(payload, dst) {
            Ok(_) => {
                XdpStats::add(&self.stats.kernel_tx, 1);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(()),
            Err(e) => {
                tracing::debug!(%dst, error = %e, "kernel fallback send failed");
                counters.send_errors += 1;
                Ok(())
            }
        }
    }
}

impl PacketIo for XdpIo {
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.local)
    }

    fn send(&mut self, batch: &mut TxBatch, counters: &mut IoCounters) -> io::Result<()> {
        let now = Instant::now();
        let max_frame = self.link.mtu as usize + frame::ETH_HDR;
        let mut room = 0u32;
        let mut consumed = 0;
        let mut queued = 0u64;
        let mut blocked = false;
        let pending = batch.pending().len();
        while consumed < pending {
            let meta = batch.pending()[consumed];
            let SocketAddr::V4(dst) = meta.dst else {
                // The engine's local address is IPv4; an IPv6 peer cannot occur.
                counters.send_errors += 1;
                consumed += 1;
                continue;
            };
            let via = if frame::HEADERS + meta.len > max_frame {
                Via::Kernel
            } else {
                self.via(*dst.ip(), now)
            };
            let payload = batch.payload(&meta);
            match via {
                Via::Kernel => {
                    if self.send_kernel(payload, dst, counters).is_err() {
                        blocked = true;
                        break;
                    }
                }
                Via::Xdp(dst_mac) => {
                    if room == 0 {
                        room = self.sockets[0].queue.tx_room(TX_BATCH);
                        if room == 0 {
                            // Give the kernel what is queued, then look again once.
                            self.sockets[0].queue.publish_tx();
                            self.kick(counters)?;
                            room = self.sockets[0].queue.tx_room(TX_BATCH);
                            if room == 0 {
                                blocked = true;
                                break;
                            }
                        }
                    }
                    let addrs = frame::FrameAddrs {
                        src_mac: self.link.mac,
                        dst_mac,
                        src: self.local,
                        dst,
                    };
                    self.ip_id = self.ip_id.wrapping_add(1);
                    let id = self.ip_id;
                    if self.sockets[0]
                        .queue
                        .push_tx(|f| frame::build(f, &addrs, id, payload))
                    {
                        queued += 1;
                        room -= 1;
                    } else {
                        counters.send_errors += 1;
                    }
                }
            }
            consumed += 1;
        }
        batch.consume(consumed);
        if queued > 0 {
            XdpStats::add(&self.stats.tx_frames, queued);
        }
        if queued > 0 {
            self.sockets[0].queue.publish_tx();
            self.kick(counters)?;
        }
        if blocked {
            counters.would_block += 1;
        }
        self.set_want_write(blocked)
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        batch.clear();
        let now = Instant::now();
        if now >= self.next_stats {
            self.refresh_stats();
        }
        let local = self.local;
        let mut malformed = 0u64;
        let mut frames = 0u64;
        for s in &mut self.sockets {
            let room = (batch.capacity() - batch.len()) as u32;
            if room == 0 {
                break;
            }
            frames += u64::from(s.queue.recv(room, |f| match frame::parse(f) {
                Ok(p) if p.dst == local && p.payload.1 - p.payload.0 <= MAX_DATAGRAM => {
                    batch.push(SocketAddr::V4(p.src), &f[p.payload.0..p.payload.1]);
                }
                _ => malformed += 1,
            }));
            if s.queue.fill_needs_wakeup() {
                s.wake_rx();
            }
        }
        XdpStats::add(&self.stats.rx_frames, frames);
        XdpStats::add(&self.stats.rx_malformed, malformed);
        if now < self.next_kernel_rx {
            return Ok(batch.len());
        }
        self.next_kernel_rx = now + KERNEL_RX_INTERVAL;
        let mut buf = [0u8; MAX_DATAGRAM];
        while batch.len() < batch.capacity() {
            match self.kernel.recv_from(&mut buf) {
                Ok((n, from)) => {
                    XdpStats::add(&self.stats.kernel_rx, 1);
                    batch.push(from, &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors reported on the socket (a peer's port closed, unreachable):
                // they concern one earlier datagram; keep reading.
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || matches!(
                            e.raw_os_error(),
                            Some(
                                libc::ECONNREFUSED
                                    | libc::EHOSTUNREACH
                                    | libc::ENETUNREACH
                                    | libc::EHOSTDOWN
                            )
                        ) =>
                {
                    tracing::trace!(error = %e, "kernel socket error");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(batch.len())
    }

    fn pollable(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: libc::c_int, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: a live epoll descriptor and event struct.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
