//! HTTP routes: JSON-RPC on `POST /`, raw or JSON transactions on
//! `POST /v1/transactions`, a transaction's lifecycle on
//! `GET /v1/transactions/{signature}`, `/health`, `/ready`; and `/metrics` on its
//! own listener. Every ingress answer names the instance that gave it
//! (`x-afterburner-instance`): a lifecycle lives where its transaction was accepted.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use prometheus::Encoder as _;
use serde::Deserialize;
use serde_json::json;
use solana_sdk::signature::Signature;
use tokio::sync::broadcast;

use crate::{
    auth::{self, Caller},
    rpc::{self, SendError, SendOptions, Sender as _},
    service::Service,
    validate::{self, Encoding},
};

/// The response header naming the instance.
pub const INSTANCE_HEADER: &str = "x-afterburner-instance";

/// The ingress router. With `gate` (API keys configured), every route but
/// `/health` and `/ready` (for load balancers and probes) needs a key.
pub fn router(service: Arc<Service>, max_body: usize, gate: Option<auth::Gate>) -> Router {
    let mut client_facing = Router::new()
        .route("/", post(json_rpc))
        .route("/v1/transactions", post(transactions))
        .route("/v1/transactions/events", get(events))
        .route("/v1/transactions/{signature}", get(lifecycle))
        .route("/v1/leaders", get(leaders));
    if let Some(gate) = gate {
        client_facing =
            client_facing.layer(middleware::from_fn_with_state(gate, auth::require_key));
    }
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(client_facing)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::map_response_with_state(
            service.clone(),
            name_instance,
        ))
        .with_state(service)
}

async fn name_instance(State(service): State<Arc<Service>>, mut response: Response) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(service.instance()) {
        response.headers_mut().insert(INSTANCE_HEADER, v);
    }
    response
}

/// The query of `GET /v1/transactions/events`.
#[derive(Debug, Deserialize)]
struct EventFilter {
    /// Only this transaction's events.
    signature: Option<String>,
}

