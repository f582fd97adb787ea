//! Typed cryptographic operations. Each takes one pooled session for one to four PKCS#11 calls;
//! long-lived key material never leaves the HSM, and per-record data keys exist in process memory
//! only in zeroizing buffers.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use zeroize::Zeroizing;

use crate::der::{ecdsa_raw_to_der, p256_spki_der, pem, rsa_spki_der, unwrap_ec_point};
use crate::error::HsmError;
use crate::keys::Role;
use crate::pool::{Ctx, Fail, Hsm, Op};

/// An ECDSA P-256 signature made in the HSM, in both encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Version of the signing key (its label is `medgate-<role>-v<version>`).
    pub key_version: u32,
    /// r || s, 64 bytes, as PKCS#11 returns it.
    pub raw: Vec<u8>,
    /// DER `Ecdsa-Sig-Value`, as TLS and X.509 use it.
    pub der: Vec<u8>,
}

/// A data key wrapped (AES-KWP, RFC 5649) by a version of the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_version: u32,
    pub bytes: Vec<u8>,
}

/// Template of the short-lived session object that carries a data key through C_WrapKey or out of
/// C_UnwrapKey. It lives only inside one session and is destroyed right after use.
fn data_key_template(value: Option<&[u8]>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    if let Some(v) = value {
        t.push(Attribute::Value(v.to_vec()));
    }
    t
}

/// Template of the session object that carries a data key from C_UnwrapKey to C_WrapKey when it
/// is only re-wrapped: the same as [`data_key_template`], but sensitive, since nothing reads it.
fn transit_key_template() -> Vec<Attribute> {
    data_key_template(None)
        .into_iter()
        .map(|a| if matches!(a, Attribute::Sensitive(_)) { Attribute::Sensitive(true) } else { a })
        .collect()
}

/// Wraps the session object `obj` with the active key-encryption key. A rotation (here or by the
/// officer in another process) clears the Wrap flag of the previous version; a handle cached
/// before it is then refused with CKR_KEY_FUNCTION_NOT_PERMITTED, so the handles are looked up
/// again and the wrap is tried once more with the version that is active now.
fn wrap_with_active_kek(hsm: &Hsm, s: &cryptoki::session::Session, ctx: &Ctx, obj: cryptoki::object::ObjectHandle) -> Result<WrappedKey, Fail> {
    let (version, kek) = ctx.key(hsm, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
    match s.wrap_key(&Mechanism::AesKeyWrapPad, kek, obj) {
        Ok(bytes) => Ok(WrappedKey { kek_version: version, bytes }),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::KeyFunctionNotPermitted, _)) => {
            ctx.clear_keys();
            let (version, kek) = ctx.key(hsm, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
            Ok(WrappedKey { kek_version: version, bytes: s.wrap_key(&Mechanism::AesKeyWrapPad, kek, obj)? })
        }
        Err(e) => Err(e.into()),
    }
}

/// SoftHSM reports a failed KWP integrity check as a general error.
fn unwrap_failure(e: cryptoki::error::Error) -> Fail {
    match e {
        cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError, _) => Fail::Hsm(HsmError::Integrity),
        other => Fail::P11(other),
    }
}

/// Reads an unwrapped data key's value out of its session object, then destroys the object.
fn take_value(s: &cryptoki::session::Session, obj: cryptoki::object::ObjectHandle) -> Result<Zeroizing<Vec<u8>>, Fail> {
    let value = s.get_attributes(obj, &[AttributeType::Value]);
    let destroyed = s.destroy_object(obj);
    let mut key = Zeroizing::new(Vec::new());
    for a in value? {
        if let Attribute::Value(mut v) = a {
            key.extend_from_slice(&v);
            zeroize::Zeroize::zeroize(&mut v);
        }
    }
    destroyed?;
    if key.is_empty() {
        return Err(HsmError::Device("unwrapped key has no value".into()).into());
    }
    Ok(key)
}

/// RSA-OAEP with SHA-1 and MGF1-SHA1, no label: the only OAEP parameters SoftHSM 2.6.1 takes.
fn oaep() -> Mechanism<'static> {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, PkcsOaepSource::empty()))
}

fn private_class(role: Role) -> ObjectClass {
    if role.is_pair() {
        ObjectClass::PRIVATE_KEY
    } else {
        ObjectClass::SECRET_KEY
    }
}

