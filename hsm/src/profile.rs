//! What one token can do for each key role, decided once from what the module says it offers
//! (C_GetMechanismList, C_GetMechanismInfo) and which template attributes it accepts.
//!
//! The choices, per role (docs/HSM.md, "Profiles"):
//! * ledger, tls: CKM_EC_KEY_PAIR_GEN on P-256 and CKM_ECDSA over a SHA-256 digest computed in
//!   process (no module needs to offer CKM_ECDSA_SHA256).
//! * kek: CKM_AES_KEY_GEN and RFC 5649 key wrap, offered as CKM_AES_KEY_WRAP_PAD (0x210A, SoftHSM)
//!   or CKM_AES_KEY_WRAP_KWP (0x210B, PKCS#11 3.x, kryoptic): the same algorithm and the same
//!   bytes. Where neither exists, AES-256-GCM through C_Encrypt/C_Decrypt (format in
//!   [`crate::ops`]).
//! * sharing: CKM_RSA_PKCS_KEY_PAIR_GEN (3072 bits) and CKM_RSA_PKCS_OAEP for wrap and unwrap.
//! * pseudonym: CKM_SHA256_HMAC with a generic secret key (CKM_GENERIC_SECRET_KEY_GEN), or with a
//!   CKK_SHA256_HMAC key (CKM_SHA256_KEY_GEN) where the module has no generic secret keys.
//!
//! Where nothing fits, the role is refused with the module, the mechanisms and the role named.
//! Template attributes that a module rejects are left out only where that weakens nothing
//! ([`TemplateSupport`]).
//!
//! Also here: reading the mechanism table, trying the template attributes, and judging a KEK
//! object's scheme, all on a session the caller provides.

use std::collections::BTreeMap;
use std::fmt;

use cryptoki::mechanism::MechanismType;
use cryptoki_sys::{
    CKF_DECRYPT, CKF_ENCRYPT, CKF_GENERATE, CKF_GENERATE_KEY_PAIR, CKF_SIGN, CKF_UNWRAP, CKF_WRAP, CKM_AES_GCM, CKM_AES_KEY_GEN,
    CKM_AES_KEY_WRAP_PAD, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, CKM_GENERIC_SECRET_KEY_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP,
    CKM_SHA256_HMAC, CKM_SHA256_KEY_GEN, CK_MECHANISM_TYPE, CK_ULONG,
};
use serde::Serialize;

use std::path::Path;

use cryptoki::error::Error as P11Error;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::error::{ckr_name, HsmError};
use crate::raw::{Raw, CKM_AES_KEY_WRAP_KWP};
use crate::role::Role;

/// The PKCS#11 name of a mechanism code with its number, e.g. `CKM_AES_KEY_WRAP_KWP (0x210b)`.
pub fn mechanism_name(code: CK_MECHANISM_TYPE) -> String {
    let name = match code {
        CKM_AES_KEY_WRAP_KWP => "CKM_AES_KEY_WRAP_KWP".to_owned(),
        _ => match MechanismType::try_from(code) {
            Ok(m) => m.to_string(),
            Err(_) if code >= cryptoki_sys::CKM_VENDOR_DEFINED => "vendor-defined".to_owned(),
            Err(_) => "(no name in cryptoki)".to_owned(),
        },
    };
    format!("{name} (0x{code:x})")
}

/// The names of the CKF_* bits of a mechanism's flags.
pub fn flag_names(flags: CK_ULONG) -> Vec<&'static str> {
    const NAMES: [(CK_ULONG, &str); 20] = [
        (cryptoki_sys::CKF_HW, "hw"),
        (CKF_ENCRYPT, "encrypt"),
        (CKF_DECRYPT, "decrypt"),
        (cryptoki_sys::CKF_DIGEST, "digest"),
        (CKF_SIGN, "sign"),
        (cryptoki_sys::CKF_SIGN_RECOVER, "sign_recover"),
        (cryptoki_sys::CKF_VERIFY, "verify"),
        (cryptoki_sys::CKF_VERIFY_RECOVER, "verify_recover"),
        (CKF_GENERATE, "generate"),
        (CKF_GENERATE_KEY_PAIR, "generate_key_pair"),
        (CKF_WRAP, "wrap"),
        (CKF_UNWRAP, "unwrap"),
        (cryptoki_sys::CKF_DERIVE, "derive"),
        (cryptoki_sys::CKF_EC_F_P, "ec_f_p"),
        (cryptoki_sys::CKF_EC_F_2M, "ec_f_2m"),
        (cryptoki_sys::CKF_EC_ECPARAMETERS, "ec_parameters"),
        (cryptoki_sys::CKF_EC_OID, "ec_oid"),
        (cryptoki_sys::CKF_EC_UNCOMPRESS, "ec_uncompress"),
        (cryptoki_sys::CKF_EC_COMPRESS, "ec_compress"),
        (cryptoki_sys::CKF_EXTENSION, "extension"),
    ];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect()
}

