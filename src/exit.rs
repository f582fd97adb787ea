//! How a command ends: the exit statuses (sysexits.h where one fits) and [`Failure`], the one
//! error type of the binary. Every lower layer's error becomes a `Failure` here or at the call
//! site in `cli`; nothing below this crate knows about exit codes.

use medgate_hsm::HsmError;

/// A failure at run time (1).
pub const RUNTIME: i32 = 1;
/// Bad usage or a bad configuration (EX_USAGE, 64): systemd does not restart into it.
pub const USAGE: i32 = 64;
/// A configuration the gateway refuses (EX_USAGE, 64).
pub const BAD_CONFIG: i32 = 64;
/// A service the command needs is unavailable (EX_UNAVAILABLE, 69).
pub const UNAVAILABLE: i32 = 69;
/// Wrong or locked PIN: systemd must not restart into it (RestartPreventExitStatus=77).
pub const NOPERM: i32 = 77;

/// A command that failed: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl Failure {
    /// A failure at run time.
    pub fn runtime(m: impl Into<String>) -> Failure {
        Failure { code: RUNTIME, message: m.into() }
    }

    /// Bad usage (arguments, input files).
    pub fn usage(m: impl Into<String>) -> Failure {
        Failure { code: USAGE, message: m.into() }
    }

    /// A bad configuration.
    pub fn config(m: impl Into<String>) -> Failure {
        Failure { code: BAD_CONFIG, message: m.into() }
    }

    /// A service the command needs did not answer.
    pub fn unavailable(m: impl Into<String>) -> Failure {
        Failure { code: UNAVAILABLE, message: m.into() }
    }

    /// An HSM failure: a wrong or locked PIN (user or SO) is NOPERM; a PIN the token cannot
    /// take is bad usage; a missing module or token, a token whose information cannot be read,
    /// a role the module cannot hold, a key it cannot use or a template it refuses is a bad
    /// configuration (another module, or the keys rotated, is the remedy, not a restart); an
    /// unreachable HSM is UNAVAILABLE.
    pub fn hsm(e: HsmError) -> Failure {
        let code = match e {
            HsmError::WrongPin | HsmError::PinLocked | HsmError::PinFinalTry | HsmError::WrongSoPin(_) => NOPERM,
            HsmError::PinLength { .. } | HsmError::UserPinNotSet { .. } => USAGE,
            HsmError::ModuleMissing(_)
            | HsmError::ModuleLoad { .. }
            | HsmError::TokenMissing(_)
            | HsmError::TokenInfo { .. }
            | HsmError::RoleUnsupported { .. }
            | HsmError::KeyUnusable { .. }
            | HsmError::TemplateRefused { .. } => BAD_CONFIG,
            HsmError::Unavailable(_) | HsmError::Init { .. } => UNAVAILABLE,
            _ => RUNTIME,
        };
        Failure { code, message: e.to_string() }
    }
}
