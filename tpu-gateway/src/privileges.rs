//! Capabilities after setup. The packet path needs `CAP_NET_RAW`, `CAP_NET_ADMIN`
//! and `CAP_BPF` to open AF_XDP sockets and attach the steering program; running
//! them needs less. Once the path is open, the process keeps only what a running
//! path uses and drops the rest from every set (bounding included, so nothing can
//! come back). Linux capabilities are per thread: this runs before the runtime
//! starts any, and every later thread inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// What a running packet path still uses.
pub fn needed(xdp: bool) -> CapsHashSet {
    if xdp {
        // CAP_NET_ADMIN: neighbour probes (RTM_NEWNEIGH) for next hops not yet
        // resolved. CAP_BPF: reading the steering program's counters where
        // unprivileged bpf() is disabled (the distribution default).
        [Capability::CAP_NET_ADMIN, Capability::CAP_BPF].into()
    } else {
        CapsHashSet::new()
    }
}

/// Keeps `keep` (where the process has them) and drops every other capability
/// from the effective, permitted, inheritable, ambient and bounding sets. Returns
/// what is kept.
///
/// # Errors
/// The kernel refused a change (the error names the set).
pub fn keep_only(keep: &CapsHashSet) -> Result<CapsHashSet, String> {
    fn err(set: &'static str) -> impl Fn(caps::errors::CapsError) -> String {
        move |e| format!("dropping {set}: {e}")
    }
    // The bounding set first, while CAP_SETPCAP (needed to shrink it) is still ours.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                // A capability this kernel does not know is not in the set: fine.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    // The ambient set may be unsupported (old kernels): then it is empty anyway.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(err("the inheritable set"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("the permitted set"))?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(err("the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err("the permitted set"))?;
    Ok(kept)
}

/// Names, sorted, for logs and errors.
pub fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    v
}
