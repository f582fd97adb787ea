//! Typed HSM errors. Messages are written for the operator who reads them in a log or a terminal:
//! they say what failed and what to do, and never contain a PIN or key material.

use std::path::PathBuf;

use crate::keys::Role;

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
    #[error("the HSM rejected the user PIN; it will not be tried again by this process (check the PIN file)")]
    WrongPin,
    #[error("the token's user PIN is locked; a security officer must reset it")]
    PinLocked,
    #[error("the token's user PIN has one try left; medgate refuses to risk locking it (reset the retry counter first)")]
    PinFinalTry,
    #[error("no usable {role} key{detail} on the token (generate one with `medgate keys generate --role {role}`)")]
    KeyMissing { role: Role, detail: String },
    #[error("the key does not allow this operation or mechanism ({0})")]
    MechanismNotAllowed(String),
    #[error("integrity check failed: the wrapped key was altered or was not made by this key")]
    Integrity,
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
            HsmError::TokenMissing(_) => "token_missing",
            HsmError::WrongPin => "wrong_pin",
            HsmError::PinLocked | HsmError::PinFinalTry => "pin_locked",
            HsmError::KeyMissing { .. } => "key_missing",
            HsmError::MechanismNotAllowed(_) => "mechanism_not_allowed",
            HsmError::Integrity => "integrity",
            HsmError::Unavailable(_) => "unavailable",
            HsmError::Invalid(_) => "invalid",
            HsmError::Device(_) => "device",
        }
    }
}

/// True when the module says the device, the token or our session is gone: the pool must
/// re-initialise before anything else can work.
pub(crate) fn is_connection_lost(e: &cryptoki::error::Error) -> bool {
    use cryptoki::error::{Error, RvError};
    matches!(
        e,
        Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::SlotIdInvalid,
            _
        )
    )
}

/// Maps a module error from an operation on a key to a typed error.
pub(crate) fn map_op_error(e: cryptoki::error::Error) -> HsmError {
    use cryptoki::error::{Error, RvError};
    match e {
        Error::Pkcs11(rv, f) => match rv {
            RvError::PinIncorrect => HsmError::WrongPin,
            RvError::PinLocked => HsmError::PinLocked,
            RvError::KeyFunctionNotPermitted
            | RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::KeyTypeInconsistent
            | RvError::KeyUnextractable
            | RvError::KeyNotWrappable => HsmError::MechanismNotAllowed(format!("{f}: {rv:?}")),
            RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::SignatureInvalid => HsmError::Integrity,
            _ if is_connection_lost(&Error::Pkcs11(rv, f)) => {
                HsmError::Unavailable(format!("{f}: {rv:?}"))
            }
            _ => HsmError::Device(format!("{f}: {rv:?}")),
        },
        other => HsmError::Device(other.to_string()),
    }
}
