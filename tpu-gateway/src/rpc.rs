//! JSON-RPC 2.0 as agave's RPC speaks it (jsonrpc-core): the envelope, batches,
//! error objects and their codes, and the methods we serve. Sans-IO. A body is
//! parsed once, into typed envelopes; each call's answer comes back with what the
//! metrics count ([`CallRecord`]), so nothing downstream parses the body or the
//! response again. The service behind `sendTransaction` is the [`Sender`] trait; its
//! refusals are [`SendError`], turned into agave's error objects in one place
//! ([`SendError::rpc_error`]).

use std::{borrow::Cow, fmt, time::Instant};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{MapAccess, SeqAccess, Visitor},
};
use serde_json::{Value, json};
use solana_sdk::signature::Signature;
use strum::{EnumIter, IntoStaticStr};

use crate::validate::{self, Encoding, ValidationError};

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
    /// agave: node unhealthy (we: `getHealth` without a fresh leader schedule, a
    /// preflight the RPC could not run, or shutting down).
    pub const NODE_UNHEALTHY: i64 = -32005;
    /// agave: minContextSlot not reached.
    pub const MIN_CONTEXT_SLOT_NOT_REACHED: i64 = -32016;
    /// Ours: the send queue is full (HTTP 429), retry later.
    pub const QUEUE_FULL: i64 = -32090;
}

/// A JSON-RPC error object: what a client sees.
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
    pub(crate) fn plain(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
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

/// Why a transaction was refused: the label of `transactions_rejected_total`.
/// Every value is registered up front (see `Metrics::new`), so the set is this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum RejectReason {
    /// Malformed params (or request, for a `sendTransaction` call), or a preflight
    /// this gateway does not do.
    InvalidParams,
    /// Unsupported encoding, or the text is not in its encoding.
    Encoding,
    /// Over agave's encoded or decoded size limits.
    TooLarge,
    /// bincode refused the bytes.
    Undeserializable,
    /// The message is inconsistent or loads an account twice.
    Sanitize,
    /// A signature does not verify.
    BadSignature,
    /// The forwarded preflight simulation failed.
    Preflight,
    /// `minContextSlot` is ahead of our slot.
    MinContextSlot,
    /// The send queue is full.
    QueueFull,
    /// Over the API key's rate.
    RateLimited,
    /// The API key's share of the send queue is taken.
    KeyShareFull,
    /// Not ready: shutting down, preflight RPC unreachable, or our own failure.
    NotReady,
}

