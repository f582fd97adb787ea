//! The few DER encodings the HSM boundary needs: ECDSA signatures (PKCS#11 returns r||s, TLS and
//! X.509 want DER) and P-256 / RSA public keys as SubjectPublicKeyInfo.

/// `SEQUENCE { id-ecPublicKey, prime256v1 }` followed by the BIT STRING header for a 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// DER of the named curve prime256v1 (CKA_EC_PARAMS).
pub(crate) const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    push_len(out, body.len());
    out.extend_from_slice(body);
}

/// A positive INTEGER from big-endian unsigned bytes.
fn push_uint(out: &mut Vec<u8>, be: &[u8]) {
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len().saturating_sub(1));
    let trimmed = &be[first.min(be.len())..];
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() {
        body.push(0);
    } else {
        if trimmed[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(trimmed);
    }
    push_tlv(out, 0x02, &body);
}

/// Converts a PKCS#11 ECDSA signature (r||s, each half the same size) to DER `Ecdsa-Sig-Value`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 8);
    push_uint(&mut body, r);
    push_uint(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    push_tlv(&mut out, 0x30, &body);
    Some(out)
}

/// SubjectPublicKeyInfo DER for an uncompressed P-256 point (65 bytes, 0x04 || X || Y).
pub fn p256_spki_der(point: &[u8]) -> Option<Vec<u8>> {
    if point.len() != 65 || point[0] != 0x04 {
        return None;
    }
    let mut out = P256_SPKI_PREFIX.to_vec();
    out.extend_from_slice(point);
    Some(out)
}

/// CKA_EC_POINT is a DER OCTET STRING around the point; some modules return the bare point.
pub(crate) fn unwrap_ec_point(attr: &[u8]) -> Option<Vec<u8>> {
    match attr {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Some(rest.to_vec()),
        [0x04, ..] if attr.len() == 65 => Some(attr.to_vec()),
        _ => None,
    }
}

/// SubjectPublicKeyInfo DER for an RSA public key.
pub(crate) fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut rsa_body = Vec::new();
    push_uint(&mut rsa_body, modulus);
    push_uint(&mut rsa_body, exponent);
    let mut rsa_key = Vec::new();
    push_tlv(&mut rsa_key, 0x30, &rsa_body);
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(&rsa_key);
    // SEQUENCE { rsaEncryption OID, NULL }
    let alg: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = alg.to_vec();
    push_tlv(&mut body, 0x03, &bit_string);
    let mut out = Vec::new();
    push_tlv(&mut out, 0x30, &body);
    out
}

/// One DER TLV: (tag, body, rest). Definite lengths only, at most 4 length bytes.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The modulus and public exponent of an RSA SubjectPublicKeyInfo (leading zero bytes removed),
/// e.g. a peer hospital's sharing key.
pub fn rsa_spki_parts(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    const RSA_ALG: [u8; 15] = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    let (0x30, body, []) = read_tlv(spki)? else { return None };
    let alg = body.get(..RSA_ALG.len())?;
    if alg != RSA_ALG {
        return None;
    }
    let (0x03, bits, []) = read_tlv(&body[RSA_ALG.len()..])? else { return None };
    let (&0, key) = bits.split_first()? else { return None };
    let (0x30, seq, []) = read_tlv(key)? else { return None };
    let (0x02, n, rest) = read_tlv(seq)? else { return None };
    let (0x02, e, []) = read_tlv(rest)? else { return None };
    let strip = |v: &[u8]| v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<u8>>();
    let (n, e) = (strip(n), strip(e));
    (!n.is_empty() && !e.is_empty()).then_some((n, e))
}

/// PEM armour for DER bytes.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn rsa_spki_round_trips_through_its_parts() {
        let n: Vec<u8> = std::iter::once(0xc1).chain((0..383).map(|i| i as u8)).collect();
        let spki = rsa_spki_der(&n, &[1, 0, 1]);
        assert_eq!(rsa_spki_parts(&spki), Some((n, vec![1, 0, 1])));
        assert_eq!(rsa_spki_parts(&spki[..spki.len() - 1]), None);
        assert_eq!(rsa_spki_parts(&p256_spki_der(&[4u8; 65]).unwrap_or_default()), None);
    }

    use super::*;

    #[test]
    fn der_signature_adds_sign_padding_and_strips_zeros() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte
        raw[32] = 0x00; // s has leading zeros to strip
        raw[33] = 0x01;
        let der = ecdsa_raw_to_der(&raw).expect("der");
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        // s: 31 significant bytes
        let s_at = 2 + 2 + 33;
        assert_eq!(&der[s_at..s_at + 2], &[0x02, 31]);
        assert_eq!(der.len(), 2 + 35 + 33);
        assert!(ecdsa_raw_to_der(&raw[..63]).is_none());
    }

    #[test]
    fn pem_matches_known_base64() {
        assert_eq!(pem("X", b"foobar"), "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n");
        assert_eq!(pem("X", b"fo"), "-----BEGIN X-----\nZm8=\n-----END X-----\n");
    }

    #[test]
    fn long_lengths_use_long_form() {
        let mut out = Vec::new();
        push_len(&mut out, 300);
        assert_eq!(out, vec![0x82, 0x01, 0x2c]);
    }
}
