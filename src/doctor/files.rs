//! Every file the configuration names, opened as the service user; a file it cannot read gets
//! the commands that let it (`chgrp medgate F; chmod 0640 F`, or for the directory in the way
//! `chgrp medgate D; chmod 0750 D`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use medgate_gateway::config::Config;

use super::{Report, Viewer};

/// Opens `path` for reading as this process; on failure, what blocks it and the fix.
fn readable(key: &str, path: &Path, viewer: &Viewer, report: &mut Report) {
    if !opened(key, path, viewer, report) {
        report.unreadable.insert(path.to_path_buf());
    }
}

fn opened(key: &str, path: &Path, viewer: &Viewer, report: &mut Report) -> bool {
    let who = &viewer.me.name;
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => {
            report.ok(key, format!("{} readable by {who}", path.display()));
            true
        }
        Ok(_) => {
            report.fail(key, format!("{} is not a file", path.display()), format!("point {key} at the file itself"));
            false
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            report.fail(key, format!("{} does not exist", path.display()), format!("put the file there, or correct {key}"));
            false
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let group = &viewer.me.group;
            let fix = match blocking_directory(path) {
                Some(dir) => format!("chgrp {group} {d}; chmod 0750 {d}   (the directory is closed to {who})", d = dir.display()),
                None => format!("chgrp {group} {f}; chmod 0640 {f}", f = path.display()),
            };
            report.fail(key, format!("{} cannot be read by {who}: permission denied", path.display()), fix);
            false
        }
        Err(e) => {
            report.fail(key, format!("{}: {e}", path.display()), format!("make {} readable by {who}", path.display()));
            false
        }
    }
}

/// The first directory on the way to `path` that this process may not pass through.
fn blocking_directory(path: &Path) -> Option<PathBuf> {
    let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().ok()?.join(path) };
    let dirs: Vec<&Path> = path.ancestors().skip(1).collect();
    dirs.into_iter().rev().find(|d| nix::unistd::access(*d, nix::unistd::AccessFlags::X_OK).is_err()).map(Path::to_path_buf)
}

/// The configuration file, the module, the TLS files, the CRLs, the consortium's files and the
/// PIN file (which must be the service user's alone).
pub(super) fn check_all(cfg: &Config, path: &Path, viewer: &Viewer, report: &mut Report) {
    if !viewer.is_service {
        report.warn("files", format!("read as {}, not as the service's user: the results below may not hold for it", viewer.me.name), "run the check as root");
    }
    readable("configuration file", path, viewer, report);
    readable("hsm.module", &cfg.hsm.module, viewer, report);
    readable("his.certificate", &cfg.his.certificate, viewer, report);
    readable("his.client_ca", &cfg.his.client_ca, viewer, report);
    for (i, crl) in cfg.his.crl.iter().enumerate() {
        readable(&format!("his.crl[{i}]"), crl, viewer, report);
    }
    if let Some(c) = cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium") {
        readable("consortium.ca", &c.ca, viewer, report);
        readable("consortium.certificate", &c.certificate, viewer, report);
        readable("consortium.genesis", &c.genesis, viewer, report);
    }
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY").map(|d| Path::new(&d).join(medgate_hsm::CREDENTIAL_NAME)).filter(|p| p.exists());
    if let (None, Some(pin_file)) = (credential, &cfg.hsm.pin_file) {
        if let Err(e) = medgate_hsm::Pin::from_file(pin_file) {
            let (who, group) = (&viewer.me.name, &viewer.me.group);
            report.fail("hsm.pin_file", format!("{e}"), format!("chown {who}:{group} {f}; chmod 0600 {f}", f = pin_file.display()));
        } else {
            report.ok("hsm.pin_file", format!("{} readable by {} only", pin_file.display(), viewer.me.name));
        }
    }
}
