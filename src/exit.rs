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
    /// configuration (another module, or the keys rotated, is the remedy, not a restart), as is a
    /// module that cannot hold the key backup; an unreachable HSM is UNAVAILABLE.
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
            | HsmError::BackupUnsupported { .. }
            | HsmError::TemplateRefused { .. } => BAD_CONFIG,
            HsmError::Unavailable(_) | HsmError::Init { .. } => UNAVAILABLE,
            _ => RUNTIME,
        };
        Failure { code, message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsm_errors_map_to_the_exit_status_an_operator_acts_on() {
        let module = std::path::PathBuf::from("/m.so");
        let role = medgate_hsm::Role::Kek;
        let cases = [
            (HsmError::WrongPin, NOPERM),
            (HsmError::WrongSoPin(String::new()), NOPERM),
            (HsmError::PinLength { which: "a user", len: 3, label: "t".into(), min: 4, max: 8 }, USAGE),
            (HsmError::UserPinNotSet { label: "t".into(), detail: String::new() }, USAGE),
            (HsmError::RoleUnsupported { module: module.clone(), role, reason: String::new() }, BAD_CONFIG),
            (HsmError::KeyUnusable { role, reason: String::new() }, BAD_CONFIG),
            (HsmError::TemplateRefused { role, rv: String::new(), hint: String::new() }, BAD_CONFIG),
            (HsmError::TokenInfo { module: module.clone(), slot: 3, label: "t".into(), detail: String::new() }, BAD_CONFIG),
            (HsmError::BackupUnsupported { module, reason: String::new() }, BAD_CONFIG),
            (HsmError::Unavailable(String::new()), UNAVAILABLE),
            (HsmError::Integrity, RUNTIME),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            assert_eq!(Failure::hsm(e).code, code, "{text}");
        }
    }
}