impl RejectReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// Why `sendTransaction` (or `POST /v1/transactions`) refused a transaction.
/// `Display` is the message clients get; [`SendError::rpc_error`] adds agave's code
/// and data.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The params are not `[data, options?]` (jsonrpc-core's message), or the raw
    /// route's JSON body does not parse.
    #[error("{0}")]
    InvalidParams(String),
    /// The transaction failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// `skipPreflight: false`, and this gateway is configured to refuse it.
    #[error(
        "preflight simulation is not available on this gateway (no RPC configured for it); \
         send with skipPreflight: true"
    )]
    PreflightRefused,
    /// The forwarded simulation failed: its error, and the simulation result.
    #[error("Transaction simulation failed: {error}")]
    PreflightFailed {
        /// The simulation's error, as agave prints it.
        error: String,
        /// The simulation result (agave's `data`).
        simulation: Option<Value>,
    },
    /// The forwarded simulation could not be run.
    #[error("Node is unhealthy: preflight simulation failed: {0}")]
    PreflightUnavailable(String),
    /// Not accepting transactions (shutting down).
    #[error("Node is unhealthy: {0}")]
    NotReady(&'static str),
    /// `minContextSlot` is ahead of our current slot.
    #[error("Minimum context slot has not been reached")]
    MinContextSlotNotReached {
        /// Our current slot (agave's `data.contextSlot`).
        context_slot: u64,
    },
    /// The send queue is full (HTTP 429): retry later.
    #[error("Too many requests: the send queue is full, retry later")]
    QueueFull,
    /// Over the API key's rate (HTTP 429 with `Retry-After`).
    #[error("Too many requests: over this API key's rate, retry in {} ms", .retry_after.as_millis())]
    RateLimited {
        /// Until a transaction fits the rate again.
        retry_after: std::time::Duration,
    },
    /// The API key's transactions hold its whole share of the send queue (HTTP 429).
    #[error("Too many requests: this API key's share of the send queue is full, retry later")]
    KeyShareFull,
    /// Our failure (a poisoned lock).
    #[error("Internal error: {0}")]
    Internal(&'static str),
}

impl SendError {
    /// agave's JSON-RPC error for this refusal: code, message (`Display`), data.
    pub fn rpc_error(&self) -> RpcError {
        let code = match self {
            Self::InvalidParams(_)
            | Self::PreflightRefused
            | Self::Invalid(
                ValidationError::UnsupportedEncoding(_)
                | ValidationError::UnknownEncoding(_)
                | ValidationError::Base58TooLarge { .. }
                | ValidationError::Base64TooLarge { .. }
                | ValidationError::InvalidBase58(_)
                | ValidationError::InvalidBase64(_)
                | ValidationError::DecodedTooLarge { .. }
                | ValidationError::Undeserializable(_)
                | ValidationError::Unsanitary
                | ValidationError::DuplicateAccount,
            ) => code::INVALID_PARAMS,
            // agave reports a bad signature as the failed simulation it runs into.
            Self::Invalid(ValidationError::BadSignature) | Self::PreflightFailed { .. } => {
                code::PREFLIGHT_FAILURE
            }
            Self::PreflightUnavailable(_) | Self::NotReady(_) => code::NODE_UNHEALTHY,
            Self::MinContextSlotNotReached { .. } => code::MIN_CONTEXT_SLOT_NOT_REACHED,
            Self::QueueFull | Self::RateLimited { .. } | Self::KeyShareFull => code::QUEUE_FULL,
            Self::Internal(_) => code::INTERNAL_ERROR,
        };
        let data = match self {
            // The shape of agave's simulation result, with the error it names.
            Self::Invalid(ValidationError::BadSignature) => Some(json!({
                "err": "SignatureFailure", "logs": [], "accounts": null, "unitsConsumed": 0,
                "returnData": null, "innerInstructions": null,
            })),
            Self::PreflightFailed { simulation, .. } => simulation.clone(),
            Self::MinContextSlotNotReached { context_slot } => {
                Some(json!({"contextSlot": context_slot}))
            }
            _ => None,
        };
        RpcError {
            code,
            message: self.to_string(),
            data,
        }
    }

    /// The rejection counter's label.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::InvalidParams(_) | Self::PreflightRefused => RejectReason::InvalidParams,
            Self::Invalid(v) => match v {
                ValidationError::UnsupportedEncoding(_)
                | ValidationError::UnknownEncoding(_)
                | ValidationError::InvalidBase58(_)
                | ValidationError::InvalidBase64(_) => RejectReason::Encoding,
                ValidationError::Base58TooLarge { .. }
                | ValidationError::Base64TooLarge { .. }
                | ValidationError::DecodedTooLarge { .. } => RejectReason::TooLarge,
                ValidationError::Undeserializable(_) => RejectReason::Undeserializable,
                ValidationError::Unsanitary | ValidationError::DuplicateAccount => {
                    RejectReason::Sanitize
                }
                ValidationError::BadSignature => RejectReason::BadSignature,
            },
            Self::PreflightFailed { .. } => RejectReason::Preflight,
            Self::PreflightUnavailable(_) | Self::NotReady(_) | Self::Internal(_) => {
                RejectReason::NotReady
            }
            Self::MinContextSlotNotReached { .. } => RejectReason::MinContextSlot,
            Self::QueueFull => RejectReason::QueueFull,
            Self::RateLimited { .. } => RejectReason::RateLimited,
            Self::KeyShareFull => RejectReason::KeyShareFull,
        }
    }

    /// How long to tell the client to wait (HTTP 429's `Retry-After`), for the
    /// refusals that are about load.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::QueueFull | Self::KeyShareFull => Some(std::time::Duration::from_secs(1)),
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
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
    /// already, as a duplicate), or why not.
    ///
    /// # Errors
    /// The refusal, for the client.
    fn send(&self, request: SendRequest) -> Result<String, SendError>;
    /// What validation checks (size limit, signatures).
    fn checks(&self) -> validate::Checks;
    /// Whether `method` is answered by the cluster RPC (drop-in RPC).
    fn forwards(&self, method: &str) -> bool;
    /// The cluster RPC's answer to a forwarded `method(params)`.
    ///
    /// # Errors
    /// The RPC's error, or why it could not be asked.
    fn forward(&self, method: &str, params: Value) -> Result<Value, RpcError>;
    /// The lifecycle record of `signature` (`None`: not known to this instance).
    ///
    /// # Errors
    /// Why it could not be asked.
    fn lifecycle(&self, signature: Signature) -> Result<Option<Value>, SendError>;
    /// Whether the node is healthy (`getHealth`), or why not.
    ///
    /// # Errors
    /// Why not.
    fn health(&self) -> Result<(), String>;
    /// Preflight check for `skipPreflight: false` (simulation forwarded, or refused).
    ///
    /// # Errors
    /// The refusal, for the client.
    fn preflight(&self, request: &SendRequest) -> Result<(), SendError>;
}

