//! Public keys and their encodings, each rule written once: base64 (standard alphabet, padded,
//! strict), PEM (RFC 7468, label `PUBLIC KEY`), DER SubjectPublicKeyInfo (strict DER: minimal
//! lengths, no trailing bytes). Ledger signing keys must be ECDSA P-256; sharing keys RSA.
//!
//! Boundary: bytes in, checked keys out. Reading a key file is the only I/O.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use spki::der::Decode as _;
use spki::ObjectIdentifier;

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not standard, padded base64.
    #[error("not base64: {0}")]
    Base64(String),
    /// Not a PEM `PUBLIC KEY` block.
    #[error("not a PEM public key: {0}")]
    Pem(String),
    /// Not a strict DER SubjectPublicKeyInfo.
    #[error("not a DER SubjectPublicKeyInfo: {0}")]
    Der(String),
    /// A SubjectPublicKeyInfo of another algorithm than the one required.
    #[error("not an {0} public key")]
    Algorithm(&'static str),
    /// The key file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The reason.
        reason: String,
    },
}

/// Standard base64 with padding: how member cards and membership entries carry DER keys.
pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard, padded base64 (the alphabet and padding of [`b64_encode`], nothing else).
pub fn b64_decode(text: &str) -> Result<Vec<u8>, KeyError> {
    STANDARD.decode(text).map_err(|e| KeyError::Base64(e.to_string()))
}

/// PEM armour (RFC 7468, 64-column lines, `\n` endings) of DER bytes under `label`.
pub fn pem(label: &str, der: &[u8]) -> Result<String, KeyError> {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).map_err(|e| KeyError::Pem(e.to_string()))
}

/// The DER SubjectPublicKeyInfo in `bytes`: a PEM `PUBLIC KEY` block (as `medgate keys
/// public-key` writes it) or DER as it is. Checked to be one strict DER SubjectPublicKeyInfo.
pub fn public_key_der(bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (label, der) = pem_rfc7468::decode_vec(bytes).map_err(|e| KeyError::Pem(e.to_string()))?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::Pem(format!("a {label} block, not PUBLIC KEY")));
        }
        der
    } else {
        bytes.to_vec()
    };
    spki::SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| KeyError::Der(e.to_string()))?;
    Ok(der)
}

/// Reads a public key file, PEM or DER ([`public_key_der`]).
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = |reason: String| KeyError::File { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    public_key_der(&bytes).map_err(|e| file(e.to_string()))
}

/// Checks that `spki` is a ledger signing key: ECDSA P-256, uncompressed point, in the one DER
/// encoding (see [`crate::p256_point_from_spki`]).
pub fn check_ledger_key(spki: &[u8]) -> Result<(), KeyError> {
    crate::p256_point_from_spki(spki).map(|_| ()).map_err(|_| KeyError::Algorithm("ECDSA P-256"))
}

/// An RSA public key: big-endian modulus and public exponent, without leading zero bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// The modulus `n`.
    pub modulus: Vec<u8>,
    /// The public exponent `e`.
    pub exponent: Vec<u8>,
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The RSA key of a sharing key's SubjectPublicKeyInfo (rsaEncryption, NULL parameters, a
/// PKCS#1 RSAPublicKey in the bit string), strict DER throughout.
pub fn rsa_public_key(spki: &[u8]) -> Result<RsaPublicKey, KeyError> {
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki).map_err(|e| KeyError::Der(e.to_string()))?;
    let null_params = info.algorithm.parameters.is_some_and(|p| p.is_null());
    if info.algorithm.oid != RSA_ENCRYPTION || !null_params {
        return Err(KeyError::Algorithm("RSA"));
    }
    let bits = info.subject_public_key.as_bytes().ok_or(KeyError::Algorithm("RSA"))?;
    let key = pkcs1::RsaPublicKey::from_der(bits).map_err(|e| KeyError::Der(e.to_string()))?;
    let (modulus, exponent) = (key.modulus.as_bytes().to_vec(), key.public_exponent.as_bytes().to_vec());
    if modulus.is_empty() || exponent.is_empty() {
        return Err(KeyError::Algorithm("RSA"));
    }
    Ok(RsaPublicKey { modulus, exponent })
}

#[allow(clippy::unwrap_used, reason = "tests")]
#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024-bit RSA SubjectPublicKeyInfo (shape tests only).
    const RSA_SPKI_B64: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCx+7YRhf62cH0Jd1YNgBn2ZDLxQHwPe1YJXNwoOrjpqIWSzDbf39SriiVYPtaHtOniF+XoCaBN63gR3e2USgMzaoaBQfKSMmBgjlY01FFShR+NqiGdQO3OQLTG9LMTRW0JutFUrCL6z7lqGkQQnCXBhqWhQ8HJDb/Vo+o2dgFLeQIDAQAB";

    #[test]
    fn keys_are_checked_by_algorithm_and_strict_der() {
        let p256 = b64_decode(crate::testkit::P256_SPKI_B64).unwrap();
        let rsa = b64_decode(RSA_SPKI_B64).unwrap();
        assert_eq!(check_ledger_key(&p256), Ok(()));
        assert_eq!(check_ledger_key(&rsa), Err(KeyError::Algorithm("ECDSA P-256")));
        let key = rsa_public_key(&rsa).unwrap();
        assert_eq!(key.exponent, vec![1, 0, 1]);
        assert_eq!(key.modulus.len(), 128);
        assert_eq!(rsa_public_key(&p256), Err(KeyError::Algorithm("RSA")));
        // The outer length spelled 0x82 0x00 0x9f instead of the minimal 0x81 0x9f.
        let mut long = vec![0x30, 0x82, 0x00, rsa[2]];
        long.extend_from_slice(&rsa[3..]);
        assert!(matches!(rsa_public_key(&long), Err(KeyError::Der(_))));
        let mut trailing = rsa.clone();
        trailing.push(0);
        assert!(matches!(rsa_public_key(&trailing), Err(KeyError::Der(_))));
        assert!(matches!(public_key_der(&trailing), Err(KeyError::Der(_))));
    }

    #[test]
    fn pem_and_base64_round_trip() {
        let der = b64_decode(crate::testkit::P256_SPKI_B64).unwrap();
        let text = pem("PUBLIC KEY", &der).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(public_key_der(text.as_bytes()).unwrap(), der);
        assert_eq!(public_key_der(&der).unwrap(), der);
        assert_eq!(b64_encode(&der), crate::testkit::P256_SPKI_B64);
        let other = pem("CERTIFICATE", &der).unwrap();
        assert!(matches!(public_key_der(other.as_bytes()), Err(KeyError::Pem(_))));
        assert!(matches!(b64_decode("not base64!"), Err(KeyError::Base64(_))));
        assert!(matches!(b64_decode("QQ"), Err(KeyError::Base64(_))), "padding is required");
    }
}
