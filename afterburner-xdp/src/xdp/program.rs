//! The steering program (`afterburner-ebpf`, prebuilt and checked in at
//! `afterburner-xdp/bpf/afterburner_xdp.o`, so builds need no nightly or
//! bpf-linker): loading, attaching, and the maps that tell it which sockets are ours.
//!
//! On kernels 5.9+ the program is attached through a BPF link owned by this process:
//! the kernel detaches it when the link's descriptor closes, which happens on drop,
//! on panic, and on any exit, SIGKILL included. No program is left on the interface.

use std::net::SocketAddrV4;

pub use afterburner_common::COUNTER_LABELS;
use afterburner_common::{COUNTERS_MAP, PORTS_MAP, PROGRAM_NAME, XSKS_MAP};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, XskMap},
    programs::{Xdp, XdpFlags},
};

/// The checked-in object (see `cargo xtask ebpf`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/afterburner_xdp.o");

const PROGRAM: &str = PROGRAM_NAME;

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP).
    Driver,
    /// Generic (SKB) mode: works on any interface, after the kernel built an skb.
    Generic,
}

/// Which attach mode to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachPolicy {
    /// Driver mode, falling back to generic with a log line.
    #[default]
    Auto,
    /// Driver mode or fail.
    Driver,
    /// Generic mode.
    Generic,
}

/// Why the program could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The object did not load (verifier, missing capability, old kernel).
    #[error("loading the XDP program failed (needs CAP_BPF and CAP_NET_ADMIN, or root): {0}")]
    Load(String),
    /// Attaching failed in every allowed mode.
    #[error(
        "attaching the XDP program to interface index {ifindex} failed ({mode:?} mode): {reason}; \
         is another XDP program attached to it (e.g. the validator's own)?"
    )]
    Attach {
        /// Interface index.
        ifindex: u32,
        /// The last mode tried.
        mode: AttachMode,
        /// The kernel's answer.
        reason: String,
    },
    /// A map operation failed.
    #[error("XDP map {map}: {reason}")]
    Map {
        /// The map.
        map: &'static str,
        /// What failed.
        reason: String,
    },
}

/// The loaded and attached program with its maps. Dropping it detaches the program.
pub struct SteeringProgram {
    xsks: XskMap<MapData>,
    ports: HashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    mode: AttachMode,
    // Last: dropping it closes the link (detach) after the maps are released.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for SteeringProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteeringProgram")
            .field("mode", &self.mode)
            .finish()
    }
}

impl SteeringProgram {
    /// Loads the program and attaches it to `ifindex`.
    ///
    /// # Errors
    /// [`ProgramError`] naming the step and the kernel's answer.
    pub fn attach(ifindex: u32, policy: AttachPolicy) -> Result<Self, ProgramError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| ProgramError::Load(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| {
                ProgramError::Load(format!("program {PROGRAM} missing from the object"))
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| ProgramError::Load(e.to_string()))?;
        program
            .load()
            .map_err(|e| ProgramError::Load(format!("{e}{}", verifier_log(&e))))?;
        let modes: &[AttachMode] = match policy {
            AttachPolicy::Auto => &[AttachMode::Driver, AttachMode::Generic],
            AttachPolicy::Driver => &[AttachMode::Driver],
            AttachPolicy::Generic => &[AttachMode::Generic],
        };
        let mut attached = None;
        for &mode in modes {
            let flags = match mode {
                AttachMode::Driver => XdpFlags::DRV_MODE,
                AttachMode::Generic => XdpFlags::SKB_MODE,
            };
            match program.attach_to_if_index(ifindex, flags) {
                Ok(_) => {
                    attached = Some(mode);
                    break;
                }
                Err(e) => {
                    let reason = error_chain(&e);
                    if mode == AttachMode::Driver && modes.len() > 1 {
                        tracing::info!(ifindex, %reason, "native XDP unavailable; attaching in generic (SKB) mode");
                        continue;
                    }
                    return Err(ProgramError::Attach {
                        ifindex,
                        mode,
                        reason,
                    });
                }
            }
        }
        let mode = attached.ok_or(ProgramError::Attach {
            ifindex,
            mode: AttachMode::Generic,
            reason: "no attach mode allowed".into(),
        })?;
        let xsks = take(&mut ebpf, XSKS_MAP)?;
        let ports = take(&mut ebpf, PORTS_MAP)?;
        let counters = take(&mut ebpf, COUNTERS_MAP)?;
        Ok(Self {
            xsks: XskMap::try_from(xsks).map_err(map_err(XSKS_MAP))?,
            ports: HashMap::try_from(ports).map_err(map_err(PORTS_MAP))?,
            counters: PerCpuArray::try_from(counters).map_err(map_err(COUNTERS_MAP))?,
            mode,
            _ebpf: ebpf,
        })
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Steers packets for `addr` to the AF_XDP sockets.
    ///
    /// # Errors
    /// When the map update fails (full, or no permission).
    pub fn add_socket_addr(&mut self, addr: SocketAddrV4) -> Result<(), ProgramError> {
        self.ports
            .insert(port_key(addr), 1, 0)
            .map_err(map_err(PORTS_MAP))
    }

    /// Registers the AF_XDP socket of RX queue `queue`.
    ///
    /// # Errors
    /// When the map update fails.
    pub fn set_queue_socket(
        &mut self,
        queue: u32,
        socket: impl std::os::fd::AsRawFd,
    ) -> Result<(), ProgramError> {
        self.xsks.set(queue, socket, 0).map_err(map_err(XSKS_MAP))
    }

    /// The program's verdict counters, summed over CPUs, in [`COUNTER_LABELS`] order.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&self) -> Result<[u64; COUNTER_LABELS.len()], ProgramError> {
        let mut out = [0u64; COUNTER_LABELS.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err(COUNTERS_MAP))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// The `PORTS` key for an address ([`afterburner_common::port_key`], as the program builds it).
/// The name of loaded BPF program `id` (`None`: gone, or not ours to inspect).
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

pub fn port_key(addr: SocketAddrV4) -> u64 {
    afterburner_common::port_key(u32::from(*addr.ip()), addr.port())
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProgramError> {
    ebpf.take_map(name).ok_or(ProgramError::Map {
        map: name,
        reason: "missing from the object".into(),
    })
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProgramError {
    move |e| ProgramError::Map {
        map,
        reason: error_chain(&e),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn verifier_log(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => format!("\n{verifier_log}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_key_matches_the_programs_layout() {
        let key = port_key(SocketAddrV4::new([10, 11, 0, 2].into(), 0x1f49));
        assert_eq!(key, 0x0a0b_0002_1f49);
    }

    #[test]
    fn the_checked_in_object_holds_the_program_and_maps() {
        let obj = aya_obj::Object::parse(OBJECT).unwrap();
        assert!(obj.programs.contains_key(PROGRAM));
        for map in afterburner_common::MAP_NAMES {
            assert!(obj.maps.contains_key(map), "{map}");
        }
    }
}
