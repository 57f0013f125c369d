//! [`XskSocket`]: an AF_XDP socket bound to one queue of an interface, with its own
//! UMEM and mmap'd rings (the system-call half of [`XskQueue`]).

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::AtomicU32,
};

use super::{
    queue::{Desc, XskQueue},
    ring::{Consumer, Producer, RingMem},
    umem::Umem,
};

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17+): descriptors the copy-mode TX path handles
/// per kick (32 before). Not in `libc` yet.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// What we ask for; older kernels refuse the option and keep 32.
const TX_BUDGET: libc::c_int = 256;
/// How long a busy queue is retried at bind.
const BIND_BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What to ask of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SocketOptions {
    pub frame_size: u32,
    pub rx_frames: u32,
    pub tx_frames: u32,
    /// Try zero-copy first.
    pub try_zero_copy: bool,
}

/// A bound AF_XDP socket.
#[derive(Debug)]
pub(crate) struct XskSocket {
    // Field order is drop order: the socket closes first, then the rings are
    // unmapped, then the UMEM (inside `queue`).
    fd: OwnedFd,
    _maps: Vec<Mapping>,
    pub queue: XskQueue,
    pub queue_id: u32,
    pub zero_copy: bool,
    /// Why zero-copy was refused, when it was tried and refused.
    pub zero_copy_refusal: Option<io::Error>,
}

/// One mmap'd ring.
#[derive(Debug)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is owned and only unmapped on drop.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping a mapping we made.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Where setup failed, with the OS error.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub step: &'static str,
    pub source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> SetupError {
    move |source| SetupError { step, source }
}

