//! Key backup for disaster recovery: the KEK, pseudonym, sharing and ledger keys wrapped under a
//! backup key, and their restore into a fresh token. The TLS key is not backed up: a
//! replacement appliance gets a new one and a new certificate.
//!
//! How a sensitive key can be backed up at all. medgate's keys are created sensitive and never
//! extractable, and such a key cannot leave the token in any form. Once the officers have set
//! up a backup key, new key versions of the backed-up roles are created CKA_SENSITIVE with
//! CKA_EXTRACTABLE *and* CKA_WRAP_WITH_TRUSTED: the module then lets them out only wrapped
//! (C_WrapKey) under a key marked CKA_TRUSTED, and only the security officer (SO) can mark a
//! key trusted. The backup key is that trusted key:
//! * its value is chosen by the officers' console and kept only as Shamir shares held by the
//!   officers (M of N recombine it); the token holds it as a public, trusted, wrap-only,
//!   unmodifiable, uncopyable AES-256 object labelled `medgate-backup-v1` ([`BACKUP_LABEL`]),
//!   created in an SO session ([`install_backup_key`]);
//! * nobody can unwrap with it on the token (CKA_UNWRAP false, not modifiable), so a PIN holder
//!   who wraps a key under it gets only a blob that M officers could open;
//! * a PIN holder cannot make a trusted key of their own to wrap under (that needs the SO PIN),
//!   nor a clear copy (the keys stay sensitive).
//!
//! The restore ([`restore`]) recombines the key in process memory (zeroizing buffers), creates
//! it in the fresh token as a session object that can only unwrap, unwraps every key with its
//! label, CKA_ID, usage flags and CKA_ALLOWED_MECHANISMS (sensitive, extractable only wrapped
//! under a trusted key, as before), recreates the public halves from the backup, destroys the
//! session key, and installs the trusted wrap-only backup key again in an SO session.
//!
//! What each module allows (docs/HSM.md): SoftHSM2 2.6 lets only the SO set CKA_TRUSTED and
//! enforces CKA_WRAP_WITH_TRUSTED in C_WrapKey; kryoptic 1.5 enforces CKA_WRAP_WITH_TRUSTED but
//! never lets a secret key be CKA_TRUSTED, so it cannot hold a backup key (refused with
//! [`HsmError::BackupUnsupported`]); a hardware HSM has its own backup (Luna backup HSM, nShield
//! Security World, cloud HSM backups), which keeps keys under the vendor's own M-of-N.

use std::collections::BTreeMap;
use std::path::Path;

use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki_sys::{CKF_UNWRAP, CKF_WRAP, CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CK_MECHANISM_TYPE};
use serde::{Deserialize, Serialize};

use crate::der::{p256_params_der, p256_spki_der, p256_spki_point, rsa_spki_der, rsa_spki_parts, unwrap_ec_point};
use crate::error::{ckr_name, map_op_error, HsmError};
use crate::keys::Label;
use crate::pin::Pin;
use crate::pool::{find_keys_in, find_token, load_module, Fail, Hsm, Op};
use crate::profile::{mechanism_name, mechanisms_of, Mechanisms};
use crate::raw::Raw;
use crate::role::Role;

/// The label of the backup key on the token.
pub const BACKUP_LABEL: &str = "medgate-backup-v1";
/// The roles a backup holds: every role but `tls`.
pub const BACKED_UP: [Role; 4] = [Role::Ledger, Role::Kek, Role::Sharing, Role::Pseudonym];
/// The usage flags a backup records and restores, by name.
const FLAGS: [(&str, AttributeType); 8] = [
    ("encrypt", AttributeType::Encrypt),
    ("decrypt", AttributeType::Decrypt),
    ("sign", AttributeType::Sign),
    ("verify", AttributeType::Verify),
    ("wrap", AttributeType::Wrap),
    ("unwrap", AttributeType::Unwrap),
    ("derive", AttributeType::Derive),
    ("sign_recover", AttributeType::SignRecover),
];

/// One key version in a backup: its wrapped private or secret half, everything needed to make
/// the same object again, and its public half for key pairs. Nothing here is secret but the
/// wrapped bytes, which only the backup key opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpKey {
    /// The role (`ledger`, `kek`, `sharing`, `pseudonym`).
    pub role: String,
    pub version: u32,
    /// The object's label (`medgate-<role>-v<N>`).
    pub label: String,
    /// CKA_ID, hex.
    pub id: String,
    /// `secret` or `private`.
    pub class: String,
    /// CKA_KEY_TYPE (CKK_*).
    pub key_type: u64,
    /// The usage flags the object had.
    pub flags: BTreeMap<String, bool>,
    /// CKA_ALLOWED_MECHANISMS, when the object had it.
    pub allowed_mechanisms: Option<Vec<u64>>,
    /// The key wrapped under the backup key (RFC 5649), hex.
    pub wrapped: String,
    /// The mechanism it was wrapped with (RFC 5649 under the module's code).
    pub wrap_mechanism: u64,
    /// The public half, DER SubjectPublicKeyInfo, hex (key pairs).
    pub public_key: Option<String>,
}

