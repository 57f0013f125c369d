//! Everything a transaction goes through before it may be sent: decoding, agave's
//! size limits, bincode deserialization exactly as agave's RPC does it, sanitizing,
//! and signature verification. Sans-IO; the error texts are agave's (`rpc/src/rpc.rs`
//! in 3.1), so a client sees the same message from us as from a validator's RPC.
//! Errors are [`ValidationError`]: what failed, typed; the JSON-RPC code a client
//! gets for each is the `rpc` module's business.

use std::{any::type_name, sync::Arc};

use base64::{Engine as _, prelude::BASE64_STANDARD};
use bincode::Options as _;
use solana_sdk::{pubkey::Pubkey, signature::Signature, transaction::VersionedTransaction};

/// The largest transaction: the protocol's packet payload (1280 - 40 - 8).
pub const PACKET_DATA_SIZE: usize = solana_packet::PACKET_DATA_SIZE;

/// agave's limit on a base58-encoded transaction ("golden": 1232 bytes encoded).
pub const MAX_BASE58_SIZE: usize = 1683;
/// agave's limit on a base64-encoded transaction.
pub const MAX_BASE64_SIZE: usize = 1644;

/// What validation checks beyond the format: the size limit (`limits.max_transaction_size`)
/// and whether signatures are verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Largest wire transaction, in bytes.
    pub max_size: usize,
    /// Verify every signature.
    pub verify_signatures: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            max_size: PACKET_DATA_SIZE,
            verify_signatures: true,
        }
    }
}

impl Checks {
    /// Base58 characters `max_size` bytes can take: ceil(n · log 256 / log 58), as
    /// agave derives its 1683 for 1232.
    pub fn max_base58(&self) -> usize {
        if self.max_size == PACKET_DATA_SIZE {
            return MAX_BASE58_SIZE;
        }
        (self.max_size as f64 * 256f64.ln() / 58f64.ln()).ceil() as usize
    }

    /// Base64 characters `max_size` bytes take: 4 · ceil(n / 3) (1644 for 1232).
    pub fn max_base64(&self) -> usize {
        self.max_size.div_ceil(3) * 4
    }
}

/// The type name agave puts in its messages (`type_name::<VersionedTransaction>()`).
fn tx_type() -> &'static str {
    type_name::<VersionedTransaction>()
}

