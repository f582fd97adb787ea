//! How a command ends: the exit statuses (sysexits.h where one fits) and [`Failure`], the one
//! error type of the binary. Every lower layer's error becomes a `Failure` here or at the call
//! site in `cli`; nothing below this crate knows about exit codes.
//!
//! For `medgate serve` the status tells systemd whether to try again: 64 and 77 are in the
//! unit's RestartPreventExitStatus= (a configuration, a file, a key or a PIN that a restart
//! cannot fix; restarting into a wrong PIN would lock the token), while 69 and 1 are restarted
//! (an HSM or a disk that may come back).

use std::net::SocketAddr;

use medgate_gateway::server::ServerError;
use medgate_gateway::tls::TlsError;
use medgate_hsm::HsmError;
use medgate_store::StoreError;

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
    /// take is bad usage; a missing module, token or key, a token whose information cannot be
    /// read, a role the module cannot hold, a key it cannot use or a template it refuses is a bad
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
            | HsmError::KeyMissing { .. }
            | HsmError::RoleUnsupported { .. }
            | HsmError::KeyUnusable { .. }
            | HsmError::BackupUnsupported { .. }
            | HsmError::TemplateRefused { .. } => BAD_CONFIG,
            HsmError::Unavailable(_) | HsmError::Init { .. } => UNAVAILABLE,
            _ => RUNTIME,
        };
        Failure { code, message: e.to_string() }
    }

    /// A listener that cannot be bound: an address this host does not have, or a port it may
    /// not use, is the configuration's fault (64); a port in use may free itself (69).
    pub fn bind(addr: SocketAddr, key: &str, e: &std::io::Error) -> Failure {
        let (hint, permanent) = bind_hint(addr, e);
        let message = format!("cannot listen on {addr} ({key}): {e}: {hint}");
        Failure { code: if permanent { BAD_CONFIG } else { UNAVAILABLE }, message }
    }

    /// A gateway that did not start: files, certificates, keys and the ledger's hospital are
    /// the configuration's (64); the store, the ordering service and the HSM's availability
    /// may come back (69).
    pub fn start(e: ServerError) -> Failure {
        match e {
            ServerError::Tls(TlsError::Hsm(h)) => Failure::hsm(h),
            ServerError::Tls(t) => Failure::config(t.to_string()),
            ServerError::Ledger(StoreError::WrongHospital { .. }) => Failure::config(e.to_string()),
            ServerError::Ledger(StoreError::Hsm(h)) => Failure::hsm(h),
            other => Failure::unavailable(other.to_string()),
        }
    }
}


/// What to do about a listen address that cannot be bound, and whether the cause is permanent
/// (restarting cannot help).
pub fn bind_hint(addr: SocketAddr, e: &std::io::Error) -> (String, bool) {
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::EADDRNOTAVAIL) => {
            (format!("{} is not an address of this host; use one of `ip -brief address`, or 0.0.0.0 for all", addr.ip()), true)
        }
        Some(nix::errno::Errno::EACCES) => ("ports below 1024 need CAP_NET_BIND_SERVICE, which the unit does not grant; use a port from 1024 up".into(), true),
        Some(nix::errno::Errno::EADDRINUSE) => (format!("another process listens there (another medgate? `ss -ltnp 'sport = :{}'`)", addr.port()), false),
        _ => ("see the error".into(), false),
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
