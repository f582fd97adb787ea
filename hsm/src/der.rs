//! The DER encodings the HSM boundary reads and writes: ECDSA P-256 signatures (PKCS#11 gives and
//! takes r||s, TLS and X.509 want DER), P-256 and RSA public keys as SubjectPublicKeyInfo, the
//! CKA_EC_POINT attribute, and X.509 certificates imported next to a key pair.
//!
//! Everything here that reads bytes from outside (a peer's sharing key, a certificate, a module's
//! attribute) goes through RustCrypto's `der` family, which accepts strict DER only: a long-form
//! or padded length, a non-minimal INTEGER, trailing bytes, a wrong algorithm or curve are refused.
//! P-256 points are checked to lie on the curve.

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

/// id-ecPublicKey (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1 (RFC 5480).
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// rsaEncryption (RFC 8017).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The smallest RSA modulus accepted as a peer's sharing key.
pub const RSA_MIN_BITS: usize = 2048;

/// Why a key, signature or certificate was refused. Names the structure, never echoes key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not strict DER: {0}")]
    Der(String),
    #[error("the public key's algorithm is {found}, not {expected}")]
    WrongAlgorithm { expected: &'static str, found: String },
    #[error("the EC public key is not on curve P-256 (parameters {0})")]
    WrongCurve(String),
    #[error("not an uncompressed P-256 point on the curve")]
    BadPoint,
    #[error("the RSA public key is too small ({bits} bits; at least {RSA_MIN_BITS} are required)")]
    RsaTooSmall { bits: usize },
    #[error("the RSA public exponent must be odd and at least 3")]
    RsaExponent,
    #[error("not a valid P-256 ECDSA signature")]
    BadSignature,
}

impl From<der::Error> for KeyFormatError {
    fn from(e: der::Error) -> Self {
        KeyFormatError::Der(e.to_string())
    }
}

/// DER of the named curve prime256v1, as CKA_EC_PARAMS wants it.
pub(crate) fn p256_params_der() -> Vec<u8> {
    PRIME256V1.to_der().unwrap_or_default()
}

/// Checks that `point` is an uncompressed P-256 point (65 bytes, 0x04 || X || Y) on the curve.
fn check_p256_point(point: &[u8]) -> Result<(), KeyFormatError> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(KeyFormatError::BadPoint);
    }
    let key = p256::PublicKey::from_sec1_bytes(point).map_err(|_| KeyFormatError::BadPoint)?;
    // from_sec1_bytes also accepts compressed input; re-encoding proves the bytes are canonical.
    if key.to_encoded_point(false).as_bytes() != point {
        return Err(KeyFormatError::BadPoint);
    }
    Ok(())
}

/// Converts a PKCS#11 ECDSA P-256 signature (r||s, 64 bytes, r and s in [1, n-1]) to DER
/// `Ecdsa-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw).ok()?;
    Some(sig.to_der().as_bytes().to_vec())
}

/// Converts a DER `Ecdsa-Sig-Value` (strict DER) to the r||s form PKCS#11 verifies.
pub fn ecdsa_der_to_raw(der: &[u8]) -> Result<[u8; 64], KeyFormatError> {
    let sig = p256::ecdsa::Signature::from_der(der).map_err(|_| KeyFormatError::BadSignature)?;
    // `from_der` tolerates nothing but DER; re-encoding it must give the same bytes.
    if sig.to_der().as_bytes() != der {
        return Err(KeyFormatError::BadSignature);
    }
    Ok(sig.to_bytes().into())
}

/// SubjectPublicKeyInfo DER for an uncompressed P-256 point (65 bytes, 0x04 || X || Y) that lies
/// on the curve.
pub fn p256_spki_der(point: &[u8]) -> Option<Vec<u8>> {
    check_p256_point(point).ok()?;
    let params = AnyRef::from(&PRIME256V1);
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid: ID_EC_PUBLIC_KEY, parameters: Some(params) },
        subject_public_key: BitStringRef::from_bytes(point).ok()?,
    };
    spki.to_der().ok()
}

/// The point of a P-256 SubjectPublicKeyInfo (a ledger or TLS key), checked: strict DER,
/// id-ecPublicKey with the named curve prime256v1, an uncompressed point on the curve.
pub fn p256_spki_point(spki: &[u8]) -> Result<[u8; 65], KeyFormatError> {
    let info = SubjectPublicKeyInfoRef::from_der(spki)?;
    if info.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(KeyFormatError::WrongAlgorithm { expected: "id-ecPublicKey", found: info.algorithm.oid.to_string() });
    }
    let curve = info
        .algorithm
        .parameters
        .ok_or_else(|| KeyFormatError::WrongCurve("absent".into()))?
        .decode_as::<ObjectIdentifier>()
        .map_err(|_| KeyFormatError::WrongCurve("not a named curve".into()))?;
    if curve != PRIME256V1 {
        return Err(KeyFormatError::WrongCurve(curve.to_string()));
    }
    let point = info.subject_public_key.as_bytes().ok_or(KeyFormatError::BadPoint)?;
    check_p256_point(point)?;
    let mut out = [0u8; 65];
    out.copy_from_slice(point);
    Ok(out)
}

/// CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 2.40); some modules return the
/// bare point. Either way the result is a checked uncompressed P-256 point.
pub(crate) fn unwrap_ec_point(attr: &[u8]) -> Option<Vec<u8>> {
    let point = match OctetStringRef::from_der(attr) {
        Ok(os) => os.as_bytes().to_vec(),
        Err(_) => attr.to_vec(),
    };
    check_p256_point(&point).ok()?;
    Some(point)
}

/// SubjectPublicKeyInfo DER for an RSA public key (modulus and exponent as big-endian bytes).
pub(crate) fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, KeyFormatError> {
    let key = pkcs1::RsaPublicKey { modulus: UintRef::new(modulus)?, public_exponent: UintRef::new(exponent)? };
    let key_der = key.to_der()?;
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid: RSA_ENCRYPTION, parameters: Some(AnyRef::NULL) },
        subject_public_key: BitStringRef::from_bytes(&key_der)?,
    };
    Ok(spki.to_der()?)
}

/// The modulus and public exponent (big-endian, no leading zeros) of an RSA SubjectPublicKeyInfo,
/// e.g. a peer hospital's sharing key: strict DER, rsaEncryption with NULL parameters, a modulus
/// of at least [`RSA_MIN_BITS`] bits and an odd exponent of at least 3.
pub fn rsa_spki_checked(spki: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyFormatError> {
    let info = SubjectPublicKeyInfoRef::from_der(spki)?;
    if info.algorithm.oid != RSA_ENCRYPTION {
        return Err(KeyFormatError::WrongAlgorithm { expected: "rsaEncryption", found: info.algorithm.oid.to_string() });
    }
    if info.algorithm.parameters != Some(AnyRef::NULL) {
        return Err(KeyFormatError::Der("rsaEncryption parameters must be NULL".into()));
    }
    let bits = info.subject_public_key.as_bytes().ok_or_else(|| KeyFormatError::Der("BIT STRING with unused bits".into()))?;
    let key = pkcs1::RsaPublicKey::from_der(bits)?;
    let (n, e) = (key.modulus.as_bytes(), key.public_exponent.as_bytes());
    let n_bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if n_bits < RSA_MIN_BITS {
        return Err(KeyFormatError::RsaTooSmall { bits: n_bits });
    }
    let e_odd = e.last().is_some_and(|b| b & 1 == 1);
    if !e_odd || (e.len() == 1 && e[0] < 3) {
        return Err(KeyFormatError::RsaExponent);
    }
    Ok((n.to_vec(), e.to_vec()))
}

/// [`rsa_spki_checked`] without the reason.
pub fn rsa_spki_parts(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    rsa_spki_checked(spki).ok()
}

/// Parses an X.509 certificate (strict DER) and returns its SubjectPublicKeyInfo and subject
/// name, both DER.
pub(crate) fn certificate_key_and_subject(cert_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyFormatError> {
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    let tbs = &cert.tbs_certificate;
    Ok((tbs.subject_public_key_info.to_der()?, tbs.subject.to_der()?))
}

/// PEM armour for DER bytes.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The P-256 generator point, uncompressed: a valid point on the curve.
    fn generator() -> Vec<u8> {
        p256::AffinePoint::GENERATOR.to_encoded_point(false).as_bytes().to_vec()
    }

    fn rsa_modulus() -> Vec<u8> {
        std::iter::once(0xc1).chain((0..383).map(|i| i as u8)).collect()
    }

    #[test]
    fn rsa_spki_round_trips_through_its_parts() {
        let n = rsa_modulus();
        let spki = rsa_spki_der(&n, &[1, 0, 1]).expect("spki");
        assert_eq!(rsa_spki_parts(&spki), Some((n, vec![1, 0, 1])));
        assert_eq!(rsa_spki_parts(&spki[..spki.len() - 1]), None);
        let ec = p256_spki_der(&generator()).expect("p256 spki");
        assert!(matches!(rsa_spki_checked(&ec), Err(KeyFormatError::WrongAlgorithm { .. })));
    }

    #[test]
    fn a_non_minimal_length_is_refused() {
        let spki = rsa_spki_der(&rsa_modulus(), &[1, 0, 1]).expect("spki");
        // The outer SEQUENCE length is 0x82 0x01 0xa2 (418): re-encode it with a needless 0x83 form.
        assert_eq!(&spki[..2], &[0x30, 0x82]);
        let mut padded = vec![0x30, 0x83, 0x00];
        padded.extend_from_slice(&spki[2..]);
        assert!(matches!(rsa_spki_checked(&padded), Err(KeyFormatError::Der(_))), "{:?}", rsa_spki_checked(&padded));
        // A short length written in long form (0x81 0x05 instead of 0x05) in an ECDSA signature.
        let raw = [[0x11u8; 32], [0x22u8; 32]].concat();
        let der = ecdsa_raw_to_der(&raw).expect("der");
        assert_eq!(ecdsa_der_to_raw(&der).expect("round trip"), raw.as_slice());
        let mut long = vec![0x30, 0x81];
        long.extend_from_slice(&der[1..]);
        assert_eq!(ecdsa_der_to_raw(&long), Err(KeyFormatError::BadSignature));
        // An INTEGER with a superfluous leading zero.
        let mut fat = der.clone();
        fat[1] += 1;
        fat[3] += 1;
        fat.insert(4, 0x00);
        assert_eq!(ecdsa_der_to_raw(&fat), Err(KeyFormatError::BadSignature));
        // Trailing bytes after the certificate-sized structure.
        let mut trailing = spki.clone();
        trailing.push(0);
        assert!(rsa_spki_checked(&trailing).is_err());
    }

    #[test]
    fn wrong_algorithms_curves_and_points_are_refused() {
        let g = generator();
        let spki = p256_spki_der(&g).expect("spki");
        assert_eq!(p256_spki_point(&spki).expect("point").as_slice(), g.as_slice());
        // The same structure naming secp384r1 instead of prime256v1.
        let p384 = ObjectIdentifier::new_unwrap("1.3.132.0.34");
        let other = SubjectPublicKeyInfoRef {
            algorithm: AlgorithmIdentifierRef { oid: ID_EC_PUBLIC_KEY, parameters: Some(AnyRef::from(&p384)) },
            subject_public_key: BitStringRef::from_bytes(&g).expect("bits"),
        }
        .to_der()
        .expect("der");
        assert!(matches!(p256_spki_point(&other), Err(KeyFormatError::WrongCurve(c)) if c == "1.3.132.0.34"));
        // An RSA key where a ledger key is expected.
        let rsa = rsa_spki_der(&rsa_modulus(), &[1, 0, 1]).expect("rsa");
        assert!(matches!(p256_spki_point(&rsa), Err(KeyFormatError::WrongAlgorithm { .. })));
        // A point off the curve.
        let mut off = g.clone();
        off[64] ^= 1;
        assert!(p256_spki_der(&off).is_none());
        assert_eq!(unwrap_ec_point(&off), None);
        // CKA_EC_POINT, wrapped in an OCTET STRING or bare.
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend_from_slice(&g);
        assert_eq!(unwrap_ec_point(&wrapped), Some(g.clone()));
        assert_eq!(unwrap_ec_point(&g), Some(g.clone()));
    }

    #[test]
    fn rsa_keys_too_small_or_with_a_bad_exponent_are_refused() {
        let small: Vec<u8> = std::iter::once(0xc1).chain(std::iter::repeat_n(7, 127)).collect();
        let spki = rsa_spki_der(&small, &[1, 0, 1]).expect("spki");
        assert_eq!(rsa_spki_checked(&spki), Err(KeyFormatError::RsaTooSmall { bits: 1024 }));
        let even = rsa_spki_der(&rsa_modulus(), &[1, 0, 0]).expect("spki");
        assert_eq!(rsa_spki_checked(&even), Err(KeyFormatError::RsaExponent));
    }

    #[test]
    fn der_signature_adds_sign_padding_and_strips_zeros() {
        let mut raw = [0x11u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte
        raw[32] = 0x00; // s has a leading zero to strip
        raw[33] = 0x01;
        let der = ecdsa_raw_to_der(&raw).expect("der");
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        let s_at = 2 + 2 + 33;
        assert_eq!(&der[s_at..s_at + 2], &[0x02, 31]);
        assert_eq!(der.len(), 2 + 35 + 33);
        assert!(ecdsa_raw_to_der(&raw[..63]).is_none());
        assert!(ecdsa_raw_to_der(&[0u8; 64]).is_none(), "r = s = 0 is no signature");
    }

    #[test]
    fn pem_matches_known_base64() {
        assert_eq!(pem("X", b"foobar"), "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n");
        assert_eq!(pem("X", b"fo"), "-----BEGIN X-----\nZm8=\n-----END X-----\n");
    }
}
