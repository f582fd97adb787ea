//! `medgate config check` (also `medgate doctor`): tries what `medgate serve` will try, as the
//! service account when started as root, and says for each failure what to do. It reads the
//! configuration; then, as the service user, reads every file it names, logs in to the HSM with
//! the PIN the service gets, finds every role's key, matches the certificates to the HSM's tls
//! key, checks the certificates' validity and the CRLs' nextUpdate, checks the state directory
//! and the hospital its ledger belongs to, and tries to bind every listen address.
//!
//! Boundary: checks and a report; it changes nothing (one login to the HSM, a bind released at
//! once, a test file created and removed in the state directory).

use std::path::Path;

use medgate_gateway::config::Config;

use crate::account::{self, Account};
use crate::exit::Failure;

mod certs;
mod files;
mod hsm;
mod net;
mod state;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report: what was checked, what was found, and what to do.
#[derive(Debug)]
struct Item {
    level: Level,
    what: String,
    detail: String,
    fix: Option<String>,
}

/// The report, in the order the checks ran.
#[derive(Debug, Default)]
pub(crate) struct Report {
    items: Vec<Item>,
    /// Files already reported as unreadable: later checks of their content say nothing more.
    unreadable: std::collections::BTreeSet<std::path::PathBuf>,
}

impl Report {
    fn push(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>, fix: Option<String>) {
        self.items.push(Item { level, what: what.into(), detail: detail.into(), fix });
    }
    fn ok(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.push(Level::Ok, what, detail, None);
    }
    fn warn(&mut self, what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Warn, what, detail, Some(fix.into()));
    }
    fn fail(&mut self, what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Fail, what, detail, Some(fix.into()));
    }
    fn readable(&self, path: &Path) -> bool {
        !self.unreadable.contains(path)
    }
    fn failures(&self) -> usize {
        self.items.iter().filter(|i| i.level == Level::Fail).count()
    }

    /// The report as text, one check a line, each fix on the line below.
    fn text(&self) -> String {
        let mut s = String::new();
        for i in &self.items {
            let tag = match i.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            s.push_str(&format!("{tag}  {}: {}\n", i.what, i.detail));
            if let Some(f) = &i.fix {
                s.push_str(&format!("      fix: {f}\n"));
            }
        }
        s
    }
}

/// Who the checks run as, and whether that is the service account.
#[derive(Debug)]
pub(crate) struct Viewer {
    /// The account the checks run as.
    pub(crate) me: Account,
    /// True when that is the service's account (so access checks mean what they say).
    pub(crate) is_service: bool,
}

/// `medgate config check`: exit 0 when `serve` would start and serve, 64 otherwise.
pub(crate) fn check(path: &Path) -> Result<(), Failure> {
    let credential = account::adopt_unit_credential(path, pin_file_of(path).as_deref());
    let cfg = Config::load(path).map_err(|e| Failure::config(format!("{e}(fix each key above; nothing else was checked)")))?;
    let mut report = Report::default();
    report.ok("configuration", format!("{}: every key known, every value valid", path.display()));
    for d in cfg.dangerous_settings() {
        report.warn("[dangerous]", d, "leave it off unless you accept what it weakens");
    }
    if let Some(f) = credential {
        report.ok("PIN", format!("the unit's credential {} (LoadCredential=hsm-pin), read as root like systemd does", f.display()));
    }
    // The credential is read before switching user, as systemd reads it for the service.
    let early_pin = std::env::var_os("CREDENTIALS_DIRECTORY").map(|_| cfg.pin().map_err(|e| e.to_string()));
    let viewer = switch_user(path, &cfg, &mut report)?;
    files::check_all(&cfg, path, &viewer, &mut report);
    let pin = early_pin.unwrap_or_else(|| cfg.pin().map_err(|e| e.to_string()));
    state::check(&cfg, &viewer, &mut report);
    certs::check(&cfg, &mut report);
    hsm::check(&cfg, pin, &viewer, &mut report);
    net::check(&cfg, &mut report);
    print!("{}", report.text());
    match report.failures() {
        0 => {
            println!("{}: OK (checked as {})", path.display(), viewer.me.name);
            Ok(())
        }
        n => Err(Failure::config(format!(
            "{}: {n} problem{} found (checked as {}); `medgate serve` would fail or refuse HIS clients until each is fixed",
            path.display(),
            if n == 1 { "" } else { "s" },
            viewer.me.name
        ))),
    }
}