/// Validates wire bytes, runs preflight unless skipped, and hands the transaction
/// to `sender`: the one send path, for `sendTransaction` and the raw route alike.
///
/// # Errors
/// The first refusal.
pub fn submit(
    sender: &dyn Sender,
    wire: Vec<u8>,
    options: SendOptions,
    received_at: Instant,
) -> Result<String, SendError> {
    let tx = validate::validate(wire, sender.checks())?;
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

/// The `method` label of `rpc_requests_total`: the methods we serve, `other` for
/// any other name, `invalid` when there is no method name (label cardinality).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, EnumIter)]
#[strum(serialize_all = "camelCase")]
pub enum Method {
    /// `sendTransaction`.
    SendTransaction,
    /// `getHealth`.
    GetHealth,
    /// `getVersion`.
    GetVersion,
    /// `afterburner_getTransaction`: a transaction's lifecycle (ours).
    #[strum(serialize = "afterburner_getTransaction")]
    GetTransaction,
    /// A method answered by the cluster RPC (`rpc.forward_methods`).
    Forwarded,
    /// A method we do not serve.
    Other,
    /// Not a request, or no method name.
    Invalid,
}

impl Method {
    fn named(name: &str) -> Self {
        match name {
            "sendTransaction" => Self::SendTransaction,
            "getHealth" => Self::GetHealth,
            "getVersion" => Self::GetVersion,
            "afterburner_getTransaction" => Self::GetTransaction,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// What one call in a body was and how it ended: the metrics' labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// The method.
    pub method: Method,
    /// The error code, `None` for a result.
    pub error_code: Option<i64>,
    /// Why a `sendTransaction` call was refused.
    pub reject: Option<RejectReason>,
    /// For a refusal about load: how long to wait.
    pub retry_after: Option<std::time::Duration>,
}

impl CallRecord {
    /// The `result` label: `ok` or the error code.
    pub fn result_label(&self) -> Cow<'static, str> {
        match self.error_code {
            None => Cow::Borrowed("ok"),
            Some(code) => Cow::Owned(code.to_string()),
        }
    }
}

/// A response to send back, with the HTTP status it calls for.
#[derive(Debug)]
pub struct Response {
    /// The JSON body (`None`: nothing to send back, all notifications).
    pub body: Option<Value>,
    /// HTTP 429 when the request (not a batch) was a send refused for load (a full
    /// queue, the API key's rate or share).
    pub too_many: bool,
    /// With `too_many`: how long to wait (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
    /// Every call in the body, in order, notifications included; a body that is not
    /// a request at all (malformed JSON, an empty batch) is one `invalid` call.
    pub calls: Vec<CallRecord>,
}

/// Handles one HTTP body (read at `received_at`): a request or a batch.
pub fn handle_body(body: &[u8], sender: &dyn Sender, received_at: Instant) -> Response {
    let mut calls = Vec::new();
    let mut batch = false;
    let body = match serde_json::from_slice::<Body>(body) {
        Err(_) => Some(refuse(
            Method::Invalid,
            &Id::Null,
            &RpcError::plain(code::PARSE_ERROR, "Parse error"),
            &mut calls,
        )),
        Ok(Body::Batch(items)) if items.is_empty() => {
            Some(invalid_request(Method::Invalid, &Id::Null, &mut calls))
        }
        Ok(Body::Batch(items)) => {
            batch = true;
            let out: Vec<Value> = items
                .into_iter()
                .filter_map(|item| handle_one(item, sender, received_at, &mut calls))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        Ok(Body::Single(item)) => handle_one(item, sender, received_at, &mut calls),
    };
    // A batch answers per item: one full queue does not turn its successes into a
    // 429.
    let retry_after = if batch {
        None
    } else {
        calls.iter().filter_map(|c| c.retry_after).max()
    };
    Response {
        body,
        too_many: retry_after.is_some(),
        retry_after,
        calls,
    }
}

fn error_response(id: &Id, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": e.to_json(), "id": id})
}

/// Records a call that ended before any method ran, and its error response.
fn refuse(method: Method, id: &Id, e: &RpcError, calls: &mut Vec<CallRecord>) -> Value {
    calls.push(CallRecord {
        method,
        error_code: Some(e.code),
        // A `sendTransaction` that is not a valid request is a refused transaction.
        reject: (method == Method::SendTransaction).then_some(RejectReason::InvalidParams),
        retry_after: None,
    });
    error_response(id, e)
}

fn invalid_request(method: Method, id: &Id, calls: &mut Vec<CallRecord>) -> Value {
    refuse(
        method,
        id,
        &RpcError::plain(code::INVALID_REQUEST, "Invalid request"),
        calls,
    )
}

/// One request; `None` for a notification (no `id`).
fn handle_one(
    item: Item,
    sender: &dyn Sender,
    received_at: Instant,
    calls: &mut Vec<CallRecord>,
) -> Option<Value> {
    let Item::Object(envelope) = item else {
        return Some(invalid_request(Method::Invalid, &Id::Null, calls));
    };
    let method = match envelope.method.as_deref() {
        None => Method::Invalid,
        Some(name) => match Method::named(name) {
            Method::Other if sender.forwards(name) => Method::Forwarded,
            m => m,
        },
    };
    let id = match envelope.id {
        IdField::Absent => None,
        IdField::Valid(id) => Some(id),
        IdField::Invalid => return Some(invalid_request(method, &Id::Null, calls)),
    };
    if !envelope.v2 || envelope.method.is_none() {
        return Some(invalid_request(
            method,
            id.as_ref().unwrap_or(&Id::Null),
            calls,
        ));
    }
    let name = envelope.method.as_deref().unwrap_or_default();
    let (result, refused) = call(method, name, envelope.params, sender, received_at);
    calls.push(CallRecord {
        method,
        error_code: result.as_ref().err().map(|e| e.code),
        reject: refused.as_ref().map(SendError::reason),
        retry_after: refused.as_ref().and_then(SendError::retry_after),
    });
    let id = id?;
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "result": v, "id": id}),
        Err(e) => error_response(&id, &e),
    })
}

