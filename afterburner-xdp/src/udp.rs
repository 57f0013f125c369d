//! [`UdpIo`]: the kernel UDP backend of [`PacketIo`], the fallback wherever AF_XDP
//! is not possible.
//!
//! One non-blocking socket. Sending uses `sendmmsg`, and runs of equal-size datagrams
//! to one destination go out as one UDP GSO message (`UDP_SEGMENT`), so a burst of
//! transactions costs a few system calls instead of one per datagram. Receiving uses
//! `recvmmsg`.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use crate::{
    batch::{MAX_DATAGRAM, RxBatch, RxMeta, TxBatch},
    io::{IoCounters, PacketIo},
};

/// Most messages per `sendmmsg`/`recvmmsg` call.
const MAX_MSGS: usize = 64;
/// Linux caps a GSO message at 64 segments (`UDP_MAX_SEGMENTS` before 6.x).
const MAX_GSO_SEGMENTS: usize = 64;
/// A GSO message must fit one IP datagram.
const MAX_GSO_BYTES: usize = 65_000;
/// Socket buffer we ask for: bursts of thousands of transactions must not overflow it.
const SOCKET_BUFFER: usize = 8 << 20;

/// Space for one `UDP_SEGMENT` control message (u16 payload), 8-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Scratch arrays for `sendmmsg`/`recvmmsg`; the raw pointers in them are only
/// valid during one call.
struct Scratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    /// Datagrams carried by each message of the last send.
    runs: Vec<usize>,
}

// SAFETY: the pointers inside are rebuilt before every system call and never
// dereferenced outside it; the arrays themselves are plain data.
unsafe impl Send for Scratch {}

impl Scratch {
    fn new() -> Self {
        // SAFETY: all-zero is a valid value for these C structs.
        let (hdr, iov, addr) = unsafe {
            (
                zeroed::<libc::mmsghdr>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::sockaddr_storage>(),
            )
        };
        Self {
            hdrs: vec![hdr; MAX_MSGS],
            iovs: vec![iov; MAX_MSGS],
            addrs: vec![addr; MAX_MSGS],
            cmsgs: vec![CmsgBuf([0; 32]); MAX_MSGS],
            runs: Vec::with_capacity(MAX_MSGS),
        }
    }
}

/// Kernel UDP packet I/O.
pub struct UdpIo {
    socket: UdpSocket,
    local: SocketAddr,
    gso: bool,
    scratch: Scratch,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("local", &self.local)
            .field("gso", &self.gso)
            .finish()
    }
}

impl UdpIo {
    /// Binds a non-blocking UDP socket to `addr` (port 0 picks one).
    ///
    /// # Errors
    /// When binding or configuring the socket fails.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::from_socket(UdpSocket::bind(addr)?)
    }

    /// Wraps an already bound socket (made non-blocking here).
    ///
    /// # Errors
    /// When the socket cannot be configured.
    pub fn from_socket(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        // Larger buffers absorb bursts; the FORCE variants exceed rmem_max when we have
        // CAP_NET_ADMIN, otherwise the plain request (capped by the kernel) stands.
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER as i32).is_err() {
                let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER as i32);
            }
        }
        let gso = gso_supported(fd);
        if !gso {
            tracing::info!("UDP GSO unavailable on this kernel; sending one datagram per message");
        }
        let local = socket.local_addr()?;
        Ok(Self {
            socket,
            local,
            gso,
            scratch: Scratch::new(),
        })
    }

    /// Whether UDP GSO is in use.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Fills the scratch arrays with messages for the pending datagrams; returns the
    /// message count. Each message is a run of equal-size datagrams to one
    /// destination (the last may be shorter), or a single datagram without GSO.
    fn build_messages(&mut self, batch: &TxBatch) -> usize {
        let pending = batch.pending();
        let s = &mut self.scratch;
        s.runs.clear();
        let mut i = 0;
        while i < pending.len() && s.runs.len() < MAX_MSGS {
            let first = pending[i];
            let mut end = i + 1;
            if self.gso {
                let mut bytes = first.len;
                while end < pending.len()
                    && end - i < MAX_GSO_SEGMENTS
                    && pending[end].dst == first.dst
                    && pending[end].len <= first.len
                    && bytes + pending[end].len <= MAX_GSO_BYTES
                {
                    bytes += pending[end].len;
                    end += 1;
                    // A shorter datagram can only end a run.
                    if pending[end - 1].len < first.len {
                        break;
                    }
                }
            }
            let m = s.runs.len();
            let span = batch.span(i, end);
            s.iovs[m] = libc::iovec {
                iov_base: span.as_ptr() as *mut libc::c_void,
                iov_len: span.len(),
            };
            let addr_len = write_sockaddr(first.dst, &mut s.addrs[m]);
            let hdr = &mut s.hdrs[m].msg_hdr;
            hdr.msg_name = (&mut s.addrs[m] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = addr_len;
            hdr.msg_iov = &mut s.iovs[m];
            hdr.msg_iovlen = 1;
            hdr.msg_flags = 0;
            if end - i > 1 {
                hdr.msg_control = s.cmsgs[m].0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: msg_control points at a zeroed, aligned buffer of 32 bytes,
                // larger than CMSG_SPACE(2); CMSG_FIRSTHDR/CMSG_DATA stay inside it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<u16>(),
                        first.len as u16,
                    );
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            s.runs.push(end - i);
            i = end;
        }
        s.runs.len()
    }
}