impl XskSocket {
    /// Creates the socket and UMEM, maps the rings and binds to `ifindex`/`queue_id`.
    /// A socket with `tx_frames == 0` has no TX ring.
    ///
    /// # Errors
    /// The step that failed and its OS error.
    pub(crate) fn open(
        ifindex: u32,
        queue_id: u32,
        opts: SocketOptions,
    ) -> Result<Self, SetupError> {
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(step("socket(AF_XDP)")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let frames = opts.rx_frames + opts.tx_frames;
        let umem = Umem::map(frames, opts.frame_size).map_err(step("mmap UMEM"))?;
        let (addr, len) = umem.region();
        let reg = libc::xdp_umem_reg {
            addr,
            len,
            chunk_size: opts.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd.as_raw_fd(), libc::XDP_UMEM_REG, &reg).map_err(step("XDP_UMEM_REG"))?;
        let fill_size = opts.rx_frames.max(1).next_power_of_two();
        let tx_size = opts.tx_frames.max(1).next_power_of_two();
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_UMEM_FILL_RING,
            &(fill_size as libc::c_int),
        )
        .map_err(step("XDP_UMEM_FILL_RING"))?;
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &(tx_size as libc::c_int),
        )
        .map_err(step("XDP_UMEM_COMPLETION_RING"))?;
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_RX_RING,
            &(fill_size as libc::c_int),
        )
        .map_err(step("XDP_RX_RING"))?;
        if opts.tx_frames > 0 {
            setsockopt(fd.as_raw_fd(), libc::XDP_TX_RING, &(tx_size as libc::c_int))
                .map_err(step("XDP_TX_RING"))?;
            // Fewer kicks per burst in copy mode; harmless to fail on older kernels.
            let _ = setsockopt(fd.as_raw_fd(), XDP_MAX_TX_SKB_BUDGET, &TX_BUDGET);
        }
        let offsets: libc::xdp_mmap_offsets =
            getsockopt(fd.as_raw_fd(), libc::XDP_MMAP_OFFSETS).map_err(step("XDP_MMAP_OFFSETS"))?;

        let mut maps = Vec::with_capacity(4);
        let fill = map_ring::<u64>(
            &fd,
            &offsets.fr,
            fill_size,
            libc::XDP_UMEM_PGOFF_FILL_RING as i64,
            &mut maps,
        )
        .map_err(step("mmap fill ring"))?;
        let comp = map_ring::<u64>(
            &fd,
            &offsets.cr,
            tx_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64,
            &mut maps,
        )
        .map_err(step("mmap completion ring"))?;
        let rx = map_ring::<Desc>(
            &fd,
            &offsets.rx,
            fill_size,
            libc::XDP_PGOFF_RX_RING,
            &mut maps,
        )
        .map_err(step("mmap RX ring"))?;
        let tx = if opts.tx_frames > 0 {
            Some(
                map_ring::<Desc>(
                    &fd,
                    &offsets.tx,
                    tx_size,
                    libc::XDP_PGOFF_TX_RING,
                    &mut maps,
                )
                .map_err(step("mmap TX ring"))?,
            )
        } else {
            None
        };

        let mut zero_copy = false;
        let mut zero_copy_refusal = None;
        let mut bound = Err(io::Error::from_raw_os_error(libc::EINVAL));
        let modes: &[(u16, bool)] = if opts.try_zero_copy {
            &[(libc::XDP_ZEROCOPY, true), (libc::XDP_COPY, false)]
        } else {
            &[(libc::XDP_COPY, false)]
        };
        // A queue released by a socket that just closed is freed by a kernel work
        // item, a moment later: EBUSY then is retried briefly (a restart), after which
        // it means another process holds the queue.
        let busy_deadline = std::time::Instant::now() + BIND_BUSY_RETRY;
        'modes: for &(mode, zc) in modes {
            loop {
                let sa = libc::sockaddr_xdp {
                    sxdp_family: libc::AF_XDP as u16,
                    sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
                    sxdp_ifindex: ifindex,
                    sxdp_queue_id: queue_id,
                    sxdp_shared_umem_fd: 0,
                };
                // SAFETY: binding with a correctly sized sockaddr_xdp.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sa as *const libc::sockaddr_xdp).cast(),
                        size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                    )
                };
                if rc == 0 {
                    zero_copy = zc;
                    bound = Ok(());
                    break 'modes;
                }
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < busy_deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                if zc {
                    zero_copy_refusal = Some(err);
                    break;
                }
                bound = Err(err);
                break;
            }
        }
        bound.map_err(step("bind AF_XDP socket"))?;

        // SAFETY: the rings live in `maps`, owned by the socket alongside the queue.
        let queue = unsafe {
            XskQueue::new(
                umem,
                Producer::new(fill),
                Consumer::new(comp),
                Consumer::new(rx),
                tx.map(|t| Producer::new(t)),
                opts.rx_frames,
            )
        };
        Ok(Self {
            fd,
            _maps: maps,
            queue,
            queue_id,
            zero_copy,
            zero_copy_refusal,
        })
    }

    /// Asks the kernel to process the TX ring (copy mode, or a driver that asked for
    /// a wake-up). Returns whether the kick was accepted; transient refusals
    /// (EAGAIN, EBUSY, ENOBUFS, ENETDOWN) return `Ok(false)`.
    ///
    /// # Errors
    /// Fatal errors (the socket or device is unusable).
    pub(crate) fn kick_tx(&self) -> io::Result<bool> {
        // SAFETY: a zero-length sendto on our socket is the documented TX kick.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => Ok(false),
            _ => Err(err),
        }
    }

    /// Wakes the driver to look at the fill ring (only when it asked).
    pub(crate) fn wake_rx(&self) {
        // SAFETY: a zero-length non-blocking recvfrom is the documented RX wake-up.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's counters for this socket.
    ///
    /// # Errors
    /// When the kernel refuses `XDP_STATISTICS`.
    pub(crate) fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        getsockopt(self.fd.as_raw_fd(), libc::XDP_STATISTICS)
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Maps one ring and returns where its parts are.
fn map_ring<T>(
    fd: &OwnedFd,
    off: &libc::xdp_ring_offset,
    entries: u32,
    pgoff: i64,
    maps: &mut Vec<Mapping>,
) -> io::Result<RingMem<T>> {
    let len = off.desc as usize + entries as usize * size_of::<T>();
    // SAFETY: mapping the kernel's ring for our socket at its documented offset.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    maps.push(Mapping { ptr, len });
    let base = ptr.cast::<u8>();
    // SAFETY: the offsets come from the kernel and lie inside the mapping.
    unsafe {
        Ok(RingMem {
            producer: base.add(off.producer as usize).cast::<AtomicU32>(),
            consumer: base.add(off.consumer as usize).cast::<AtomicU32>(),
            flags: base.add(off.flags as usize).cast::<AtomicU32>(),
            descs: base.add(off.desc as usize).cast::<T>(),
            size: entries,
        })
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt<T>(fd: RawFd, name: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_XDP, name, value.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other(format!(
            "kernel returned {len} bytes for SOL_XDP option {name}, expected {} (kernel too old?)",
            size_of::<T>()
        )));
    }
    // SAFETY: fully written by the kernel (length checked).
    Ok(unsafe { value.assume_init() })
}
