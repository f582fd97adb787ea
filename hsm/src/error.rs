//! Typed HSM errors. Messages are written for the operator who reads them in a log or a terminal:
//! they say what failed, with which role and mechanism, and what to do, and never contain a PIN
//! or key material.
//!
//! Error classes (docs/HSM.md, "Error classes"):
//! * connection lost ([`is_connection_lost`]): the module says the device, the token, the
//!   session or the login is gone. Only these make the pool re-initialise the module, and only
//!   these become [`HsmError::Unavailable`].
//! * integrity: a wrapped key or a sharing blob that does not decrypt ([`HsmError::Integrity`],
//!   or [`HsmError::UnwrapFailed`] when the module's answer to an unwrap is ambiguous:
//!   CKR_DEVICE_ERROR or CKR_FUNCTION_FAILED, reported with the return value).
//! * mechanism and template: the module lacks a mechanism a role needs
//!   ([`HsmError::RoleUnsupported`]), a key refuses an operation
//!   ([`HsmError::MechanismNotAllowed`]), the module refuses a key template
//!   ([`HsmError::TemplateRefused`]).
//! * credentials: user PIN, SO PIN, PIN length, a token left without a user PIN.
//! * everything else the module says is reported as it is ([`HsmError::Device`]), with the
//!   PKCS#11 function and return value.

use std::path::PathBuf;

use cryptoki::error::{Error as P11Error, RvError};

use crate::role::Role;

/// Everything that can go wrong at the HSM boundary.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("PKCS#11 module {0}: no such file")]
    ModuleMissing(PathBuf),
    #[error("PKCS#11 module {path}: cannot be loaded: {detail}")]
    ModuleLoad { path: PathBuf, detail: String },
    #[error("PKCS#11 module {module}: C_Initialize failed: {detail}")]
    Init { module: PathBuf, detail: String },
    #[error("no token labelled {0:?} is present in any slot")]
    TokenMissing(String),
    #[error("PKCS#11 module {module}: the token information of slot {slot} cannot be read ({detail}); a token labelled {label:?} may be in that slot")]
    TokenInfo { module: PathBuf, slot: u64, label: String, detail: String },
    #[error("the HSM rejected the user PIN; it will not be tried again by this process (check the PIN file)")]
    WrongPin,
    #[error("the HSM rejected the security officer (SO) PIN{0}")]
    WrongSoPin(String),
    #[error("the token's user PIN is locked; a security officer must reset it")]
    PinLocked,
    #[error("the token's user PIN has one try left; medgate refuses to risk locking it (reset the retry counter first)")]
    PinFinalTry,
    #[error("{which} PIN of {len} characters does not fit token {label:?}, which takes {min} to {max} characters")]
    PinLength { which: &'static str, len: usize, label: String, min: u64, max: u64 },
    #[error("token {label:?} was initialised (its SO PIN is set) but its user PIN was not: {detail}. Recover: run `medgate keys init-token` again with a user PIN the token accepts; it finds the token by its label and only sets the user PIN")]
    UserPinNotSet { label: String, detail: String },
    #[error("no usable {role} key{detail} on the token (generate one with `medgate keys generate --role {role}`)")]
    KeyMissing { role: Role, detail: String },
    #[error("PKCS#11 module {module} cannot hold the {role} key: {reason}")]
    RoleUnsupported { module: PathBuf, role: Role, reason: String },
    #[error("the {role} key cannot be used: {reason}")]
    KeyUnusable { role: Role, reason: String },
    #[error("PKCS#11 module {module} cannot hold medgate's key backup: {reason}")]
    BackupUnsupported { module: PathBuf, reason: String },
    #[error("the {role} key refused {operation} with {mechanism}: {detail}")]
    MechanismNotAllowed { role: Role, operation: &'static str, mechanism: String, detail: String },
    #[error("the module refused the {role} key's template ({rv}): {hint}")]
    TemplateRefused { role: Role, rv: String, hint: String },
    #[error("integrity check failed: the wrapped key was altered or was not made by this key")]
    Integrity,
    #[error("could not unwrap with the {role} key ({mechanism}): the module answered {rv}; the wrapped key may have been altered (integrity), or the device failed")]
    UnwrapFailed { role: Role, mechanism: String, rv: String },
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request to the HSM: {0}")]
    Invalid(String),
    #[error("HSM error: {0}")]
    Device(String),
}

impl HsmError {
    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            HsmError::ModuleMissing(_) | HsmError::ModuleLoad { .. } => "module",
            HsmError::Init { .. } => "init",
            HsmError::TokenMissing(_) | HsmError::TokenInfo { .. } => "token_missing",
            HsmError::WrongPin | HsmError::WrongSoPin(_) | HsmError::PinLength { .. } | HsmError::UserPinNotSet { .. } => "wrong_pin",
            HsmError::PinLocked | HsmError::PinFinalTry => "pin_locked",
            HsmError::KeyMissing { .. } => "key_missing",
            HsmError::RoleUnsupported { .. }
            | HsmError::KeyUnusable { .. }
            | HsmError::BackupUnsupported { .. }
            | HsmError::MechanismNotAllowed { .. }
            | HsmError::TemplateRefused { .. } => {
                "mechanism_not_allowed"
            }
            HsmError::Integrity | HsmError::UnwrapFailed { .. } => "integrity",
            HsmError::Unavailable(_) => "unavailable",
            HsmError::Invalid(_) => "invalid",
            HsmError::Device(_) => "device",
        }
    }

    /// True when the data given to the HSM failed its integrity check (or may have: see
    /// [`HsmError::UnwrapFailed`]): the caller reports the record as damaged, not the HSM as down.
    pub fn is_integrity(&self) -> bool {
        matches!(self, HsmError::Integrity | HsmError::UnwrapFailed { .. })
    }
}

