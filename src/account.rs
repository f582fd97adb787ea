//! The service account: which user the gateway runs as for a given configuration, and becoming
//! that user, so that the security officer's commands (`medgate keys`) create tokens and files
//! the service can read, and `medgate config check` sees the HSM, the files and the state
//! directory as `medgate serve` will.
//!
//! The account is the owner of `gateway.state_directory` when that is not root (the package's
//! /var/lib/medgate belongs to medgate), else the user named like the group of the
//! configuration file when that is not root (the package's /etc/medgate/medgate.toml is
//! root:medgate), else there is none and commands run as whoever started them. Becoming it
//! needs no helper (no systemd-run, runuser or sudo): a command started as root changes its own
//! user, groups (with the account's supplementary groups, such as softhsm) and group, before
//! the PKCS#11 module is loaded, after reading what only root may read (the unit's PIN
//! credential).

use std::ffi::CString;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// A user the commands may run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// The name of its primary group (for `chgrp` in the fixes the check proposes).
    pub group: String,
    /// Why this is the service account, for messages.
    pub reason: String,
}

impl Account {
    fn of(user: User, reason: String) -> Account {
        let group = Group::from_gid(user.gid).ok().flatten().map_or_else(|| user.gid.to_string(), |g| g.name);
        Account { name: user.name, uid: user.uid, gid: user.gid, group, reason }
    }

    /// The account called `name`, if this machine has it (`reason` says why it was chosen).
    pub fn named(name: &str, reason: &str) -> Result<Option<Account>, nix::Error> {
        Ok(User::from_name(name)?.map(|u| Account::of(u, reason.to_owned())))
    }

    /// The user this process runs as.
    pub fn current() -> Account {
        let uid = nix::unistd::geteuid();
        match User::from_uid(uid) {
            Ok(Some(u)) => Account::of(u, "the user running this command".into()),
            _ => Account { name: format!("uid {uid}"), uid, gid: nix::unistd::getegid(), group: nix::unistd::getegid().to_string(), reason: "the user running this command".into() },
        }
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The account the service runs as for the configuration `config` (see the module's comment).
pub fn service_account(config: &Path, state_dir: Option<&Path>) -> Option<Account> {
    if let Some(dir) = state_dir {
        if let Ok(meta) = std::fs::metadata(dir) {
            if meta.uid() != 0 {
                let user = User::from_uid(Uid::from_raw(meta.uid())).ok().flatten()?;
                return Some(Account::of(user, format!("the owner of {}", dir.display())));
            }
        }
    }
    let meta = std::fs::metadata(config).ok()?;
    if meta.gid() == 0 {
        return None;
    }
    let group = Group::from_gid(Gid::from_raw(meta.gid())).ok().flatten()?;
    let user = User::from_name(&group.name).ok().flatten()?;
    Some(Account::of(user, format!("named like the group of {}", config.display())))
}

/// Becomes `account`: its supplementary groups, its group, then its user, for good (the
/// process cannot become root again; checked).
pub fn become_account(account: &Account) -> Result<(), String> {
    let name = CString::new(account.name.as_str()).map_err(|_| format!("user name {:?} has a NUL byte", account.name))?;
    let fail = |what: &str, e: nix::errno::Errno| format!("cannot become user {} ({what}: {e})", account.name);
    nix::unistd::initgroups(&name, account.gid).map_err(|e| fail("supplementary groups", e))?;
    nix::unistd::setgid(account.gid).map_err(|e| fail("group", e))?;
    nix::unistd::setuid(account.uid).map_err(|e| fail("user", e))?;
    if !account.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!("switched to user {} but could become root again; refusing to go on", account.name));
    }
    Ok(())
}

/// The PIN file the packaged unit hands the service as its credential
/// (`LoadCredential=hsm-pin:/etc/medgate/hsm-pin`): `hsm-pin` beside the configuration.
pub fn unit_credential(config: &Path) -> PathBuf {
    config.parent().unwrap_or_else(|| Path::new("/")).join(medgate_hsm::CREDENTIAL_NAME)
}

/// When this process runs as root without a credential directory and the configuration sets
/// no `pin_file`, takes the unit's credential (see [`unit_credential`]) the way systemd gives it
/// to the service, if that file exists: `$CREDENTIALS_DIRECTORY` names its directory from now
/// on. Returns the file taken.
pub fn adopt_unit_credential(config: &Path, pin_file: Option<&Path>) -> Option<PathBuf> {
    if !is_root() || pin_file.is_some() || std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
        return None;
    }
    let file = unit_credential(config);
    if !file.is_file() {
        return None;
    }
    std::env::set_var("CREDENTIALS_DIRECTORY", file.parent()?);
    Some(file)
}

/// Where the PIN comes from, as `Pin::resolve` picks it, for messages.
pub fn pin_source(pin_file: Option<&Path>) -> String {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join(medgate_hsm::CREDENTIAL_NAME);
        if p.exists() {
            return p.display().to_string();
        }
    }
    pin_file.map_or_else(|| "(no PIN source)".to_owned(), |p| p.display().to_string())
}
