//! Process hardening for `medgate serve`: no core dumps, no ptrace and no `/proc/PID/mem` for
//! other processes (even of the same user), memory locked against swap when the limit allows, and
//! the drop from root to the service user.
//!
//! Boundary: process credentials and limits, through nix's safe wrappers only (no unsafe code;
//! per-buffer `mlock`/`madvise(MADV_DONTDUMP)` need raw pointers, so they are not used: the
//! whole process is non-dumpable instead, and all of it is locked when `RLIMIT_MEMLOCK` is
//! unlimited). Knows nothing of the gateway beyond the name of the user to become.
//!
//! Order in the daemon: [`no_dumps`] first (before any secret is read), the PIN read and the
//! listeners bound as root (the PIN file may be root-only, a port may be below 1024), then
//! [`drop_privileges`], and only then the PKCS#11 module is loaded: the vendor's library never
//! runs as root, and the token (SoftHSM's token directory) must be reachable by the service
//! user, as it is under systemd, where `User=medgate` does the drop before the process starts.

use std::ffi::CString;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::unistd::{Gid, Uid, User};

/// The account the daemon becomes when started as root and `gateway.user` is not set.
pub const DEFAULT_USER: &str = "medgate";

/// Why hardening could not be applied; the daemon does not start then.
#[derive(Debug, thiserror::Error)]
pub enum HardenError {
    /// `gateway.user` (or the default, `medgate`) names an account this machine does not have.
    #[error("gateway.user: started as root, and there is no user {0:?} to become on this machine (create it, or set gateway.user)")]
    NoSuchUser(String),
    /// The account's entry could not be read.
    #[error("looking up user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    /// A credential change failed (usually: root without CAP_SETUID/CAP_SETGID).
    #[error("cannot become user {user:?} ({step}): {source}")]
    Change { user: String, step: &'static str, source: nix::Error },
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
}

/// When running as root, becomes `requested` (or [`DEFAULT_USER`]): supplementary groups from
/// the account (`initgroups`, so membership in `softhsm` opens SoftHSM's token directory), then
/// its group and its user, real, effective and saved alike, and checks that root cannot be
/// regained. Not root: nothing to do. A user that does not exist (the default one included) is
/// an error: the daemon never stays root by accident; `gateway.user = "root"` says so on purpose.
pub fn drop_privileges(requested: Option<&str>) -> Result<Dropped, HardenError> {
    if !Uid::effective().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let name = requested.unwrap_or(DEFAULT_USER);
    if name == "root" {
        tracing::warn!("gateway.user = \"root\": the gateway keeps running as root");
        return Ok(Dropped::RootByChoice);
    }
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(HardenError::NoSuchUser(name.to_owned())),
        Err(source) => return Err(HardenError::Lookup { user: name.to_owned(), source }),
    };
    become_user(&user)?;
    tracing::info!(user = name, uid = user.uid.as_raw(), gid = user.gid.as_raw(), "dropped root privileges");
    Ok(Dropped::To { user: name.to_owned(), uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

fn become_user(user: &User) -> Result<(), HardenError> {
    let change = |step: &'static str| move |source| HardenError::Change { user: user.name.clone(), step, source };
    let cname = CString::new(user.name.as_bytes()).map_err(|_| HardenError::NoSuchUser(user.name.clone()))?;
    nix::unistd::initgroups(&cname, user.gid).map_err(change("supplementary groups"))?;
    nix::unistd::setresgid(user.gid, user.gid, user.gid).map_err(change("group"))?;
    nix::unistd::setresuid(user.uid, user.uid, user.uid).map_err(change("user"))?;
    // The credential change resets the dumpable flag to fs.suid_dumpable; set it again.
    nix::sys::prctl::set_dumpable(false).map_err(HardenError::Dumpable)?;
    let ids = nix::unistd::getresuid().map_err(change("check"))?;
    if [ids.real, ids.effective, ids.saved].iter().any(|u| u.is_root()) || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(HardenError::Regain(user.name.clone()));
    }
    let gids = nix::unistd::getresgid().map_err(change("check"))?;
    if [gids.real, gids.effective, gids.saved].iter().any(|g| *g == Gid::from_raw(0)) && user.gid != Gid::from_raw(0) {
        return Err(HardenError::Regain(user.name.clone()));
    }
    Ok(())
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
            assert_eq!(drop_privileges(Some("no-such-user-medgate-test")).ok(), Some(Dropped::NotRoot));
            return;
        }
        assert!(matches!(drop_privileges(Some("no-such-user-medgate-test")), Err(HardenError::NoSuchUser(_))));
        // Refused before any credential changed: still root.
        assert!(Uid::effective().is_root());
        assert_eq!(drop_privileges(Some("root")).ok(), Some(Dropped::RootByChoice));
    }
}