/// The RFC 5649 mechanism the token offers for wrapping with the backup key.
fn rfc5649(m: &Mechanisms, flag: cryptoki_sys::CK_FLAGS) -> Option<CK_MECHANISM_TYPE> {
    [CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP].into_iter().find(|c| m.offers(*c, flag))
}

fn unsupported(module: &Path, reason: impl Into<String>) -> HsmError {
    HsmError::BackupUnsupported { module: module.to_path_buf(), reason: reason.into() }
}

/// The trusted backup key on the token, if any.
pub(crate) fn backup_key(s: &Session) -> Result<Option<ObjectHandle>, P11Error> {
    let found = s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(BACKUP_LABEL.as_bytes().to_vec()),
    ])?;
    for h in found {
        let trusted = s.get_attributes(h, &[AttributeType::Trusted])?.into_iter().any(|a| a == Attribute::Trusted(true));
        if trusted {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// Turns a role's template into the backed-up form: extractable, but only wrapped under a
/// trusted key. The key stays sensitive. Not for `tls`.
pub(crate) fn make_backupable(template: &mut Vec<Attribute>) {
    for a in template.iter_mut() {
        if *a == Attribute::Extractable(false) {
            *a = Attribute::Extractable(true);
        }
    }
    template.push(Attribute::WrapWithTrusted(true));
}

impl Hsm {
    /// Whether the token holds the trusted backup key (new versions of the backed-up roles are
    /// then made backup-able).
    pub fn has_backup_key(&self) -> Result<bool, HsmError> {
        self.run(Op::Admin, 2, false, |s, _| Ok(backup_key(s)?.is_some()))
    }

    /// The backup key's id (its CKA_ID, hex: the set its shares belong to), if the token has one.
    pub fn backup_key_id(&self) -> Result<Option<String>, HsmError> {
        self.run(Op::Admin, 3, false, |s, _| {
            let Some(h) = backup_key(s)? else { return Ok(None) };
            Ok(s.get_attributes(h, &[AttributeType::Id])?.into_iter().find_map(|a| match a {
                Attribute::Id(id) => Some(hex::encode(id)),
                _ => None,
            }))
        })
    }

    /// Every version of the backed-up roles on the token, not retired, wrapped under the backup
    /// key. Refuses, naming them, when a version was made before the backup key (never
    /// extractable: it cannot be backed up; rotate and re-wrap, then destroy it) or when there
    /// is no backup key.
    pub fn export_backup(&self) -> Result<Vec<BackedUpKey>, HsmError> {
        let module = self.module().to_path_buf();
        self.run(Op::Admin, 0, false, |s, ctx| {
            let Some(bk) = backup_key(s)? else {
                return Err(HsmError::Invalid("the token has no backup key: set one up with `medgate keys backup init` first".into()).into());
            };
            let mechanism = rfc5649(&ctx.profile.mechanisms, CKF_WRAP).ok_or_else(|| unsupported(&module, "the module offers no RFC 5649 key wrap"))?;
            let mut out = Vec::new();
            let mut refused = Vec::new();
            for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
                for (label, h) in find_keys_in(s, class)? {
                    if label.retired || !BACKED_UP.contains(&label.role) {
                        continue;
                    }
                    match export_one(s, &ctx.raw, bk, h, label, class, mechanism)? {
                        Ok(k) => out.push(k),
                        Err(why) => refused.push(why),
                    }
                }
            }
            if !refused.is_empty() {
                return Err(HsmError::Invalid(format!(
                    "these keys cannot be backed up: {}. They were made before the backup key (never extractable): rotate the role, let every record move to the new version (the KEK: a shred pass or `medgate keys rotate`), then destroy them",
                    refused.join("; ")
                ))
                .into());
            }
            out.sort_by(|a, b| (&a.role, a.version).cmp(&(&b.role, b.version)));
            Ok(out)
        })
    }
}

/// One key wrapped, or why it cannot be.
fn export_one(
    s: &Session,
    raw: &Raw,
    bk: ObjectHandle,
    h: ObjectHandle,
    label: Label,
    class: ObjectClass,
    mechanism: CK_MECHANISM_TYPE,
) -> Result<Result<BackedUpKey, String>, Fail> {
    let attrs = s.get_attributes(h, &[AttributeType::Id, AttributeType::KeyType, AttributeType::Extractable, AttributeType::WrapWithTrusted])?;
    let (mut id, mut key_type, mut extractable, mut trusted_only) = (Vec::new(), 0u64, false, false);
    for a in attrs {
        match a {
            Attribute::Id(v) => id = v,
            Attribute::KeyType(t) => key_type = u64::from(t),
            Attribute::Extractable(b) => extractable = b,
            Attribute::WrapWithTrusted(b) => trusted_only = b,
            _ => {}
        }
    }
    if !extractable || !trusted_only {
        return Ok(Err(format!("{label} (never extractable)")));
    }
    let mut flags = BTreeMap::new();
    for (name, t) in FLAGS {
        if let Ok(values) = s.get_attributes(h, &[t]) {
            for v in values {
                if let Some(b) = flag_value(&v) {
                    flags.insert(name.to_owned(), b);
                }
            }
        }
    }
    let allowed = raw.allowed_mechanisms(s.handle(), h.handle())?;
    let wrapped = raw.wrap_key(s.handle(), mechanism, bk.handle(), h.handle(), 4096).map_err(|e| {
        HsmError::Device(format!("wrapping {label} under the backup key with {}: {e}", mechanism_name(mechanism)))
    })?;
    let public_key = if class == ObjectClass::PRIVATE_KEY { Some(hex::encode(public_of(s, &label, &id)?)) } else { None };
    Ok(Ok(BackedUpKey {
        role: label.role.to_string(),
        version: label.version,
        label: label.to_string(),
        id: hex::encode(&id),
        class: if class == ObjectClass::SECRET_KEY { "secret".into() } else { "private".into() },
        key_type,
        flags,
        allowed_mechanisms: allowed,
        wrapped: hex::encode(wrapped),
        wrap_mechanism: mechanism,
        public_key,
    }))
}

fn flag_value(a: &Attribute) -> Option<bool> {
    match a {
        Attribute::Encrypt(b)
        | Attribute::Decrypt(b)
        | Attribute::Sign(b)
        | Attribute::Verify(b)
        | Attribute::Wrap(b)
        | Attribute::Unwrap(b)
        | Attribute::Derive(b)
        | Attribute::SignRecover(b) => Some(*b),
        _ => None,
    }
}

fn flag_attribute(name: &str, on: bool) -> Option<Attribute> {
    Some(match name {
        "encrypt" => Attribute::Encrypt(on),
        "decrypt" => Attribute::Decrypt(on),
        "sign" => Attribute::Sign(on),
        "verify" => Attribute::Verify(on),
        "wrap" => Attribute::Wrap(on),
        "unwrap" => Attribute::Unwrap(on),
        "derive" => Attribute::Derive(on),
        "sign_recover" => Attribute::SignRecover(on),
        _ => return None,
    })
}

/// The DER SubjectPublicKeyInfo of the public half labelled like `label` with CKA_ID `id`.
fn public_of(s: &Session, label: &Label, id: &[u8]) -> Result<Vec<u8>, Fail> {
    let h = s
        .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Token(true), Attribute::Id(id.to_vec())])?
        .into_iter()
        .next()
        .ok_or_else(|| HsmError::Invalid(format!("{label} has no public half on the token")))?;
    let attrs = s.get_attributes(h, &[AttributeType::EcPoint, AttributeType::Modulus, AttributeType::PublicExponent])?;
    let (mut point, mut n, mut e) = (None, Vec::new(), Vec::new());
    for a in attrs {
        match a {
            Attribute::EcPoint(p) => point = unwrap_ec_point(&p),
            Attribute::Modulus(m) => n = m,
            Attribute::PublicExponent(x) => e = x,
            _ => {}
        }
    }
    match point {
        Some(p) => p256_spki_der(&p).ok_or_else(|| HsmError::Invalid(format!("{label}: not a P-256 public key")).into()),
        None => rsa_spki_der(&n, &e).map_err(|err| HsmError::Invalid(format!("{label}: {err}")).into()),
    }
}

