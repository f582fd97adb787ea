//! Process hardening for `medgate serve`: no core dumps, no ptrace and no `/proc/PID/mem` for
//! other processes (even of the same user), memory locked against swap when the limit allows, and
//! the drop from root to the service user.
//!
//! Boundary: process credentials and limits, through nix's safe wrappers only (no unsafe code;
//! per-buffer `mlock`/`madvise(MADV_DONTDUMP)` need raw pointers, so they are not used: the
//! whole process is non-dumpable instead, and all of it is locked when `RLIMIT_MEMLOCK` is
//! unlimited). Knows nothing of the gateway beyond the account to become (`crate::account`).
//!
//! Order in the daemon: [`no_dumps`] first (before any secret is read), the PIN read and the
//! listeners bound as root (the PIN file may be root-only, a port may be below 1024), then
//! [`drop_privileges`] to the service account (the one `medgate config check` checks as), and
//! only then the PKCS#11 module is loaded: the vendor's library never runs as root, and the
//! token (SoftHSM's token directory) must be reachable by the service user, as it is under
//! systemd, where `User=medgate` does the drop before the process starts.

use std::path::Path;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::unistd::Uid;

use crate::account::{self, Account};

/// Why hardening could not be applied; the daemon does not start then.
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    /// `gateway.user` names an account this machine does not have.
    #[error("gateway.user: started as root, and there is no user {0:?} to become on this machine")]
    NoSuchUser(String),
    /// The account's entry could not be read.
    #[error("looking up user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    /// A credential change failed (usually: root without CAP_SETUID/CAP_SETGID).
    #[error("cannot become user {user:?}: {reason}")]
    Change { user: String, reason: String },
    /// After the change the process could still become root again.
    #[error("after the change to {0:?} the process could still regain root; refusing to run")]
    Regain(String),
    /// The process could not be made non-dumpable.
    #[error("cannot mark the process non-dumpable: {0}")]
    Dumpable(nix::Error),
}

/// Forbids core dumps and ptrace: `PR_SET_DUMPABLE 0` (the kernel then refuses ptrace attach and
/// opening `/proc/PID/mem`, `environ`, `maps` and the like to every process but root's, and
/// writes no core whatever the limit) and `RLIMIT_CORE 0` (no core file even where
/// `fs.suid_dumpable = 2` would write one). A failure of the first is fatal.
pub fn no_dumps() -> Result<(), HardenError> {
    nix::sys::prctl::set_dumpable(false).map_err(HardenError::Dumpable)?;
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        // A seccomp filter may refuse setrlimit (systemd's LimitCORE=0 has then done it).
        tracing::warn!(error = %e, "could not lower RLIMIT_CORE; PR_SET_DUMPABLE=0 still prevents core dumps");
    }
    if std::fs::read_to_string("/proc/sys/fs/suid_dumpable").is_ok_and(|v| v.trim() == "2") {
        tracing::warn!("fs.suid_dumpable = 2: the kernel may dump non-dumpable processes for root; RLIMIT_CORE 0 stops file dumps, not a pipe to a core handler");
    }
    Ok(())
}

/// Whether the process's memory is kept out of swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLock {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)`: every page, now and later, stays in RAM.
    Locked,
    /// The memlock limit is finite: locking everything would make allocations fail once the
    /// limit is reached, so nothing is locked. Keep swap off, or encrypted, on the appliance.
    Limited(u64),
    /// The kernel refused (no permission, or not enough lockable memory).
    Refused,
}

/// Locks all of the process's memory when `RLIMIT_MEMLOCK` is unlimited; otherwise leaves it
/// (see [`MemoryLock::Limited`]). Call it before dropping root: root may raise the limit.
pub fn lock_memory() -> MemoryLock {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    let soft = getrlimit(Resource::RLIMIT_MEMLOCK).map(|(soft, _)| soft).unwrap_or(0);
    if soft != RLIM_INFINITY {
        tracing::info!(limit_bytes = soft, "RLIMIT_MEMLOCK is finite: memory is not locked; data keys and documents could reach swap if swap is on");
        return MemoryLock::Limited(soft);
    }
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => MemoryLock::Locked,
        Err(e) => {
            tracing::warn!(error = %e, "mlockall refused; memory is not locked");
            MemoryLock::Refused
        }
    }
}

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Not started as root: nothing to drop (systemd's `User=` already did).
    NotRoot,
    /// Started as root and now running as this user, its group and its supplementary groups.
    To { user: String, uid: u32, gid: u32 },
    /// `gateway.user = "root"`: the operator chose to run as root.
    RootByChoice,
    /// No `gateway.user`, and no service account: the state directory and the configuration
    /// file's group are root's (a throwaway site of `medgate demo` or the tests). Still root,
    /// with a warning.
    NoServiceAccount,
}

