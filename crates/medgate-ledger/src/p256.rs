//! ECDSA P-256 as the ledger uses it: public keys arrive as SubjectPublicKeyInfo DER, signatures
//! are raw `r || s` (what `CKM_ECDSA` returns) in low-S form, verified with ring over the message.
//!
//! Low-S: for every valid `(r, s)` the pair `(r, n - s)` is valid too, so anyone could re-spell a
//! signature and with it a batch hash (the ordering idempotency key). Signatures are therefore
//! normalized to `s <= n/2` when attached and anything else is rejected.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

use super::canon;
use super::LedgerError;

/// DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point: SEQUENCE, AlgorithmIdentifier
/// (id-ecPublicKey, prime256v1), BIT STRING of 66 bytes (no unused bits) holding the 65-byte point.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Order `n` of the P-256 group, big-endian.
const ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `floor(n / 2)`, big-endian: the largest low-S value.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Returns the 65-byte uncompressed EC point of a P-256 SubjectPublicKeyInfo (91 bytes DER).
///
/// Only the one fixed encoding is accepted: the 26-byte prefix
/// `3059301306072a8648ce3d020106082a8648ce3d030107034200` followed by `04 || x || y`.
/// Whether the point is on the curve is checked by ring when a signature is verified.
pub fn p256_point_from_spki(spki: &[u8]) -> Result<&[u8], LedgerError> {
    match spki.split_at_checked(SPKI_PREFIX.len()) {
        Some((prefix, point))
            if prefix == SPKI_PREFIX && point.len() == 65 && point.first() == Some(&0x04) =>
        {
            Ok(point)
        }
        _ => Err(LedgerError::BadKey),
    }
}

/// Turns a raw 64-byte `r || s` signature into its low-S form (`s` replaced by `n - s` when
/// `s > n/2`). Both forms verify; only the low-S form is accepted by the ledger. Input of any
/// other length is returned unchanged (and will fail verification).
pub fn normalize_low_s(raw_signature: &[u8]) -> Vec<u8> {
    let mut sig = raw_signature.to_vec();
    if let Some(s) = sig.get_mut(32..64).filter(|_| raw_signature.len() == 64) {
        if *s > HALF_ORDER[..] {
            let mut borrow = 0u16;
            for i in (0..32).rev() {
                let (n, v) = (u16::from(ORDER[i]), u16::from(s[i]) + borrow);
                let (digit, next) = if n >= v { (n - v, 0) } else { (n + 256 - v, 1) };
                s[i] = u8::try_from(digit).unwrap_or(0);
                borrow = next;
            }
        }
    }
    sig
}

/// Whether the 32-byte `s` is in `1..=n/2`.
fn is_low_s(s: &[u8]) -> bool {
    s.len() == 32 && s <= &HALF_ORDER[..] && s.iter().any(|&b| b != 0)
}

/// Verifies a hex `r || s` signature over `message` with a P-256 SubjectPublicKeyInfo.
pub(super) fn verify(spki: &[u8], message: &[u8], signature_hex: &str) -> Result<(), LedgerError> {
    let point = p256_point_from_spki(spki)?;
    if !canon::is_hex(signature_hex, 128) {
        return Err(LedgerError::BadSignature);
    }
    let sig = hex::decode(signature_hex).map_err(|_| LedgerError::BadSignature)?;
    if !sig.get(32..).is_some_and(is_low_s) {
        return Err(LedgerError::BadSignature);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(message, &sig)
        .map_err(|_| LedgerError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::TestKey;
    use super::*;

    #[test]
    fn spki_prefix_is_checked() {
        let key = TestKey::new();
        let spki = key.spki();
        assert_eq!(spki.len(), 91);
        assert_eq!(p256_point_from_spki(&spki), Ok(&spki[26..]));
        assert_eq!(p256_point_from_spki(&spki[..90]), Err(LedgerError::BadKey));
        let mut wrong_curve = spki.clone();
        wrong_curve[24] ^= 1;
        assert_eq!(p256_point_from_spki(&wrong_curve), Err(LedgerError::BadKey));
        let mut compressed = spki.clone();
        compressed[26] = 0x02;
        assert_eq!(p256_point_from_spki(&compressed), Err(LedgerError::BadKey));
        let mut longer = spki.clone();
        longer.push(0);
        assert_eq!(p256_point_from_spki(&longer), Err(LedgerError::BadKey));
        assert_eq!(p256_point_from_spki(&[]), Err(LedgerError::BadKey));
    }

    #[test]
    fn half_order_is_order_shifted() {
        let mut half = [0u8; 32];
        let mut carry = 0u8;
        for (h, &n) in half.iter_mut().zip(ORDER.iter()) {
            *h = (carry << 7) | (n >> 1);
            carry = n & 1;
        }
        assert_eq!(half, HALF_ORDER);
    }

    #[test]
    fn low_s_normalization_keeps_signatures_valid() {
        let key = TestKey::new();
        let spki = key.spki();
        let (mut saw_high, mut saw_low) = (false, false);
        for i in 0..64u32 {
            let msg = format!("message {i}");
            let raw = key.sign(msg.as_bytes());
            let high = raw[32..] > HALF_ORDER[..];
            saw_high |= high;
            saw_low |= !high;
            let low = normalize_low_s(&raw);
            assert!(is_low_s(&low[32..]));
            assert_eq!(low == raw, !high);
            assert_eq!(verify(&spki, msg.as_bytes(), &hex::encode(&low)), Ok(()));
            // The high-S twin of a valid signature is valid for ring but refused here.
            let twin = if high { raw.clone() } else { flip(&raw) };
            assert!(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &spki[26..])
                .verify(msg.as_bytes(), &twin)
                .is_ok());
            assert_eq!(
                verify(&spki, msg.as_bytes(), &hex::encode(&twin)),
                Err(LedgerError::BadSignature)
            );
        }
        assert!(saw_high && saw_low, "both halves should occur in 64 signatures");
    }

    /// `(r, n - s)` for a low-S signature, computed independently of `normalize_low_s`.
    fn flip(sig: &[u8]) -> Vec<u8> {
        let mut out = sig.to_vec();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(ORDER[i]) - i16::from(sig[32 + i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[32 + i] = d as u8;
        }
        out
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let key = TestKey::new();
        let spki = key.spki();
        let sig = hex::encode(normalize_low_s(&key.sign(b"m")));
        assert_eq!(verify(&spki, b"m", &sig), Ok(()));
        assert_eq!(verify(&spki, b"n", &sig), Err(LedgerError::BadSignature));
        assert_eq!(verify(&spki, b"m", &sig.to_uppercase()), Err(LedgerError::BadSignature));
        assert_eq!(verify(&spki, b"m", &sig[..126]), Err(LedgerError::BadSignature));
        assert_eq!(verify(&spki, b"m", &"0".repeat(128)), Err(LedgerError::BadSignature));
        assert_eq!(verify(&spki[..90], b"m", &sig), Err(LedgerError::BadKey));
        assert_eq!(normalize_low_s(b"short"), b"short".to_vec());
    }
}
