//! The security officer's operations: generate, rotate, retire and destroy keys, list them, import
//! certificates, initialise a token. None of them retries after a lost connection: the officer sees
//! the error and decides.

use std::path::Path;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};

use crate::error::{map_op_error, HsmError};
use crate::keys::{create_flag, pair_templates, secret_template, KeyInfo, Label, Role};
use crate::pin::Pin;
use crate::pool::{finalize_module, find_keys, load_module, Fail, Hsm, Op};

const KEY_CLASSES: [ObjectClass; 4] =
    [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY, ObjectClass::PUBLIC_KEY, ObjectClass::CERTIFICATE];

impl Hsm {
    /// Every medgate key on the token, sorted by role and version.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.run(Op::Admin, 0, false, |s, _| list(self, s))
    }

    /// Creates version 1 of `role`. Refuses if the role already has keys (use `rotate`).
    pub fn generate(&self, role: Role) -> Result<KeyInfo, HsmError> {
        let r = self.run_exclusive(2, |s, ctx| {
            let existing = role_versions(self, s, role)?;
            if let Some(max) = existing.iter().map(|l| l.version).max() {
                return Err(HsmError::Invalid(format!(
                    "the token already has {role} keys (up to version {max}); use `medgate keys rotate --role {role}`"
                ))
                .into());
            }
            create_version(s, role, 1)?;
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
            if let Some(max) = role_versions(self, s, Role::Pseudonym)?.iter().map(|l| l.version).max() {
                return Err(HsmError::Invalid(format!(
                    "the token already has pseudonym keys (up to version {max}); the shared key must be imported before any is generated"
                ))
                .into());
            }
            let label = Label::new(Role::Pseudonym, 1).to_string();
            let mut id = vec![0u8; 16];
            s.generate_random_slice(&mut id)?;
            let mut template: Vec<Attribute> =
                secret_template(Role::Pseudonym, &label, &id).into_iter().filter(|a| !matches!(a, Attribute::ValueLen(_))).collect();
            template.push(Attribute::Value(value.to_vec()));
            s.create_object(&template)?;
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
            let existing = role_versions(self, s, role)?;
            let next = existing.iter().map(|l| l.version).max().unwrap_or(0) + 1;
            let previous = existing.iter().filter(|l| !l.retired).map(|l| l.version).max();
            create_version(s, role, next)?;
            if let Some(prev) = previous {
                for h in objects_labelled(s, &Label::new(role, prev).to_string(), Hsm::private_class(role))? {
                    s.update_attributes(h, &[create_flag(role, false)])?;
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
                        let off: Vec<Attribute> = match role {
                            Role::Kek => vec![Attribute::Wrap(false), Attribute::Unwrap(false)],
                            Role::Sharing => vec![Attribute::Unwrap(false)],
                            _ => vec![Attribute::Sign(false)],
                        };
                        s.update_attributes(h, &off)?;
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
    /// and CKA_ID. The certificate must carry the key pair's public key. `subject_der` is the
    /// certificate's subject name, DER-encoded.
    pub fn import_certificate(&self, role: Role, cert_der: &[u8], subject_der: &[u8]) -> Result<u32, HsmError> {
        let (version, spki) = self.public_key_der(role, None)?;
        if !contains(cert_der, &spki) {
            return Err(HsmError::Invalid(format!(
                "the certificate's public key is not the active {role} key (version {version})"
            )));
        }
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
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

fn create_version(s: &Session, role: Role, version: u32) -> Result<(), Fail> {
    let label = Label::new(role, version).to_string();
    let mut id = vec![0u8; 16];
    s.generate_random_slice(&mut id)?;
    match role {
        Role::Ledger | Role::Tls => {
            let (public, private) = pair_templates(role, &label, &id);
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
        }
        Role::Sharing => {
            let (public, private) = pair_templates(role, &label, &id);
            s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        }
        Role::Kek => {
            s.generate_key(&Mechanism::AesKeyGen, &secret_template(role, &label, &id))?;
        }
        Role::Pseudonym => {
            s.generate_key(&Mechanism::GenericSecretKeyGen, &secret_template(role, &label, &id))?;
        }
    }
    tracing::debug!(%label, id = %hex::encode(&id), "key created");
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
                    AttributeType::Sign,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
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
                    a if a == create_flag(label.role, true) => info.can_create = true,
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
/// and returns the slot's token label. For development and for appliances whose HSM ships empty;
/// a production HSM is usually initialised with the vendor's tools.
pub fn init_token(module: &Path, label: &str, so_pin: &Pin, user_pin: &Pin) -> Result<(), HsmError> {
    let pkcs11 = load_module(module)?;
    let result = (|| {
        let slots = pkcs11.get_all_slots().map_err(map_op_error)?;
        for slot in &slots {
            if let Ok(info) = pkcs11.get_token_info(*slot) {
                if info.token_initialized() && info.label().trim_end() == label {
                    return Err(HsmError::Invalid(format!("a token labelled {label:?} already exists")));
                }
            }
        }
        let slot = slots
            .into_iter()
            .find(|s| pkcs11.get_token_info(*s).map(|i| !i.token_initialized()).unwrap_or(false))
            .ok_or_else(|| HsmError::Invalid("no slot with an uninitialised token".into()))?;
        pkcs11.init_token(slot, &so_pin.to_auth(), label).map_err(map_op_error)?;
        // The slot list changes after C_InitToken (SoftHSM adds a fresh empty slot): find ours again.
        let slot = pkcs11
            .get_slots_with_initialized_token()
            .map_err(map_op_error)?
            .into_iter()
            .find(|s| pkcs11.get_token_info(*s).map(|i| i.label().trim_end() == label).unwrap_or(false))
            .ok_or_else(|| HsmError::TokenMissing(label.to_owned()))?;
        let session = pkcs11.open_rw_session(slot).map_err(map_op_error)?;
        session.login(UserType::So, Some(&so_pin.to_auth())).map_err(map_op_error)?;
        session.init_pin(&user_pin.to_auth()).map_err(map_op_error)?;
        session.logout().map_err(map_op_error)?;
        Ok(())
    })();
    finalize_module(pkcs11);
    result
}

