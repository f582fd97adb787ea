//! The security officer's operations: generate, rotate, retire and destroy keys, list them, import
//! certificates, initialise a token. None of them retries after a lost connection: the officer sees
//! the error and decides.

use std::path::Path;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki_sys::{CKF_TOKEN_INITIALIZED, CKF_USER_PIN_INITIALIZED};

use crate::der::certificate_key_and_subject;
use crate::error::{ckr_name, map_op_error, HsmError};
use crate::keys::{allowed_mechanisms, create_flag, pair_templates, retire_flags, secret_template, KeyInfo, Label, Role};
use crate::pin::Pin;
use crate::pool::{find_keys, load_module, Ctx, Fail, Hsm, Op};
use crate::profile::{mechanism_name, KekScheme, RolePlan};
use crate::raw::{Raw, TokenInfoRaw};

const KEY_CLASSES: [ObjectClass; 4] =
    [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY, ObjectClass::PUBLIC_KEY, ObjectClass::CERTIFICATE];

impl Hsm {
    /// Every medgate key on the token, sorted by role and version.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.run(Op::Admin, 0, false, |s, _| list(self, s))
    }

    /// Creates version 1 of `role`. Refuses if the role already has keys (use `rotate`), and
    /// refuses a role this token could never use (the error names the module, the role and the
    /// mechanisms it lacks).
    pub fn generate(&self, role: Role) -> Result<KeyInfo, HsmError> {
        let r = self.run_exclusive(2, |s, ctx| {
            plan_for(self, ctx, role)?;
            let existing = role_versions(self, s, role)?;
            if let Some(max) = existing.iter().map(|l| l.version).max() {
                return Err(HsmError::Invalid(format!(
                    "the token already has {role} keys (up to version {max}); use `medgate keys rotate --role {role}`"
                ))
                .into());
            }
            create_version(s, ctx, plan_for(self, ctx, role)?, 1)?;
            ctx.clear_keys();
            info_of(self, s, role, 1)
        });
        self.refresh_keys();
        r
    }

    /// Imports the consortium's shared pseudonym key as version 1 (key ceremony): every
    /// hospital holds the same HMAC key, so a patient has one pseudonym across the consortium.
    /// The value is written into the HSM as a sensitive, never-extractable key with the full
    /// pseudonym template; the caller destroys its copy. Refused when pseudonym keys exist.
    pub fn import_pseudonym_key(&self, value: &[u8]) -> Result<KeyInfo, HsmError> {
        if value.len() != 32 {
            return Err(HsmError::Invalid(format!("a pseudonym key is 32 bytes, not {}", value.len())));
        }
        let r = self.run_exclusive(2, |s, ctx| {
            let plan = plan_for(self, ctx, Role::Pseudonym)?;
            if let Some(max) = role_versions(self, s, Role::Pseudonym)?.iter().map(|l| l.version).max() {
                return Err(HsmError::Invalid(format!(
                    "the token already has pseudonym keys (up to version {max}); the shared key must be imported before any is generated"
                ))
                .into());
            }
            let label = Label::new(Role::Pseudonym, 1).to_string();
            let mut id = vec![0u8; 16];
            s.generate_random_slice(&mut id)?;
            let mut template = secret_template(plan, &ctx.profile.template, &label, &id, false);
            if backupable(s, Role::Pseudonym)? {
                crate::backup::make_backupable(&mut template);
            }
            if ctx.profile.template.allowed_mechanisms.usable() {
                template.push(Attribute::AllowedMechanisms(vec![MechanismType::SHA256_HMAC]));
            }
            template.push(Attribute::Value(value.to_vec()));
            s.create_object(&template).map_err(Fail::with(Role::Pseudonym, "import", plan.operation))?;
            ctx.clear_keys();
            info_of(self, s, Role::Pseudonym, 1)
        });
        self.refresh_keys();
        r
    }

    /// Creates the next version of `role` and makes it active. The previous version stays on the
    /// token for unwrap and verify, but the HSM no longer lets it sign or wrap.
    pub fn rotate(&self, role: Role) -> Result<KeyInfo, HsmError> {
        let r = self.run_exclusive(4, |s, ctx| {
            let plan = plan_for(self, ctx, role)?;
            let existing = role_versions(self, s, role)?;
            let next = existing.iter().map(|l| l.version).max().unwrap_or(0) + 1;
            let previous = existing.iter().filter(|l| !l.retired).map(|l| l.version).max();
            create_version(s, ctx, plan, next)?;
            if let Some(prev) = previous {
                for h in objects_labelled(s, &Label::new(role, prev).to_string(), Hsm::private_class(role))? {
                    let gcm = role == Role::Kek && matches!(ctx.kek_scheme(s, h, prev), Ok(KekScheme::AesGcm));
                    s.update_attributes(h, &[create_flag(role, gcm, false)])?;
                }
            }
            ctx.clear_keys();
            info_of(self, s, role, next)
        });
        self.refresh_keys();
        r
    }

    /// Retires a version that is no longer active: it is relabelled `...-retired` and the HSM
    /// refuses every use of it. Its records can no longer be decrypted with it.
    pub fn retire(&self, role: Role, version: u32) -> Result<(), HsmError> {
        let r = self.run_exclusive(4, |s, ctx| {
            let existing = role_versions(self, s, role)?;
            let active = existing.iter().filter(|l| !l.retired).map(|l| l.version).max();
            if !existing.iter().any(|l| l.version == version && !l.retired) {
                return Err(HsmError::KeyMissing { role, detail: format!(" (version {version}, not retired)") }.into());
            }
            if active == Some(version) {
                return Err(HsmError::Invalid(format!(
                    "{role} version {version} is the active key; rotate first (`medgate keys rotate --role {role}`)"
                ))
                .into());
            }
            let label = Label::new(role, version);
            let retired = Label { retired: true, ..label }.to_string();
            for class in KEY_CLASSES {
                for h in objects_labelled(s, &label.to_string(), class)? {
                    s.update_attributes(h, &[Attribute::Label(retired.as_bytes().to_vec())])?;
                    if class == Hsm::private_class(role) {
                        s.update_attributes(h, &retire_flags(role))?;
                    }
                }
            }
            ctx.clear_keys();
            Ok(())
        });
        self.refresh_keys();
        r
    }

    /// Destroys every object of a version (private, public, secret, certificate). The active version
    /// cannot be destroyed: rotate first. Whatever it wrapped becomes unreadable for ever.
    pub fn destroy(&self, role: Role, version: u32) -> Result<usize, HsmError> {
        let r = self.run_exclusive(4, |s, ctx| {
            let existing = role_versions(self, s, role)?;
            let active = existing.iter().filter(|l| !l.retired).map(|l| l.version).max();
            if active == Some(version) {
                return Err(HsmError::Invalid(format!(
                    "{role} version {version} is the active key; rotate first, then destroy the old version"
                ))
                .into());
            }
            let mut n = 0;
            for retired in [false, true] {
                let label = Label { role, version, retired }.to_string();
                for class in KEY_CLASSES {
                    for h in objects_labelled(s, &label, class)? {
                        s.destroy_object(h)?;
                        n += 1;
                    }
                }
            }
            if n == 0 {
                return Err(HsmError::KeyMissing { role, detail: format!(" (version {version})") }.into());
            }
            ctx.clear_keys();
            Ok(n)
        });
        self.refresh_keys();
        r
    }

    /// Stores an X.509 certificate (DER) next to the active key pair of `role`, with the same label
    /// and CKA_ID. The certificate is parsed as strict DER and its SubjectPublicKeyInfo must be
    /// the key pair's public key. `subject_der` is the certificate's subject name, DER-encoded
    /// (CKA_SUBJECT); empty means the certificate's own.
    pub fn import_certificate(&self, role: Role, cert_der: &[u8], subject_der: &[u8]) -> Result<u32, HsmError> {
        let (version, spki) = self.public_key_der(role, None)?;
        let (cert_spki, cert_subject) =
            certificate_key_and_subject(cert_der).map_err(|e| HsmError::Invalid(format!("the certificate cannot be read: {e}")))?;
        if cert_spki != spki {
            return Err(HsmError::Invalid(format!(
                "the certificate's public key is not the active {role} key (version {version})"
            )));
        }
        // CKA_SUBJECT: the caller's DER subject, or the certificate's own when none is given.
        let subject_der = if subject_der.is_empty() { cert_subject.as_slice() } else { subject_der };
        self.run_exclusive(4, |s, _| {
            let label = Label::new(role, version).to_string();
            let id = key_id(s, &label, ObjectClass::PUBLIC_KEY)?;
            for old in objects_labelled(s, &label, ObjectClass::CERTIFICATE)? {
                s.destroy_object(old)?;
            }
            s.create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Modifiable(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
                Attribute::Subject(subject_der.to_vec()),
                Attribute::Value(cert_der.to_vec()),
            ])?;
            Ok(version)
        })
    }

    /// The certificate stored next to the active key pair of `role`, if any.
    pub fn certificate(&self, role: Role) -> Result<Option<Vec<u8>>, HsmError> {
        self.run(Op::Admin, 4, true, |s, ctx| {
            let (version, _) = ctx.key(self, s, role, None, ObjectClass::PUBLIC_KEY)?;
            let label = Label::new(role, version).to_string();
            let Some(h) = objects_labelled(s, &label, ObjectClass::CERTIFICATE)?.into_iter().next() else {
                return Ok(None);
            };
            Ok(s.get_attributes(h, &[AttributeType::Value])?.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            }))
        })
    }
}