/// `GET /v1/transactions/events[?signature=…]`: lifecycle events as they happen,
/// as Server-Sent Events (`data:` one JSON object each). A subscriber that falls
/// more than `service::EVENT_BUFFER` events behind gets a `lagged` event saying how
/// many it missed, then continues.
async fn events(
    State(service): State<Arc<Service>>,
    caller: Option<Extension<Caller>>,
    Query(filter): Query<EventFilter>,
) -> Response {
    // With API keys, a key sees its own transactions' events only.
    let scope = caller.map(|Extension(c)| c.0.index);
    let only = match filter.signature.as_deref().map(str::parse::<Signature>) {
        None => None,
        Some(Ok(sig)) => Some(sig),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "not a base58 transaction signature"})),
            )
                .into_response();
        }
    };
    let rx = service.subscribe();
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            let event = match rx.recv().await {
                Ok(e)
                    if only.is_none_or(|s| s == e.signature)
                        && scope.is_none_or(|k| e.client == Some(k)) =>
                {
                    SseEvent::default().data(e.data.to_string())
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    SseEvent::default().data(json!({"event": "lagged", "missed": n}).to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(event), rx));
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /v1/leaders`: the leaders to send to and keep warm now, our connections to
/// them, and their records.
async fn leaders(State(service): State<Arc<Service>>) -> Response {
    match service.leaders().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => refusal(&e),
    }
}

/// `GET /v1/transactions/{signature}`: the lifecycle record, 404 when this instance
/// does not know the signature (never accepted here, or forgotten).
async fn lifecycle(
    State(service): State<Arc<Service>>,
    caller: Option<Extension<Caller>>,
    Path(signature): Path<String>,
) -> Response {
    let Ok(signature) = signature.parse::<Signature>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not a base58 transaction signature"})),
        )
            .into_response();
    };
    // With API keys, another key's transaction is as unknown as one never seen.
    let scope = caller.map(|Extension(c)| c.0.index);
    match service.lifecycle_for(signature, scope).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": "unknown signature: not accepted by this instance, or forgotten",
                "instance": service.instance(),
            })),
        )
            .into_response(),
        Err(e) => refusal(&e),
    }
}

/// The metrics router.
pub fn metrics_router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(service)
}

async fn json_rpc(
    State(service): State<Arc<Service>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Response {
    let received_at = std::time::Instant::now();
    let sender = service.as_caller(caller.map(|Extension(c)| c.0));
    let response = rpc::handle_body(&body, &sender, received_at);
    count_rpc(&service, &response.calls);
    let mut out = match response.body {
        Some(v) => Json(v).into_response(),
        None => StatusCode::OK.into_response(),
    };
    if let Some(wait) = response.retry_after {
        too_many(&mut out, wait);
    }
    out
}

/// Makes `response` a 429 that says when to come back, in whole seconds, at least
/// one (queues drain within a second at the rates they are sized for; a key's
/// rate says when its next token is there).
fn too_many(response: &mut Response, wait: std::time::Duration) {
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

/// Counts each call by method and result, and refused sends by reason, from what
/// the JSON-RPC layer reports (the body is parsed once, there).
fn count_rpc(service: &Service, calls: &[rpc::CallRecord]) {
    let m = service.metrics();
    for call in calls {
        let result = call.result_label();
        m.rpc_requests
            .with_label_values(&[call.method.label(), &*result])
            .inc();
        if let Some(reason) = call.reject {
            service.count_reject(reason);
        }
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
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = std::time::Instant::now();
    let sender = service.as_caller(caller.map(|Extension(c)| c.0));
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let result = if is_json {
        match serde_json::from_slice::<TxBody>(&body) {
            Err(e) => Err(SendError::InvalidParams(format!("Invalid params: {e}."))),
            Ok(b) => Encoding::parse(b.encoding.as_deref().unwrap_or("base64"))
                .and_then(|enc| validate::decode(&b.transaction, enc, service.checks()))
                .map_err(SendError::from)
                .and_then(|wire| {
                    rpc::submit(
                        &sender,
                        wire,
                        SendOptions {
                            // No preflight unless asked: this route is for raw senders.
                            skip_preflight: b.skip_preflight.unwrap_or(true),
                            max_retries: b.max_retries,
                            ..SendOptions::default()
                        },
                        received_at,
                    )
                }),
        }
    } else {
        rpc::submit(
            &sender,
            body.to_vec(),
            SendOptions {
                skip_preflight: true,
                ..SendOptions::default()
            },
            received_at,
        )
    };
    match result {
        Ok(signature) => (StatusCode::OK, Json(json!({ "signature": signature }))).into_response(),
        Err(e) => {
            service.count_reject(e.reason());
            refusal(&e)
        }
    }
}

/// A REST refusal: its HTTP status (a 429 says when to retry) and agave's error
/// object.
fn refusal(e: &SendError) -> Response {
    let mut out = (
        status_of(e),
        Json(json!({ "error": e.rpc_error().to_json() })),
    )
        .into_response();
    if let Some(wait) = e.retry_after() {
        too_many(&mut out, wait);
    }
    out
}

/// The HTTP status of a refusal on the raw route: retry later (429), not now (503),
/// our failure (500), or the request's (400).
fn status_of(e: &SendError) -> StatusCode {
    match e {
        SendError::QueueFull | SendError::RateLimited { .. } | SendError::KeyShareFull => {
            StatusCode::TOO_MANY_REQUESTS
        }
        SendError::NotReady(_) | SendError::PreflightUnavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SendError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        SendError::InvalidParams(_)
        | SendError::Invalid(_)
        | SendError::PreflightRefused
        | SendError::PreflightFailed { .. }
        | SendError::MinContextSlotNotReached { .. } => StatusCode::BAD_REQUEST,
    }
}

/// Liveness: 503 while the engine thread is not running (restarting, or about to
/// exit), with why.
async fn health(State(service): State<Arc<Service>>) -> Response {
    match service.liveness() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}")).into_response(),
    }
}

/// Readiness: 503 when transactions cannot be sent now, with why; a stale schedule
/// (refreshes failing) is said but does not fail it while the schedule still covers
/// the slots ahead.
async fn ready(State(service): State<Arc<Service>>) -> Response {
    match service.ready() {
        Ok(()) => match service.stale() {
            None => (StatusCode::OK, "ready").into_response(),
            Some(why) => (StatusCode::OK, format!("ready (stale: {why})")).into_response(),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_says_when_to_retry() {
        let mut r = Json(json!({})).into_response();
        too_many(&mut r, std::time::Duration::from_millis(200));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let mut r = Json(json!({})).into_response();
        too_many(&mut r, std::time::Duration::from_millis(2_100));
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"3"[..]),
            "rounded up: never sooner than the next token"
        );
    }
    use crate::validate::ValidationError;

    /// The raw route's statuses: what the client can do about each refusal.
    #[test]
    fn refusals_map_to_http_statuses() {
        for (e, status) in [
            (SendError::QueueFull, StatusCode::TOO_MANY_REQUESTS),
            (
                SendError::NotReady("shutting down"),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                SendError::PreflightUnavailable("timeout".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                SendError::Internal("lock"),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                ValidationError::BadSignature.into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                SendError::MinContextSlotNotReached { context_slot: 1 },
                StatusCode::BAD_REQUEST,
            ),
        ] {
            assert_eq!(status_of(&e), status, "{e:?}");
        }
    }
}