impl Hsm {
    /// Signs a SHA-256 digest with the active key of `role` (ledger or tls) using CKM_ECDSA.
    pub fn sign_digest(&self, role: Role, digest: &[u8; 32]) -> Result<Signature, HsmError> {
        if !matches!(role, Role::Ledger | Role::Tls) {
            return Err(HsmError::Invalid(format!("{role} keys do not sign")));
        }
        self.run(Op::Sign, 1, true, |s, ctx| {
            let (version, key) = ctx.key(self, s, role, None, ObjectClass::PRIVATE_KEY)?;
            let raw = s.sign(&Mechanism::Ecdsa, key, digest)?;
            let der = ecdsa_raw_to_der(&raw)
                .ok_or_else(|| HsmError::Device(format!("ECDSA signature of {} bytes", raw.len())))?;
            Ok(Signature { key_version: version, raw, der })
        })
    }

    /// Wraps a data key (16 to 64 bytes) with the active key-encryption key (CKM_AES_KEY_WRAP_PAD).
    pub fn wrap_data_key(&self, data_key: &[u8]) -> Result<WrappedKey, HsmError> {
        if !(16..=64).contains(&data_key.len()) {
            return Err(HsmError::Invalid(format!("data key of {} bytes", data_key.len())));
        }
        // C_CreateObject + C_WrapKey (cryptoki asks for the length, then wraps) + C_DestroyObject
        self.run(Op::Wrap, 4, true, |s, ctx| {
            let obj = s.create_object(&data_key_template(Some(data_key)))?;
            let wrapped = wrap_with_active_kek(self, s, ctx, obj);
            let destroyed = s.destroy_object(obj);
            let wrapped = wrapped?;
            destroyed?;
            Ok(wrapped)
        })
    }