/// One mechanism as C_GetMechanismInfo describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MechInfo {
    pub code: CK_MECHANISM_TYPE,
    pub min_key_size: CK_ULONG,
    pub max_key_size: CK_ULONG,
    pub flags: CK_ULONG,
}

/// The mechanisms a token offers, by code.
#[derive(Debug, Clone, Default)]
pub struct Mechanisms(pub BTreeMap<CK_MECHANISM_TYPE, MechInfo>);

impl Mechanisms {
    fn get(&self, code: CK_MECHANISM_TYPE) -> Option<&MechInfo> {
        self.0.get(&code)
    }

    /// Offered with every bit of `flags`.
    pub fn offers(&self, code: CK_MECHANISM_TYPE, flags: CK_ULONG) -> bool {
        self.get(code).is_some_and(|m| m.flags & flags == flags)
    }

    /// Offered with `flags` and a key size range that includes `bits` (a range of 0..0 means the
    /// module does not say).
    fn offers_size(&self, code: CK_MECHANISM_TYPE, flags: CK_ULONG, bits: CK_ULONG) -> bool {
        self.get(code).is_some_and(|m| {
            m.flags & flags == flags && (m.max_key_size == 0 || (m.min_key_size <= bits && bits <= m.max_key_size))
        })
    }
}

/// How the key-encryption key wraps data keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KekScheme {
    /// RFC 5649 AES key wrap with padding, under the code the module uses (0x210A or 0x210B).
    Rfc5649 { mechanism: CK_MECHANISM_TYPE },
    /// AES-256-GCM through C_Encrypt/C_Decrypt, for modules without RFC 5649.
    AesGcm,
}

impl KekScheme {
    pub fn mechanism(self) -> CK_MECHANISM_TYPE {
        match self {
            KekScheme::Rfc5649 { mechanism } => mechanism,
            KekScheme::AesGcm => CKM_AES_GCM,
        }
    }
}

/// The key type of the pseudonym key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacKeyType {
    /// CKK_GENERIC_SECRET made by CKM_GENERIC_SECRET_KEY_GEN.
    GenericSecret,
    /// CKK_SHA256_HMAC made by CKM_SHA256_KEY_GEN.
    Sha256Hmac,
}

/// How a token holds and uses one role's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolePlan {
    pub role: Role,
    /// C_GenerateKey / C_GenerateKeyPair mechanism.
    pub keygen: CK_MECHANISM_TYPE,
    /// The one mechanism the role's operation uses, and the only one in CKA_ALLOWED_MECHANISMS.
    pub operation: CK_MECHANISM_TYPE,
    /// For the kek role.
    pub kek: Option<KekScheme>,
    /// For the pseudonym role.
    pub hmac_key: Option<HmacKeyType>,
    /// One line for people: what medgate does with this role on this token.
    pub how: String,
}

/// Why a token cannot hold a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRefusal {
    pub role: Role,
    /// Mechanisms (name and code) of which the module offers none that fits.
    pub missing: Vec<String>,
    pub reason: String,
}

/// Whether the module takes one optional template attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum Acceptance {
    Accepted,
    /// Refused with this return value; medgate leaves the attribute out.
    Rejected(String),
    /// Could not be tried (no login, or no way to make a test key); medgate writes it.
    Untested(String),
}

impl Acceptance {
    pub fn usable(&self) -> bool {
        !matches!(self, Acceptance::Rejected(_))
    }
}