/// Runs one method: its result, and why a send was refused.
fn call(
    method: Method,
    name: &str,
    params: Value,
    sender: &dyn Sender,
    received_at: Instant,
) -> (Result<Value, RpcError>, Option<SendError>) {
    match method {
        Method::Forwarded => (sender.forward(name, params), None),
        Method::SendTransaction => match send_transaction(params, sender, received_at) {
            Ok(signature) => (Ok(Value::String(signature)), None),
            Err(e) => (Err(e.rpc_error()), Some(e)),
        },
        Method::GetHealth => (
            sender.health().map(|()| json!("ok")).map_err(|why| {
                RpcError::plain(code::NODE_UNHEALTHY, format!("Node is unhealthy: {why}"))
            }),
            None,
        ),
        Method::GetVersion => (
            Ok(json!({
                "solana-core": env!("CARGO_PKG_VERSION"),
                "feature-set": null,
                "afterburner": env!("CARGO_PKG_VERSION"),
            })),
            None,
        ),
        Method::GetTransaction => match parse_signature_param(params) {
            Ok(signature) => (
                sender
                    .lifecycle(signature)
                    .map(|r| r.unwrap_or(Value::Null))
                    .map_err(|e| e.rpc_error()),
                None,
            ),
            Err(e) => (Err(e.rpc_error()), None),
        },
        Method::Other | Method::Invalid => (
            Err(RpcError::plain(code::METHOD_NOT_FOUND, "Method not found")),
            None,
        ),
    }
}

/// Parses `sendTransaction` params and decodes the transaction, then [`submit`].
fn send_transaction(
    params: Value,
    sender: &dyn Sender,
    received_at: Instant,
) -> Result<String, SendError> {
    let (data, options) = parse_send_params(params)?;
    let encoding = Encoding::parse(options.encoding.as_deref().unwrap_or("base58"))?;
    let wire = validate::decode(&data, encoding, sender.checks())?;
    submit(sender, wire, options, received_at)
}

/// `[signature]` (base58) for `afterburner_getTransaction`.
fn parse_signature_param(params: Value) -> Result<Signature, SendError> {
    let invalid = || SendError::InvalidParams("Invalid params: expected [signature]".into());
    match params {
        Value::Array(items) if items.len() == 1 => items[0]
            .as_str()
            .ok_or_else(invalid)?
            .parse()
            .map_err(|_| SendError::InvalidParams("Invalid param: Invalid".into())),
        _ => Err(invalid()),
    }
}