    /// Re-wraps a data key under the active key-encryption key: unwrapped with the version that
    /// wrapped it into a sensitive session object, wrapped again, the object destroyed. The data
    /// key never leaves the HSM. A key already under the active version is returned as it is.
    /// Counted as a wrap. A destroyed or retired KEK version gives `KeyMissing`; an altered blob
    /// gives `Integrity`.
    pub fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey, HsmError> {
        // C_UnwrapKey + C_WrapKey x2 + C_DestroyObject
        self.run(Op::Wrap, 4, true, |s, ctx| {
            let (active, _) = ctx.key(self, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
            if active == wrapped.kek_version {
                return Ok(wrapped.clone());
            }
            let (_, old) = ctx.key(self, s, Role::Kek, Some(wrapped.kek_version), ObjectClass::SECRET_KEY)?;
            let dk = s
                .unwrap_key(&Mechanism::AesKeyWrapPad, old, &wrapped.bytes, &transit_key_template())
                .map_err(unwrap_failure)?;
            let out = wrap_with_active_kek(self, s, ctx, dk);
            let destroyed = s.destroy_object(dk);
            let out = out?;
            destroyed?;
            Ok(out)
        })
    }

    /// Unwraps a data key with the version of the key-encryption key that wrapped it. A retired or
    /// destroyed KEK version gives `KeyMissing`; an altered blob gives `Integrity`.
    pub fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        // C_UnwrapKey + C_GetAttributeValue + C_DestroyObject
        self.run(Op::Unwrap, 3, true, |s, ctx| {
            let (_, kek) = ctx.key(self, s, Role::Kek, Some(wrapped.kek_version), ObjectClass::SECRET_KEY)?;
            let obj = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped.bytes, &data_key_template(None)).map_err(unwrap_failure)?;
            take_value(s, obj)
        })
    }

    /// Re-wraps a data key for another hospital: unwraps it with this hospital's KEK and wraps
    /// it with the peer's RSA sharing public key (RSA-OAEP, SHA-1 and MGF1-SHA1: what SoftHSM
    /// 2.6.1 supports). The data key exists only as a short-lived session object in the HSM.
    pub fn rewrap_for_peer(&self, wrapped: &WrappedKey, peer_modulus: &[u8], peer_exponent: &[u8]) -> Result<Vec<u8>, HsmError> {
        // C_CreateObject (peer key) + C_UnwrapKey + C_WrapKey x2 + C_DestroyObject x2
        self.run(Op::Wrap, 6, true, |s, ctx| {
            let (_, kek) = ctx.key(self, s, Role::Kek, Some(wrapped.kek_version), ObjectClass::SECRET_KEY)?;
            let peer = s.create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Token(false),
                Attribute::Modulus(peer_modulus.to_vec()),
                Attribute::PublicExponent(peer_exponent.to_vec()),
                Attribute::Wrap(true),
                Attribute::Encrypt(false),
                Attribute::Verify(false),
            ])?;
            let dk = match s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped.bytes, &data_key_template(None)) {
                Ok(k) => k,
                Err(e) => {
                    let _ = s.destroy_object(peer);
                    return Err(match e {
                        cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError, _) => Fail::Hsm(HsmError::Integrity),
                        other => Fail::P11(other),
                    });
                }
            };
            let out = s.wrap_key(&oaep(), peer, dk);
            let d1 = s.destroy_object(dk);
            let d2 = s.destroy_object(peer);
            let out = out?;
            d1?;
            d2?;
            Ok(out)
        })
    }

    /// Unwraps a data key that another hospital re-wrapped for this hospital's sharing key.
    pub fn unwrap_shared(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        // C_UnwrapKey + C_GetAttributeValue + C_DestroyObject
        self.run(Op::Unwrap, 3, true, |s, ctx| {
            let (_, key) = ctx.key(self, s, Role::Sharing, None, ObjectClass::PRIVATE_KEY)?;
            let obj = s.unwrap_key(&oaep(), key, blob, &data_key_template(None)).map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError | cryptoki::error::RvError::EncryptedDataInvalid, _) => {
                    Fail::Hsm(HsmError::Integrity)
                }
                other => Fail::P11(other),
            })?;
            take_value(s, obj)
        })
    }

    /// HMAC-SHA256 of `data` with the active pseudonym key. Returns the key version and the MAC.
    pub fn pseudonym_hmac(&self, data: &[u8]) -> Result<(u32, [u8; 32]), HsmError> {
        self.run(Op::Hmac, 1, true, |s, ctx| {
            let (version, key) = ctx.key(self, s, Role::Pseudonym, None, ObjectClass::SECRET_KEY)?;
            let mac = s.sign(&Mechanism::Sha256Hmac, key, data)?;
            let mac: [u8; 32] = mac
                .as_slice()
                .try_into()
                .map_err(|_| HsmError::Device(format!("HMAC of {} bytes", mac.len())))?;
            Ok((version, mac))
        })
    }

    /// Random bytes from the HSM's generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        let len32 = u32::try_from(len).map_err(|_| HsmError::Invalid(format!("{len} random bytes")))?;
        self.run(Op::Random, 1, true, |s, _| Ok(s.generate_random_vec(len32)?))
    }

    /// The public key of `role` (a key pair role) as SubjectPublicKeyInfo DER, with its version.
    /// `version: None` means the active version.
    pub fn public_key_der(&self, role: Role, version: Option<u32>) -> Result<(u32, Vec<u8>), HsmError> {
        if !role.is_pair() {
            return Err(HsmError::Invalid(format!("{role} is a secret key; it has no public half")));
        }
        self.run(Op::Admin, 2, true, |s, ctx| {
            let (v, h) = ctx.key(self, s, role, version, ObjectClass::PUBLIC_KEY)?;
            let der = match role {
                Role::Sharing => {
                    let attrs = s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])?;
                    let (mut n, mut e) = (Vec::new(), Vec::new());
                    for a in attrs {
                        match a {
                            Attribute::Modulus(m) => n = m,
                            Attribute::PublicExponent(x) => e = x,
                            _ => {}
                        }
                    }
                    rsa_spki_der(&n, &e)
                }
                _ => {
                    let attrs = s.get_attributes(h, &[AttributeType::EcPoint])?;
                    let point = attrs.into_iter().find_map(|a| match a {
                        Attribute::EcPoint(p) => unwrap_ec_point(&p),
                        _ => None,
                    });
                    point
                        .and_then(|p| p256_spki_der(&p))
                        .ok_or_else(|| HsmError::Device("public key has no P-256 point".into()))?
                }
            };
            Ok((v, der))
        })
    }

    /// The public key as PEM (`PUBLIC KEY`), for `openssl` and for third parties who verify.
    pub fn public_key_pem(&self, role: Role, version: Option<u32>) -> Result<(u32, String), HsmError> {
        let (v, der) = self.public_key_der(role, version)?;
        Ok((v, pem("PUBLIC KEY", &der)))
    }

    /// Which mechanism a role's keys are limited to (for listings and tests).
    pub fn mechanism_of(role: Role) -> MechanismType {
        role.mechanism()
    }

    pub(crate) fn private_class(role: Role) -> ObjectClass {
        private_class(role)
    }
}

