//! JSON-RPC 2.0 as agave's RPC speaks it (jsonrpc-core): the envelope, batches,
//! error objects and their codes, and the methods we serve. Parsing is sans-IO; the
//! service behind `sendTransaction` is the [`Sender`] trait.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::validate::{self, Encoding};

/// JSON-RPC error codes (standard ones, and Solana's we use).
pub mod code {
    /// Malformed JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// agave: preflight simulation failed (also: a bad signature with preflight on).
    pub const PREFLIGHT_FAILURE: i64 = -32002;
    /// agave: node unhealthy (we: no fresh leader schedule).
    pub const NODE_UNHEALTHY: i64 = -32005;
    /// agave: minContextSlot not reached.
    pub const MIN_CONTEXT_SLOT_NOT_REACHED: i64 = -32016;
    /// Ours: the send queue is full (HTTP 429), retry later.
    pub const QUEUE_FULL: i64 = -32090;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
    /// Optional data.
    pub data: Option<Value>,
}

impl RpcError {
    /// -32602 with `message` as given.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: code::INVALID_PARAMS,
            message: message.into(),
            data: None,
        }
    }

    /// agave's preflight failure: -32002 "Transaction simulation failed: {what}", with
    /// a simulation-result-shaped `data` whose `err` is `err`.
    pub fn preflight_failure(what: &str, err: &str) -> Self {
        Self {
            code: code::PREFLIGHT_FAILURE,
            message: format!("Transaction simulation failed: {what}"),
            data: Some(json!({
                "err": err, "logs": [], "accounts": null, "unitsConsumed": 0,
                "returnData": null, "innerInstructions": null,
            })),
        }
    }

    fn plain(code: i64, message: &str) -> Self {
        Self {
            code,
            message: message.to_string(),
            data: None,
        }
    }

    /// The error object.
    pub fn to_json(&self) -> Value {
        match &self.data {
            Some(d) => json!({"code": self.code, "message": self.message, "data": d}),
            None => json!({"code": self.code, "message": self.message}),
        }
    }
}

/// The `sendTransaction` options (agave's `RpcSendTransactionConfig`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SendOptions {
    /// Skip preflight simulation.
    #[serde(default)]
    pub skip_preflight: bool,
    /// Commitment for the preflight simulation.
    pub preflight_commitment: Option<String>,
    /// `base58` (default) or `base64`.
    pub encoding: Option<String>,
    /// Rebroadcasts at most this many times.
    pub max_retries: Option<usize>,
    /// Refuse unless our slot is at least this.
    pub min_context_slot: Option<u64>,
}

/// What `sendTransaction` hands the service.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// The validated transaction.
    pub tx: validate::Validated,
    /// The options.
    pub options: SendOptions,
    /// When the HTTP request had been read (latency is measured from here).
    pub received_at: Instant,
}

/// The service behind the methods.
pub trait Sender: Send + Sync {
    /// Accepts a validated transaction: `Ok(signature)` once it is queued (or was
    /// already, as a duplicate), or an error for the client.
    fn send(&self, request: SendRequest) -> Result<String, RpcError>;
    /// Whether signatures are verified.
    fn verify_signatures(&self) -> bool;
    /// Whether the node is healthy (`getHealth`), or why not.
    fn health(&self) -> Result<(), String>;
    /// Preflight check for `skipPreflight: false` (simulation forwarded, or refused).
    fn preflight(&self, request: &SendRequest) -> Result<(), RpcError>;
}

/// A response to send back, with the HTTP status it calls for.
#[derive(Debug)]
pub struct Response {
    /// The JSON body (`None`: nothing to send back, all notifications).
    pub body: Option<Value>,
    /// HTTP 429 when a send was refused for a full queue.
    pub too_many: bool,
}

/// Handles one HTTP body (read at `received_at`): a request or a batch.
pub fn handle_body(body: &[u8], sender: &dyn Sender, received_at: Instant) -> Response {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return Response {
                body: Some(error_response(
                    Value::Null,
                    &RpcError::plain(code::PARSE_ERROR, "Parse error"),
                )),
                too_many: false,
            };
        }
    };
    let mut too_many = false;
    let body = match value {
        Value::Array(items) if items.is_empty() => Some(error_response(
            Value::Null,
            &RpcError::plain(code::INVALID_REQUEST, "Invalid request"),
        )),
        Value::Array(items) => {
            let out: Vec<Value> = items
                .into_iter()
                .filter_map(|item| handle_one(item, sender, &mut too_many, received_at))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        single => handle_one(single, sender, &mut too_many, received_at),
    };
    Response { body, too_many }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": e.to_json(), "id": id})
}

