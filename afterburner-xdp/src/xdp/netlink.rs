//! What the kernel knows about our interface, routes and neighbours, asked over
//! rtnetlink (the `netlink-packet-route` crate): the interface's index, MAC, IPv4
//! address and RX queue count; the route to a destination; the next hop's MAC, with a
//! neighbour probe (`NTF_USE`, the kernel's own resolution) when it is unknown.
//!
//! Calls are synchronous request/answer on one socket; the AF_XDP backend makes
//! them at setup and when a next-hop cache entry expires, not per packet.

use std::{io, net::Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkMessage, LinkXdp},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Our interface as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// RX queues the device has.
    pub rx_queues: u32,
    /// MTU.
    pub mtu: u32,
    /// The id of the XDP program attached to it now (any mode), if one is.
    pub xdp_program: Option<u32>,
}

/// The route to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Outgoing interface.
    pub oif: u32,
    /// The address whose MAC we need: the gateway, or the destination on-link.
    pub next_hop: Ipv4Addr,
    /// The source address the kernel would use.
    pub src: Option<Ipv4Addr>,
}

/// A neighbour-table answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// A usable MAC (reachable, stale, delay, probe, permanent or noarp).
    Known([u8; 6]),
    /// No entry, or resolution pending/failed.
    Unknown,
}

/// A request/answer rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The interface called `name`.
    ///
    /// # Errors
    /// `NotFound` when there is no such interface; other errors from the kernel.
    pub fn link(&mut self, name: &str) -> io::Result<LinkInfo> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let answers = self
            .request(RouteNetlinkMessage::GetLink(msg), 0)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENODEV) {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no interface named {name:?}"),
                    )
                } else {
                    e
                }
            })?;
        for answer in answers {
            if let RouteNetlinkMessage::NewLink(link) = answer {
                let mut info = LinkInfo {
                    index: link.header.index,
                    mac: [0; 6],
                    rx_queues: 1,
                    mtu: 1500,
                    xdp_program: None,
                };
                for attr in link.attributes {
                    match attr {
                        LinkAttribute::Address(a) if a.len() == 6 => info.mac.copy_from_slice(&a),
                        LinkAttribute::NumRxQueues(n) => info.rx_queues = n.max(1),
                        LinkAttribute::Mtu(m) => info.mtu = m,
                        LinkAttribute::Xdp(xdp) => {
                            info.xdp_program = xdp.iter().find_map(|x| match *x {
                                LinkXdp::ProgId(id)
                                | LinkXdp::DrvProgId(id)
                                | LinkXdp::SkbProgId(id)
                                | LinkXdp::HwProgId(id)
                                    if id != 0 =>
                                {
                                    Some(id)
                                }
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
                return Ok(info);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?}"),
        ))
    }

    /// The IPv4 addresses on interface `index`, primary first.
    ///
    /// # Errors
    /// Kernel errors.
    pub fn ipv4_addrs(&mut self, index: u32) -> io::Result<Vec<Ipv4Addr>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self.request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        let mut out = vec![];
        for answer in answers {
            if let RouteNetlinkMessage::NewAddress(a) = answer {
                if a.header.index != index {
                    continue;
                }
                for attr in a.attributes {
                    if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attr {
                        out.push(ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The route the kernel would use to reach `dst`.
    ///
    /// # Errors
    /// `ENETUNREACH` and friends when there is no route; other kernel errors.
    pub fn route(&mut self, dst: Ipv4Addr) -> io::Result<Route> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 32;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        for answer in self.request(RouteNetlinkMessage::GetRoute(msg), 0)? {
            if let RouteNetlinkMessage::NewRoute(r) = answer {
                let mut route = Route {
                    oif: 0,
                    next_hop: dst,
                    src: None,
                };
                for attr in r.attributes {
                    match attr {
                        RouteAttribute::Oif(i) => route.oif = i,
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => route.next_hop = gw,
                        RouteAttribute::PrefSource(RouteAddress::Inet(src)) => {
                            route.src = Some(src)
                        }
                        _ => {}
                    }
                }
                return Ok(route);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no route to {dst}"),
        ))
    }

    /// The MAC of `ip` on interface `index`, if the neighbour table has a usable one.
    ///
    /// # Errors
    /// Kernel errors other than "no entry".
    pub fn neighbour(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<Neighbour> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        let answers = match self.request(RouteNetlinkMessage::GetNeighbour(msg), 0) {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Neighbour::Unknown),
            Err(e) => return Err(e),
        };
        for answer in answers {
            if let RouteNetlinkMessage::NewNeighbour(n) = answer {
                let usable = matches!(
                    n.header.state,
                    NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp
                );
                for attr in n.attributes {
                    if let NeighbourAttribute::LinkLayerAddress(mac) = attr
                        && usable
                        && mac.len() == 6
                    {
                        let mut m = [0; 6];
                        m.copy_from_slice(&mac);
                        return Ok(Neighbour::Known(m));
                    }
                }
            }
        }
        Ok(Neighbour::Unknown)
    }

    /// Asks the kernel to resolve `ip` on interface `index` (ARP), as a packet to it
    /// would: `RTM_NEWNEIGH` with `NTF_USE`. The answer lands in the neighbour table.
    ///
    /// # Errors
    /// Kernel errors (this needs `CAP_NET_ADMIN`).
    pub fn probe(&mut self, index: u32, ip: Ipv4Addr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::None;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Sends one request and collects the answers (all parts of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let ack = flags & NLM_F_ACK != 0;
        let mut answers = vec![];
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = parsed.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if parsed.header.sequence_number != self.seq {
                    continue;
                }
                match parsed.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if !dump && !ack {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}
