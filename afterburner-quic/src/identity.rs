//! The validator identity as a TLS client: [`Identity`] loads (or generates) the
//! Ed25519 keypair, builds the self-signed certificate in agave's layout and the
//! BoringSSL context that agave's rustls server (and Firedancer's fd_tls) accept.
//!
//! The server keys stake-weighted QoS on the public key in our certificate, so the
//! certificate must carry exactly the identity pubkey and be the only one in the chain.

use std::path::Path;

use boring::{
    pkey::PKey,
    ssl::{SslContextBuilder, SslMethod, SslSignatureAlgorithm, SslVersion},
    x509::X509,
};
use solana_sdk::{
    pubkey::Pubkey,
    signature::{Keypair, read_keypair_file},
    signer::Signer,
};

/// PKCS#8 v1 prefix for a raw Ed25519 seed (RFC 8410 §7), as agave's `tls-utils` writes it.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Errors building an [`Identity`] or its TLS context.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The keypair file could not be read or is not a 64-number JSON keypair.
    #[error("cannot read identity keypair {path}: {reason}")]
    Keypair {
        /// The file that was read.
        path: String,
        /// What went wrong (never contains key material).
        reason: String,
    },
    /// BoringSSL refused a step of the TLS context setup.
    #[error("TLS context setup failed at {step}: {source}")]
    Tls {
        /// The step that failed.
        step: &'static str,
        /// BoringSSL's error stack.
        source: boring::error::ErrorStack,
    },
}

/// The identity a QUIC client presents to TPU servers.
pub struct Identity {
    keypair: Keypair,
}

impl std::fmt::Debug for Identity {
    // Never print the secret half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pubkey", &self.keypair.pubkey())
            .finish()
    }
}

impl Identity {
    /// Loads a Solana keypair file (JSON array of 64 numbers).
    ///
    /// # Errors
    /// [`IdentityError::Keypair`] when the file is missing, unreadable or malformed.
    pub fn from_keypair_file(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let keypair = read_keypair_file(path).map_err(|e| IdentityError::Keypair {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self { keypair })
    }

    /// A fresh random identity: servers treat it as unstaked.
    pub fn random() -> Self {
        Self {
            keypair: Keypair::new(),
        }
    }

    /// Wraps an existing keypair.
    pub fn from_keypair(keypair: Keypair) -> Self {
        Self { keypair }
    }

    /// The identity public key the server will see.
    pub fn pubkey(&self) -> Pubkey {
        self.keypair.pubkey()
    }

    /// The keypair itself (for signing test transactions, for example).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The client certificate (DER) in agave's layout and the PKCS#8 private key (DER).
    ///
    /// Uses agave's own `solana-tls-utils` builder, so the layout cannot drift from
    /// what the server parses (`get_pubkey_from_tls_certificate`).
    pub fn certificate_der(&self) -> (Vec<u8>, Vec<u8>) {
        let (cert, _) = solana_tls_utils::new_dummy_x509_certificate(&self.keypair);
        let mut key = Vec::with_capacity(PKCS8_ED25519_PREFIX.len() + 32);
        key.extend_from_slice(&PKCS8_ED25519_PREFIX);
        key.extend_from_slice(self.keypair.secret_bytes());
        (cert.as_ref().to_vec(), key)
    }

    /// A BoringSSL context for quiche: TLS 1.3 only, our certificate as client
    /// certificate, and Ed25519 among the *verify* algorithms (BoringSSL leaves it
    /// out by default, and every Solana TPU server signs with Ed25519).
    ///
    /// # Errors
    /// [`IdentityError::Tls`] when BoringSSL rejects a setting.
    pub fn tls_context(&self) -> Result<SslContextBuilder, IdentityError> {
        let tls = |step| move |source| IdentityError::Tls { step, source };
        let (cert_der, key_der) = self.certificate_der();
        let mut ctx = SslContextBuilder::new(SslMethod::tls()).map_err(tls("new context"))?;
        ctx.set_min_proto_version(Some(SslVersion::TLS1_3))
            .map_err(tls("min version"))?;
        ctx.set_max_proto_version(Some(SslVersion::TLS1_3))
            .map_err(tls("max version"))?;
        let cert = X509::from_der(&cert_der).map_err(tls("parse certificate"))?;
        ctx.set_certificate(&cert).map_err(tls("set certificate"))?;
        let key = PKey::private_key_from_pkcs8(&key_der).map_err(tls("parse private key"))?;
        ctx.set_private_key(&key).map_err(tls("set private key"))?;
        ctx.check_private_key()
            .map_err(tls("key matches certificate"))?;
        ctx.set_verify_algorithm_prefs(&[
            SslSignatureAlgorithm::ED25519,
            SslSignatureAlgorithm::ECDSA_SECP256R1_SHA256,
            SslSignatureAlgorithm::RSA_PSS_RSAE_SHA256,
            SslSignatureAlgorithm::RSA_PKCS1_SHA256,
        ])
        .map_err(tls("verify algorithm preferences"))?;
        // agave's rustls server offers X25519 only.
        ctx.set_curves_list("X25519")
            .map_err(tls("key exchange groups"))?;
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_identity_pubkey() {
        let id = Identity::random();
        let (cert, _) = id.certificate_der();
        let parsed = solana_tls_utils::get_pubkey_from_tls_certificate(
            &rustls_pki_types::CertificateDer::from(cert),
        );
        assert_eq!(parsed, Some(id.pubkey()));
    }

    #[test]
    fn tls_context_accepts_key_and_certificate() {
        Identity::random().tls_context().expect("context");
    }

    #[test]
    fn keypair_file_errors_name_the_file() {
        let err = Identity::from_keypair_file("/nonexistent/id.json").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/id.json"), "{err}");
    }

    #[test]
    fn keypair_file_round_trip() {
        let id = Identity::random();
        let dir = std::env::temp_dir().join(format!("ab-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id.json");
        solana_sdk::signer::keypair::write_keypair_file(id.keypair(), &path).unwrap();
        let loaded = Identity::from_keypair_file(&path).unwrap();
        assert_eq!(loaded.pubkey(), id.pubkey());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
