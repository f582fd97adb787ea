//! Key roles, versioned labels and the full attribute templates every medgate key is created with.
//!
//! Labels are `medgate-<role>-v<N>`; a retired version is relabelled `medgate-<role>-v<N>-retired`.
//! The active version of a role is its highest version that is not retired. Every private and secret
//! key is sensitive and never extractable, has only the usage flags its role needs, and lists its
//! mechanisms in CKA_ALLOWED_MECHANISMS (the module's defaults are never relied upon). Each key (and
//! each key pair) gets its own random CKA_ID, which is what `pkcs11-tool --id` selects by.

use std::fmt;
use std::str::FromStr;

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use crate::der::P256_OID_DER;

/// The role a key plays. See DESIGN.md, "Keys".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// ECDSA P-256: signs ledger batches and checkpoints.
    Ledger,
    /// ECDSA P-256: the gateway's TLS server and client identity.
    Tls,
    /// AES-256, wrap/unwrap only: wraps per-record data keys (AES-KWP).
    Kek,
    /// RSA-3072, OAEP wrap/unwrap only: receives data keys re-wrapped by another hospital.
    Sharing,
    /// HMAC-SHA256 secret: turns patient identifiers into ledger pseudonyms.
    Pseudonym,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Ledger, Role::Tls, Role::Kek, Role::Sharing, Role::Pseudonym];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ledger => "ledger",
            Role::Tls => "tls",
            Role::Kek => "kek",
            Role::Sharing => "sharing",
            Role::Pseudonym => "pseudonym",
        }
    }

    /// What kind of key the role uses, for listings.
    pub fn algorithm(self) -> &'static str {
        match self {
            Role::Ledger | Role::Tls => "ECDSA P-256",
            Role::Kek => "AES-256 (KWP)",
            Role::Sharing => "RSA-3072 (OAEP)",
            Role::Pseudonym => "HMAC-SHA256",
        }
    }

    /// True for roles that are key pairs.
    pub fn is_pair(self) -> bool {
        matches!(self, Role::Ledger | Role::Tls | Role::Sharing)
    }

    /// The mechanism that operations with this role use; nothing else is allowed on the key.
    pub(crate) fn mechanism(self) -> MechanismType {
        match self {
            Role::Ledger | Role::Tls => MechanismType::ECDSA,
            Role::Kek => MechanismType::AES_KEY_WRAP_PAD,
            Role::Sharing => MechanismType::RSA_PKCS_OAEP,
            Role::Pseudonym => MechanismType::SHA256_HMAC,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown key role {s:?} (expected one of: ledger, tls, kek, sharing, pseudonym)"))
    }
}

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
    /// Whether the key may still be used for new signatures / wraps (false after rotation).
    pub can_create: bool,
    pub has_certificate: bool,
}

/// Attributes shared by every private and secret key.
fn secret_common(label: &str, id: &[u8], mechanism: MechanismType) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(true), // label and usage flags change at rotation and retirement
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::AllowedMechanisms(vec![mechanism]),
    ]
}

fn public_common(label: &str, id: &[u8], mechanism: MechanismType) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Modifiable(true),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::AllowedMechanisms(vec![mechanism]),
    ]
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
pub(crate) fn pair_templates(role: Role, label: &str, id: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    let m = role.mechanism();
    let mut public = public_common(label, id, m);
    let mut private = secret_common(label, id, m);
    public.push(Attribute::Class(ObjectClass::PUBLIC_KEY));
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    match role {
        Role::Ledger | Role::Tls => {
            public.push(Attribute::KeyType(KeyType::EC));
            public.push(Attribute::EcParams(P256_OID_DER.to_vec()));
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

/// Template for a secret key role.
pub(crate) fn secret_template(role: Role, label: &str, id: &[u8]) -> Vec<Attribute> {
    let mut t = secret_common(label, id, role.mechanism());
    t.push(Attribute::Class(ObjectClass::SECRET_KEY));
    t.push(Attribute::ValueLen(32.into()));
    match role {
        Role::Kek => {
            t.push(Attribute::KeyType(KeyType::AES));
            t.extend(usage(false, false, false, false, true, true));
        }
        Role::Pseudonym => {
            t.push(Attribute::KeyType(KeyType::GENERIC_SECRET));
            t.extend(usage(false, false, true, false, false, false));
        }
        _ => unreachable!("{role} is a key pair"),
    }
    t
}

/// The usage flag that lets a key make new signatures or wraps; cleared on the private half when a
/// newer version takes over, so the HSM itself refuses new work with an old key.
pub(crate) fn create_flag(role: Role, on: bool) -> Attribute {
    match role {
        Role::Ledger | Role::Tls | Role::Pseudonym => Attribute::Sign(on),
        Role::Kek => Attribute::Wrap(on),
        Role::Sharing => Attribute::Unwrap(on),
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
        let id = [1u8; 16];
        let check = |t: &[Attribute]| {
            assert!(t.contains(&Attribute::Sensitive(true)));
            assert!(t.contains(&Attribute::Extractable(false)));
            assert!(t.iter().any(|a| matches!(a, Attribute::AllowedMechanisms(m) if m.len() == 1)));
            assert!(t.contains(&Attribute::Derive(false)));
        };
        for role in Role::ALL {
            if role.is_pair() {
                check(&pair_templates(role, "l", &id).1);
            } else {
                check(&secret_template(role, "l", &id));
            }
        }
    }
}
