//! [`AnyIo`]: the configured packet path, AF_XDP or kernel UDP, behind one type so
//! the engine thread stays monomorphic; and the fallback rule between them.

use std::{io, net::SocketAddr, os::fd::BorrowedFd, sync::Arc};

use crate::{
    batch::{RxBatch, TxBatch},
    io::{IoCounters, PacketIo},
    udp::UdpIo,
    xdp::{XdpConfig, XdpError, XdpIo, XdpStats},
};

/// Which packet path to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketPath {
    /// Kernel UDP bound to this address.
    Udp(SocketAddr),
    /// AF_XDP; when it cannot be set up and `fallback` is set, kernel UDP bound there.
    Xdp {
        /// The AF_XDP configuration.
        config: XdpConfig,
        /// Where to bind the kernel UDP fallback, if falling back is allowed.
        fallback: Option<SocketAddr>,
    },
}

/// Why no packet path could be opened.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// AF_XDP failed and no fallback was configured.
    #[error("AF_XDP: {0}")]
    Xdp(#[from] XdpError),
    /// The kernel UDP socket failed (as the chosen path or the fallback).
    #[error("kernel UDP socket on {addr}: {source}")]
    Udp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// An open packet path.
#[derive(Debug)]
pub enum AnyIo {
    /// Kernel UDP.
    Udp(UdpIo),
    /// AF_XDP.
    Xdp(Box<XdpIo>),
}

impl AnyIo {
    /// Opens `path`. An AF_XDP failure with a fallback configured is logged (with its
    /// cause) and the kernel UDP path is opened instead.
    ///
    /// # Errors
    /// [`PathError`] when nothing could be opened.
    pub fn open(path: &PacketPath) -> Result<Self, PathError> {
        let udp = |addr: SocketAddr| {
            UdpIo::bind(addr)
                .map(AnyIo::Udp)
                .map_err(|source| PathError::Udp { addr, source })
        };
        match path {
            PacketPath::Udp(addr) => udp(*addr),
            PacketPath::Xdp { config, fallback } => match XdpIo::open(config.clone()) {
                Ok(x) => Ok(AnyIo::Xdp(Box::new(x))),
                Err(e) => match fallback {
                    Some(addr) => {
                        tracing::warn!(error = %e, fallback = %addr, "AF_XDP unavailable; using the kernel UDP path");
                        udp(*addr)
                    }
                    None => Err(e.into()),
                },
            },
        }
    }

    /// The AF_XDP counters, when this is the AF_XDP path.
    pub fn xdp_stats(&self) -> Option<Arc<XdpStats>> {
        match self {
            AnyIo::Udp(_) => None,
            AnyIo::Xdp(x) => Some(x.stats()),
        }
    }
}

impl PacketIo for AnyIo {
    fn local_addr(&self) -> SocketAddr {
        match self {
            AnyIo::Udp(u) => u.local_addr(),
            AnyIo::Xdp(x) => x.local_addr(),
        }
    }

    fn send(&mut self, batch: &mut TxBatch, counters: &mut IoCounters) -> io::Result<()> {
        match self {
            AnyIo::Udp(u) => u.send(batch, counters),
            AnyIo::Xdp(x) => x.send(batch, counters),
        }
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        match self {
            AnyIo::Udp(u) => u.recv(batch),
            AnyIo::Xdp(x) => x.recv(batch),
        }
    }

    fn pollable(&self) -> BorrowedFd<'_> {
        match self {
            AnyIo::Udp(u) => u.pollable(),
            AnyIo::Xdp(x) => x.pollable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_failure_falls_back_to_udp_only_when_configured() {
        let config = XdpConfig::new("no-such-if0");
        let fallback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let io = AnyIo::open(&PacketPath::Xdp {
            config: config.clone(),
            fallback: Some(fallback),
        })
        .unwrap();
        assert!(matches!(io, AnyIo::Udp(_)));
        assert!(io.xdp_stats().is_none());

        let err = AnyIo::open(&PacketPath::Xdp {
            config,
            fallback: None,
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-if0"),
            "the cause names the interface: {msg}"
        );
    }
}
