//! [`TpuAddresses`]: identity → TPU QUIC address, from `getClusterNodes` (per-identity
//! overrides for private peering are the [`crate::LeaderPolicy`]'s).

use std::{collections::HashMap, net::SocketAddr, str::FromStr};

use solana_client::rpc_response::RpcContactInfo;
use solana_sdk::pubkey::Pubkey;

/// agave 3.1 derives the TPU QUIC port from the UDP TPU port with this offset
/// (`QUIC_PORT_OFFSET`), the documented fallback when `tpuQuic` is missing.
pub const QUIC_PORT_OFFSET: u16 = 6;

/// A node list larger than this is refused as malformed (mainnet has a few thousand).
pub const MAX_CLUSTER_NODES: usize = 100_000;

/// Where each identity's TPU QUIC port is.
#[derive(Clone, Debug, Default)]
pub struct TpuAddresses {
    gossip: HashMap<Pubkey, SocketAddr>,
}

/// What building the map from a `getClusterNodes` answer skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodesReport {
    /// Entries whose pubkey did not parse.
    pub bad_pubkey: usize,
    /// Nodes with neither `tpuQuic` nor `tpu`.
    pub no_tpu: usize,
    /// Nodes whose QUIC address was derived from `tpu` + 6.
    pub derived: usize,
}

impl TpuAddresses {
    /// A map as gossip would give it (tests, static setups).
    pub fn from_gossip(gossip: HashMap<Pubkey, SocketAddr>) -> Self {
        Self { gossip }
    }

    /// Builds the map from `getClusterNodes`.
    pub fn from_cluster_nodes(nodes: &[RpcContactInfo]) -> (Self, NodesReport) {
        let mut report = NodesReport::default();
        let mut gossip = HashMap::with_capacity(nodes.len());
        for node in nodes {
            let Ok(pubkey) = Pubkey::from_str(&node.pubkey) else {
                report.bad_pubkey += 1;
                continue;
            };
            let addr = match (node.tpu_quic, node.tpu) {
                (Some(quic), _) => quic,
                (None, Some(tpu)) => match tpu.port().checked_add(QUIC_PORT_OFFSET) {
                    Some(port) => {
                        report.derived += 1;
                        SocketAddr::new(tpu.ip(), port)
                    }
                    None => {
                        report.no_tpu += 1;
                        continue;
                    }
                },
                (None, None) => {
                    report.no_tpu += 1;
                    continue;
                }
            };
            gossip.insert(pubkey, addr);
        }
        (Self { gossip }, report)
    }

    /// The TPU QUIC address of `identity` in gossip (the [`crate::LeaderPolicy`]'s
    /// overrides win over it).
    pub fn get(&self, identity: &Pubkey) -> Option<SocketAddr> {
        self.gossip.get(identity).copied()
    }

    /// Nodes known from gossip.
    pub fn len(&self) -> usize {
        self.gossip.len()
    }

    /// Whether no node is known from gossip.
    pub fn is_empty(&self) -> bool {
        self.gossip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(pubkey: &str, tpu: Option<&str>, quic: Option<&str>) -> RpcContactInfo {
        RpcContactInfo {
            pubkey: pubkey.to_string(),
            gossip: None,
            tvu: None,
            tpu: tpu.map(|a| a.parse().unwrap()),
            tpu_quic: quic.map(|a| a.parse().unwrap()),
            tpu_forwards: None,
            tpu_forwards_quic: None,
            tpu_vote: None,
            serve_repair: None,
            rpc: None,
            pubsub: None,
            version: None,
            feature_set: None,
            shred_version: None,
        }
    }

    #[test]
    fn quic_address_fallback() {
        let a = Pubkey::new_unique();
        let b = Pubkey::new_unique();
        let c = Pubkey::new_unique();
        let nodes = vec![
            node(&a.to_string(), Some("10.0.0.1:8003"), Some("10.0.0.1:8009")),
            node(&b.to_string(), Some("10.0.0.2:8003"), None),
            node(&c.to_string(), None, None),
            node("not-a-pubkey", None, Some("10.0.0.9:1")),
        ];
        let (map, report) = TpuAddresses::from_cluster_nodes(&nodes);
        assert_eq!(map.get(&a), Some("10.0.0.1:8009".parse().unwrap()));
        assert_eq!(map.get(&b), Some("10.0.0.2:8009".parse().unwrap()));
        assert_eq!(map.get(&c), None);
        assert_eq!(
            report,
            NodesReport {
                bad_pubkey: 1,
                no_tpu: 1,
                derived: 1
            }
        );
    }
}
