//! Ethernet / IPv4 / UDP frames, built and parsed without I/O.
//!
//! We write the headers ourselves (no offloads are asked of the NIC), so both
//! checksums are computed here: the IPv4 header checksum and the UDP checksum over
//! the pseudo-header, header and payload. Received frames are parsed strictly:
//! anything that is not a well-formed IPv4/UDP datagram without options is refused.
//! The UDP checksum of received frames is not verified: a veth or offloading peer may
//! hand us a partial checksum, and QUIC authenticates every packet anyway.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Ethernet header length (no VLAN tag).
pub const ETH_HDR: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HDR: usize = 20;
/// UDP header length.
pub const UDP_HDR: usize = 8;
/// All three headers.
pub const HEADERS: usize = ETH_HDR + IPV4_HDR + UDP_HDR;

const ETH_P_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;
/// Don't Fragment: our datagrams fit the path MTU by construction.
const IP_DF: u16 = 0x4000;

/// Addresses of one UDP flow as it goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAddrs {
    /// Our interface's MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the destination itself, or the gateway).
    pub dst_mac: [u8; 6],
    /// Our address and port.
    pub src: SocketAddrV4,
    /// The destination.
    pub dst: SocketAddrV4,
}

/// Writes a complete frame carrying `payload` into `buf`, returning its length, or
/// `None` when it does not fit (or the datagram would exceed 65,535 bytes).
/// `ip_id` is the IPv4 identification field.
pub fn build(buf: &mut [u8], addrs: &FrameAddrs, ip_id: u16, payload: &[u8]) -> Option<usize> {
    let len = HEADERS + payload.len();
    let ip_len = u16::try_from(IPV4_HDR + UDP_HDR + payload.len()).ok()?;
    if buf.len() < len {
        return None;
    }
    buf[HEADERS..len].copy_from_slice(payload);
    write_headers(&mut buf[..HEADERS], addrs, ip_id, ip_len, payload);
    Some(len)
}

/// Writes the 42 header bytes for a payload that is already in place after them.
fn write_headers(h: &mut [u8], addrs: &FrameAddrs, ip_id: u16, ip_len: u16, payload: &[u8]) {
    h[0..6].copy_from_slice(&addrs.dst_mac);
    h[6..12].copy_from_slice(&addrs.src_mac);
    h[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());

    let ip = &mut h[ETH_HDR..ETH_HDR + IPV4_HDR];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&IP_DF.to_be_bytes());
    ip[8] = TTL;
    ip[9] = IPPROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&addrs.src.ip().octets());
    ip[16..20].copy_from_slice(&addrs.dst.ip().octets());
    let csum = checksum(ip, 0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let udp_len = ip_len - IPV4_HDR as u16;
    let udp = &mut h[ETH_HDR + IPV4_HDR..HEADERS];
    udp[0..2].copy_from_slice(&addrs.src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&addrs.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header_sum(*addrs.src.ip(), *addrs.dst.ip(), udp_len);
    let sum = sum_words(payload, sum_words(udp, pseudo));
    // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
    let csum = match !fold(sum) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
}

/// A received IPv4/UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Sender.
    pub src: SocketAddrV4,
    /// Destination (one of our sockets, if the XDP program did its job).
    pub dst: SocketAddrV4,
    /// Where the UDP payload is in the frame.
    pub payload: (usize, usize),
}

/// Why a received frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its headers say.
    #[error("truncated frame")]
    Truncated,
    /// Not IPv4 (or VLAN-tagged).
    #[error("not an IPv4 frame")]
    NotIpv4,
    /// IPv4 with options, or a fragment.
    #[error("IPv4 options or fragment")]
    Unsupported,
    /// Not UDP.
    #[error("not UDP")]
    NotUdp,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    BadChecksum,
}

/// Parses a frame as Ethernet / IPv4 (no options, not fragmented) / UDP.
///
/// # Errors
/// A [`ParseError`] naming the first thing wrong.
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    if frame.len() < HEADERS {
        return Err(ParseError::Truncated);
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IPV4 {
        return Err(ParseError::NotIpv4);
    }
    let ip = &frame[ETH_HDR..ETH_HDR + IPV4_HDR];
    if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(ParseError::Unsupported);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(ParseError::NotUdp);
    }
    if fold(sum_words(ip, 0)) != 0xffff {
        return Err(ParseError::BadChecksum);
    }
    // Ethernet pads short frames: the IP total length is what counts.
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp = &frame[ETH_HDR + IPV4_HDR..HEADERS];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ip_len < IPV4_HDR + UDP_HDR
        || ETH_HDR + ip_len > frame.len()
        || udp_len < UDP_HDR
        || udp_len > ip_len - IPV4_HDR
    {
        return Err(ParseError::Truncated);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Ok(Parsed {
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: (HEADERS, ETH_HDR + IPV4_HDR + udp_len),
    })
}

/// The pseudo-header part of the UDP checksum sum.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u64 {
    let s = src.octets();
    let d = dst.octets();
    u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(IPPROTO_UDP)
        + u64::from(udp_len)
}

