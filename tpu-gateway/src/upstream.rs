//! The cluster RPC as the gateway uses it: [`ClusterRpc`], the endpoints of
//! `cluster.rpc_urls` with failover (the one that last answered is tried first, the
//! others in turn when it cannot be reached; an error the RPC answers is an answer,
//! not a failure), for landed status, blockhash validity and preflight; and
//! [`Upstream`], drop-in RPC: JSON-RPC methods on an allow-list answered by the
//! cluster, so a client can use the gateway as its only RPC URL
//! (`@solana/web3.js`'s `sendAndConfirmTransaction` asks the same URL for a
//! blockhash and for statuses), passed through as the cluster answers them and
//! bounded in calls in flight.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use solana_client::{
    client_error::{ClientError, ClientErrorKind},
    nonblocking::rpc_client::RpcClient,
    rpc_request::{RpcError as ClientRpcError, RpcRequest},
};
use tokio::sync::Semaphore;

use crate::rpc::{RpcError, code};

/// The cluster RPC endpoints, in order of preference, with failover.
pub struct ClusterRpc {
    clients: Vec<RpcClient>,
    /// The endpoint that answered last.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for ClusterRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRpc")
            .field("endpoints", &self.clients.len())
            .finish()
    }
}

impl ClusterRpc {
    /// `urls` with `timeout` per call; `None` when there are none.
    pub fn new(urls: &[String], timeout: Duration) -> Option<Self> {
        (!urls.is_empty()).then(|| Self {
            clients: urls
                .iter()
                .map(|u| RpcClient::new_with_timeout(u.clone(), timeout))
                .collect(),
            preferred: AtomicUsize::new(0),
        })
    }

    /// Runs `call` on the preferred endpoint, then on the others in turn while the
    /// endpoint cannot be reached. An error the RPC answers is returned at once (the
    /// cluster's answer); when none can be reached, the last error.
    ///
    /// # Errors
    /// As described.
    pub async fn call<'a, T, F, Fut>(&'a self, call: F) -> Result<T, ClientError>
    where
        F: Fn(&'a RpcClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut last = None;
        for i in (0..n).map(|k| (first + k) % n) {
            match call(&self.clients[i]).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if answered(&e) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Err(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientErrorKind::Custom("no RPC endpoint".into()).into()))
    }
}

/// Whether the error is the RPC's own answer (not a failure to reach it).
fn answered(e: &ClientError) -> bool {
    matches!(
        *e.kind,
        ClientErrorKind::RpcError(ClientRpcError::RpcResponseError { .. })
    )
}

/// The methods forwarded to the cluster RPC.
pub struct Upstream {
    rpc: Arc<ClusterRpc>,
    /// Allowed method names; the values are the same names, leaked once at
    /// startup (the RPC client wants `&'static str`; the list is the configured one).
    methods: HashMap<String, &'static str>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("rpc", &self.rpc)
            .field("methods", &self.methods.len())
            .finish()
    }
}

impl Upstream {
    /// Forwarding `methods` to `rpc`; `None` when there is no RPC or no method (off).
    pub fn new(
        rpc: Option<Arc<ClusterRpc>>,
        methods: &[String],
        concurrency: usize,
    ) -> Option<Self> {
        let rpc = rpc?;
        if methods.is_empty() {
            return None;
        }
        Some(Self {
            rpc,
            methods: methods
                .iter()
                .map(|m| (m.clone(), &*Box::leak(m.clone().into_boxed_str())))
                .collect(),
            in_flight: Semaphore::new(concurrency.max(1)),
        })
    }

    /// Whether `method` is forwarded.
    pub fn allows(&self, method: &str) -> bool {
        self.methods.contains_key(method)
    }

    /// The cluster's answer to `method(params)`.
    ///
    /// # Errors
    /// The RPC's own error, passed through; -32602 for params that are not an array
    /// (positional) or null; -32601 for a method not on the list; -32005 when too
    /// many calls are in flight or no endpoint can be reached.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let Some(&name) = self.methods.get(method) else {
            return Err(RpcError::plain(code::METHOD_NOT_FOUND, "Method not found"));
        };
        if !(params.is_array() || params.is_null()) {
            return Err(RpcError::plain(
                code::INVALID_PARAMS,
                "Invalid params: expected an array of positional params.",
            ));
        }
        let Ok(_slot) = self.in_flight.try_acquire() else {
            return Err(RpcError::plain(
                code::NODE_UNHEALTHY,
                "Node is unhealthy: too many forwarded calls in flight, retry later",
            ));
        };
        let result = self
            .rpc
            .call(|c| c.send::<Value>(RpcRequest::Custom { method: name }, params.clone()))
            .await;
        let last_error = match result {
            Ok(v) => return Ok(v),
            Err(e) => match *e.kind {
                ClientErrorKind::RpcError(ClientRpcError::RpcResponseError {
                    code,
                    message,
                    ..
                }) => return Err(RpcError::plain(code, message)),
                kind => kind.to_string(),
            },
        };
        tracing::debug!(method, error = %last_error, "no cluster RPC endpoint answered");
        Err(RpcError::plain(
            code::NODE_UNHEALTHY,
            "Node is unhealthy: the cluster RPC cannot be reached",
        ))
    }
}
