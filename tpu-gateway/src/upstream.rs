//! Drop-in RPC: JSON-RPC methods on an allow-list are answered by the cluster RPC,
//! so a client can use the gateway as its only RPC URL (`@solana/web3.js`'s
//! `sendAndConfirmTransaction` asks the same URL for a blockhash and for statuses).
//! The endpoints are `cluster.rpc_urls` in order of preference, with the failover
//! the leader tracker has: the one that last answered is tried first, the others in
//! turn when it cannot be reached. An error the RPC answers is passed through as it
//! is (it is the cluster's answer); bounded in calls in flight.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::Value;
use solana_client::{
    client_error::ClientErrorKind,
    nonblocking::rpc_client::RpcClient,
    rpc_request::{RpcError as ClientRpcError, RpcRequest},
};
use tokio::sync::Semaphore;

use crate::rpc::{RpcError, code};

/// The cluster RPC endpoints and the methods forwarded to them.
pub struct Upstream {
    clients: Vec<RpcClient>,
    /// Allowed method names; the values are the same names, leaked once at
    /// startup (the RPC client wants `&'static str`; the list is the configured one).
    methods: HashMap<String, &'static str>,
    in_flight: Semaphore,
    /// The endpoint that answered last.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoints", &self.clients.len())
            .field("methods", &self.methods.len())
            .finish()
    }
}

impl Upstream {
    /// Forwarding `methods` to `urls`; `None` when either is empty (off).
    pub fn new(
        urls: &[String],
        timeout: Duration,
        methods: &[String],
        concurrency: usize,
    ) -> Option<Self> {
        if urls.is_empty() || methods.is_empty() {
            return None;
        }
        Some(Self {
            clients: urls
                .iter()
                .map(|u| RpcClient::new_with_timeout(u.clone(), timeout))
                .collect(),
            methods: methods
                .iter()
                .map(|m| (m.clone(), &*Box::leak(m.clone().into_boxed_str())))
                .collect(),
            in_flight: Semaphore::new(concurrency.max(1)),
            preferred: AtomicUsize::new(0),
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
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut last_error = String::new();
        for i in (0..n).map(|k| (first + k) % n) {
            match self.clients[i]
                .send::<Value>(RpcRequest::Custom { method: name }, params.clone())
                .await
            {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => match *e.kind {
                    ClientErrorKind::RpcError(ClientRpcError::RpcResponseError {
                        code,
                        message,
                        ..
                    }) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Err(RpcError::plain(code, message));
                    }
                    kind => last_error = kind.to_string(),
                },
            }
        }
        tracing::debug!(method, error = %last_error, "no cluster RPC endpoint answered");
        Err(RpcError::plain(
            code::NODE_UNHEALTHY,
            "Node is unhealthy: the cluster RPC cannot be reached",
        ))
    }
}
