//! Fuzzes the request decoding path: any bytes as an HTTP body to `POST /` (JSON-RPC
//! envelope, batches, `sendTransaction` params, decoding, deserialization,
//! sanitizing, signature verification) and as a raw `/v1/transactions` body. Nothing
//! may panic; every answer must be well-formed JSON-RPC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpu_gateway::rpc::{self, SendError, SendRequest, Sender};

/// Accepts everything that validates (as the service would, without sending).
struct Accepting;

impl Sender for Accepting {
    fn send(&self, request: SendRequest) -> Result<String, SendError> {
        Ok(request.tx.signature.to_string())
    }
    fn checks(&self) -> tpu_gateway::validate::Checks {
        tpu_gateway::validate::Checks::default()
    }
    fn forwards(&self, _: &str) -> bool {
        false
    }
    fn forward(
        &self,
        _: &str,
        _: serde_json::Value,
    ) -> Result<serde_json::Value, tpu_gateway::rpc::RpcError> {
        Err(tpu_gateway::rpc::RpcError {
            code: -32601,
            message: "Method not found".into(),
            data: None,
        })
    }
    fn lifecycle(
        &self,
        _: solana_sdk::signature::Signature,
    ) -> Result<Option<serde_json::Value>, SendError> {
        Ok(None)
    }
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    fn preflight(&self, _: &SendRequest) -> Result<(), SendError> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let response = rpc::handle_body(data, &Accepting, std::time::Instant::now());
    let calls = response.calls.len();
    if let Some(body) = response.body {
        let items = match body {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        assert!(items.len() <= calls, "every answer is a recorded call");
        for item in items {
            assert_eq!(item["jsonrpc"], "2.0");
            assert!(item.get("result").is_some() != item.get("error").is_some());
        }
    }
    let _ = tpu_gateway::validate::validate(data.to_vec(), tpu_gateway::validate::Checks::default());
});