/// `CKR_ATTRIBUTE_TYPE_INVALID` for `RvError::AttributeTypeInvalid`: the name the PKCS#11
/// specification and every module's documentation use.
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The return values that mean the device, the token, our session or our login is gone: the
/// pool must re-initialise the module before anything else can work. CKR_DEVICE_ERROR is not
/// among them: modules use it for failures of one operation (kryoptic answers a tampered
/// wrapped key with it), and re-initialising would hide that.
pub(crate) const CONNECTION_LOST: [RvError; 8] = [
    RvError::DeviceRemoved,
    RvError::SessionHandleInvalid,
    RvError::SessionClosed,
    RvError::TokenNotPresent,
    RvError::TokenNotRecognized,
    RvError::CryptokiNotInitialized,
    RvError::UserNotLoggedIn,
    RvError::SlotIdInvalid,
];

/// True when the module says the device, the token or our session is gone.
pub(crate) fn is_connection_lost(e: &P11Error) -> bool {
    matches!(e, P11Error::Pkcs11(rv, _) if CONNECTION_LOST.contains(rv))
}

/// What an operation was doing when the module answered, so that errors name it.
#[derive(Debug, Clone)]
pub(crate) struct OpCtx {
    pub role: Role,
    pub operation: &'static str,
    pub mechanism: String,
}