/// One request object; `None` for a notification (no `id`).
fn handle_one(
    item: Value,
    sender: &dyn Sender,
    too_many: &mut bool,
    received_at: Instant,
) -> Option<Value> {
    let Value::Object(mut obj) = item else {
        return Some(error_response(
            Value::Null,
            &RpcError::plain(code::INVALID_REQUEST, "Invalid request"),
        ));
    };
    let id = obj.remove("id");
    let valid_id = matches!(
        id,
        None | Some(Value::Null | Value::Number(_) | Value::String(_))
    );
    let method = match obj.remove("method") {
        Some(Value::String(m)) if obj.get("jsonrpc") == Some(&json!("2.0")) && valid_id => m,
        _ => {
            return Some(error_response(
                id.filter(|_| valid_id).unwrap_or(Value::Null),
                &RpcError::plain(code::INVALID_REQUEST, "Invalid request"),
            ));
        }
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    let result = call(&method, params, sender, received_at);
    if let Err(e) = &result
        && e.code == code::QUEUE_FULL
    {
        *too_many = true;
    }
    let id = id?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": id}),
        Err(e) => error_response(id, &e),
    })
}

fn call(
    method: &str,
    params: Value,
    sender: &dyn Sender,
    received_at: Instant,
) -> Result<Value, RpcError> {
    match method {
        "sendTransaction" => send_transaction(params, sender, received_at).map(Value::String),
        "getHealth" => sender
            .health()
            .map(|()| json!("ok"))
            .map_err(|why| RpcError {
                code: code::NODE_UNHEALTHY,
                message: format!("Node is unhealthy: {why}"),
                data: None,
            }),
        "getVersion" => Ok(json!({
            "solana-core": env!("CARGO_PKG_VERSION"),
            "feature-set": null,
            "afterburner": env!("CARGO_PKG_VERSION"),
        })),
        _ => Err(RpcError::plain(code::METHOD_NOT_FOUND, "Method not found")),
    }
}

/// Parses `sendTransaction` params, validates the transaction and hands it on.
fn send_transaction(
    params: Value,
    sender: &dyn Sender,
    received_at: Instant,
) -> Result<String, RpcError> {
    let (data, options) = parse_send_params(params)?;
    let encoding = Encoding::parse(options.encoding.as_deref().unwrap_or("base58"))?;
    let wire = validate::decode(&data, encoding)?;
    let tx = validate::validate(wire, sender.verify_signatures())?;
    let request = SendRequest {
        tx,
        options,
        received_at,
    };
    if !request.options.skip_preflight {
        sender.preflight(&request)?;
    }
    sender.send(request)
}

/// `[data, options?]` as jsonrpc-core's positional params parse them.
pub fn parse_send_params(params: Value) -> Result<(String, SendOptions), RpcError> {
    let invalid = |e: serde_json::Error| RpcError::invalid_params(format!("Invalid params: {e}."));
    match params {
        Value::Array(mut items) => {
            if items.is_empty() || items.len() > 2 {
                return Err(RpcError::invalid_params(format!(
                    "Invalid params: invalid length {}, expected a tuple of size 1 or 2.",
                    items.len()
                )));
            }
            let options = if items.len() == 2 {
                match items.pop() {
                    Some(Value::Null) | None => SendOptions::default(),
                    Some(v) => serde_json::from_value(v).map_err(invalid)?,
                }
            } else {
                SendOptions::default()
            };
            let data: String = serde_json::from_value(items.remove(0)).map_err(invalid)?;
            Ok((data, options))
        }
        Value::Null => Err(RpcError::invalid_params(
            "Invalid params: invalid type: null, expected a tuple of size 1 or 2.",
        )),
        other => Err(RpcError::invalid_params(format!(
            "Invalid params: invalid type: {}, expected a tuple of size 1 or 2.",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "sequence",
        Value::Object(_) => "map",
    }
}
