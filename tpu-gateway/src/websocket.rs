//! Drop-in RPC's websocket half: a listener (by default the RPC port + 1, where
//! `@solana/web3.js` and `solana-client` look for it) that proxies each client's
//! subscriptions (`signatureSubscribe`, `slotSubscribe`, …) to the cluster's
//! websocket (`cluster.websocket_urls`, the first that accepts). Bounded: clients
//! at once, subscriptions per client (refused locally beyond it), messages in
//! size, and the write buffer per client (a client too slow to read is closed).

use std::sync::Arc;

use axum::{
    Router,
    extract::{
        State,
        ws::{Message as ClientMessage, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as UpstreamMessage;

use crate::metrics::Metrics;

/// Largest message either way (account notifications can be large).
const MAX_MESSAGE: usize = 16 << 20;
/// Bytes queued for a client that does not read before it is closed.
const MAX_WRITE_BUFFER: usize = 32 << 20;

/// The proxy's bounds and upstreams.
#[derive(Debug)]
pub struct WsProxy {
    upstream: Vec<String>,
    clients: Arc<Semaphore>,
    max_subscriptions: usize,
    metrics: Metrics,
}

impl WsProxy {
    /// A proxy to `upstream` (in order of preference).
    pub fn new(
        upstream: Vec<String>,
        max_clients: usize,
        max_subscriptions: usize,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            upstream,
            clients: Arc::new(Semaphore::new(max_clients.max(1))),
            max_subscriptions,
            metrics,
        })
    }

    /// Proxies one client until either side closes.
    async fn serve(&self, client: WebSocket) {
        let mut upstream = None;
        for url in &self.upstream {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => {
                    upstream = Some(socket);
                    break;
                }
                Err(e) => tracing::debug!(%url, error = %e, "cluster websocket unreachable"),
            }
        }
        let (mut to_client, mut from_client) = client.split();
        let Some(upstream) = upstream else {
            self.count("refused_upstream_unreachable");
            let _ = to_client.send(ClientMessage::Close(None)).await;
            return;
        };
        let (mut to_upstream, mut from_upstream) = upstream.split();
        let mut subscriptions = 0usize;
        loop {
            tokio::select! {
                m = from_client.next() => {
                    let Some(Ok(m)) = m else { break };
                    let text = match m {
                        ClientMessage::Text(t) => t.as_str().to_owned(),
                        ClientMessage::Binary(b) => match String::from_utf8(b.to_vec()) {
                            Ok(t) => t,
                            Err(_) => continue,
                        },
                        ClientMessage::Close(_) => break,
                        // Answered by the websocket layer itself.
                        ClientMessage::Ping(_) | ClientMessage::Pong(_) => continue,
                    };
                    if let Some(refusal) = self.admit(&text, &mut subscriptions) {
                        if to_client.send(ClientMessage::Text(refusal.into())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    self.count("to_upstream");
                    if to_upstream.send(UpstreamMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                m = from_upstream.next() => {
                    let Some(Ok(m)) = m else { break };
                    let out = match m {
                        UpstreamMessage::Text(t) => ClientMessage::Text(t.as_str().to_owned().into()),
                        UpstreamMessage::Binary(b) => ClientMessage::Binary(b),
                        UpstreamMessage::Close(_) => break,
                        _ => continue,
                    };
                    self.count("to_client");
                    if to_client.send(out).await.is_err() {
                        // Gone, or too slow (its write buffer is full).
                        break;
                    }
                }
            }
        }
        let _ = to_upstream.close().await;
        let _ = to_client.close().await;
    }

    /// A local refusal of a client's request, if it must be refused: a subscription
    /// beyond the per-client limit. Counts the subscriptions it lets through.
    fn admit(&self, text: &str, subscriptions: &mut usize) -> Option<String> {
        let request: Value = serde_json::from_str(text).ok()?;
        let method = request.get("method")?.as_str()?;
        if method.ends_with("Unsubscribe") {
            *subscriptions = subscriptions.saturating_sub(1);
            return None;
        }
        if !method.ends_with("Subscribe") {
            return None;
        }
        if *subscriptions >= self.max_subscriptions {
            self.count("refused_subscription_limit");
            return Some(
                json!({
                    "jsonrpc": "2.0",
                    "id": request.get("id").cloned().unwrap_or(Value::Null),
                    "error": {
                        "code": crate::rpc::code::NODE_UNHEALTHY,
                        "message": format!(
                            "Node is unhealthy: at most {} subscriptions per connection",
                            self.max_subscriptions
                        ),
                    },
                })
                .to_string(),
            );
        }
        *subscriptions += 1;
        None
    }

    fn count(&self, what: &str) {
        self.metrics.websocket.with_label_values(&[what]).inc();
    }
}

/// The websocket listener's router.
/// The proxy's router; with `gate` (API keys configured), the upgrade needs a key
/// (browsers cannot set headers on a websocket: `?api-key=` works too).
pub fn router(proxy: Arc<WsProxy>, gate: Option<crate::auth::Gate>) -> Router {
    let router = Router::new().route("/", get(upgrade));
    let router = match gate {
        Some(gate) => router.layer(axum::middleware::from_fn_with_state(
            gate,
            crate::auth::require_key,
        )),
        None => router,
    };
    router.with_state(proxy)
}

async fn upgrade(State(proxy): State<Arc<WsProxy>>, ws: WebSocketUpgrade) -> Response {
    let Ok(slot) = proxy.clients.clone().try_acquire_owned() else {
        proxy.count("refused_client_limit");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many websocket clients",
        )
            .into_response();
    };
    proxy.count("connections");
    ws.max_message_size(MAX_MESSAGE)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            proxy.metrics.websocket_clients.inc();
            proxy.serve(socket).await;
            proxy.metrics.websocket_clients.dec();
            drop(slot);
        })
}