/// Opens a session on the token labelled `token` and logs in as `who`.
fn login(pkcs11: &cryptoki::context::Pkcs11, raw: &Raw, module: &Path, token: &str, who: UserType, pin: &Pin) -> Result<Session, HsmError> {
    let slot = find_token(pkcs11, raw, module, token)?;
    let session = pkcs11.open_rw_session(slot).map_err(|e| map_op_error(e, None))?;
    match session.login(who, Some(&pin.to_auth())) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(P11Error::Pkcs11(RvError::PinIncorrect, f)) if matches!(who, UserType::So) => {
            Err(HsmError::WrongSoPin(format!(" ({f}); the backup key can only be installed by the token's security officer")))
        }
        Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => Err(HsmError::WrongPin),
        Err(P11Error::Pkcs11(RvError::UserAnotherAlreadyLoggedIn, _)) => Err(HsmError::Invalid(format!(
            "token {token:?}: another user of this process is logged in; the security officer and the user cannot be logged in at once (run this on its own)"
        ))),
        Err(e) => Err(map_op_error(e, None)),
    }
}

/// Installs the backup key with this value on the token, in an SO session: a public, trusted,
/// wrap-only, unmodifiable AES-256 key labelled [`BACKUP_LABEL`]. Refused when the token has
/// one already, or when the module will not make a trusted secret key (kryoptic).
pub fn install_backup_key(module: &Path, token: &str, so_pin: &Pin, value: &[u8], id: &[u8]) -> Result<(), HsmError> {
    if value.len() != 32 {
        return Err(HsmError::Invalid(format!("a backup key is 32 bytes, not {}", value.len())));
    }
    let (pkcs11, raw, hold) = load_module(module)?;
    let result = (|| {
        let session = login(&pkcs11, &raw, module, token, UserType::So, so_pin)?;
        let result = install_in(&session, &raw, module, value, id);
        let _ = session.logout();
        result
    })();
    drop(hold);
    result
}