fn role_versions(hsm: &Hsm, s: &Session, role: Role) -> Result<Vec<Label>, Fail> {
    let mut out = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY, ObjectClass::PUBLIC_KEY] {
        out.extend(find_keys(hsm, s, class)?.into_iter().map(|(l, _)| l).filter(|l| l.role == role));
    }
    Ok(out)
}

fn objects_labelled(s: &Session, label: &str, class: ObjectClass) -> Result<Vec<ObjectHandle>, Fail> {
    Ok(s.find_objects(&[Attribute::Class(class), Attribute::Token(true), Attribute::Label(label.as_bytes().to_vec())])?)
}

fn key_id(s: &Session, label: &str, class: ObjectClass) -> Result<Vec<u8>, Fail> {
    let h = objects_labelled(s, label, class)?
        .into_iter()
        .next()
        .ok_or_else(|| HsmError::Invalid(format!("no object labelled {label}")))?;
    Ok(s.get_attributes(h, &[AttributeType::Id])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .unwrap_or_default())
}

/// The plan for `role` on this token, or the refusal naming module, role and mechanisms.
fn plan_for<'c>(hsm: &Hsm, ctx: &'c Ctx, role: Role) -> Result<&'c RolePlan, Fail> {
    ctx.profile
        .plan(role)
        .map_err(|r| HsmError::RoleUnsupported { module: hsm.module().to_path_buf(), role, reason: r.to_string() }.into())
}