/// Maps a module error to a typed error; `ctx` names the role, operation and mechanism.
pub(crate) fn map_op_error(e: P11Error, ctx: Option<&OpCtx>) -> HsmError {
    let (rv, f) = match e {
        P11Error::Pkcs11(rv, f) => (rv, f),
        other => return HsmError::Device(other.to_string()),
    };
    let name = ckr_name(rv);
    let role_msg = |detail: String| match ctx {
        Some(c) => HsmError::MechanismNotAllowed { role: c.role, operation: c.operation, mechanism: c.mechanism.clone(), detail },
        None => HsmError::Device(format!("{f}: {name}: {detail}")),
    };
    match rv {
        RvError::PinIncorrect => HsmError::WrongPin,
        RvError::PinLocked => HsmError::PinLocked,
        RvError::MechanismInvalid => role_msg(format!("{name}: the module does not implement this mechanism (`medgate keys probe` lists what it offers)")),
        RvError::MechanismParamInvalid => role_msg(format!("{name}: the module does not take these mechanism parameters")),
        RvError::KeyFunctionNotPermitted => {
            role_msg(format!("{name}: the key's usage flags or CKA_ALLOWED_MECHANISMS do not permit it (an older, rotated or retired version?)"))
        }
        RvError::KeyTypeInconsistent => role_msg(format!("{name}: the key's type does not fit this mechanism")),
        RvError::KeyUnextractable | RvError::KeyNotWrappable => role_msg(format!("{name}: the key may not be wrapped")),
        RvError::AttributeTypeInvalid | RvError::AttributeValueInvalid | RvError::TemplateIncomplete | RvError::TemplateInconsistent => {
            match ctx {
                Some(c) => HsmError::TemplateRefused {
                    role: c.role,
                    rv: name,
                    hint: "the module does not accept an attribute of medgate's template; `medgate keys probe` shows which attributes it takes".into(),
                },
                None => HsmError::Device(format!("{f}: {name}: the module refused an attribute")),
            }
        }
        RvError::WrappedKeyInvalid | RvError::WrappedKeyLenRange | RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::SignatureInvalid => {
            HsmError::Integrity
        }
        // Modules answer a wrapped key that fails its check with these too (kryoptic:
        // CKR_DEVICE_ERROR for RFC 5649; openCryptoki 3.8: CKR_FUNCTION_FAILED for RSA-OAEP).
        RvError::DeviceError | RvError::FunctionFailed if ctx.is_some_and(|c| c.operation == "unwrap") => {
            let c = ctx.expect("checked above");
            HsmError::UnwrapFailed { role: c.role, mechanism: c.mechanism.clone(), rv: name }
        }
        _ if CONNECTION_LOST.contains(&rv) => HsmError::Unavailable(format!("{f}: {name}")),
        _ => match ctx {
            Some(c) => HsmError::Device(format!("{} with the {} key ({}): {f}: {name}", c.operation, c.role, c.mechanism)),
            None => HsmError::Device(format!("{f}: {name}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn return_values_are_named_as_the_specification_names_them() {
        assert_eq!(ckr_name(RvError::AttributeTypeInvalid), "CKR_ATTRIBUTE_TYPE_INVALID");
        assert_eq!(ckr_name(RvError::DeviceError), "CKR_DEVICE_ERROR");
    }

    #[test]
    fn device_error_is_not_a_lost_connection_and_on_unwrap_says_so() {
        let e = P11Error::Pkcs11(RvError::DeviceError, Function::UnwrapKey);
        assert!(!is_connection_lost(&e));
        let ctx = OpCtx { role: Role::Kek, operation: "unwrap", mechanism: "CKM_AES_KEY_WRAP_KWP".into() };
        let mapped = map_op_error(e, Some(&ctx));
        assert!(mapped.is_integrity(), "{mapped}");
        let text = mapped.to_string();
        assert!(text.contains("could not unwrap") && text.contains("integrity") && text.contains("CKR_DEVICE_ERROR"), "{text}");
        assert!(!text.contains("unavailable"), "{text}");
        let removed = P11Error::Pkcs11(RvError::DeviceRemoved, Function::Sign);
        assert!(is_connection_lost(&removed));
        assert!(matches!(map_op_error(removed, None), HsmError::Unavailable(_)));
    }

    #[test]
    fn a_missing_mechanism_names_the_role_and_the_mechanism() {
        let ctx = OpCtx { role: Role::Kek, operation: "wrap", mechanism: "CKM_AES_KEY_WRAP_PAD (0x210a)".into() };
        let text = map_op_error(P11Error::Pkcs11(RvError::MechanismInvalid, Function::WrapKey), Some(&ctx)).to_string();
        assert!(text.contains("kek") && text.contains("CKM_AES_KEY_WRAP_PAD") && text.contains("CKR_MECHANISM_INVALID"), "{text}");
        assert!(text.contains("does not implement"), "{text}");
        let tpl = map_op_error(P11Error::Pkcs11(RvError::AttributeTypeInvalid, Function::GenerateKey), Some(&ctx)).to_string();
        assert!(tpl.contains("kek") && tpl.contains("CKR_ATTRIBUTE_TYPE_INVALID") && tpl.contains("keys probe"), "{tpl}");
    }
}