impl PacketIo for UdpIo {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send(&mut self, batch: &mut TxBatch, counters: &mut IoCounters) -> io::Result<()> {
        while !batch.is_empty() {
            let msgs = self.build_messages(batch);
            counters.send_calls += 1;
            // SAFETY: hdrs[..msgs] point into `batch` and the scratch arrays, all alive
            // and unaliased for the duration of the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    self.scratch.hdrs.as_mut_ptr(),
                    msgs as u32,
                    0,
                )
            };
            if rc >= 0 {
                let datagrams: usize = self.scratch.runs[..rc as usize].iter().sum();
                batch.consume(datagrams);
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {
                    counters.would_block += 1;
                    return Ok(());
                }
                Some(libc::EINTR) => continue,
                // The device cannot segment (no checksum offload): stop using GSO.
                Some(libc::EIO) if self.gso && self.scratch.runs[0] > 1 => {
                    tracing::warn!(
                        "UDP GSO send failed with EIO; falling back to one datagram per message"
                    );
                    self.gso = false;
                }
                _ => {
                    // The first message cannot be sent (unreachable, too big, …): drop
                    // it and carry on with the rest; QUIC recovers or times out.
                    let lost = self.scratch.runs[0];
                    counters.send_errors += lost as u64;
                    tracing::debug!(error = %err, dst = %batch.pending()[0].dst, "send failed");
                    batch.consume(lost);
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let n = batch.capacity().min(MAX_MSGS);
        let s = &mut self.scratch;
        let slots = batch.slots_mut();
        for i in 0..n {
            s.iovs[i] = libc::iovec {
                iov_base: slots[i * MAX_DATAGRAM..].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            let hdr = &mut s.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut s.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            hdr.msg_iov = &mut s.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        let rc = loop {
            // SAFETY: every header points at a distinct MAX_DATAGRAM slot of `batch`
            // and a distinct sockaddr_storage; both outlive the call.
            let rc = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    s.hdrs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => break 0,
                Some(libc::EINTR) => continue,
                // ICMP errors surface here on some kernels; they say nothing about other peers.
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => break 0,
                _ => return Err(err),
            }
        };
        let meta = (0..rc).filter_map(|i| {
            let from = read_sockaddr(&s.addrs[i])?;
            Some(RxMeta {
                len: (s.hdrs[i].msg_len as usize).min(MAX_DATAGRAM),
                from,
            })
        });
        batch.set_received(meta);
        Ok(batch.len())
    }

    fn pollable(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn gso_supported(fd: i32) -> bool {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as u32;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    rc == 0
}

fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> u32 {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

fn read_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                a.sin_addr.s_addr.to_ne_bytes().into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real loopback sockets: a GSO burst arrives as individual datagrams, in order.
    #[test]
    fn burst_of_equal_datagrams_arrives_intact() {
        let mut tx = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut rx = UdpIo::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dst = rx.local_addr();
        let mut batch = TxBatch::new(100);
        for i in 0..100u8 {
            let len = if i == 99 { 50 } else { 200 };
            let slot = batch.spare(1472).unwrap();
            slot[..len].fill(i);
            batch.commit(len, dst);
        }
        let mut counters = IoCounters::default();
        tx.send(&mut batch, &mut counters).unwrap();
        assert!(batch.is_empty());
        if tx.gso() {
            assert!(counters.send_calls <= 2, "{counters:?}");
        }
        let mut got = Vec::new();
        let mut rxb = RxBatch::new(64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 100 && std::time::Instant::now() < deadline {
            rx.recv(&mut rxb).unwrap();
            rxb.for_each(|from, d| {
                assert_eq!(from, tx.local_addr());
                got.push(d.to_vec());
            });
        }
        assert_eq!(got.len(), 100);
        for (i, d) in got.iter().enumerate() {
            let len = if i == 99 { 50 } else { 200 };
            assert_eq!(d, &vec![i as u8; len]);
        }
    }

    #[test]
    fn sockaddr_round_trip() {
        for a in ["10.1.2.3:8009", "[2001:db8::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            // SAFETY: zeroed sockaddr_storage is valid.
            let mut s = unsafe { zeroed() };
            write_sockaddr(addr, &mut s);
            assert_eq!(read_sockaddr(&s), Some(addr));
        }
    }
}