/// Whether a new key of `role` is made backup-able: the token holds the trusted backup key, and
/// the role is one a backup holds (every role but `tls`).
fn backupable(s: &Session, role: Role) -> Result<bool, Fail> {
    Ok(crate::backup::BACKED_UP.contains(&role) && crate::backup::backup_key(s)?.is_some())
}

fn create_version(s: &Session, ctx: &Ctx, plan: &RolePlan, version: u32) -> Result<(), Fail> {
    let role = plan.role;
    let label = Label::new(role, version).to_string();
    let mut id = vec![0u8; 16];
    s.generate_random_slice(&mut id)?;
    let t = &ctx.profile.template;
    let allowed = allowed_mechanisms(plan, t);
    let err = Fail::with(role, "key generation", plan.keygen);
    let backup = backupable(s, role)?;
    if role.is_pair() {
        let (public, mut private) = pair_templates(plan, t, &label, &id);
        if backup {
            crate::backup::make_backupable(&mut private);
        }
        ctx.raw.generate_key_pair(s.handle(), plan.keygen, &public, &private, allowed.as_deref()).map_err(err)?;
    } else {
        let mut template = secret_template(plan, t, &label, &id, true);
        if backup {
            crate::backup::make_backupable(&mut template);
        }
        ctx.raw.generate_key(s.handle(), plan.keygen, &template, allowed.as_deref()).map_err(err)?;
    }
    tracing::debug!(%label, id = %hex::encode(&id), keygen = %mechanism_name(plan.keygen), "key created");
    Ok(())
}

fn info_of(hsm: &Hsm, s: &Session, role: Role, version: u32) -> Result<KeyInfo, Fail> {
    list(hsm, s)?
        .into_iter()
        .find(|k| k.role == role && k.version == version)
        .ok_or_else(|| HsmError::KeyMissing { role, detail: format!(" (version {version})") }.into())
}

