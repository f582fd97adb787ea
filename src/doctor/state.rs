//! The state directory: there (or creatable), the service user's, writable; and, when it holds a
//! ledger copy, that copy is this hospital's.

use std::os::unix::fs::MetadataExt as _;

use medgate_gateway::config::Config;

use super::{Report, Viewer};

const KEY: &str = "gateway.state_directory";

pub(super) fn check(cfg: &Config, viewer: &Viewer, report: &mut Report) {
    let dir = &cfg.gateway.state_directory;
    let (who, group) = (&viewer.me.name, &viewer.me.group);
    let fix_owner = format!("install -d -m 0700 -o {who} -g {group} {d}; chown -R {who}:{group} {d}", d = dir.display());
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return report.fail(KEY, format!("{} is not a directory", dir.display()), format!("point {KEY} at a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(dir);
            if nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).is_ok() {
                return report.ok(KEY, format!("{} does not exist yet; {who} can create it", dir.display()));
            }
            return report.fail(KEY, format!("{} does not exist and {who} cannot create it", dir.display()), fix_owner);
        }
        Err(e) => return report.fail(KEY, format!("{}: {e}", dir.display()), fix_owner),
    };
    if viewer.is_service && meta.uid() != viewer.me.uid.as_raw() {
        report.warn(KEY, format!("{} is not owned by {who}", dir.display()), fix_owner.clone());
    }
    if let Err(e) = tempfile::Builder::new().prefix(".medgate-check-").tempfile_in(dir) {
        return report.fail(KEY, format!("{} is not writable by {who}: {e}", dir.display()), fix_owner);
    }
    report.ok(KEY, format!("{} writable by {who}", dir.display()));
    ledger_owner(cfg, viewer, report);
}

/// The ledger copy in the directory belongs to `gateway.hospital_id`. Opened only as the
/// directory's owner (a store opened as root could leave files the service cannot write).
fn ledger_owner(cfg: &Config, viewer: &Viewer, report: &mut Report) {
    let dir = &cfg.gateway.state_directory;
    if !dir.join("medgate.sled").exists() {
        return report.ok("ledger", "none yet: the gateway starts a new one");
    }
    let owner = std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
    if owner != viewer.me.uid.as_raw() {
        return report.warn("ledger", format!("not opened: {} belongs to another user than {}", dir.display(), viewer.me.name), "run the check as root");
    }
    let db = match medgate_store::Db::open(dir) {
        Ok(db) => db,
        Err(_) => return report.ok("ledger", "in use by the running gateway (not opened)"),
    };
    let stored = medgate_store::ChainStore::open(&db).and_then(|c| c.hospital());
    match stored {
        Ok(Some(h)) if h != cfg.gateway.hospital_id => report.fail(
            "gateway.hospital_id",
            format!("{:?}, but the ledger copy in {} is hospital {h:?}'s: every entry names its custodian, so a hospital id cannot change", cfg.gateway.hospital_id, dir.display()),
            format!("set gateway.hospital_id = {h:?} again, or use a new, empty state_directory for {:?}", cfg.gateway.hospital_id),
        ),
        Ok(Some(h)) => report.ok("ledger", format!("hospital {h:?}'s copy, as configured")),
        Ok(None) => report.ok("ledger", "present; this gateway will bind it to gateway.hospital_id at start"),
        Err(e) => report.fail("ledger", format!("cannot be read: {e}"), "see `medgate ledger verify`; restore the state directory from a backup"),
    }
}
