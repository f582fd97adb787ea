//! Key roles, versioned labels and the full attribute templates every medgate key is created with.
//!
//! Labels are `medgate-<role>-v<N>`; a retired version is relabelled `medgate-<role>-v<N>-retired`.
//! The active version of a role is its highest version that is not retired. Every private and secret
//! key is sensitive and never extractable, has only the usage flags its role needs, and lists its
//! mechanism in CKA_ALLOWED_MECHANISMS (the module's defaults are never relied upon; a module that
//! rejects an optional attribute gets the template without it, see [`crate::profile`]). Each key (and
//! each key pair) gets its own random CKA_ID, which is what `pkcs11-tool --id` selects by.

use std::fmt;

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki_sys::CK_MECHANISM_TYPE;

use crate::der::p256_params_der;
use crate::profile::{HmacKeyType, KekScheme, RolePlan, TemplateSupport};
pub use crate::role::Role;

/// A parsed medgate key label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub role: Role,
    pub version: u32,
    pub retired: bool,
}

impl Label {
    pub fn new(role: Role, version: u32) -> Label {
        Label { role, version, retired: false }
    }

    pub fn parse(s: &str) -> Option<Label> {
        let rest = s.strip_prefix("medgate-")?;
        let (rest, retired) = match rest.strip_suffix("-retired") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (role, version) = rest.rsplit_once("-v")?;
        let version: u32 = version.parse().ok()?;
        Some(Label { role: role.parse().ok()?, version, retired })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "medgate-{}-v{}", self.role, self.version)?;
        if self.retired {
            f.write_str("-retired")?;
        }
        Ok(())
    }
}

/// One key as `medgate keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub role: Role,
    pub version: u32,
    pub label: String,
    pub id_hex: String,
    pub active: bool,
    pub retired: bool,
    /// For the private or secret half.
    pub sensitive: bool,
    pub always_sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    /// Extractable only wrapped under a trusted key (CKA_WRAP_WITH_TRUSTED): a key made while
    /// the token holds the backup key (see [`crate::backup`]).
    pub wrap_with_trusted: bool,
    /// Whether the key may still be used for new signatures / wraps (false after rotation).
    pub can_create: bool,
    pub has_certificate: bool,
}

/// Attributes shared by every private and secret key. CKA_ALLOWED_MECHANISMS is not here: it is
/// passed as raw mechanism codes ([`allowed_mechanisms`]), since cryptoki cannot express every
/// code a module uses.
fn secret_common(label: &str, id: &[u8], t: &TemplateSupport) -> Vec<Attribute> {
    let mut a = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(true), // label and usage flags change at rotation and retirement
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    optional(&mut a, t);
    a
}

