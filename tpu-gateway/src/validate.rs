//! Everything a transaction goes through before it may be sent: decoding, agave's
//! size limits, bincode deserialization exactly as agave's RPC does it, sanitizing,
//! and signature verification. Sans-IO; the error texts are agave's (`rpc/src/rpc.rs`
//! in 3.1), so a client sees the same message from us as from a validator's RPC.

use std::{any::type_name, sync::Arc};

use base64::{Engine as _, prelude::BASE64_STANDARD};
use bincode::Options as _;
use solana_sdk::{signature::Signature, transaction::VersionedTransaction};

use crate::rpc::RpcError;

/// The largest transaction (agave's `PACKET_DATA_SIZE`: 1280 - 40 - 8).
pub const PACKET_DATA_SIZE: usize = afterburner_xdp::config::PACKET_DATA_SIZE;

/// agave's limit on a base58-encoded transaction ("golden": 1232 bytes encoded).
pub const MAX_BASE58_SIZE: usize = 1683;
/// agave's limit on a base64-encoded transaction.
pub const MAX_BASE64_SIZE: usize = 1644;

/// Wire encodings `sendTransaction` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The default.
    Base58,
    /// `"encoding": "base64"`.
    Base64,
}

impl Encoding {
    /// Parses the `encoding` field; agave names every `UiTransactionEncoding`, but
    /// only the two binary ones are accepted for sending.
    ///
    /// # Errors
    /// agave's -32602 for anything else.
    pub fn parse(name: &str) -> Result<Self, RpcError> {
        match name {
            // "binary" is agave's legacy name for base58.
            "base58" | "binary" => Ok(Self::Base58),
            "base64" => Ok(Self::Base64),
            "json" | "jsonParsed" => Err(RpcError::invalid_params(format!(
                "unsupported encoding: {name}. Supported encodings: base58, base64"
            ))),
            // Not a `UiTransactionEncoding` at all: agave's params deserialization fails.
            other => Err(RpcError::invalid_params(format!(
                "Invalid params: unknown variant `{other}`, expected one of `binary`, `base64`, \
                 `base58`, `json`, `jsonParsed`."
            ))),
        }
    }
}

/// A transaction that passed every check.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The wire bytes, as received (they are what goes on the stream).
    pub wire: Arc<[u8]>,
    /// The first signature: the transaction's id.
    pub signature: Signature,
    /// The transaction.
    pub transaction: VersionedTransaction,
}

/// Decodes `encoded` and deserializes it as agave's `decode_and_deserialize` does.
///
/// # Errors
/// agave's -32602 errors, with its messages.
pub fn decode(encoded: &str, encoding: Encoding) -> Result<Vec<u8>, RpcError> {
    let name = type_name::<VersionedTransaction>();
    let wire = match encoding {
        Encoding::Base58 => {
            if encoded.len() > MAX_BASE58_SIZE {
                return Err(RpcError::invalid_params(format!(
                    "base58 encoded {name} too large: {} bytes (max: encoded/raw {MAX_BASE58_SIZE}/{PACKET_DATA_SIZE})",
                    encoded.len()
                )));
            }
            bs58::decode(encoded)
                .into_vec()
                .map_err(|e| RpcError::invalid_params(format!("invalid base58 encoding: {e:?}")))?
        }
        Encoding::Base64 => {
            if encoded.len() > MAX_BASE64_SIZE {
                return Err(RpcError::invalid_params(format!(
                    "base64 encoded {name} too large: {} bytes (max: encoded/raw {MAX_BASE64_SIZE}/{PACKET_DATA_SIZE})",
                    encoded.len()
                )));
            }
            BASE64_STANDARD
                .decode(encoded)
                .map_err(|e| RpcError::invalid_params(format!("invalid base64 encoding: {e:?}")))?
        }
    };
    Ok(wire)
}