fn list(hsm: &Hsm, s: &Session) -> Result<Vec<KeyInfo>, Fail> {
    let certs: Vec<Label> = find_keys(hsm, s, ObjectClass::CERTIFICATE)?.into_iter().map(|(l, _)| l).collect();
    let mut out = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
        for (label, h) in find_keys(hsm, s, class)? {
            let attrs = s.get_attributes(
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::WrapWithTrusted,
                    AttributeType::Sign,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Encrypt,
                ],
            )?;
            let mut info = KeyInfo {
                role: label.role,
                version: label.version,
                label: label.to_string(),
                id_hex: String::new(),
                active: false,
                retired: label.retired,
                sensitive: false,
                always_sensitive: false,
                extractable: true,
                never_extractable: false,
                wrap_with_trusted: false,
                can_create: false,
                has_certificate: certs.iter().any(|c| c.role == label.role && c.version == label.version),
            };
            for a in attrs {
                match a {
                    Attribute::Id(id) => info.id_hex = hex::encode(id),
                    Attribute::Sensitive(b) => info.sensitive = b,
                    Attribute::AlwaysSensitive(b) => info.always_sensitive = b,
                    Attribute::Extractable(b) => info.extractable = b,
                    Attribute::NeverExtractable(b) => info.never_extractable = b,
                    Attribute::WrapWithTrusted(b) => info.wrap_with_trusted = b,
                    a if a == create_flag(label.role, false, true) => info.can_create = true,
                    a if a == create_flag(label.role, true, true) => info.can_create = true,
                    _ => {}
                }
            }
            out.push(info);
        }
    }
    out.sort_by_key(|k| (k.role, k.version));
    for role in Role::ALL {
        if let Some(active) = out.iter_mut().filter(|k| k.role == role && !k.retired).max_by_key(|k| k.version) {
            active.active = true;
        }
    }
    Ok(out)
}

/// Initialises a fresh token in the first slot that has no initialised token, sets the user PIN,
/// and returns. For development and for appliances whose HSM ships empty; a production HSM is
/// usually initialised with the vendor's tools. A token already labelled `label` whose user PIN
/// was never set (a C_InitPIN that failed) is completed: only its user PIN is set. PIN lengths
/// are checked against what the token states before anything is changed. A rejected SO PIN is
/// reported as the SO PIN.
pub fn init_token(module: &Path, label: &str, so_pin: &Pin, user_pin: &Pin) -> Result<(), HsmError> {
    let (pkcs11, raw, hold) = load_module(module)?;
    let result = (|| {
        let slots = pkcs11.get_all_slots().map_err(|e| map_op_error(e, None))?;
        let mut free: Option<(Slot, TokenInfoRaw)> = None;
        let mut unreadable = Vec::new();
        for slot in &slots {
            match raw.token_info(slot.id()) {
                Ok(t) if t.flags & CKF_TOKEN_INITIALIZED != 0 && t.label == label => {
                    if t.flags & CKF_USER_PIN_INITIALIZED != 0 {
                        return Err(HsmError::Invalid(format!("a token labelled {label:?} already exists")));
                    }
                    check_pin_len("the user", user_pin, &t)?;
                    tracing::warn!(token = label, "token has no user PIN yet (an earlier C_InitPIN failed?); setting it");
                    return set_user_pin(&pkcs11, *slot, label, so_pin, user_pin);
                }
                Ok(t) if t.flags & CKF_TOKEN_INITIALIZED == 0 && free.is_none() => free = Some((*slot, t)),
                Ok(_) => {}
                Err(e) => unreadable.push(format!("slot {}: {e}", slot.id())),
            }
        }
        let Some((slot, t)) = free else {
            let mut msg = "no slot with an uninitialised token".to_owned();
            if !unreadable.is_empty() {
                msg.push_str(&format!(" (token information unreadable: {})", unreadable.join("; ")));
            }
            return Err(HsmError::Invalid(msg));
        };
        check_pin_len("the SO", so_pin, &t)?;
        check_pin_len("the user", user_pin, &t)?;
        pkcs11.init_token(slot, &so_pin.to_auth(), label).map_err(so_pin_error)?;
        // The slot list changes after C_InitToken (SoftHSM adds a fresh empty slot): find ours again.
        let slot = find_initialised(&pkcs11, &raw, label)?;
        set_user_pin(&pkcs11, slot, label, so_pin, user_pin)
    })();
    drop(hold);
    result
}