/// Which optional attributes the module accepts in a key template. Each is left out only where
/// the module rejects it, and only because leaving it out weakens nothing:
/// * CKA_COPYABLE=false: a copy made by C_CopyObject keeps the key sensitive and never
///   extractable, and may change nothing that C_SetAttributeValue could not already change on
///   medgate's (modifiable) keys.
/// * CKA_DESTROYABLE=true: this is the default value.
/// * CKA_ALLOWED_MECHANISMS: the usage flags (which every module enforces) still limit each key to
///   its one function (sign, wrap/unwrap, ...); a key stays sensitive and never extractable, so
///   another mechanism for that function gives a PIN holder nothing the role's own mechanism does
///   not already give (a data key it wraps or unwraps, a signature). The probe lists the other
///   mechanisms that the function then admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateSupport {
    pub allowed_mechanisms: Acceptance,
    pub copyable: Acceptance,
    pub destroyable: Acceptance,
}

impl Default for TemplateSupport {
    fn default() -> Self {
        let u = || Acceptance::Untested("not tried".into());
        TemplateSupport { allowed_mechanisms: u(), copyable: u(), destroyable: u() }
    }
}

impl TemplateSupport {
    /// The adaptations as sentences, empty when the full template is written.
    pub fn adaptations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, a) in [
            ("CKA_ALLOWED_MECHANISMS", &self.allowed_mechanisms),
            ("CKA_COPYABLE", &self.copyable),
            ("CKA_DESTROYABLE", &self.destroyable),
        ] {
            if let Acceptance::Rejected(rv) = a {
                out.push(format!("{name} left out (the module answers {rv})"));
            }
        }
        out
    }
}

/// Everything medgate decided about one token.
#[derive(Debug, Clone)]
pub struct Profile {
    pub mechanisms: Mechanisms,
    pub template: TemplateSupport,
    pub roles: BTreeMap<Role, Result<RolePlan, RoleRefusal>>,
}

impl Profile {
    /// Decides every role from the mechanism table.
    pub fn decide(mechanisms: Mechanisms, template: TemplateSupport) -> Profile {
        let roles = Role::ALL.into_iter().map(|r| (r, plan_role(&mechanisms, r))).collect();
        Profile { mechanisms, template, roles }
    }

    /// Whether the module can make transport keys for peers and seal data keys under them
    /// (AES key generation and AES-GCM encryption, besides the KEK and sharing roles).
    pub fn can_make_transport_keys(&self) -> bool {
        self.mechanisms.offers(CKM_AES_KEY_GEN, CKF_GENERATE) && self.mechanisms.offers(CKM_AES_GCM, CKF_ENCRYPT) && self.plan(Role::Kek).is_ok() && self.plan(Role::Sharing).is_ok()
    }

    /// Whether the module can open data keys sealed under a peer's transport key (AES-GCM
    /// decryption, and a sharing key to unwrap the transport key with).
    pub fn can_receive_transport_keys(&self) -> bool {
        self.mechanisms.offers(CKM_AES_GCM, CKF_DECRYPT) && self.plan(Role::Sharing).is_ok()
    }

    /// Wraps data keys with AES-GCM (see [`crate::HsmOptions::kek_aes_gcm`]); refuses the kek
    /// role where the module offers no AES-GCM.
    pub fn prefer_aes_gcm_for_kek(&mut self) {
        let m = &self.mechanisms;
        let plan = if m.offers(CKM_AES_KEY_GEN, CKF_GENERATE) && m.offers(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT) {
            Ok(RolePlan {
                role: Role::Kek,
                keygen: CKM_AES_KEY_GEN,
                operation: CKM_AES_GCM,
                kek: Some(KekScheme::AesGcm),
                hmac_key: None,
                how: "AES-256-GCM through C_Encrypt/C_Decrypt (chosen by configuration); data keys pass through process memory when wrapped".into(),
            })
        } else {
            refuse(Role::Kek, &[CKM_AES_KEY_GEN, CKM_AES_GCM], "AES-GCM wrapping was asked for, and the module offers no AES-256 key generation with AES-GCM")
        };
        self.roles.insert(Role::Kek, plan);
    }

    /// Wraps data keys with RFC 5649 even where the module offers AES-GCM (see
    /// [`crate::HsmOptions::kek_rfc5649`]); refuses the kek role where it offers no RFC 5649.
    pub fn prefer_rfc5649_for_kek(&mut self) {
        let m = &self.mechanisms;
        let plan = match rfc5649_plan(m).filter(|_| m.offers(CKM_AES_KEY_GEN, CKF_GENERATE)) {
            Some(p) => Ok(p),
            None => refuse(Role::Kek, &[CKM_AES_KEY_GEN, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP], "RFC 5649 wrapping was asked for, and the module offers no AES-256 key generation with RFC 5649 key wrap"),
        };
        self.roles.insert(Role::Kek, plan);
    }