fn install_in(s: &Session, raw: &Raw, module: &Path, value: &[u8], id: &[u8]) -> Result<(), HsmError> {
    if backup_key(s).map_err(|e| map_op_error(e, None))?.is_some() {
        return Err(HsmError::Invalid(format!("the token already has a backup key ({BACKUP_LABEL})")));
    }
    let mechanisms = mechanisms_of(raw, s.get_session_info().map_err(|e| map_op_error(e, None))?.slot_id()).map_err(|e| map_op_error(e, None))?;
    let mechanism = rfc5649(&mechanisms, CKF_WRAP).ok_or_else(|| unsupported(module, "the module offers no RFC 5649 key wrap"))?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Trusted(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(BACKUP_LABEL.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    raw.create_object(s.handle(), &template, Some(&[mechanism])).map_err(|e| match e {
        P11Error::Pkcs11(rv, _) => unsupported(
            module,
            format!(
                "the module refused a trusted, wrap-only AES key in the security officer's session ({}); it cannot hold a backup key: use the HSM vendor's backup instead (docs/HSM.md)",
                ckr_name(rv)
            ),
        ),
        other => map_op_error(other, None),
    })?;
    Ok(())
}

/// Restores a backup into a fresh token: the keys unwrapped as they were (labels, CKA_IDs, usage
/// flags, CKA_ALLOWED_MECHANISMS; sensitive, extractable only wrapped under a trusted key), the
/// public halves recreated, then the trusted wrap-only backup key installed again in an SO
/// session. Refused when the token already holds medgate keys of a backed-up role. Returns the
/// number of keys restored.
pub fn restore(module: &Path, token: &str, user_pin: &Pin, so_pin: &Pin, value: &[u8], id: &[u8], keys: &[BackedUpKey]) -> Result<usize, HsmError> {
    if value.len() != 32 {
        return Err(HsmError::Invalid(format!("a backup key is 32 bytes, not {}", value.len())));
    }
    let (pkcs11, raw, hold) = load_module(module)?;
    let result = (|| {
        {
            let session = login(&pkcs11, &raw, module, token, UserType::User, user_pin)?;
            let result = unwrap_all(&session, &raw, module, value, keys);
            let _ = session.logout();
            result?;
        }
        let session = login(&pkcs11, &raw, module, token, UserType::So, so_pin)?;
        let result = install_in(&session, &raw, module, value, id);
        let _ = session.logout();
        result.map(|_| keys.len())
    })();
    drop(hold);
    result
}

fn unwrap_all(s: &Session, raw: &Raw, module: &Path, value: &[u8], keys: &[BackedUpKey]) -> Result<(), HsmError> {
    let fail = |e: Fail| match e {
        Fail::P11(e, ctx) => map_op_error(e, ctx.as_ref()),
        Fail::Hsm(e) => e,
    };
    for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        if let Some((label, _)) = find_keys_in(s, class).map_err(fail)?.into_iter().find(|(l, _)| BACKED_UP.contains(&l.role)) {
            return Err(HsmError::Invalid(format!("the token already holds {label}: restore into a fresh token")));
        }
    }
    let slot = s.get_session_info().map_err(|e| map_op_error(e, None))?.slot_id();
    let mechanisms = mechanisms_of(raw, slot).map_err(|e| map_op_error(e, None))?;
    // The backup key as a session object that can only unwrap; destroyed below.
    let unwrapping = raw
        .create_object(
            s.handle(),
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Unwrap(true),
                Attribute::Wrap(false),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Value(value.to_vec()),
            ],
            None,
        )
        .map_err(|e| map_op_error(e, None))?;
    let result = keys.iter().try_for_each(|k| restore_one(s, raw, module, &mechanisms, unwrapping, k));
    let _ = raw.destroy_object(s.handle(), unwrapping);
    result
}