fn find_initialised(pkcs11: &Pkcs11, raw: &Raw, label: &str) -> Result<Slot, HsmError> {
    pkcs11
        .get_slots_with_initialized_token()
        .map_err(|e| map_op_error(e, None))?
        .into_iter()
        .find(|s| raw.token_info(s.id()).map(|i| i.label == label).unwrap_or(false))
        .ok_or_else(|| HsmError::TokenMissing(label.to_owned()))
}

fn check_pin_len(which: &'static str, pin: &Pin, t: &TokenInfoRaw) -> Result<(), HsmError> {
    let (min, max) = (t.min_pin_len, t.max_pin_len);
    let len = pin.len() as u64;
    // Some modules state 0 or CK_UNAVAILABLE_INFORMATION for "no limit".
    let max_known = max != 0 && max != cryptoki_sys::CK_UNAVAILABLE_INFORMATION;
    if len < min || (max_known && len > max) {
        let which = if which == "the SO" { "an SO" } else { "a user" };
        return Err(HsmError::PinLength { which, len: len as usize, label: if t.label.is_empty() { "(uninitialised)".into() } else { t.label.clone() }, min, max });
    }
    Ok(())
}

/// An error of C_InitToken or of the SO's C_Login: a wrong PIN there is the SO PIN.
fn so_pin_error(e: P11Error) -> HsmError {
    match e {
        P11Error::Pkcs11(RvError::PinIncorrect, f) => HsmError::WrongSoPin(format!(
            " ({f}); no user PIN was tried. C_InitToken and the SO login need the token's current SO PIN (a new openCryptoki soft token has the factory SO PIN 87654321 until `pkcsconf -P` changes it)"
        )),
        P11Error::Pkcs11(RvError::PinLocked, f) => HsmError::WrongSoPin(format!(" ({f}): the SO PIN is locked")),
        P11Error::Pkcs11(rv @ (RvError::PinLenRange | RvError::PinInvalid), f) => {
            HsmError::WrongSoPin(format!(" ({f}: {}): the token does not accept a PIN of that length or those characters", ckr_name(rv)))
        }
        other => map_op_error(other, None),
    }
}

/// Logs in as SO and sets the user PIN. A failure here leaves an initialised token without a
/// user PIN; the error says how to finish it.
fn set_user_pin(pkcs11: &Pkcs11, slot: Slot, label: &str, so_pin: &Pin, user_pin: &Pin) -> Result<(), HsmError> {
    let not_set = |detail: String| HsmError::UserPinNotSet { label: label.to_owned(), detail };
    let session = pkcs11.open_rw_session(slot).map_err(|e| not_set(format!("no session: {e}")))?;
    match session.login(UserType::So, Some(&so_pin.to_auth())) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => {
            let so = so_pin_error(e);
            return Err(not_set(format!("the SO login failed: {so}")));
        }
    }
    let result = session.init_pin(&user_pin.to_auth());
    let _ = session.logout();
    result.map_err(|e| match e {
        P11Error::Pkcs11(rv, f) => not_set(format!("{f} answered {}", ckr_name(rv))),
        other => not_set(other.to_string()),
    })
}

/// Changes the token's user PIN (`so` false: a user session logged in with `old`) or SO PIN
/// (`so` true), with C_SetPIN. The new PIN's length is checked against the token's limits first.
/// Runs on its own connection; the gateway keeps its login until it restarts with the new PIN.
pub fn change_pin(module: &Path, label: &str, so: bool, old: &Pin, new: &Pin) -> Result<(), HsmError> {
    let (pkcs11, raw, hold) = load_module(module)?;
    let result = (|| {
        let slot = find_initialised(&pkcs11, &raw, label)?;
        let info = raw.token_info(slot.id()).map_err(|e| map_op_error(e, None))?;
        check_pin_len(if so { "the SO" } else { "the user" }, new, &info)?;
        let session = pkcs11.open_rw_session(slot).map_err(|e| map_op_error(e, None))?;
        let who = if so { UserType::So } else { UserType::User };
        match session.login(who, Some(&old.to_auth())) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) if so => return Err(so_pin_error(e)),
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => return Err(HsmError::WrongPin),
            Err(e) => return Err(map_op_error(e, None)),
        }
        let result = session.set_pin(&old.to_auth(), &new.to_auth()).map_err(|e| match e {
            P11Error::Pkcs11(rv, f) => HsmError::Device(format!("{f} answered {}: the PIN was not changed", ckr_name(rv))),
            other => map_op_error(other, None),
        });
        let _ = session.logout();
        result
    })();
    drop(hold);
    result
}