    pub fn plan(&self, role: Role) -> Result<&RolePlan, &RoleRefusal> {
        match self.roles.get(&role) {
            Some(Ok(p)) => Ok(p),
            Some(Err(r)) => Err(r),
            None => unreachable!("every role is decided"),
        }
    }

    /// The mechanisms the token offers with `flag` for the role's kind of key, other than the
    /// role's own: what the usage flag alone admits when CKA_ALLOWED_MECHANISMS is left out.
    pub fn also_admitted(&self, role: Role) -> Vec<String> {
        let Ok(plan) = self.plan(role) else { return Vec::new() };
        let (candidates, flag): (&[CK_MECHANISM_TYPE], CK_ULONG) = match role {
            Role::Ledger | Role::Tls => (&[CKM_ECDSA, cryptoki_sys::CKM_ECDSA_SHA1, cryptoki_sys::CKM_ECDSA_SHA256, cryptoki_sys::CKM_ECDSA_SHA384, cryptoki_sys::CKM_ECDSA_SHA512], CKF_SIGN),
            Role::Kek => match plan.kek {
                Some(KekScheme::AesGcm) => (&[CKM_AES_GCM, cryptoki_sys::CKM_AES_ECB, cryptoki_sys::CKM_AES_CBC, cryptoki_sys::CKM_AES_CBC_PAD, cryptoki_sys::CKM_AES_CTR], CKF_ENCRYPT),
                _ => (&[CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP, cryptoki_sys::CKM_AES_KEY_WRAP, cryptoki_sys::CKM_AES_ECB, cryptoki_sys::CKM_AES_CBC, cryptoki_sys::CKM_AES_CBC_PAD], CKF_WRAP),
            },
            Role::Sharing => (&[CKM_RSA_PKCS_OAEP, cryptoki_sys::CKM_RSA_PKCS, cryptoki_sys::CKM_RSA_X_509], CKF_UNWRAP),
            Role::Pseudonym => (&[CKM_SHA256_HMAC, cryptoki_sys::CKM_SHA256_HMAC_GENERAL, cryptoki_sys::CKM_SHA_1_HMAC, cryptoki_sys::CKM_SHA384_HMAC, cryptoki_sys::CKM_SHA512_HMAC], CKF_SIGN),
        };
        candidates
            .iter()
            .filter(|c| **c != plan.operation && self.mechanisms.offers(**c, flag))
            .map(|c| mechanism_name(*c))
            .collect()
    }
}

fn refuse(role: Role, missing: &[CK_MECHANISM_TYPE], reason: &str) -> Result<RolePlan, RoleRefusal> {
    Err(RoleRefusal { role, missing: missing.iter().map(|m| mechanism_name(*m)).collect(), reason: reason.to_owned() })
}

/// The RFC 5649 plan for the kek role, under the code the module offers (0x210A or 0x210B).
fn rfc5649_plan(m: &Mechanisms) -> Option<RolePlan> {
    [CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP].into_iter().find(|code| m.offers(*code, CKF_WRAP | CKF_UNWRAP)).map(|code| RolePlan {
        role: Role::Kek,
        keygen: CKM_AES_KEY_GEN,
        operation: code,
        kek: Some(KekScheme::Rfc5649 { mechanism: code }),
        hmac_key: None,
        how: format!("AES-256, RFC 5649 key wrap with padding as {} (chosen by configuration; re-wraps stay inside the HSM)", mechanism_name(code)),
    })
}

