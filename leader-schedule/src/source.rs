//! [`RpcSource`]: the four RPC calls the tracker makes, behind a trait so the
//! tracker's logic can be tested with a scripted cluster; [`ClientRpc`], one real
//! endpoint over `solana-client`; [`Failover`], several endpoints of either.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use solana_client::{nonblocking::rpc_client::RpcClient, rpc_response::RpcContactInfo};
use solana_commitment_config::CommitmentConfig;
use solana_sdk::{clock::Slot, epoch_schedule::EpochSchedule, pubkey::Pubkey};

use crate::{addresses::MAX_CLUSTER_NODES, method::Method, stats::TrackerStats};

/// A failed RPC call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} failed: {message}", method.name())]
pub struct RpcError {
    /// Which call.
    pub method: Method,
    /// Why (transport error, timeout, malformed answer).
    pub message: String,
}

/// What the tracker asks of a cluster.
pub trait RpcSource: Send + Sync + 'static {
    /// The processed slot.
    fn get_slot(&self) -> impl Future<Output = Result<Slot, RpcError>> + Send;
    /// The epoch schedule.
    fn get_epoch_schedule(&self) -> impl Future<Output = Result<EpochSchedule, RpcError>> + Send;
    /// Leaders of `limit` slots from `start`.
    fn get_slot_leaders(
        &self,
        start: Slot,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Pubkey>, RpcError>> + Send;
    /// The cluster's nodes.
    fn get_cluster_nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<RpcContactInfo>, RpcError>> + Send;
}

/// One RPC endpoint through `solana-client`'s nonblocking `RpcClient` (processed
/// commitment, a timeout on every call). Answers that parse but make no sense (a
/// leader list of the wrong length, an absurd node count, a zero epoch length) are
/// errors too.
pub struct ClientRpc {
    client: RpcClient,
}

impl std::fmt::Debug for ClientRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRpc")
            .field("url", &self.client.url())
            .finish()
    }
}

impl ClientRpc {
    /// A client for `url`, each call bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Self {
        Self {
            client: RpcClient::new_with_timeout_and_commitment(
                url.to_string(),
                timeout,
                CommitmentConfig::processed(),
            ),
        }
    }
}

fn err(method: Method, e: impl std::fmt::Display) -> RpcError {
    RpcError {
        method,
        message: e.to_string(),
    }
}

impl RpcSource for ClientRpc {
    async fn get_slot(&self) -> Result<Slot, RpcError> {
        self.client
            .get_slot_with_commitment(CommitmentConfig::processed())
            .await
            .map_err(|e| err(Method::GetSlot, e))
    }

    async fn get_epoch_schedule(&self) -> Result<EpochSchedule, RpcError> {
        let s = self
            .client
            .get_epoch_schedule()
            .await
            .map_err(|e| err(Method::GetEpochSchedule, e))?;
        if s.slots_per_epoch == 0 {
            return Err(err(Method::GetEpochSchedule, "slotsPerEpoch is 0"));
        }
        Ok(s)
    }

    async fn get_slot_leaders(&self, start: Slot, limit: u64) -> Result<Vec<Pubkey>, RpcError> {
        let leaders = self
            .client
            .get_slot_leaders(start, limit)
            .await
            .map_err(|e| err(Method::GetSlotLeaders, e))?;
        if leaders.len() as u64 != limit {
            return Err(err(
                Method::GetSlotLeaders,
                format!("{} leaders returned for {limit} slots", leaders.len()),
            ));
        }
        Ok(leaders)
    }

    async fn get_cluster_nodes(&self) -> Result<Vec<RpcContactInfo>, RpcError> {
        let nodes = self
            .client
            .get_cluster_nodes()
            .await
            .map_err(|e| err(Method::GetClusterNodes, e))?;
        if nodes.len() > MAX_CLUSTER_NODES {
            return Err(err(
                Method::GetClusterNodes,
                format!("{} nodes is more than any cluster has", nodes.len()),
            ));
        }
        Ok(nodes)
    }
}

/// Several endpoints of any [`RpcSource`]: a call that fails on one endpoint is tried
/// once on each of the others, and the first that answers becomes the preferred one.
/// Every failed attempt is counted by method.
#[derive(Debug)]
pub struct Failover<E> {
    endpoints: Vec<E>,
    preferred: AtomicUsize,
    stats: Arc<TrackerStats>,
}

impl Failover<ClientRpc> {
    /// `solana-client` endpoints for `urls`, each call bounded by `timeout`.
    pub fn from_urls(urls: &[String], timeout: Duration, stats: Arc<TrackerStats>) -> Self {
        Self::new(
            urls.iter().map(|u| ClientRpc::new(u, timeout)).collect(),
            stats,
        )
    }
}

impl<E: RpcSource> Failover<E> {
    /// Failover over `endpoints`, in order of preference.
    pub fn new(endpoints: Vec<E>, stats: Arc<TrackerStats>) -> Self {
        Self {
            endpoints,
            preferred: AtomicUsize::new(0),
            stats,
        }
    }

    /// Index of the endpoint tried first.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    async fn call<'a, T, F, Fut>(&'a self, method: Method, f: F) -> Result<T, RpcError>
    where
        F: Fn(&'a E) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(err(method, "no RPC endpoint configured"));
        }
        let first = self.preferred() % n;
        let mut last = err(method, "no attempt");
        for i in 0..n {
            let idx = (first + i) % n;
            match f(&self.endpoints[idx]).await {
                Ok(v) => {
                    if idx != first {
                        tracing::info!(endpoint = idx, method = method.name(), "RPC failover");
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) => {
                    self.stats.record_rpc_error(method);
                    tracing::debug!(endpoint = idx, error = %e, "RPC call failed");
                    last = e;
                }
            }
        }
        Err(last)
    }
}

impl<E: RpcSource> RpcSource for Failover<E> {
    async fn get_slot(&self) -> Result<Slot, RpcError> {
        self.call(Method::GetSlot, |e| e.get_slot()).await
    }

    async fn get_epoch_schedule(&self) -> Result<EpochSchedule, RpcError> {
        self.call(Method::GetEpochSchedule, |e| e.get_epoch_schedule())
            .await
    }

    async fn get_slot_leaders(&self, start: Slot, limit: u64) -> Result<Vec<Pubkey>, RpcError> {
        self.call(Method::GetSlotLeaders, |e| e.get_slot_leaders(start, limit))
            .await
    }

    async fn get_cluster_nodes(&self) -> Result<Vec<RpcContactInfo>, RpcError> {
        self.call(Method::GetClusterNodes, |e| e.get_cluster_nodes())
            .await
    }
}