fn restore_one(s: &Session, raw: &Raw, module: &Path, mechanisms: &Mechanisms, unwrapping: cryptoki_sys::CK_OBJECT_HANDLE, k: &BackedUpKey) -> Result<(), HsmError> {
    let bad = |what: &str| HsmError::Invalid(format!("backup entry {}: {what}", k.label));
    let role: Role = k.role.parse().map_err(|e: String| bad(&e))?;
    if !BACKED_UP.contains(&role) || Label::parse(&k.label) != Some(Label::new(role, k.version)) {
        return Err(bad("not a backed-up role's label"));
    }
    if !mechanisms.offers(k.wrap_mechanism, CKF_UNWRAP) {
        return Err(unsupported(module, format!("the module offers no {} to unwrap the backup with", mechanism_name(k.wrap_mechanism))));
    }
    let id = hex::decode(&k.id).map_err(|_| bad("CKA_ID is not hex"))?;
    let wrapped = hex::decode(&k.wrapped).map_err(|_| bad("the wrapped key is not hex"))?;
    let class = match k.class.as_str() {
        "secret" => ObjectClass::SECRET_KEY,
        "private" => ObjectClass::PRIVATE_KEY,
        _ => return Err(bad("class is neither secret nor private")),
    };
    let key_type = KeyType::try_from(k.key_type as cryptoki_sys::CK_KEY_TYPE).map_err(|_| bad("unknown key type"))?;
    let mut template = vec![
        Attribute::Class(class),
        Attribute::KeyType(key_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::WrapWithTrusted(true),
        Attribute::Modifiable(true),
        Attribute::Label(k.label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    template.extend(k.flags.iter().filter_map(|(n, on)| flag_attribute(n, *on)));
    let allowed: Option<Vec<CK_MECHANISM_TYPE>> = k.allowed_mechanisms.as_ref().map(|v| v.iter().map(|m| *m as CK_MECHANISM_TYPE).collect());
    raw.unwrap_key_allowed(s.handle(), k.wrap_mechanism, unwrapping, &wrapped, &template, allowed.as_deref()).map_err(|e| match e {
        P11Error::Pkcs11(rv, _) => HsmError::Device(format!(
            "restoring {}: C_UnwrapKey answered {} (a backup made with another backup key, or altered)",
            k.label,
            ckr_name(rv)
        )),
        other => map_op_error(other, None),
    })?;
    if let Some(public) = &k.public_key {
        let der = hex::decode(public).map_err(|_| bad("the public key is not hex"))?;
        let mut t = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modifiable(true),
            Attribute::Label(k.label.as_bytes().to_vec()),
            Attribute::Id(id),
            Attribute::Derive(false),
        ];
        if role == Role::Sharing {
            let (n, e) = rsa_spki_parts(&der).ok_or_else(|| bad("the public key is not an RSA key"))?;
            t.extend([Attribute::KeyType(KeyType::RSA), Attribute::Modulus(n), Attribute::PublicExponent(e), Attribute::Wrap(true), Attribute::Encrypt(false), Attribute::Verify(false)]);
        } else {
            let point = p256_spki_point(&der).map_err(|e| bad(&e.to_string()))?;
            let mut octets = vec![0x04, 65];
            octets.extend_from_slice(&point);
            t.extend([Attribute::KeyType(KeyType::EC), Attribute::EcParams(p256_params_der()), Attribute::EcPoint(octets), Attribute::Verify(true), Attribute::Encrypt(false), Attribute::Wrap(false)]);
        }
        raw.create_object(s.handle(), &t, allowed.as_deref()).map_err(|e| HsmError::Device(format!("restoring the public half of {}: {e}", k.label)))?;
    }
    Ok(())
}