/// The plan for one role on a token offering `m`.
pub fn plan_role(m: &Mechanisms, role: Role) -> Result<RolePlan, RoleRefusal> {
    let plan = |keygen, operation, kek, hmac_key, how: String| Ok(RolePlan { role, keygen, operation, kek, hmac_key, how });
    match role {
        Role::Ledger | Role::Tls => {
            let gen = m.offers_size(CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 256);
            let sign = m.offers_size(CKM_ECDSA, CKF_SIGN, 256);
            match (gen, sign) {
                (true, true) => plan(CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, None, None, "ECDSA P-256: CKM_ECDSA signs a SHA-256 digest computed in process".into()),
                (false, false) => refuse(role, &[CKM_EC_KEY_PAIR_GEN, CKM_ECDSA], "the module offers no elliptic-curve mechanisms (P-256 key pair generation and ECDSA)"),
                (false, true) => refuse(role, &[CKM_EC_KEY_PAIR_GEN], "the module cannot generate P-256 key pairs"),
                (true, false) => refuse(role, &[CKM_ECDSA], "the module offers no raw ECDSA signing of a digest"),
            }
        }
        Role::Kek => {
            if !m.offers(CKM_AES_KEY_GEN, CKF_GENERATE) {
                return refuse(role, &[CKM_AES_KEY_GEN], "the module cannot generate AES keys");
            }
            // AES-GCM first: a data key is sealed with C_EncryptInit + C_Encrypt (two calls, no
            // session object), where RFC 5649 takes C_CreateObject + C_WrapKey +
            // C_DestroyObject; SoftHSM2 seals about four times as many per second.
            if m.offers(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT) {
                return plan(
                    CKM_AES_KEY_GEN,
                    CKM_AES_GCM,
                    Some(KekScheme::AesGcm),
                    None,
                    "AES-256-GCM through C_Encrypt/C_Decrypt (two calls per data key); data keys pass through process memory when wrapped".into(),
                );
            }
            if let Some(p) = rfc5649_plan(m) {
                return Ok(p);
            }
            refuse(
                role,
                &[CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP, CKM_AES_GCM],
                "the module offers neither RFC 5649 key wrap (with wrap and unwrap) nor AES-GCM (with encrypt and decrypt)",
            )
        }
        Role::Sharing => {
            let gen = m.offers_size(CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 3072);
            let oaep = m.offers(CKM_RSA_PKCS_OAEP, CKF_WRAP | CKF_UNWRAP);
            match (gen, oaep) {
                (true, true) => plan(CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP, None, None, "RSA-3072, CKM_RSA_PKCS_OAEP (SHA-1, MGF1-SHA1) wraps and unwraps".into()),
                (false, false) => refuse(role, &[CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP], "the module offers neither RSA-3072 key pair generation nor RSA-OAEP key wrap"),
                (false, true) => refuse(role, &[CKM_RSA_PKCS_KEY_PAIR_GEN], "the module cannot generate 3072-bit RSA key pairs"),
                (true, false) => refuse(role, &[CKM_RSA_PKCS_OAEP], "the module offers no RSA-OAEP key wrap and unwrap"),
            }
        }
        Role::Pseudonym => {
            if !m.offers(CKM_SHA256_HMAC, CKF_SIGN) {
                return refuse(role, &[CKM_SHA256_HMAC], "the module offers no HMAC-SHA256");
            }
            if m.offers(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE) {
                plan(CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA256_HMAC, None, Some(HmacKeyType::GenericSecret), "CKM_SHA256_HMAC with a 32-byte generic secret key".into())
            } else if m.offers(CKM_SHA256_KEY_GEN, CKF_GENERATE) {
                plan(CKM_SHA256_KEY_GEN, CKM_SHA256_HMAC, None, Some(HmacKeyType::Sha256Hmac), "CKM_SHA256_HMAC with a 32-byte CKK_SHA256_HMAC key (the module has no generic secret key generation)".into())
            } else {
                refuse(role, &[CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA256_KEY_GEN], "the module can generate no HMAC key")
            }
        }
    }
}

impl fmt::Display for RoleRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (needs {})", self.reason, self.missing.join(", "))
    }
}

/// The state of one role's active key on a logged-in token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RoleStatus {
    /// The active version can do the role's operation.
    Ready { role: Role, version: u32, mechanism: String },
    /// No key of the role on the token yet.
    NoKey { role: Role },
    /// The token cannot hold the role at all.
    Refused { role: Role, reason: String },
    /// The active key exists but cannot do its operation on this module.
    Unusable { role: Role, version: u32, reason: String },
}

impl RoleStatus {
    pub fn role(&self) -> Role {
        match self {
            RoleStatus::Ready { role, .. } | RoleStatus::NoKey { role } | RoleStatus::Refused { role, .. } | RoleStatus::Unusable { role, .. } => *role,
        }
    }