fn public_common(label: &str, id: &[u8], t: &TemplateSupport) -> Vec<Attribute> {
    let mut a = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Modifiable(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    optional(&mut a, t);
    a
}

/// CKA_COPYABLE=false and CKA_DESTROYABLE=true, unless the module rejects them (see
/// [`TemplateSupport`] for why leaving them out weakens nothing).
fn optional(a: &mut Vec<Attribute>, t: &TemplateSupport) {
    if t.copyable.usable() {
        a.push(Attribute::Copyable(false));
    }
    if t.destroyable.usable() {
        a.push(Attribute::Destroyable(true));
    }
}

/// The raw CKA_ALLOWED_MECHANISMS of a role's keys: the plan's one mechanism, or `None` where the
/// module rejects the attribute.
pub(crate) fn allowed_mechanisms(plan: &RolePlan, t: &TemplateSupport) -> Option<Vec<CK_MECHANISM_TYPE>> {
    t.allowed_mechanisms.usable().then(|| vec![plan.operation])
}

/// Every usage flag of a secret key written out: (encrypt, decrypt, sign, verify, wrap, unwrap); derive is never allowed.
fn usage(e: bool, d: bool, s: bool, v: bool, w: bool, u: bool) -> Vec<Attribute> {
    vec![
        Attribute::Encrypt(e),
        Attribute::Decrypt(d),
        Attribute::Sign(s),
        Attribute::Verify(v),
        Attribute::Wrap(w),
        Attribute::Unwrap(u),
        Attribute::Derive(false),
    ]
}

/// Public and private templates for a key pair role.
pub(crate) fn pair_templates(plan: &RolePlan, t: &TemplateSupport, label: &str, id: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    let role = plan.role;
    let mut public = public_common(label, id, t);
    let mut private = secret_common(label, id, t);
    public.push(Attribute::Class(ObjectClass::PUBLIC_KEY));
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    match role {
        Role::Ledger | Role::Tls => {
            public.push(Attribute::KeyType(KeyType::EC));
            public.push(Attribute::EcParams(p256_params_der()));
            public.extend([Attribute::Encrypt(false), Attribute::Verify(true), Attribute::Wrap(false), Attribute::Derive(false)]);
            private.push(Attribute::KeyType(KeyType::EC));
            private.extend([Attribute::Decrypt(false), Attribute::Sign(true), Attribute::Unwrap(false), Attribute::Derive(false), Attribute::SignRecover(false)]);
        }
        Role::Sharing => {
            public.push(Attribute::KeyType(KeyType::RSA));
            public.push(Attribute::ModulusBits(3072.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            public.extend([Attribute::Encrypt(false), Attribute::Verify(false), Attribute::Wrap(true), Attribute::Derive(false)]);
            private.push(Attribute::KeyType(KeyType::RSA));
            private.extend([Attribute::Decrypt(false), Attribute::Sign(false), Attribute::Unwrap(true), Attribute::Derive(false), Attribute::SignRecover(false)]);
        }
        Role::Kek | Role::Pseudonym => unreachable!("{role} is not a key pair"),
    }
    (public, private)
}

/// Template for a secret key role (without CKA_VALUE_LEN when `with_len` is false: an import).
pub(crate) fn secret_template(plan: &RolePlan, t: &TemplateSupport, label: &str, id: &[u8], with_len: bool) -> Vec<Attribute> {
    let role = plan.role;
    let mut a = secret_common(label, id, t);
    a.push(Attribute::Class(ObjectClass::SECRET_KEY));
    if with_len {
        a.push(Attribute::ValueLen(32.into()));
    }
    match role {
        Role::Kek => {
            a.push(Attribute::KeyType(KeyType::AES));
            match plan.kek {
                Some(KekScheme::AesGcm) => a.extend(usage(true, true, false, false, false, false)),
                _ => a.extend(usage(false, false, false, false, true, true)),
            }
        }
        Role::Pseudonym => {
            a.push(Attribute::KeyType(match plan.hmac_key {
                Some(HmacKeyType::Sha256Hmac) => KeyType::SHA256_HMAC,
                _ => KeyType::GENERIC_SECRET,
            }));
            a.extend(usage(false, false, true, false, false, false));
        }
        _ => unreachable!("{role} is a key pair"),
    }
    a
}

/// The usage flag that lets a key make new signatures or wraps; cleared on the private half when a
/// newer version takes over, so the HSM itself refuses new work with an old key. `gcm`: the KEK
/// encrypts rather than wraps.
pub(crate) fn create_flag(role: Role, gcm: bool, on: bool) -> Attribute {
    match role {
        Role::Ledger | Role::Tls | Role::Pseudonym => Attribute::Sign(on),
        Role::Kek if gcm => Attribute::Encrypt(on),
        Role::Kek => Attribute::Wrap(on),
        Role::Sharing => Attribute::Unwrap(on),
    }
}

/// The flags cleared when a version is retired: every use of the key.
pub(crate) fn retire_flags(role: Role) -> Vec<Attribute> {
    match role {
        Role::Kek => vec![Attribute::Wrap(false), Attribute::Unwrap(false), Attribute::Encrypt(false), Attribute::Decrypt(false)],
        Role::Sharing => vec![Attribute::Unwrap(false)],
        Role::Ledger | Role::Tls | Role::Pseudonym => vec![Attribute::Sign(false)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for role in Role::ALL {
            let l = Label::new(role, 7);
            assert_eq!(Label::parse(&l.to_string()), Some(l));
            let r = Label { retired: true, ..l };
            assert_eq!(r.to_string(), format!("medgate-{role}-v7-retired"));
            assert_eq!(Label::parse(&r.to_string()), Some(r));
        }
        assert_eq!(Label::parse("medgate-foo-v1"), None);
        assert_eq!(Label::parse("other-ledger-v1"), None);
        assert_eq!(Label::parse("medgate-ledger-vx"), None);
    }

    #[test]
    fn every_secret_template_is_sensitive_and_unextractable() {
        use crate::profile::{plan_role, Acceptance, MechInfo, Mechanisms};
        let everything = Mechanisms(
            [0x1040, 0x1041, 0x1080, 0x210a, 0x0000, 0x0009, 0x0350, 0x0251]
                .into_iter()
                .map(|code| (code, MechInfo { code, min_key_size: 0, max_key_size: 0, flags: !0 }))
                .collect(),
        );
        let full = TemplateSupport { allowed_mechanisms: Acceptance::Accepted, copyable: Acceptance::Accepted, destroyable: Acceptance::Accepted };
        let reduced = TemplateSupport {
            allowed_mechanisms: Acceptance::Rejected("CKR_ATTRIBUTE_TYPE_INVALID".into()),
            copyable: Acceptance::Rejected("CKR_ATTRIBUTE_TYPE_INVALID".into()),
            destroyable: Acceptance::Rejected("CKR_ATTRIBUTE_TYPE_INVALID".into()),
        };
        let id = [1u8; 16];
        for t in [&full, &reduced] {
            let check = |a: &[Attribute]| {
                assert!(a.contains(&Attribute::Sensitive(true)));
                assert!(a.contains(&Attribute::Extractable(false)));
                assert!(a.contains(&Attribute::Derive(false)));
                assert_eq!(a.contains(&Attribute::Copyable(false)), t.copyable.usable());
            };
            for role in Role::ALL {
                let plan = plan_role(&everything, role).expect("plan");
                assert_eq!(allowed_mechanisms(&plan, t).map(|v| v.len()), t.allowed_mechanisms.usable().then_some(1));
                if role.is_pair() {
                    check(&pair_templates(&plan, t, "l", &id).1);
                } else {
                    check(&secret_template(&plan, t, "l", &id, true));
                }
            }
        }
    }
}
