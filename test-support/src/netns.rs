//! Test topology: two network namespaces joined by a veth pair, with addresses that
//! exist only inside them. Created by the test, torn down on drop (so also when the
//! test fails and unwinds). Also behind `./x netns`.
//!
//! ```text
//!   ns <name>-srv                     ns <name>-cli
//!   abs0 10.77.0.1/24  <-- veth -->   abc0 10.77.0.2/24
//! ```

use std::{
    io,
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Namespaces we create start with this; `sweep` removes those of dead processes.
pub const PREFIX: &str = "abt";
pub const SERVER_IF: &str = "abs0";
pub const CLIENT_IF: &str = "abc0";
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces and the veth pair between them.
#[derive(Debug)]
pub struct Topology {
    pub server_ns: String,
    pub client_ns: String,
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Creates the topology; `queues` RX/TX queues on each veth end.
    pub fn create(queues: u32) -> io::Result<Self> {
        sweep();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}x{n}", std::process::id());
        let topo = Self {
            server_ns: format!("{base}-srv"),
            client_ns: format!("{base}-cli"),
        };
        // From here on, drop tears down whatever was made.
        ip(&["netns", "add", &topo.server_ns])?;
        ip(&["netns", "add", &topo.client_ns])?;
        let q = queues.max(1).to_string();
        ip(&[
            "link",
            "add",
            CLIENT_IF,
            "netns",
            &topo.client_ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_IF,
            "netns",
            &topo.server_ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        for (ns, dev, addr) in [
            (&topo.server_ns, SERVER_IF, SERVER_IP),
            (&topo.client_ns, CLIENT_IF, CLIENT_IP),
        ] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(topo)
    }

    /// `ip -d link show <dev>` inside `ns`.
    pub fn link_details(ns: &str, dev: &str) -> io::Result<String> {
        ip(&["-n", ns, "-d", "link", "show", "dev", dev])
    }

    /// Whether `dev` in `ns` has an XDP program attached (any mode).
    pub fn has_xdp(ns: &str, dev: &str) -> io::Result<bool> {
        let details = Self::link_details(ns, dev)?;
        Ok(
            details.contains("prog/xdp")
                || details.split_whitespace().any(|w| w.starts_with("xdp")),
        )
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        for ns in [&self.server_ns, &self.client_ns] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns teardown: {e}");
            }
        }
    }
}

/// Deletes namespaces left behind by test processes that no longer run (killed
/// before their drops ran).
pub fn sweep() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Whether this process may create namespaces and attach XDP. Under `CI=true` it
/// must: the test fails rather than skip. Elsewhere a test skips with the reason.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (network namespaces, XDP) and CI=true: refusing to skip");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces, XDP)");
    false
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `f` on a new thread that has entered network namespace `ns` (the namespace
/// is per thread, so the caller's is untouched). Sockets made there stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Moves the calling thread into the namespace at `path` (`/run/netns/<name>`).
pub fn enter_netns(path: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on an open namespace descriptor, affecting only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Another XDP program on an interface, as a validator's own would be: a minimal
/// `XDP_PASS` program named `name`, loaded with the `bpf` system call and attached
/// through a BPF link in generic mode. Detached when dropped (the link's descriptor
/// closes), so also when the test fails.
#[derive(Debug)]
pub struct ForeignXdp {
    _link: std::os::fd::OwnedFd,
    _prog: std::os::fd::OwnedFd,
}

impl ForeignXdp {
    /// Attaches to `dev` in namespace `ns`.
    pub fn attach(ns: &str, dev: &str, name: &str) -> io::Result<Self> {
        let (dev, name) = (dev.to_string(), name.to_string());
        in_netns(ns, move || attach_pass_program(&dev, &name))
    }
}

fn attach_pass_program(dev: &str, name: &str) -> io::Result<ForeignXdp> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
    // r0 = 2 (XDP_PASS); exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        _rest: [u64; 12],
    }
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..ProgLoad::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    // SAFETY: BPF_PROG_LOAD with a zero-padded attribute that outlives the call and
    // points at instructions and a license that do too.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if prog < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let ifname = std::ffi::CString::new(dev).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    #[repr(C)]
    #[derive(Default)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 8],
    }
    use std::os::fd::AsRawFd;
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_SKB_MODE,
        ..LinkCreate::default()
    };
    // SAFETY: BPF_LINK_CREATE with a zero-padded attribute that outlives the call.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreate,
            std::mem::size_of::<LinkCreate>(),
        )
    };
    if link < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ForeignXdp {
        // SAFETY: a descriptor the kernel just gave us.
        _link: unsafe { OwnedFd::from_raw_fd(link as i32) },
        _prog: prog,
    })
}
