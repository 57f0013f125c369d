//! HTTP routes: JSON-RPC on `POST /`, raw or JSON transactions on
//! `POST /v1/transactions`, `/health`, `/ready`; and `/metrics` on its own listener.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus::Encoder as _;
use serde::Deserialize;
use serde_json::json;

use crate::{
    rpc::{self, RpcError, SendOptions, code},
    service::Service,
};

/// The ingress router.
pub fn router(service: Arc<Service>, max_body: usize) -> Router {
    Router::new()
        .route("/", post(json_rpc))
        .route("/v1/transactions", post(transactions))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(service)
}

/// The metrics router.
pub fn metrics_router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(service)
}

/// Counts a JSON-RPC response's results by method.
struct Counted<'a>(&'a Service);

impl rpc::Sender for Counted<'_> {
    fn send(&self, request: rpc::SendRequest) -> Result<String, RpcError> {
        rpc::Sender::send(self.0, request)
    }
    fn verify_signatures(&self) -> bool {
        rpc::Sender::verify_signatures(self.0)
    }
    fn health(&self) -> Result<(), String> {
        self.0.ready()
    }
    fn preflight(&self, request: &rpc::SendRequest) -> Result<(), RpcError> {
        rpc::Sender::preflight(self.0, request)
    }
}

async fn json_rpc(State(service): State<Arc<Service>>, body: Bytes) -> Response {
    let received_at = std::time::Instant::now();
    let response = rpc::handle_body(&body, &Counted(&service), received_at);
    count_rpc(&service, &body, &response);
    let status = if response.too_many {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    match response.body {
        Some(v) => (status, Json(v)).into_response(),
        None => status.into_response(),
    }
}

/// Records method/result counters and rejection reasons from a response.
fn count_rpc(service: &Service, body: &[u8], response: &rpc::Response) {
    let m = service.metrics();
    let methods: Vec<String> = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => items.iter().map(method_of).collect(),
        Ok(v) => vec![method_of(&v)],
        Err(_) => vec!["invalid".into()],
    };
    let results: Vec<&serde_json::Value> = match &response.body {
        Some(serde_json::Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    };
    for (method, r) in methods.iter().zip(results) {
        let result = match r.get("error") {
            None => "ok".to_string(),
            Some(e) => {
                let code = e
                    .get("code")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0);
                if method == "sendTransaction" {
                    let err = RpcError {
                        code,
                        message: e
                            .get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("")
                            .into(),
                        data: None,
                    };
                    service.count_reject(&err);
                }
                code.to_string()
            }
        };
        m.rpc_requests
            .with_label_values(&[method.as_str(), result.as_str()])
            .inc();
    }
}

/// The method name, bounded to the ones we know (label cardinality).
fn method_of(v: &serde_json::Value) -> String {
    match v.get("method").and_then(|m| m.as_str()) {
        Some(m @ ("sendTransaction" | "getHealth" | "getVersion")) => m.to_string(),
        Some(_) => "other".into(),
        None => "invalid".into(),
    }
}

/// JSON body of `POST /v1/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TxBody {
    transaction: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    max_retries: Option<usize>,
    #[serde(default)]
    skip_preflight: Option<bool>,
}

async fn transactions(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = std::time::Instant::now();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let result = if is_json {
        match serde_json::from_slice::<TxBody>(&body) {
            Err(e) => Err(RpcError::invalid_params(format!("Invalid params: {e}."))),
            Ok(b) => {
                let encoding = b.encoding.as_deref().unwrap_or("base64");
                crate::validate::Encoding::parse(encoding)
                    .and_then(|enc| crate::validate::decode(&b.transaction, enc))
                    .and_then(|wire| {
                        service.send_wire(
                            wire,
                            received_at,
                            SendOptions {
                                // No preflight unless asked: this route is for raw senders.
                                skip_preflight: b.skip_preflight.unwrap_or(true),
                                max_retries: b.max_retries,
                                ..SendOptions::default()
                            },
                        )
                    })
            }
        }
    } else {
        service.send_wire(
            body.to_vec(),
            received_at,
            SendOptions {
                skip_preflight: true,
                ..SendOptions::default()
            },
        )
    };
    match result {
        Ok(signature) => (StatusCode::OK, Json(json!({ "signature": signature }))).into_response(),
        Err(e) => {
            service.count_reject(&e);
            let status = match e.code {
                code::QUEUE_FULL => StatusCode::TOO_MANY_REQUESTS,
                code::NODE_UNHEALTHY => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({ "error": e.to_json() }))).into_response()
        }
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(service): State<Arc<Service>>) -> Response {
    match service.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response(),
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    service.update_gauges();
    let m = service.metrics();
    let families = m.registry.gather();
    let mut out = Vec::new();
    match prometheus::TextEncoder::new().encode(&families, &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
