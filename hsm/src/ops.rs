//! Typed cryptographic operations. Each takes one pooled session for one to four PKCS#11 calls;
//! long-lived key material never leaves the HSM, and per-record data keys exist in process memory
//! only in zeroizing buffers.

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CKM_AES_GCM, CKM_ECDSA, CKM_RSA_PKCS_OAEP, CKM_SHA256_HMAC};
use zeroize::Zeroizing;

use crate::der::{ecdsa_raw_to_der, p256_spki_der, pem, rsa_spki_der, unwrap_ec_point};
use crate::error::HsmError;
use crate::keys::Role;
use crate::pool::{Ctx, Fail, Hsm, Op};
use crate::profile::KekScheme;

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

/// A data key wrapped by a version of the key-encryption key: RFC 5649 output, or the AES-GCM
/// format below on a module without RFC 5649. Which one follows from the KEK version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub kek_version: u32,
    pub bytes: Vec<u8>,
}

/// Template of an AES key that lives in one session: whether it is sensitive and extractable,
/// whether it encrypts or decrypts (with C_Encrypt/C_Decrypt), and no other use.
pub(crate) fn session_aes_template(sensitive: bool, extractable: bool, encrypt: bool, decrypt: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(encrypt),
        Attribute::Decrypt(decrypt),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

/// Template of the short-lived session object that carries a data key through C_WrapKey or out of
/// C_UnwrapKey. It lives only inside one session and is destroyed right after use.
pub(crate) fn data_key_template(value: Option<&[u8]>) -> Vec<Attribute> {
    let mut t = session_aes_template(false, true, false, false);
    if let Some(v) = value {
        t.push(Attribute::Value(v.to_vec()));
    }
    t
}

/// Creates a session object holding the data key `value`; the template's copy of the key is
/// zeroized once the module has taken it.
fn create_data_key(s: &Session, value: &[u8]) -> Result<ObjectHandle, cryptoki::error::Error> {
    let mut template = data_key_template(Some(value));
    let created = s.create_object(&template);
    for a in &mut template {
        if let Attribute::Value(v) = a {
            zeroize::Zeroize::zeroize(v);
        }
    }
    created
}

/// The template of an unwrapped data key whose value is read. A module that refuses to be told
/// CKA_SENSITIVE=false and CKA_EXTRACTABLE=true on unwrap (openCryptoki answers
/// CKR_ATTRIBUTE_READ_ONLY) gets the template without them, once and for the connection: the
/// data key is meant to come out, so its defaults weaken nothing, and if they make it sensitive
/// reading it fails.
fn unwrap_template_retry<T>(ctx: &Ctx, f: impl Fn(&[Attribute]) -> Result<T, cryptoki::error::Error>) -> Result<T, cryptoki::error::Error> {
    use std::sync::atomic::Ordering;
    let template = |plain: bool| -> Vec<Attribute> {
        data_key_template(None).into_iter().filter(|a| !(plain && matches!(a, Attribute::Sensitive(_) | Attribute::Extractable(_)))).collect()
    };
    let plain = ctx.data_key_defaults.load(Ordering::Relaxed);
    match f(&template(plain)) {
        Err(cryptoki::error::Error::Pkcs11(RvError::AttributeReadOnly, _)) if !plain => {
            ctx.data_key_defaults.store(true, Ordering::Relaxed);
            tracing::info!("the module refuses CKA_SENSITIVE/CKA_EXTRACTABLE in an unwrap template; leaving them to its defaults");
            f(&template(true))
        }
        other => other,
    }
}

/// Template of the session object that carries a data key from C_UnwrapKey to C_WrapKey when it
/// is only re-wrapped: the same as [`data_key_template`], but sensitive, since nothing reads it.
fn transit_key_template() -> Vec<Attribute> {
    data_key_template(None)
        .into_iter()
        .map(|a| if matches!(a, Attribute::Sensitive(_)) { Attribute::Sensitive(true) } else { a })
        .collect()
}

/// A data key on its way into a wrap: its bytes in process memory, or a sensitive session object
/// that never left the HSM (a re-wrap between two RFC 5649 KEK versions).
pub(crate) enum Dk<'a> {
    Value(&'a [u8]),
    Object(ObjectHandle),
}

/// The AAD of the AES-GCM wrap format: a domain string and the KEK version, so that a blob
/// cannot be passed off as made by another version or for another purpose.
fn gcm_aad(kek_version: u32) -> Vec<u8> {
    let mut aad = GCM_DOMAIN.to_vec();
    aad.extend_from_slice(&kek_version.to_be_bytes());
    aad
}

/// AES-GCM wrap format, for modules without RFC 5649 (docs/HSM.md, "AES-GCM wrap format"):
/// `0x01 || IV (12 bytes, from the HSM's generator) || ciphertext || tag (16 bytes)`, AAD =
/// "medgate data key/aes-256-gcm/v1" || KEK version (4 bytes, big-endian). Random 96-bit IVs
/// keep the IV collision probability below 2^-32 for up to 2^32 wraps per KEK version; rotate
/// the KEK well before that.
const GCM_FORMAT: u8 = 0x01;
const GCM_DOMAIN: &[u8] = b"medgate data key/aes-256-gcm/v1";
const GCM_IV: usize = 12;
const GCM_TAG: usize = 16;

/// Seals `value` under the AES key `key` in the framing every AES-GCM blob of medgate has:
/// `format || IV (12 bytes) || ciphertext || tag (16 bytes)`. C_EncryptInit + C_Encrypt with a
/// buffer of the exact size, two calls. The IV comes from the operating system's generator (what
/// the HSM's own C_GenerateRandom would give costs one more round trip to the HSM per record,
/// and an IV needs to be unique, not secret). `failed` names a failure of the module.
pub(crate) fn gcm_seal_framed(ctx: &Ctx, s: &Session, key: ObjectHandle, format: u8, aad: &[u8], value: &[u8], failed: impl Fn(cryptoki::error::Error) -> Fail) -> Result<Vec<u8>, Fail> {
    let mut iv = [0u8; GCM_IV];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut iv).map_err(|_| HsmError::Device("the system random generator failed".into()))?;
    let sealed = ctx.raw.aes_gcm(s.handle(), key.handle(), true, &iv, aad, value).map_err(failed)?;
    let mut out = Vec::with_capacity(1 + GCM_IV + sealed.len());
    out.push(format);
    out.extend_from_slice(&iv);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The IV and the ciphertext with its tag of a blob in [`gcm_seal_framed`]'s framing, if it has
/// the `format` byte and room for a 16-byte key and the tag.
pub(crate) fn gcm_frame(format: u8, blob: &[u8]) -> Option<(&[u8], &[u8])> {
    (blob.len() >= 1 + GCM_IV + GCM_TAG + 16 && blob[0] == format).then(|| (&blob[1..1 + GCM_IV], &blob[1 + GCM_IV..]))
}

/// Seals a data key under an AES-GCM KEK version.
fn gcm_seal(ctx: &Ctx, s: &Session, kek: ObjectHandle, version: u32, value: &[u8]) -> Result<Vec<u8>, Fail> {
    gcm_seal_framed(ctx, s, kek, GCM_FORMAT, &gcm_aad(version), value, Fail::with(Role::Kek, "wrap", CKM_AES_GCM))
}

/// Opens an AES-GCM blob: C_DecryptInit + C_Decrypt, two calls.
fn gcm_open(ctx: &Ctx, s: &Session, kek: ObjectHandle, version: u32, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Fail> {
    let Some((iv, sealed)) = gcm_frame(GCM_FORMAT, blob) else {
        return Err(HsmError::Integrity.into());
    };
    match ctx.raw.aes_gcm(s.handle(), kek.handle(), false, iv, &gcm_aad(version), sealed) {
        Ok(v) => Ok(Zeroizing::new(v)),
        // SoftHSM reports a failed tag check as a general error.
        Err(cryptoki::error::Error::Pkcs11(RvError::GeneralError | RvError::EncryptedDataInvalid, _)) => Err(HsmError::Integrity.into()),
        Err(e) => Err(Fail::with(Role::Kek, "unwrap", CKM_AES_GCM)(e)),
    }
}

/// RFC 5649 output for `n` input bytes: the input padded to a multiple of 8, plus 8.
pub(crate) fn kwp_len(n: usize) -> usize {
    n.div_ceil(8) * 8 + 8
}

pub(crate) fn wrap_once(hsm: &Hsm, s: &Session, ctx: &Ctx, dk: &Dk<'_>) -> Result<WrappedKey, Fail> {
    let (version, kek) = ctx.key(hsm, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
    let scheme = ctx.kek_scheme(s, kek, version)?;
    // C_WrapKey; C_CreateObject + C_WrapKey + C_DestroyObject; C_EncryptInit + C_Encrypt.
    hsm.add_calls(match (scheme, dk) {
        (KekScheme::Rfc5649 { .. }, Dk::Object(_)) => 1,
        (KekScheme::Rfc5649 { .. }, Dk::Value(_)) => 3,
        (KekScheme::AesGcm, _) => 2,
    });
    let bytes = match (scheme, dk) {
        (KekScheme::Rfc5649 { mechanism }, Dk::Object(obj)) => ctx
            .raw
            .wrap_key(s.handle(), mechanism, kek.handle(), obj.handle(), 72)
            .map_err(Fail::with(Role::Kek, "wrap", mechanism))?,
        (KekScheme::Rfc5649 { mechanism }, Dk::Value(v)) => {
            let obj = create_data_key(s, v)?;
            let wrapped = ctx
                .raw
                .wrap_key(s.handle(), mechanism, kek.handle(), obj.handle(), kwp_len(v.len()))
                .map_err(Fail::with(Role::Kek, "wrap", mechanism));
            let destroyed = s.destroy_object(obj);
            let wrapped = wrapped?;
            destroyed?;
            wrapped
        }
        (KekScheme::AesGcm, Dk::Value(v)) => gcm_seal(ctx, s, kek, version, v)?,
        (KekScheme::AesGcm, Dk::Object(_)) => {
            return Err(HsmError::Invalid("a data key held as an HSM object cannot be sealed with AES-GCM".into()).into())
        }
    };
    Ok(WrappedKey { kek_version: version, bytes })
}

/// Wraps a data key with the active key-encryption key. A rotation (here or by the officer in
/// another process) clears the create flag of the previous version; a handle cached before it is
/// then refused with CKR_KEY_FUNCTION_NOT_PERMITTED, so the handles are looked up again and the
/// wrap is tried once more with the version that is active now.
fn wrap_with_active_kek(hsm: &Hsm, s: &Session, ctx: &Ctx, dk: Dk<'_>) -> Result<WrappedKey, Fail> {
    match wrap_once(hsm, s, ctx, &dk) {
        Err(Fail::P11(cryptoki::error::Error::Pkcs11(RvError::KeyFunctionNotPermitted, _), _)) => {
            ctx.clear_keys();
            wrap_once(hsm, s, ctx, &dk)
        }
        other => other,
    }
}

/// What an unwrap with a KEK version gives: a session object (RFC 5649) or the bytes (AES-GCM).
pub(crate) enum Unwrapped {
    Object(ObjectHandle),
    Value(Zeroizing<Vec<u8>>),
}

/// Unwraps `wrapped` with the KEK version that made it. `transit`: the session object is made
/// sensitive, for a key that is only re-wrapped (AES-GCM keys come out as bytes regardless).
pub(crate) fn unwrap_with_kek(hsm: &Hsm, s: &Session, ctx: &Ctx, wrapped: &WrappedKey, transit: bool) -> Result<Unwrapped, Fail> {
    let (_, kek) = ctx.key(hsm, s, Role::Kek, Some(wrapped.kek_version), ObjectClass::SECRET_KEY)?;
    match ctx.kek_scheme(s, kek, wrapped.kek_version)? {
        KekScheme::Rfc5649 { mechanism } => {
            hsm.add_calls(1);
            let result = if transit {
                ctx.raw.unwrap_key(s.handle(), mechanism, kek.handle(), &wrapped.bytes, &transit_key_template())
            } else {
                unwrap_template_retry(ctx, |t| ctx.raw.unwrap_key(s.handle(), mechanism, kek.handle(), &wrapped.bytes, t))
            };
            match result {
                Ok(h) => Ok(Unwrapped::Object(crate::raw::object_handle(h))),
                // SoftHSM reports a failed RFC 5649 integrity check as a general error.
                Err(cryptoki::error::Error::Pkcs11(RvError::GeneralError, _)) => Err(HsmError::Integrity.into()),
                Err(e) => Err(Fail::with(Role::Kek, "unwrap", mechanism)(e)),
            }
        }
        KekScheme::AesGcm => Ok(Unwrapped::Value({
            hsm.add_calls(2);
            gcm_open(ctx, s, kek, wrapped.kek_version, &wrapped.bytes)?
        })),
    }
}

/// Wraps `key` (a session object the caller keeps) with a peer's RSA sharing public key, made a
/// session object for the one wrap: C_CreateObject, C_WrapKey x2 (cryptoki asks for the
/// length), C_DestroyObject. `operation` names the wrap in errors.
pub(crate) fn wrap_for_peer_key(s: &Session, modulus: &[u8], exponent: &[u8], key: ObjectHandle, operation: &'static str) -> Result<Vec<u8>, Fail> {
    let peer = s.create_object(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Modulus(modulus.to_vec()),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
    ])?;
    let out = s.wrap_key(&oaep(), peer, key).map_err(Fail::with(Role::Sharing, operation, CKM_RSA_PKCS_OAEP));
    let destroyed = s.destroy_object(peer);
    let out = out?;
    destroyed?;
    Ok(out)
}

/// A data key under a KEK version, re-wrapped for a peer's RSA sharing key: the unwrap (counted
/// where it is made), C_CreateObject (the data key, after an AES-GCM unwrap), C_CreateObject
/// (peer key), C_WrapKey x2 (cryptoki asks for the length), C_DestroyObject x2.
pub(crate) fn rewrap_rsa(hsm: &Hsm, s: &Session, ctx: &Ctx, wrapped: &WrappedKey, peer_modulus: &[u8], peer_exponent: &[u8]) -> Result<Vec<u8>, Fail> {
    hsm.add_calls(5);
    let dk = match unwrap_with_kek(hsm, s, ctx, wrapped, false)? {
        Unwrapped::Object(obj) => obj,
        Unwrapped::Value(v) => {
            hsm.add_calls(1);
            create_data_key(s, &v)?
        }
    };
    let out = wrap_for_peer_key(s, peer_modulus, peer_exponent, dk, "wrap for a peer");
    let destroyed = s.destroy_object(dk);
    let out = out?;
    destroyed?;
    Ok(out)
}

/// Refuses an operation for a role the token cannot hold, naming module, role and mechanisms.
pub(crate) fn require(hsm: &Hsm, ctx: &Ctx, role: Role) -> Result<(), Fail> {
    match ctx.profile.plan(role) {
        Ok(_) => Ok(()),
        Err(r) => Err(HsmError::RoleUnsupported { module: hsm.module().to_path_buf(), role, reason: r.to_string() }.into()),
    }
}

/// Reads an unwrapped data key's value out of its session object, then destroys the object.
pub(crate) fn take_value(hsm: &Hsm, s: &cryptoki::session::Session, obj: cryptoki::object::ObjectHandle) -> Result<Zeroizing<Vec<u8>>, Fail> {
    // C_GetAttributeValue + C_DestroyObject
    hsm.add_calls(2);
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
pub(crate) fn oaep() -> Mechanism<'static> {
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
        // C_SignInit + C_Sign (a buffer of the size of a P-256 r || s, no length query)
        self.run(Op::Sign, 2, true, |s, ctx| {
            require(self, ctx, role)?;
            let (version, key) = ctx.key(self, s, role, None, ObjectClass::PRIVATE_KEY)?;
            let raw = ctx.raw.sign(s.handle(), CKM_ECDSA, key.handle(), digest, 64).map_err(Fail::with(role, "sign", CKM_ECDSA))?;
            let der = ecdsa_raw_to_der(&raw)
                .ok_or_else(|| HsmError::Device(format!("the module returned an ECDSA signature of {} bytes that is not a P-256 r||s", raw.len())))?;
            Ok(Signature { key_version: version, raw, der })
        })
    }

    /// Wraps a data key (16 to 64 bytes) with the active key-encryption key (RFC 5649, or AES-GCM
    /// on a module without it).
    pub fn wrap_data_key(&self, data_key: &[u8]) -> Result<WrappedKey, HsmError> {
        if !(16..=64).contains(&data_key.len()) {
            return Err(HsmError::Invalid(format!("data key of {} bytes", data_key.len())));
        }
        // RFC 5649: C_CreateObject + C_WrapKey (pre-sized buffer) + C_DestroyObject; AES-GCM:
        // C_EncryptInit + C_Encrypt (pre-sized buffer). Counted where they are made.
        self.run(Op::Wrap, 0, true, |s, ctx| {
            require(self, ctx, Role::Kek)?;
            wrap_with_active_kek(self, s, ctx, Dk::Value(data_key))
        })
    }

    /// Re-wraps a data key under the active key-encryption key. Between two RFC 5649 versions the
    /// data key never leaves the HSM (unwrapped into a sensitive session object, wrapped again,
    /// destroyed); with an AES-GCM version it passes through process memory in a zeroizing
    /// buffer. A key already under the active version is returned as it is. Counted as a wrap.
    /// A destroyed or retired KEK version gives `KeyMissing`; an altered blob gives `Integrity`.
    pub fn rewrap_data_key(&self, wrapped: &WrappedKey) -> Result<WrappedKey, HsmError> {
        // C_UnwrapKey + C_WrapKey + C_DestroyObject between RFC 5649 versions; counted where made.
        self.run(Op::Wrap, 0, true, |s, ctx| {
            require(self, ctx, Role::Kek)?;
            let (active, active_kek) = ctx.key(self, s, Role::Kek, None, ObjectClass::SECRET_KEY)?;
            if active == wrapped.kek_version {
                return Ok(wrapped.clone());
            }
            let in_hsm = matches!(ctx.kek_scheme(s, active_kek, active)?, KekScheme::Rfc5649 { .. });
            match unwrap_with_kek(self, s, ctx, wrapped, in_hsm)? {
                Unwrapped::Object(dk) if in_hsm => {
                    let out = wrap_with_active_kek(self, s, ctx, Dk::Object(dk));
                    self.add_calls(1);
                    let destroyed = s.destroy_object(dk);
                    let out = out?;
                    destroyed?;
                    Ok(out)
                }
                Unwrapped::Object(dk) => {
                    let value = take_value(self, s, dk)?;
                    wrap_with_active_kek(self, s, ctx, Dk::Value(&value))
                }
                Unwrapped::Value(value) => wrap_with_active_kek(self, s, ctx, Dk::Value(&value)),
            }
        })
    }

    /// Unwraps a data key with the version of the key-encryption key that wrapped it. A retired or
    /// destroyed KEK version gives `KeyMissing`; an altered blob gives `Integrity` (or
    /// `UnwrapFailed` where the module's answer is ambiguous; see [`HsmError::is_integrity`]).
    pub fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        // C_UnwrapKey + C_GetAttributeValue + C_DestroyObject (RFC 5649) or C_DecryptInit +
        // C_Decrypt (AES-GCM); counted where they are made.
        self.run(Op::Unwrap, 0, true, |s, ctx| {
            require(self, ctx, Role::Kek)?;
            match unwrap_with_kek(self, s, ctx, wrapped, false)? {
                Unwrapped::Object(obj) => take_value(self, s, obj),
                Unwrapped::Value(v) => Ok(v),
            }
        })
    }

    /// Re-wraps a data key for another hospital: unwraps it with this hospital's KEK and wraps
    /// it with the peer's RSA sharing public key (RSA-OAEP, SHA-1 and MGF1-SHA1: what SoftHSM
    /// 2.6.1 supports). With an RFC 5649 KEK the data key exists only as a short-lived session
    /// object in the HSM.
    pub fn rewrap_for_peer(&self, wrapped: &WrappedKey, peer_modulus: &[u8], peer_exponent: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.run(Op::Wrap, 0, true, |s, ctx| {
            require(self, ctx, Role::Kek)?;
            require(self, ctx, Role::Sharing)?;
            rewrap_rsa(self, s, ctx, wrapped, peer_modulus, peer_exponent)
        })
    }

    /// Unwraps a data key that another hospital re-wrapped for this hospital's sharing key.
    pub fn unwrap_shared(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        // C_UnwrapKey, then C_GetAttributeValue + C_DestroyObject (counted in `take_value`)
        self.run(Op::Unwrap, 1, true, |s, ctx| {
            require(self, ctx, Role::Sharing)?;
            let (_, key) = ctx.key(self, s, Role::Sharing, None, ObjectClass::PRIVATE_KEY)?;
            let obj = unwrap_template_retry(ctx, |t| s.unwrap_key(&oaep(), key, blob, t)).map_err(|e| match e {
                cryptoki::error::Error::Pkcs11(RvError::GeneralError | RvError::EncryptedDataInvalid, _) => Fail::Hsm(HsmError::Integrity),
                other => Fail::with(Role::Sharing, "unwrap", CKM_RSA_PKCS_OAEP)(other),
            })?;
            take_value(self, s, obj)
        })
    }

    /// HMAC-SHA256 of `data` with the active pseudonym key. Returns the key version and the MAC.
    pub fn pseudonym_hmac(&self, data: &[u8]) -> Result<(u32, [u8; 32]), HsmError> {
        // C_SignInit + C_Sign (a 32-byte buffer, no length query)
        self.run(Op::Hmac, 2, true, |s, ctx| {
            require(self, ctx, Role::Pseudonym)?;
            let (version, key) = ctx.key(self, s, Role::Pseudonym, None, ObjectClass::SECRET_KEY)?;
            let mac = ctx.raw.sign(s.handle(), CKM_SHA256_HMAC, key.handle(), data, 32).map_err(Fail::with(Role::Pseudonym, "hmac", CKM_SHA256_HMAC))?;
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
                    rsa_spki_der(&n, &e).map_err(|e| HsmError::Device(format!("the sharing public key: {e}")))?
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

    pub(crate) fn private_class(role: Role) -> ObjectClass {
        private_class(role)
    }
}