/// When running as root, becomes the service account: `gateway.user` when set, else the account
/// `medgate config check` and `medgate keys` use ([`crate::account::service_account`]: the
/// owner of the state directory, `medgate` for the package's /var/lib/medgate). Supplementary
/// groups come along (`initgroups`, so membership in `softhsm` opens SoftHSM's token
/// directory), then the group and the user, for good (checked), and the dumpable flag is
/// cleared again. Not root: nothing to do. A named user that does not exist is an error.
///
/// `hand_over`: files made as root before the drop that the account must own (the admin
/// socket, so that the service's own user may use it); their group is kept.
pub fn drop_privileges(config: &Path, named: Option<&str>, state_directory: &Path, hand_over: &[&Path]) -> Result<Dropped, HardenError> {
    if !Uid::effective().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let account = match named {
        Some("root") => {
            tracing::warn!("gateway.user = \"root\": the gateway keeps running as root");
            return Ok(Dropped::RootByChoice);
        }
        Some(name) => match Account::named(name, "gateway.user") {
            Ok(Some(a)) => a,
            Ok(None) => return Err(HardenError::NoSuchUser(name.to_owned())),
            Err(source) => return Err(HardenError::Lookup { user: name.to_owned(), source }),
        },
        None => match account::service_account(config, Some(state_directory)) {
            Some(a) if !a.uid.is_root() => a,
            _ => {
                tracing::warn!(state_directory = %state_directory.display(), "started as root with no service account (gateway.user is not set, and neither the state directory's owner nor the configuration file's group names a user other than root): still running as root");
                return Ok(Dropped::NoServiceAccount);
            }
        },
    };
    for file in hand_over {
        std::os::unix::fs::lchown(file, Some(account.uid.as_raw()), None)
            .map_err(|e| HardenError::Change { user: account.name.clone(), reason: format!("cannot give it {}: {e}", file.display()) })?;
    }
    account::become_account(&account).map_err(|reason| HardenError::Change { user: account.name.clone(), reason })?;
    // The credential change resets the dumpable flag to fs.suid_dumpable; clear it again.
    nix::sys::prctl::set_dumpable(false).map_err(HardenError::Dumpable)?;
    let (uids, gids) = (nix::unistd::getresuid(), nix::unistd::getresgid());
    let root_left = uids.map_or(true, |u| [u.real, u.effective, u.saved].iter().any(|u| u.is_root()))
        || (account.gid.as_raw() != 0 && gids.map_or(true, |g| [g.real, g.effective, g.saved].iter().any(|g| g.as_raw() == 0)));
    if root_left {
        return Err(HardenError::Regain(account.name.clone()));
    }
    tracing::info!(user = %account.name, uid = account.uid.as_raw(), gid = account.gid.as_raw(), reason = %account.reason, "dropped root privileges");
    Ok(Dropped::To { user: account.name.clone(), uid: account.uid.as_raw(), gid: account.gid.as_raw() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_dumps_clears_the_dumpable_flag_and_the_core_limit() {
        // The flag and the limit are per process: this test process takes them on, which no
        // other test relies on.
        no_dumps().expect("hardening");
        assert_eq!(nix::sys::prctl::get_dumpable(), Ok(false));
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).ok(), Some((0, 0)));
    }

    #[test]
    fn a_named_user_that_does_not_exist_is_refused_when_root() {
        if !Uid::effective().is_root() {
            // Not root: nothing is dropped, whatever the name.
            assert_eq!(drop_privileges(Path::new("/nonexistent"), Some("no-such-user-medgate-test"), Path::new("/"), &[]).ok(), Some(Dropped::NotRoot));
            return;
        }
        let (config, state) = (Path::new("/nonexistent/medgate.toml"), Path::new("/"));
        assert!(matches!(drop_privileges(config, Some("no-such-user-medgate-test"), state, &[]), Err(HardenError::NoSuchUser(_))));
        // Refused before any credential changed: still root.
        assert!(Uid::effective().is_root());
        assert_eq!(drop_privileges(config, Some("root"), state, &[]).ok(), Some(Dropped::RootByChoice));
        // No user named and the state directory is root's: no service account, still root.
        assert_eq!(drop_privileges(config, None, state, &[]).ok(), Some(Dropped::NoServiceAccount));
        assert!(Uid::effective().is_root());
    }
}