    /// The error readiness reports for this state, if it is a problem.
    pub fn error(&self, module: &Path) -> Option<HsmError> {
        match self {
            RoleStatus::Refused { role, reason } => Some(HsmError::RoleUnsupported { module: module.to_path_buf(), role: *role, reason: reason.clone() }),
            RoleStatus::Unusable { role, version, reason } => Some(HsmError::KeyUnusable { role: *role, reason: format!("version {version}: {reason}") }),
            RoleStatus::Ready { .. } | RoleStatus::NoKey { .. } => None,
        }
    }
}

impl fmt::Display for RoleStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleStatus::Ready { version, mechanism, .. } => write!(f, "v{version} ready ({mechanism})"),
            RoleStatus::NoKey { .. } => f.write_str("no key yet"),
            RoleStatus::Refused { reason, .. } => write!(f, "refused: {reason}"),
            RoleStatus::Unusable { version, reason, .. } => write!(f, "v{version} UNUSABLE: {reason}"),
        }
    }
}

/// Reads the mechanism table of a slot (every code, known to cryptoki or not).
pub(crate) fn mechanisms_of(raw: &Raw, slot: Slot) -> Result<Mechanisms, P11Error> {
    let mut m = Mechanisms::default();
    for code in raw.mechanism_list(slot.id())? {
        let (min, max, flags) = raw.mechanism_info(slot.id(), code)?;
        m.0.insert(code, MechInfo { code, min_key_size: min, max_key_size: max, flags });
    }
    Ok(m)
}

/// Tries each optional template attribute on a throwaway session key: accepted, or rejected with
/// the module's return value. Needs a logged-in session (the test key is private).
pub(crate) fn template_support(raw: &Raw, session: &Session, m: &Mechanisms) -> TemplateSupport {
    use cryptoki_sys::{CKF_GENERATE, CKM_AES_ECB, CKM_AES_KEY_GEN, CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA256_HMAC};
    let (gen, key_type, allowed) = if m.offers(CKM_AES_KEY_GEN, CKF_GENERATE) {
        (CKM_AES_KEY_GEN, KeyType::AES, CKM_AES_ECB)
    } else if m.offers(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE) {
        (CKM_GENERIC_SECRET_KEY_GEN, KeyType::GENERIC_SECRET, CKM_SHA256_HMAC)
    } else {
        let u = || Acceptance::Untested("the module generates no secret keys to try them on".into());
        return TemplateSupport { allowed_mechanisms: u(), copyable: u(), destroyable: u() };
    };
    let base = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::ValueLen(32.into()),
    ];
    let h = session.handle();
    let attempt = |extra: Option<Attribute>, allowed: Option<&[CK_MECHANISM_TYPE]>| -> Acceptance {
        let mut t = base.clone();
        t.extend(extra);
        match raw.generate_key(h, gen, &t, allowed) {
            Ok(obj) => {
                let _ = raw.destroy_object(h, obj);
                Acceptance::Accepted
            }
            Err(P11Error::Pkcs11(rv, _)) => match rv {
                cryptoki::error::RvError::AttributeTypeInvalid
                | cryptoki::error::RvError::AttributeValueInvalid
                | cryptoki::error::RvError::TemplateInconsistent => Acceptance::Rejected(ckr_name(rv)),
                other => Acceptance::Untested(format!("a test key could not be made: {}", ckr_name(other))),
            },
            Err(e) => Acceptance::Untested(format!("a test key could not be made: {e}")),
        }
    };
    if let bad @ (Acceptance::Rejected(_) | Acceptance::Untested(_)) = attempt(None, None) {
        let why = match bad {
            Acceptance::Rejected(rv) | Acceptance::Untested(rv) => rv,
            Acceptance::Accepted => unreachable!(),
        };
        let u = || Acceptance::Untested(format!("the base test key was refused: {why}"));
        return TemplateSupport { allowed_mechanisms: u(), copyable: u(), destroyable: u() };
    }
    TemplateSupport {
        allowed_mechanisms: attempt(None, Some(&[allowed])),
        copyable: attempt(Some(Attribute::Copyable(false)), None),
        destroyable: attempt(Some(Attribute::Destroyable(true)), None),
    }
}

/// The profile of the token in `slot`: its mechanisms, and (with a logged-in session) which
/// template attributes it takes.
pub(crate) fn profile_of(raw: &Raw, slot: Slot, session: Option<&Session>) -> Result<Profile, P11Error> {
    let m = mechanisms_of(raw, slot)?;
    let template = match session {
        Some(s) => template_support(raw, s, &m),
        None => {
            let u = || Acceptance::Untested("no login (give the user PIN to find out)".into());
            TemplateSupport { allowed_mechanisms: u(), copyable: u(), destroyable: u() }
        }
    };
    Ok(Profile::decide(m, template))
}