/// Why a transaction was refused before any send. `Display` is agave's message for
/// it, byte for byte (clients and agave's own client code match on them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A `UiTransactionEncoding` that is not binary (`json`, `jsonParsed`).
    #[error("unsupported encoding: {0}. Supported encodings: base58, base64")]
    UnsupportedEncoding(String),
    /// Not a `UiTransactionEncoding` at all: agave's params deserialization fails.
    #[error(
        "Invalid params: unknown variant `{0}`, expected one of `binary`, `base64`, \
         `base58`, `json`, `jsonParsed`."
    )]
    UnknownEncoding(String),
    /// More base58 characters than a 1232-byte transaction can take.
    #[error(
        "base58 encoded {name} too large: {len} bytes (max: encoded/raw {max}/{raw})",
        name = tx_type()
    )]
    Base58TooLarge {
        /// Its length.
        len: usize,
        /// The encoded limit.
        max: usize,
        /// The raw limit.
        raw: usize,
    },
    /// More base64 characters than a 1232-byte transaction can take.
    #[error(
        "base64 encoded {name} too large: {len} bytes (max: encoded/raw {max}/{raw})",
        name = tx_type()
    )]
    Base64TooLarge {
        /// Its length.
        len: usize,
        /// The encoded limit.
        max: usize,
        /// The raw limit.
        raw: usize,
    },
    /// Not base58.
    #[error("invalid base58 encoding: {0:?}")]
    InvalidBase58(bs58::decode::Error),
    /// Not base64.
    #[error("invalid base64 encoding: {0:?}")]
    InvalidBase64(base64::DecodeError),
    /// Decoded, but larger than a packet.
    #[error("decoded {name} too large: {len} bytes (max: {max} bytes)", name = tx_type())]
    DecodedTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// bincode refused it; the text is bincode's (not `Clone`, so kept as text).
    #[error("failed to deserialize {name}: {0}", name = tx_type())]
    Undeserializable(String),
    /// The message is inconsistent (counts, offsets, indices) or has no signature.
    #[error("invalid transaction: Transaction failed to sanitize accounts offsets correctly")]
    Unsanitary,
    /// A static account key appears twice.
    #[error("invalid transaction: Transaction loads the same account more than once")]
    DuplicateAccount,
    /// A signature does not verify: agave reports it as a preflight failure.
    #[error("Transaction simulation failed: Transaction signature verification failure")]
    BadSignature,
}

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
    /// [`ValidationError::UnsupportedEncoding`] for agave's other encodings,
    /// [`ValidationError::UnknownEncoding`] for anything else.
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        match name {
            // "binary" is agave's legacy name for base58.
            "base58" | "binary" => Ok(Self::Base58),
            "base64" => Ok(Self::Base64),
            "json" | "jsonParsed" => Err(ValidationError::UnsupportedEncoding(name.into())),
            other => Err(ValidationError::UnknownEncoding(other.into())),
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

/// The durable nonce `tx` uses, if any: its first instruction is the system
/// program's `AdvanceNonceAccount` (as agave's send-transaction-service decides). Its
/// "blockhash" is then the nonce, valid until the nonce advances, not for 150 slots.
/// `Some(None)`: a durable nonce whose account comes from an address lookup table
/// (not known without loading the table).
pub fn durable_nonce_account(tx: &VersionedTransaction) -> Option<Option<Pubkey>> {
    /// `SystemInstruction::AdvanceNonceAccount`, bincode (u32 LE).
    const ADVANCE_NONCE_ACCOUNT: [u8; 4] = [4, 0, 0, 0];
    let message = &tx.message;
    let keys = message.static_account_keys();
    let ix = message.instructions().first()?;
    let program = keys.get(usize::from(ix.program_id_index))?;
    // The system program's id is all zeros ("111…1").
    if *program != Pubkey::default() || !ix.data.starts_with(&ADVANCE_NONCE_ACCOUNT) {
        return None;
    }
    // Its first account is the nonce account.
    Some(
        ix.accounts
            .first()
            .and_then(|&i| keys.get(usize::from(i)))
            .copied(),
    )
}

/// Decodes `encoded` as agave's `decode_and_deserialize` does, size limit first.
///
/// # Errors
/// The encoded size limit, or the text is not in `encoding`.
pub fn decode(
    encoded: &str,
    encoding: Encoding,
    checks: Checks,
) -> Result<Vec<u8>, ValidationError> {
    match encoding {
        Encoding::Base58 => {
            if encoded.len() > checks.max_base58() {
                return Err(ValidationError::Base58TooLarge {
                    len: encoded.len(),
                    max: checks.max_base58(),
                    raw: checks.max_size,
                });
            }
            bs58::decode(encoded)
                .into_vec()
                .map_err(ValidationError::InvalidBase58)
        }
        Encoding::Base64 => {
            if encoded.len() > checks.max_base64() {
                return Err(ValidationError::Base64TooLarge {
                    len: encoded.len(),
                    max: checks.max_base64(),
                    raw: checks.max_size,
                });
            }
            BASE64_STANDARD
                .decode(encoded)
                .map_err(ValidationError::InvalidBase64)
        }
    }
}

/// Checks raw wire bytes: size, deserialization, sanitizing, and (when
/// `checks.verify_signatures`) every signature.
///
/// # Errors
/// The first check that fails.
pub fn validate(wire: Vec<u8>, checks: Checks) -> Result<Validated, ValidationError> {
    if wire.len() > checks.max_size {
        return Err(ValidationError::DecodedTooLarge {
            len: wire.len(),
            max: checks.max_size,
        });
    }
    let transaction: VersionedTransaction = bincode::options()
        .with_limit(checks.max_size as u64)
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .deserialize_from(&wire[..])
        .map_err(|e| ValidationError::Undeserializable(e.to_string()))?;
    sanitize(&transaction)?;
    let Some(&signature) = transaction.signatures.first() else {
        return Err(ValidationError::Unsanitary);
    };
    if checks.verify_signatures && !transaction.verify_with_results().iter().all(|ok| *ok) {
        return Err(ValidationError::BadSignature);
    }
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
fn sanitize(tx: &VersionedTransaction) -> Result<(), ValidationError> {
    if tx.sanitize().is_err() || tx.signatures.is_empty() {
        return Err(ValidationError::Unsanitary);
    }
    let keys = tx.message.static_account_keys();
    let mut sorted: Vec<_> = keys.iter().collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(ValidationError::DuplicateAccount);
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

    const ON: Checks = Checks {
        max_size: PACKET_DATA_SIZE,
        verify_signatures: true,
    };
    const OFF: Checks = Checks {
        max_size: PACKET_DATA_SIZE,
        verify_signatures: false,
    };

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
            let v = validate(decode(&text, enc, ON).unwrap(), ON).unwrap();
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
        assert_eq!(PACKET_DATA_SIZE, 1232);
    }

    /// The encoded limits follow the raw one as agave derives them (1683/1644 for
    /// 1232), and a smaller `max_transaction_size` is enforced at each step.
    #[test]
    fn the_size_limit_is_one_knob() {
        assert_eq!(ON.max_base64(), MAX_BASE64_SIZE);
        let derived = (1232f64 * 256f64.ln() / 58f64.ln()).ceil() as usize;
        assert_eq!(derived, MAX_BASE58_SIZE);
        let (wire, _) = transfer();
        let small = Checks {
            max_size: wire.len() - 1,
            verify_signatures: true,
        };
        assert_eq!(
            validate(wire.clone(), small).unwrap_err(),
            ValidationError::DecodedTooLarge {
                len: wire.len(),
                max: wire.len() - 1
            }
        );
        let text = BASE64_STANDARD.encode(vec![0u8; small.max_size + 3]);
        assert!(matches!(
            decode(&text, Encoding::Base64, small),
            Err(ValidationError::Base64TooLarge { .. })
        ));
        let text = bs58::encode(vec![7u8; small.max_size + 8]).into_string();
        assert!(matches!(
            decode(&text, Encoding::Base58, small),
            Err(ValidationError::Base58TooLarge { .. })
        ));
        assert!(
            validate(
                wire.clone(),
                Checks {
                    max_size: wire.len(),
                    ..ON
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn durable_nonce_transactions_are_recognised() {
        use solana_sdk::{
            hash::Hash, message::Message, pubkey::Pubkey, signature::Keypair, signer::Signer,
            transaction::Transaction,
        };
        let payer = Keypair::new();
        let nonce = Pubkey::new_unique();
        let transfer = solana_system_interface::instruction::transfer(&payer.pubkey(), &nonce, 1);
        let advance =
            solana_system_interface::instruction::advance_nonce_account(&nonce, &payer.pubkey());
        let tx = |ixs: &[_]| {
            VersionedTransaction::from(Transaction::new(
                &[&payer],
                Message::new(ixs, Some(&payer.pubkey())),
                Hash::new_unique(),
            ))
        };
        assert_eq!(
            durable_nonce_account(&tx(&[advance.clone(), transfer.clone()])),
            Some(Some(nonce)),
            "the nonce account is the instruction's first account"
        );
        assert_eq!(
            durable_nonce_account(&tx(std::slice::from_ref(&transfer))),
            None
        );
        assert!(
            durable_nonce_account(&tx(&[transfer, advance])).is_none(),
            "only as the first instruction"
        );
    }

    #[test]
    fn bad_signature_is_its_own_error() {
        let (mut wire, _) = transfer();
        // The first signature starts after the 1-byte count.
        wire[1] ^= 1;
        let e = validate(wire.clone(), ON).unwrap_err();
        assert_eq!(e, ValidationError::BadSignature);
        assert_eq!(
            e.to_string(),
            "Transaction simulation failed: Transaction signature verification failure"
        );
        assert!(
            validate(wire, OFF).is_ok(),
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
        let e = validate(bincode::serialize(&tx).unwrap(), OFF).unwrap_err();
        assert_eq!(e, ValidationError::DuplicateAccount);
        assert_eq!(
            e.to_string(),
            "invalid transaction: Transaction loads the same account more than once"
        );
    }

    /// Each failure, from real input where there is one, with agave's message.
    #[test]
    fn every_error_has_agaves_message() {
        let name = "solana_transaction::versioned::VersionedTransaction";
        let payer = Keypair::new();
        let ix = system_instruction::transfer(&payer.pubkey(), &Pubkey::new_unique(), 1);
        // The header asks for one signature; there is none.
        let unsigned = Transaction {
            signatures: vec![],
            message: Message::new(&[ix], Some(&payer.pubkey())),
        };
        let no_signatures = bincode::serialize(&unsigned).unwrap();
        let cases: Vec<(Result<Vec<u8>, ValidationError>, String)> = vec![
            (
                Encoding::parse("jsonParsed").map(|_| vec![]),
                "unsupported encoding: jsonParsed. Supported encodings: base58, base64".into(),
            ),
            (
                Encoding::parse("base32").map(|_| vec![]),
                "Invalid params: unknown variant `base32`, expected one of `binary`, `base64`, \
                 `base58`, `json`, `jsonParsed`."
                    .into(),
            ),
            (
                decode(&"1".repeat(1684), Encoding::Base58, ON),
                format!("base58 encoded {name} too large: 1684 bytes (max: encoded/raw 1683/1232)"),
            ),
            (
                decode(&"A".repeat(1648), Encoding::Base64, ON),
                format!("base64 encoded {name} too large: 1648 bytes (max: encoded/raw 1644/1232)"),
            ),
            (
                decode("0OIl", Encoding::Base58, ON),
                "invalid base58 encoding: InvalidCharacter { character: '0', index: 0 }".into(),
            ),
            (
                decode("!!!!", Encoding::Base64, ON),
                "invalid base64 encoding: InvalidByte(0, 33)".into(),
            ),
            (
                validate(vec![1; 1233], OFF).map(|_| vec![]),
                format!("decoded {name} too large: 1233 bytes (max: 1232 bytes)"),
            ),
            (
                validate(vec![0xff; 1230], OFF).map(|_| vec![]),
                format!(
                    "failed to deserialize {name}: invalid value: continue signal on byte-three, \
                     expected a terminal signal on or before byte-three"
                ),
            ),
            (
                validate(no_signatures, OFF).map(|_| vec![]),
                "invalid transaction: Transaction failed to sanitize accounts offsets correctly"
                    .into(),
            ),
        ];
        for (result, message) in cases {
            assert_eq!(result.unwrap_err().to_string(), message);
        }
    }
}