/// Adds `data` as big-endian 16-bit words to `sum` (odd tail padded with zero).
/// Takes 8 bytes at a time into a wide accumulator (one's-complement addition is
/// associative over any word size: `2^16 = 1 mod 0xffff`); folding happens at the end.
fn sum_words(data: &[u8], sum: u64) -> u64 {
    let mut acc = u128::from(sum);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u128::from(u64::from_be_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u128::from(u64::from_be_bytes(tail));
    // Fold 128 -> 64 bits with end-around carry; the 16-bit fold follows in `fold`.
    let (lo, hi) = (acc as u64, (acc >> 64) as u64);
    let (s, carry) = lo.overflowing_add(hi);
    let s = s + u64::from(carry);
    // Keep headroom for callers that add more before folding.
    (s & 0xffff_ffff) + (s >> 32)
}

/// Folds a sum into 16 bits (with end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum (RFC 1071) of `data` plus `initial`.
fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(sum_words(data, initial))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's textbook definition, 16 bits at a time, to check the fast one.
    fn reference_checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn addrs() -> FrameAddrs {
        FrameAddrs {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src: SocketAddrV4::new(Ipv4Addr::new(10, 11, 0, 2), 40_000),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 11, 0, 1), 8009),
        }
    }

    #[test]
    fn ipv4_header_checksum_matches_known_vector() {
        // The worked example from the IPv4 header checksum literature
        // (192.168.0.1 -> 192.168.0.199, total length 0x73, DF, TTL 64, UDP): 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header, 0), 0xb861);
        assert_eq!(reference_checksum(&header), 0xb861);
    }

    #[test]
    fn udp_checksum_matches_known_vector() {
        // A DNS query for example.com (10.0.0.2:53535 -> 10.0.0.1:53, IP id 0, DF,
        // TTL 64). Expected checksums computed independently by scapy 2.x
        // (`raw(IP(...)/UDP(...)/payload)`): IPv4 header 0x26b2, UDP 0x38ab.
        let addrs = FrameAddrs {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 53535),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 53),
        };
        let payload = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
        let mut buf = [0u8; 128];
        let len = build(&mut buf, &addrs, 0, payload).unwrap();
        let udp = &buf[ETH_HDR + IPV4_HDR..len];
        // Independent computation: pseudo-header + UDP header (zero checksum) + data.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1, 0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        let mut zeroed = udp.to_vec();
        zeroed[6] = 0;
        zeroed[7] = 0;
        pseudo.extend_from_slice(&zeroed);
        let expected = reference_checksum(&pseudo);
        assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), expected);
        assert_eq!(expected, 0x38ab);
        let ip = &buf[ETH_HDR..ETH_HDR + IPV4_HDR];
        assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), 0x26b2);
    }

    #[test]
    fn built_frames_verify_and_parse_back() {
        let a = addrs();
        let mut buf = [0u8; 1600];
        for len in [0usize, 1, 2, 3, 7, 100, 1231, 1232, 1472] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let n = build(&mut buf, &a, len as u16, &payload).unwrap();
            assert_eq!(n, HEADERS + len);
            let frame = &buf[..n];
            // Summing a header (or the pseudo-header + datagram) including its checksum gives all ones.
            assert_eq!(reference_checksum(&frame[ETH_HDR..ETH_HDR + IPV4_HDR]), 0);
            let mut pseudo = vec![10, 11, 0, 2, 10, 11, 0, 1, 0, 17];
            pseudo.extend_from_slice(&((UDP_HDR + len) as u16).to_be_bytes());
            pseudo.extend_from_slice(&frame[ETH_HDR + IPV4_HDR..]);
            assert_eq!(reference_checksum(&pseudo), 0, "udp checksum, len {len}");
            let p = parse(frame).unwrap();
            assert_eq!((p.src, p.dst), (a.src, a.dst));
            assert_eq!(&frame[p.payload.0..p.payload.1], &payload[..]);
        }
    }

    #[test]
    fn fast_checksum_agrees_with_reference() {
        let data: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in 0..200 {
            assert_eq!(
                checksum(&data[..len], 0),
                reference_checksum(&data[..len]),
                "len {len}"
            );
        }
        assert_eq!(checksum(&data, 0), reference_checksum(&data));
    }

    #[test]
    fn build_refuses_what_does_not_fit() {
        let mut small = [0u8; HEADERS + 9];
        assert_eq!(build(&mut small, &addrs(), 0, &[1; 10]), None);
        assert_eq!(build(&mut small, &addrs(), 0, &[1; 9]), Some(HEADERS + 9));
    }

    #[test]
    fn parse_refuses_malformed_frames() {
        let mut buf = [0u8; 200];
        let n = build(&mut buf, &addrs(), 1, b"hello").unwrap();
        let good = buf[..n].to_vec();
        // Ethernet padding to 60 bytes is ignored.
        let mut padded = good.clone();
        padded.resize(60, 0);
        assert_eq!(parse(&padded).unwrap().payload, (HEADERS, HEADERS + 5));

        assert_eq!(parse(&good[..HEADERS - 1]), Err(ParseError::Truncated));
        assert_eq!(parse(&good[..n - 1]), Err(ParseError::Truncated));
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(parse(&vlan), Err(ParseError::NotIpv4));
        let mut options = good.clone();
        options[ETH_HDR] = 0x46;
        assert_eq!(parse(&options), Err(ParseError::Unsupported));
        let mut fragment = good.clone();
        fragment[ETH_HDR + 6] |= 0x20; // more fragments
        assert_eq!(parse(&fragment), Err(ParseError::Unsupported));
        let mut tcp = good.clone();
        tcp[ETH_HDR + 9] = 6;
        assert_eq!(parse(&tcp), Err(ParseError::NotUdp));
        let mut corrupt = good.clone();
        corrupt[ETH_HDR + 8] ^= 1; // TTL changed, checksum not
        assert_eq!(parse(&corrupt), Err(ParseError::BadChecksum));
        let mut long_udp = good;
        long_udp[ETH_HDR + IPV4_HDR + 5] += 1; // UDP length past the IP datagram
        assert_eq!(parse(&long_udp), Err(ParseError::Truncated));
    }
}
