//! A rustls 0.23 `SigningKey` whose private key stays in the HSM: rustls hands us the handshake
//! transcript, we hash it in process and the HSM signs the digest with the active TLS key.

use std::sync::Arc;

use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::HsmError;
use crate::keys::Role;
use crate::pool::Hsm;

/// The gateway's TLS identity key (role `tls`, ECDSA P-256) for rustls.
#[derive(Debug)]
pub struct HsmSigningKey {
    hsm: Arc<Hsm>,
    spki: Vec<u8>,
}

impl HsmSigningKey {
    /// Looks up the active TLS key's public half once; signatures always use the active version.
    pub fn new(hsm: Arc<Hsm>) -> Result<HsmSigningKey, HsmError> {
        let (_, spki) = hsm.public_key_der(Role::Tls, None)?;
        Ok(HsmSigningKey { hsm, spki })
    }
}

impl SigningKey for HsmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(HsmSigner { hsm: self.hsm.clone() }) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HsmSigner {
    hsm: Arc<Hsm>,
}

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        match self.hsm.sign_digest(Role::Tls, &digest) {
            Ok(sig) => Ok(sig.der),
            Err(e) => {
                tracing::error!(error = %e, "TLS handshake signature failed in the HSM");
                Err(rustls::Error::General(format!("HSM signature failed: {}", e.kind())))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