/// `[hsm] pin_file` as the file sets it, read before the whole file is checked (which needs to
/// know whether the unit's credential is the PIN source).
fn pin_file_of(path: &Path) -> Option<std::path::PathBuf> {
    let table: toml::Table = std::fs::read_to_string(path).ok()?.parse().ok()?;
    table.get("hsm")?.get("pin_file")?.as_str().map(std::path::PathBuf::from)
}

/// The account `medgate serve` becomes when started as root, as it chooses it
/// ([`crate::harden::drop_privileges`]): `gateway.user` when set (`"root"`: root itself, with a
/// warning; a user this machine does not have is a failure, as it stops `serve`), else the
/// service account of the state directory and the configuration file.
fn service_of(path: &Path, cfg: &Config, report: &mut Report) -> Option<Account> {
    match cfg.gateway.user.as_deref() {
        None => account::service_account(path, Some(&cfg.gateway.state_directory)),
        Some("root") => {
            report.warn(
                "user",
                "gateway.user = \"root\": the service keeps running as root when started as root",
                "set gateway.user to the service account (the package's is medgate), unless root is what you chose",
            );
            Account::named("root", "gateway.user").ok().flatten()
        }
        Some(name) => match Account::named(name, "gateway.user") {
            Ok(Some(a)) => Some(a),
            Ok(None) => {
                report.fail(
                    "user",
                    format!("gateway.user = {name:?}: this machine has no such user; `medgate serve` started as root refuses to start"),
                    format!("create the account (useradd --system --home-dir {} {name}) or set gateway.user to an existing one", cfg.gateway.state_directory.display()),
                );
                None
            }
            Err(e) => {
                report.fail("user", format!("gateway.user = {name:?}: the user database cannot be read: {e}"), "check /etc/nsswitch.conf and the user database");
                None
            }
        },
    }
}

/// Becomes the service account when started as root; says who the checks run as.
fn switch_user(path: &Path, cfg: &Config, report: &mut Report) -> Result<Viewer, Failure> {
    let service = service_of(path, cfg, report);
    let me = Account::current();
    match service {
        Some(svc) if account::is_root() && !svc.uid.is_root() => {
            account::become_account(&svc).map_err(Failure::runtime)?;
            report.ok("user", format!("checking as {} ({}), the user the service runs as", svc.name, svc.reason));
            Ok(Viewer { me: svc, is_service: true })
        }
        Some(svc) if svc.uid == me.uid => {
            report.ok("user", format!("checking as {} ({})", me.name, svc.reason));
            Ok(Viewer { me, is_service: true })
        }
        Some(svc) => {
            report.warn(
                "user",
                format!("checking as {}, but the service runs as {} ({}): what {} can read is not what the service can", me.name, svc.name, svc.reason, me.name),
                "run the check as root (sudo medgate config check): it switches to the service's user by itself",
            );
            Ok(Viewer { me, is_service: false })
        }
        // gateway.user names no account: said above; checked as whoever runs the check.
        None if cfg.gateway.user.is_some() => Ok(Viewer { is_service: false, me }),
        None => {
            let hint = if me.uid.is_root() {
                "the service runs as the owner of gateway.state_directory; make it that user's (the package's /var/lib/medgate is medgate's)"
            } else {
                "nothing to do if the service runs as this user"
            };
            report.warn(
                "user",
                format!("checking as {}: no service account found ({} is not owned by a user other than root)", me.name, cfg.gateway.state_directory.display()),
                hint,
            );
            Ok(Viewer { is_service: !me.uid.is_root(), me })
        }
    }
}