/// Checks raw wire bytes: size, deserialization, sanitizing, and (when
/// `verify_signatures`) every signature.
///
/// # Errors
/// agave's -32602 for size, deserialization and sanitize failures; -32002 (agave's
/// preflight failure) for a bad signature, as agave reports it when preflight runs.
pub fn validate(wire: Vec<u8>, verify_signatures: bool) -> Result<Validated, RpcError> {
    let name = type_name::<VersionedTransaction>();
    if wire.len() > PACKET_DATA_SIZE {
        return Err(RpcError::invalid_params(format!(
            "decoded {name} too large: {} bytes (max: {PACKET_DATA_SIZE} bytes)",
            wire.len()
        )));
    }
    let transaction: VersionedTransaction = bincode::options()
        .with_limit(PACKET_DATA_SIZE as u64)
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .deserialize_from(&wire[..])
        .map_err(|e| RpcError::invalid_params(format!("failed to deserialize {name}: {e}")))?;
    sanitize(&transaction)?;
    if verify_signatures && !transaction.verify_with_results().iter().all(|ok| *ok) {
        return Err(RpcError::preflight_failure(
            "Transaction signature verification failure",
            "SignatureFailure",
        ));
    }
    let signature = transaction.signatures[0];
    Ok(Validated {
        wire: wire.into(),
        signature,
        transaction,
    })
}

/// agave's sanitize step, as far as it can go without a bank: the message's own
/// consistency (signature count, account offsets, instruction indices) and
/// duplicate static account keys. Address-lookup-table entries are not resolved
/// (that needs the accounts), so their duplicates are left to the leader.
fn sanitize(tx: &VersionedTransaction) -> Result<(), RpcError> {
    if tx.sanitize().is_err() || tx.signatures.is_empty() {
        return Err(RpcError::invalid_params(
            "invalid transaction: Transaction failed to sanitize accounts offsets correctly",
        ));
    }
    let keys = tx.message.static_account_keys();
    let mut sorted: Vec<_> = keys.iter().collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(RpcError::invalid_params(
            "invalid transaction: Transaction loads the same account more than once",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use solana_sdk::{
        hash::Hash, message::Message, pubkey::Pubkey, signature::Keypair, signer::Signer,
        transaction::Transaction,
    };
    use solana_system_interface::instruction as system_instruction;

    fn transfer() -> (Vec<u8>, Signature) {
        let payer = Keypair::new();
        let ix = system_instruction::transfer(&payer.pubkey(), &Pubkey::new_unique(), 1);
        let tx = Transaction::new_signed_with_payer(
            &[ix],
            Some(&payer.pubkey()),
            &[&payer],
            Hash::new_unique(),
        );
        (bincode::serialize(&tx).unwrap(), tx.signatures[0])
    }

    #[test]
    fn a_signed_transfer_passes_both_encodings() {
        let (wire, sig) = transfer();
        for (enc, text) in [
            (Encoding::Base58, bs58::encode(&wire).into_string()),
            (Encoding::Base64, BASE64_STANDARD.encode(&wire)),
        ] {
            let v = validate(decode(&text, enc).unwrap(), true).unwrap();
            assert_eq!(v.signature, sig);
            assert_eq!(&v.wire[..], &wire[..]);
        }
    }

    #[test]
    fn type_name_matches_agaves_messages() {
        assert_eq!(
            type_name::<VersionedTransaction>(),
            "solana_transaction::versioned::VersionedTransaction"
        );
    }

    #[test]
    fn bad_signature_is_a_preflight_failure() {
        let (mut wire, _) = transfer();
        // The first signature starts after the 1-byte count.
        wire[1] ^= 1;
        let e = validate(wire.clone(), true).unwrap_err();
        assert_eq!(e.code, -32002);
        assert_eq!(
            e.message,
            "Transaction simulation failed: Transaction signature verification failure"
        );
        assert!(
            validate(wire, false).is_ok(),
            "verification can be turned off"
        );
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let payer = Keypair::new();
        let ix = system_instruction::transfer(&payer.pubkey(), &payer.pubkey(), 1);
        let mut message = Message::new(&[ix], Some(&payer.pubkey()));
        // Message::new dedups; force a duplicate key as a hand-made message could have.
        message.account_keys.push(payer.pubkey());
        let tx = Transaction {
            signatures: vec![Signature::default()],
            message,
        };
        let e = validate(bincode::serialize(&tx).unwrap(), false).unwrap_err();
        assert_eq!(
            e.message,
            "invalid transaction: Transaction loads the same account more than once"
        );
    }
}