/// `[data, options?]` as jsonrpc-core's positional params parse them.
///
/// # Errors
/// [`SendError::InvalidParams`] with jsonrpc-core's message.
pub fn parse_send_params(params: Value) -> Result<(String, SendOptions), SendError> {
    let invalid = |e: serde_json::Error| SendError::InvalidParams(format!("Invalid params: {e}."));
    match params {
        Value::Array(mut items) => {
            if items.is_empty() || items.len() > 2 {
                return Err(SendError::InvalidParams(format!(
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
        other => Err(SendError::InvalidParams(format!(
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

/// A request body: one request or a batch (jsonrpc-core's `Request`). Anything that
/// is JSON parses; what is not a valid request is answered per request (-32600).
#[derive(Debug)]
enum Body {
    Single(Item),
    Batch(Vec<Item>),
}

/// One request as sent: an object's envelope, or not an object at all.
#[derive(Debug)]
enum Item {
    Object(Envelope),
    NotAnObject,
}

/// An object's JSON-RPC fields as sent, checked by `handle_one` (so that an invalid
/// request is still answered with its id); other fields are ignored. A repeated
/// field counts with its last value.
#[derive(Debug, Default)]
struct Envelope {
    /// `"jsonrpc": "2.0"`.
    v2: bool,
    id: IdField,
    /// The method name, when it is a string.
    method: Option<String>,
    /// `null` when absent.
    params: Value,
}

/// A request id as jsonrpc-core takes it, echoed back as sent.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
enum Id {
    Null,
    Number(serde_json::Number),
    String(String),
}

/// The `id` field: absent (a notification), an id, or something no id can be.
#[derive(Debug, Default)]
enum IdField {
    #[default]
    Absent,
    Valid(Id),
    Invalid,
}

impl From<Value> for IdField {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Self::Valid(Id::Null),
            Value::Number(n) => Self::Valid(Id::Number(n)),
            Value::String(s) => Self::Valid(Id::String(s)),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => Self::Invalid,
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor { top: true })
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(BodyVisitor { top: false })? {
            Body::Single(item) => Ok(item),
            Body::Batch(_) => Ok(Item::NotAnObject),
        }
    }
}

/// One JSON value of a body: at the top, an array is a batch; inside a batch it is
/// just not an object. Whatever is skipped is still parsed as a `Value` (unlike
/// `IgnoredAny`), so the nesting limit and number range are what `Value` allows.
struct BodyVisitor {
    top: bool,
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC request or batch")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body::Single(Item::NotAnObject))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        if !self.top {
            while seq.next_element::<Value>()?.is_some() {}
            return Ok(Body::Single(Item::NotAnObject));
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Item>()? {
            items.push(item);
        }
        Ok(Body::Batch(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut e = Envelope::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "jsonrpc" => e.v2 = map.next_value::<Value>()? == "2.0",
                "id" => e.id = map.next_value::<Value>()?.into(),
                "method" => {
                    e.method = match map.next_value::<Value>()? {
                        Value::String(m) => Some(m),
                        _ => None,
                    }
                }
                "params" => e.params = map.next_value()?,
                _ => {
                    map.next_value::<Value>()?;
                }
            }
        }
        Ok(Body::Single(Item::Object(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use strum::IntoEnumIterator as _;

    use super::*;

    /// Accepts everything that validates, or refuses every send with one error.
    #[derive(Default)]
    struct Fake {
        refuse: Option<SendError>,
        sent: Mutex<usize>,
    }

    impl Sender for Fake {
        fn send(&self, request: SendRequest) -> Result<String, SendError> {
            if let Some(e) = &self.refuse {
                return Err(e.clone());
            }
            *self.sent.lock().unwrap() += 1;
            Ok(request.tx.signature.to_string())
        }
        fn lifecycle(&self, _: Signature) -> Result<Option<Value>, SendError> {
            Ok(None)
        }

        fn forwards(&self, method: &str) -> bool {
            method == "getSlot"
        }

        fn forward(&self, method: &str, params: Value) -> Result<Value, RpcError> {
            Ok(json!({"forwarded": method, "params": params}))
        }

        fn checks(&self) -> validate::Checks {
            validate::Checks::default()
        }
        fn health(&self) -> Result<(), String> {
            Err("no leader schedule".into())
        }
        fn preflight(&self, _: &SendRequest) -> Result<(), SendError> {
            Err(SendError::PreflightRefused)
        }
    }

    fn handle(body: &str, sender: &Fake) -> (Value, Vec<CallRecord>) {
        let r = handle_body(body.as_bytes(), sender, Instant::now());
        (r.body.unwrap_or(Value::Null), r.calls)
    }

    fn record(method: Method, code: Option<i64>, reject: Option<RejectReason>) -> CallRecord {
        CallRecord {
            method,
            error_code: code,
            reject,
            retry_after: (reject == Some(RejectReason::QueueFull))
                .then_some(std::time::Duration::from_secs(1)),
        }
    }

    /// One signed transfer, base58 (test-support builds it).
    fn signed_transfer() -> String {
        let wire =
            afterburner_test_support::signed_transfers(&solana_sdk::signature::Keypair::new(), 1)
                .remove(0);
        bs58::encode(wire).into_string()
    }

    #[test]
    fn reject_labels_are_the_published_set() {
        let labels: Vec<&str> = RejectReason::iter().map(RejectReason::label).collect();
        assert_eq!(
            labels,
            [
                "invalid_params",
                "encoding",
                "too_large",
                "undeserializable",
                "sanitize",
                "bad_signature",
                "preflight",
                "min_context_slot",
                "queue_full",
                "rate_limited",
                "key_share_full",
                "not_ready",
            ]
        );
        let methods: Vec<&str> = Method::iter().map(Method::label).collect();
        assert_eq!(
            methods,
            [
                "sendTransaction",
                "getHealth",
                "getVersion",
                "afterburner_getTransaction",
                "forwarded",
                "other",
                "invalid"
            ]
        );
    }

    /// Every refusal: agave's code, the message clients see, its data, its label.
    #[test]
    fn each_refusal_maps_to_agaves_error_and_a_reason() {
        let name = "solana_transaction::versioned::VersionedTransaction";
        let base58_error = bs58::decode("0").into_vec().unwrap_err();
        let base64_error =
            base64::Engine::decode(&base64::prelude::BASE64_STANDARD, "!!!!").unwrap_err();
        let simulation = json!({"err": "AccountNotFound", "logs": []});
        let cases: Vec<(SendError, i64, String, Option<Value>, &str)> =
            vec![
            (
                SendError::InvalidParams("Invalid params: x.".into()),
                -32602,
                "Invalid params: x.".into(),
                None,
                "invalid_params",
            ),
            (
                ValidationError::UnsupportedEncoding("json".into()).into(),
                -32602,
                "unsupported encoding: json. Supported encodings: base58, base64".into(),
                None,
                "encoding",
            ),
            (
                ValidationError::UnknownEncoding("hex".into()).into(),
                -32602,
                "Invalid params: unknown variant `hex`, expected one of `binary`, `base64`, \
                 `base58`, `json`, `jsonParsed`."
                    .into(),
                None,
                "encoding",
            ),
            (
                ValidationError::Base58TooLarge { len: 1684, max: 1683, raw: 1232 }.into(),
                -32602,
                format!("base58 encoded {name} too large: 1684 bytes (max: encoded/raw 1683/1232)"),
                None,
                "too_large",
            ),
            (
                ValidationError::Base64TooLarge { len: 1645, max: 1644, raw: 1232 }.into(),
                -32602,
                format!("base64 encoded {name} too large: 1645 bytes (max: encoded/raw 1644/1232)"),
                None,
                "too_large",
            ),
            (
                ValidationError::InvalidBase58(base58_error).into(),
                -32602,
                "invalid base58 encoding: InvalidCharacter { character: '0', index: 0 }".into(),
                None,
                "encoding",
            ),
            (
                ValidationError::InvalidBase64(base64_error).into(),
                -32602,
                "invalid base64 encoding: InvalidByte(0, 33)".into(),
                None,
                "encoding",
            ),
            (
                ValidationError::DecodedTooLarge { len: 1233, max: 1232 }.into(),
                -32602,
                format!("decoded {name} too large: 1233 bytes (max: 1232 bytes)"),
                None,
                "too_large",
            ),
            (
                ValidationError::Undeserializable("io error: unexpected end of file".into()).into(),
                -32602,
                format!("failed to deserialize {name}: io error: unexpected end of file"),
                None,
                "undeserializable",
            ),
            (
                ValidationError::Unsanitary.into(),
                -32602,
                "invalid transaction: Transaction failed to sanitize accounts offsets correctly"
                    .into(),
                None,
                "sanitize",
            ),
            (
                ValidationError::DuplicateAccount.into(),
                -32602,
                "invalid transaction: Transaction loads the same account more than once".into(),
                None,
                "sanitize",
            ),
            (
                ValidationError::BadSignature.into(),
                -32002,
                "Transaction simulation failed: Transaction signature verification failure".into(),
                Some(json!({
                    "err": "SignatureFailure", "logs": [], "accounts": null, "unitsConsumed": 0,
                    "returnData": null, "innerInstructions": null,
                })),
                "bad_signature",
            ),
            (
                SendError::PreflightRefused,
                -32602,
                "preflight simulation is not available on this gateway (no RPC configured for \
                 it); send with skipPreflight: true"
                    .into(),
                None,
                "invalid_params",
            ),
            (
                SendError::PreflightFailed {
                    error: "Attempt to debit an account but found no record of a prior credit."
                        .into(),
                    simulation: Some(simulation.clone()),
                },
                -32002,
                "Transaction simulation failed: Attempt to debit an account but found no record \
                 of a prior credit."
                    .into(),
                Some(simulation),
                "preflight",
            ),
            (
                SendError::PreflightUnavailable("connection refused".into()),
                -32005,
                "Node is unhealthy: preflight simulation failed: connection refused".into(),
                None,
                "not_ready",
            ),
            (
                SendError::NotReady("shutting down"),
                -32005,
                "Node is unhealthy: shutting down".into(),
                None,
                "not_ready",
            ),
            (
                SendError::MinContextSlotNotReached { context_slot: 41 },
                -32016,
                "Minimum context slot has not been reached".into(),
                Some(json!({"contextSlot": 41})),
                "min_context_slot",
            ),
            (
                SendError::QueueFull,
                -32090,
                "Too many requests: the send queue is full, retry later".into(),
                None,
                "queue_full",
            ),
            (
                SendError::RateLimited {
                    retry_after: std::time::Duration::from_millis(450),
                },
                -32090,
                "Too many requests: over this API key's rate, retry in 450 ms".into(),
                None,
                "rate_limited",
            ),
            (
                SendError::KeyShareFull,
                -32090,
                "Too many requests: this API key's share of the send queue is full, retry later"
                    .into(),
                None,
                "key_share_full",
            ),
            (
                SendError::Internal("dedup lock poisoned"),
                -32603,
                "Internal error: dedup lock poisoned".into(),
                None,
                "not_ready",
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (e, code, message, data, reason) in cases {
            let rpc = e.rpc_error();
            assert_eq!(
                rpc,
                RpcError {
                    code,
                    message,
                    data
                },
                "{e:?}"
            );
            assert_eq!(e.reason().label(), reason, "{e:?}");
            seen.insert(e.reason());
        }
        assert_eq!(
            seen.len(),
            RejectReason::iter().count(),
            "every reason is used"
        );
    }

    #[test]
    fn envelope_errors_and_their_records() {
        let s = Fake::default();
        let (v, calls) = handle("{\"jsonrpc\": \"2.0\", ", &s);
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null})
        );
        assert_eq!(calls, [record(Method::Invalid, Some(-32700), None)]);
        // Too deep for `Value` is too deep here, also in a field that is ignored.
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(handle(&deep, &s).0["error"]["code"], -32700);
        let (v, calls) = handle("[]", &s);
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(calls, [record(Method::Invalid, Some(-32600), None)]);
        let (v, calls) = handle("[1, [2]]", &s);
        assert_eq!(v[0]["error"]["message"], "Invalid request");
        assert_eq!(v[1]["id"], Value::Null);
        assert_eq!(calls.len(), 2);
        // No "jsonrpc": invalid, answered with the id.
        let (v, calls) = handle(r#"{"id": "a", "method": "sendTransaction"}"#, &s);
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(
            calls,
            [record(
                Method::SendTransaction,
                Some(-32600),
                Some(RejectReason::InvalidParams)
            )]
        );
        // An id that no id can be: answered with null.
        let (v, _) = handle(
            r#"{"jsonrpc": "2.0", "id": [1], "method": "getHealth"}"#,
            &s,
        );
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (Value::Null, json!(-32600))
        );
        // A method that is not a string.
        let (v, calls) = handle(r#"{"jsonrpc": "2.0", "id": 1, "method": 5}"#, &s);
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(1), json!(-32600))
        );
        assert_eq!(calls, [record(Method::Invalid, Some(-32600), None)]);
        // A repeated field counts with its last value, as in a parsed `Value`.
        let (v, _) = handle(
            r#"{"jsonrpc": "1.0", "jsonrpc": "2.0", "id": 1, "id": 2.5, "method": "getVersion"}"#,
            &s,
        );
        assert_eq!(v["id"], 2.5);
        assert!(v["result"].is_object(), "{v}");
    }

    /// Methods on the forward list go to the sender's upstream, counted as
    /// `forwarded`; any other name is still -32601.
    #[test]
    fn allow_listed_methods_are_forwarded() {
        let s = Fake::default();
        let body = json!({"jsonrpc": "2.0", "id": 3, "method": "getSlot", "params": [{"commitment": "processed"}]});
        let r = handle_body(body.to_string().as_bytes(), &s, Instant::now());
        let v = r.body.unwrap();
        assert_eq!(v["result"]["forwarded"], "getSlot");
        assert_eq!(v["result"]["params"][0]["commitment"], "processed");
        assert_eq!(v["id"], 3);
        assert_eq!(r.calls, [record(Method::Forwarded, None, None)]);
        let body = json!({"jsonrpc": "2.0", "id": 4, "method": "getProgramAccounts", "params": []});
        let r = handle_body(body.to_string().as_bytes(), &s, Instant::now());
        assert_eq!(r.body.unwrap()["error"]["code"], -32601);
        assert_eq!(r.calls, [record(Method::Other, Some(-32601), None)]);
    }

    #[test]
    fn methods_batches_and_notifications() {
        let s = Fake::default();
        let (v, calls) = handle(r#"{"jsonrpc": "2.0", "id": 1, "method": "getBlock"}"#, &s);
        assert_eq!(
            v["error"],
            json!({"code": -32601, "message": "Method not found"})
        );
        assert_eq!(calls, [record(Method::Other, Some(-32601), None)]);
        let (v, _) = handle(r#"{"jsonrpc": "2.0", "id": 1, "method": "getHealth"}"#, &s);
        assert_eq!(
            v["error"],
            json!({"code": -32005, "message": "Node is unhealthy: no leader schedule"})
        );
        // A batch with a notification: one answer, two records, in order.
        let tx = signed_transfer();
        let body = format!(
            r#"[{{"jsonrpc": "2.0", "method": "sendTransaction", "params": ["{tx}", {{"skipPreflight": true}}]}},
                {{"jsonrpc": "2.0", "id": 9, "method": "getVersion"}}]"#
        );
        let (v, calls) = handle(&body, &s);
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["id"], 9);
        assert_eq!(
            calls,
            [
                record(Method::SendTransaction, None, None),
                record(Method::GetVersion, None, None)
            ]
        );
        assert_eq!(*s.sent.lock().unwrap(), 1, "the notification was sent");
        // Only notifications: nothing to answer.
        let r = handle_body(
            br#"{"jsonrpc": "2.0", "method": "getHealth"}"#,
            &s,
            Instant::now(),
        );
        assert!(r.body.is_none());
        assert_eq!(r.calls, [record(Method::GetHealth, Some(-32005), None)]);
    }

    #[test]
    fn send_refusals_carry_their_reason() {
        let tx = signed_transfer();
        let send = |params: Value| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": params})
                .to_string()
        };
        let s = Fake::default();
        for (params, code, reason) in [
            (json!(null), -32602, RejectReason::InvalidParams),
            (
                json!([tx, {"encoding": "json"}]),
                -32602,
                RejectReason::Encoding,
            ),
            (
                json!(["0OIl", {"skipPreflight": true}]),
                -32602,
                RejectReason::Encoding,
            ),
            (json!([tx]), -32602, RejectReason::InvalidParams), // preflight refused
        ] {
            let (v, calls) = handle(&send(params.clone()), &s);
            assert_eq!(v["error"]["code"], code, "{params}");
            assert_eq!(
                calls,
                [record(Method::SendTransaction, Some(code), Some(reason))],
                "{params}"
            );
        }
        assert_eq!(
            handle(&send(json!(null)), &s).0["error"]["message"],
            "Invalid params: invalid type: null, expected a tuple of size 1 or 2."
        );
        let full = Fake {
            refuse: Some(SendError::QueueFull),
            ..Fake::default()
        };
        let r = handle_body(
            send(json!([tx, {"skipPreflight": true}])).as_bytes(),
            &full,
            Instant::now(),
        );
        assert!(r.too_many, "a single refused send is a 429");
        let batch = format!("[{}]", send(json!([tx, {"skipPreflight": true}])));
        let r = handle_body(batch.as_bytes(), &full, Instant::now());
        assert!(!r.too_many, "a batch answers per item");
        assert_eq!(
            r.body.as_ref().and_then(Value::as_array).map(Vec::len),
            Some(1)
        );
        assert_eq!(
            r.calls,
            [record(
                Method::SendTransaction,
                Some(-32090),
                Some(RejectReason::QueueFull)
            )]
        );
        assert_eq!(r.calls[0].result_label(), "-32090");
    }
}
