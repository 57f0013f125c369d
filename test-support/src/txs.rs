//! Payloads and signed transactions to send.

use solana_sdk::{
    hash::Hash,
    instruction::{AccountMeta, Instruction},
    pubkey::Pubkey,
    signature::{Keypair, Signer},
    transaction::Transaction,
};

/// A distinct payload of `len` bytes carrying `id` (not a transaction: the TPU server
/// does not parse what it delivers, and varied sizes exercise stream framing).
/// `len` is at least 8: the id prefix is what keeps payloads distinct.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(8)];
    v[..8].copy_from_slice(&id.to_le_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(8) {
        *b = (id as u8) ^ (i as u8);
    }
    v
}

/// `n` real, signed system transfers (wire format, ~215 bytes each), all distinct.
pub fn signed_transfers(payer: &Keypair, n: usize) -> Vec<Vec<u8>> {
    let to = Pubkey::new_unique();
    let blockhash = Hash::new_unique();
    (0..n as u64)
        .map(|i| {
            // SystemInstruction::Transfer = 2, then lamports (u64 LE).
            let mut data = vec![2, 0, 0, 0];
            data.extend_from_slice(&(1 + i).to_le_bytes());
            let ix = Instruction {
                // The system program id is all zeros ("111…1").
                program_id: Pubkey::default(),
                accounts: vec![
                    AccountMeta::new(payer.pubkey(), true),
                    AccountMeta::new(to, false),
                ],
                data,
            };
            let tx = Transaction::new_signed_with_payer(
                &[ix],
                Some(&payer.pubkey()),
                &[payer],
                blockhash,
            );
            bincode::serialize(&tx).expect("serialize transaction")
        })
        .collect()
}