/// How a KEK object wraps on this module, from its CKA_ALLOWED_MECHANISMS where the module keeps
/// it, else from its usage flags. `Err` says why the key cannot work here, e.g. a KEK restricted
/// to CKM_AES_KEY_WRAP_PAD on a module that only offers CKM_AES_KEY_WRAP_KWP.
pub(crate) fn kek_scheme_of(raw: &Raw, s: &Session, profile: &Profile, h: u64) -> Result<KekScheme, String> {
    use cryptoki_sys::{CKF_DECRYPT, CKF_ENCRYPT, CKF_UNWRAP, CKF_WRAP, CKM_AES_GCM, CKM_AES_KEY_WRAP_PAD};
    let m = &profile.mechanisms;
    let offered = |code| match code {
        CKM_AES_GCM => m.offers(code, CKF_ENCRYPT | CKF_DECRYPT),
        _ => m.offers(code, CKF_WRAP | CKF_UNWRAP),
    };
    let candidates = [CKM_AES_KEY_WRAP_PAD, crate::raw::CKM_AES_KEY_WRAP_KWP, CKM_AES_GCM];
    let scheme = |code| if code == CKM_AES_GCM { KekScheme::AesGcm } else { KekScheme::Rfc5649 { mechanism: code } };
    match raw.allowed_mechanisms(s.handle(), h).map_err(|e| e.to_string())? {
        Some(list) => {
            if let Some(code) = candidates.into_iter().find(|c| list.contains(c) && offered(*c)) {
                return Ok(scheme(code));
            }
            let names: Vec<String> = list.iter().map(|c| mechanism_name(*c)).collect();
            let offers: Vec<String> = candidates.into_iter().filter(|c| offered(*c)).map(mechanism_name).collect();
            Err(format!(
                "it is restricted (CKA_ALLOWED_MECHANISMS) to {}, which medgate cannot use to wrap data keys on this module{}; generate a new version on this module (`medgate keys rotate --role kek`)",
                names.join(", "),
                if offers.is_empty() { String::new() } else { format!(" (it offers {})", offers.join(", ")) }
            ))
        }
        None => {
            let object = crate::raw::object_handle(h);
            let attrs = s
                .get_attributes(object, &[AttributeType::Unwrap, AttributeType::Decrypt])
                .map_err(|e| e.to_string())?;
            let (unwrap, decrypt) = attrs.iter().fold((false, false), |(u, d), a| match a {
                Attribute::Unwrap(v) => (u || *v, d),
                Attribute::Decrypt(v) => (u, d || *v),
                _ => (u, d),
            });
            let rfc = [CKM_AES_KEY_WRAP_PAD, crate::raw::CKM_AES_KEY_WRAP_KWP].into_iter().find(|c| offered(*c));
            match (unwrap, decrypt, rfc) {
                (true, _, Some(code)) => Ok(scheme(code)),
                (_, true, _) if offered(CKM_AES_GCM) => Ok(KekScheme::AesGcm),
                (true, _, None) => Err("it is a key-wrapping key, and this module offers no RFC 5649 key wrap".into()),
                (_, true, _) => Err("it is an AES-GCM key, and this module offers no AES-GCM".into()),
                _ => Err("it may neither unwrap nor decrypt".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_ULONG)]) -> Mechanisms {
        Mechanisms(entries.iter().map(|&(code, min, max, flags)| (code, MechInfo { code, min_key_size: min, max_key_size: max, flags })).collect())
    }

    #[test]
    fn gcm_is_taken_first_and_rfc5649_under_either_code_otherwise_or_by_choice() {
        let both = table(&[(CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE), (CKM_AES_KEY_WRAP_PAD, 16, 32, CKF_WRAP | CKF_UNWRAP), (CKM_AES_GCM, 16, 32, CKF_ENCRYPT | CKF_DECRYPT)]);
        assert_eq!(plan_role(&both, Role::Kek).expect("kek").kek, Some(KekScheme::AesGcm));
        let mut chosen = Profile::decide(both, TemplateSupport { allowed_mechanisms: Acceptance::Accepted, copyable: Acceptance::Accepted, destroyable: Acceptance::Accepted });
        chosen.prefer_rfc5649_for_kek();
        assert_eq!(chosen.plan(Role::Kek).expect("kek").kek, Some(KekScheme::Rfc5649 { mechanism: 0x210A }));
        let pad = table(&[(CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE), (CKM_AES_KEY_WRAP_PAD, 16, 32, CKF_WRAP | CKF_UNWRAP)]);
        assert_eq!(plan_role(&pad, Role::Kek).expect("kek").kek, Some(KekScheme::Rfc5649 { mechanism: 0x210A }));
        let kwp = table(&[(CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE), (CKM_AES_KEY_WRAP_KWP, 16, 32, CKF_WRAP | CKF_UNWRAP)]);
        let plan = plan_role(&kwp, Role::Kek).expect("kek");
        assert_eq!(plan.kek, Some(KekScheme::Rfc5649 { mechanism: 0x210B }));
        assert!(plan.how.contains("CKM_AES_KEY_WRAP_KWP (0x210b)"), "{}", plan.how);
        let gcm = table(&[(CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE), (CKM_AES_GCM, 16, 32, CKF_ENCRYPT | CKF_DECRYPT)]);
        assert_eq!(plan_role(&gcm, Role::Kek).expect("kek").kek, Some(KekScheme::AesGcm));
        // Wrap without unwrap is no use.
        let half = table(&[(CKM_AES_KEY_GEN, 16, 32, CKF_GENERATE), (CKM_AES_KEY_WRAP_KWP, 16, 32, CKF_WRAP)]);
        let refusal = plan_role(&half, Role::Kek).expect_err("refused");
        assert!(refusal.to_string().contains("CKM_AES_KEY_WRAP_PAD (0x210a)") && refusal.to_string().contains("CKM_AES_GCM"), "{refusal}");
    }

    #[test]
    fn no_elliptic_curves_refuses_ledger_and_tls_and_names_the_mechanisms() {
        let m = table(&[(CKM_RSA_PKCS_KEY_PAIR_GEN, 512, 4096, CKF_GENERATE_KEY_PAIR), (CKM_RSA_PKCS_OAEP, 512, 4096, CKF_WRAP | CKF_UNWRAP | CKF_ENCRYPT | CKF_DECRYPT)]);
        for role in [Role::Ledger, Role::Tls] {
            let r = plan_role(&m, role).expect_err("no EC");
            assert_eq!(r.missing, vec!["CKM_EC_KEY_PAIR_GEN (0x1040)".to_owned(), "CKM_ECDSA (0x1041)".to_owned()]);
        }
        assert!(plan_role(&m, Role::Sharing).is_ok());
        // An RSA module limited to 2048 bits cannot hold the 3072-bit sharing key.
        let small = table(&[(CKM_RSA_PKCS_KEY_PAIR_GEN, 512, 2048, CKF_GENERATE_KEY_PAIR), (CKM_RSA_PKCS_OAEP, 512, 2048, CKF_WRAP | CKF_UNWRAP)]);
        assert!(plan_role(&small, Role::Sharing).is_err());
    }

    #[test]
    fn the_hmac_key_falls_back_to_a_sha256_hmac_key_type() {
        let m = table(&[(CKM_SHA256_HMAC, 32, 512, CKF_SIGN | cryptoki_sys::CKF_VERIFY), (CKM_SHA256_KEY_GEN, 32, 512, CKF_GENERATE)]);
        assert_eq!(plan_role(&m, Role::Pseudonym).expect("hmac").hmac_key, Some(HmacKeyType::Sha256Hmac));
        let none = table(&[(CKM_SHA256_HMAC, 32, 512, CKF_SIGN)]);
        assert!(plan_role(&none, Role::Pseudonym).is_err());
    }

    #[test]
    fn rejected_attributes_are_named_in_the_adaptations() {
        let t = TemplateSupport {
            allowed_mechanisms: Acceptance::Rejected("CKR_ATTRIBUTE_TYPE_INVALID".into()),
            copyable: Acceptance::Accepted,
            destroyable: Acceptance::Untested("no login".into()),
        };
        assert_eq!(t.adaptations(), vec!["CKA_ALLOWED_MECHANISMS left out (the module answers CKR_ATTRIBUTE_TYPE_INVALID)".to_owned()]);
        assert!(t.destroyable.usable());
    }
}
