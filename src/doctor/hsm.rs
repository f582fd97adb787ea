//! The HSM as the service will use it: log in with the PIN the service gets, find every role's
//! key, and check that the configured certificates certify the HSM's tls key. A token that the
//! service user cannot see (a SoftHSM token created by root) is named with the fix.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use medgate_gateway::config::Config;
use medgate_hsm::{Hsm, HsmConfig, HsmError, Pin, Role};

use super::{Report, Viewer};
use crate::account;

pub(super) fn check(cfg: &Config, pin: Result<Pin, String>, viewer: &Viewer, report: &mut Report) {
    let source = account::pin_source(cfg.hsm.pin_file.as_deref());
    let pin = match pin {
        Ok(p) => p,
        Err(e) => {
            return report.fail("HSM", format!("login not tried: {e}"), "give the service a PIN: /etc/medgate/hsm-pin (root:root 0600) for the unit's credential, or [hsm] pin_file");
        }
    };
    let hsm_cfg = HsmConfig { module: cfg.hsm.module.clone(), token_label: cfg.hsm.token_label.clone(), pool_size: 1 };
    let hsm = match Hsm::open(hsm_cfg, pin) {
        Ok(h) => Arc::new(h),
        Err(e) => return login_failed(cfg, &e, &source, viewer, report),
    };
    report.ok("HSM", format!("logged in to token {:?} as {} with the PIN from {source}", cfg.hsm.token_label, viewer.me.name));
    keys(&hsm, report);
    certificates(cfg, &hsm, report);
    hsm.shutdown();
}

fn login_failed(cfg: &Config, e: &HsmError, source: &str, viewer: &Viewer, report: &mut Report) {
    let label = &cfg.hsm.token_label;
    let (detail, fix) = match e {
        HsmError::WrongPin => (
            format!("the HSM refused the user PIN from {source}"),
            format!("put the user PIN of token {label:?} in {source} (one line); the token counts failed logins, and too many lock it"),
        ),
        HsmError::PinLocked | HsmError::PinFinalTry => (e.to_string(), "the security officer resets the user PIN or its retry counter with the HSM's tool".into()),
        HsmError::TokenMissing(_) => match hidden_softhsm_tokens(&cfg.hsm.module, viewer) {
            Some((dirs, owner)) => (
                format!("{} cannot see token {label:?}: {} token director{} owned by {owner} and closed to it", viewer.me.name, dirs.len(), if dirs.len() == 1 { "y is" } else { "ies are" }),
                format!(
                    "if that is the medgate token (created as root), give it to the service: chown -R {}:{} {}",
                    viewer.me.name,
                    viewer.me.group,
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" ")
                ),
            ),
            None => (
                e.to_string(),
                format!("create it with `sudo medgate keys init-token --so-pin-file FILE` (it runs as the service user), or correct [hsm] token_label ({label:?})"),
            ),
        },
        HsmError::ModuleMissing(_) | HsmError::ModuleLoad { .. } => (e.to_string(), "install the HSM's PKCS#11 module, or correct hsm.module".into()),
        HsmError::Unavailable(_) | HsmError::Init { .. } => (e.to_string(), "the HSM did not answer: check its device or network; the service retries when started".into()),
        other => (other.to_string(), "see the HSM's documentation (docs/HSM.md)".into()),
    };
    report.fail("HSM", detail, fix);
}

/// SoftHSM token directories that this user cannot open, and their owner: a token created by
/// another user (root) is invisible to the service, which SoftHSM reports as no token at all.
fn hidden_softhsm_tokens(module: &Path, viewer: &Viewer) -> Option<(Vec<PathBuf>, String)> {
    if !module.to_string_lossy().contains("softhsm") {
        return None;
    }
    let conf = std::env::var_os("SOFTHSM2_CONF").map_or_else(|| PathBuf::from("/etc/softhsm/softhsm2.conf"), PathBuf::from);
    let text = std::fs::read_to_string(conf).ok()?;
    let tokendir = text.lines().find_map(|l| l.trim().strip_prefix("directories.tokendir").and_then(|r| r.trim().strip_prefix('=')).map(|v| PathBuf::from(v.trim())))?;
    let mut hidden = Vec::new();
    let mut owner = String::new();
    for entry in std::fs::read_dir(&tokendir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let flags = nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK;
        if meta.is_dir() && meta.uid() != viewer.me.uid.as_raw() && nix::unistd::access(&path, flags).is_err() {
            owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid())).ok().flatten().map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
            hidden.push(path);
        }
    }
    (!hidden.is_empty()).then_some((hidden, owner))
}

/// Every role has an active key, sensitive and never extractable.
fn keys(hsm: &Hsm, report: &mut Report) {
    let keys = match hsm.list_keys() {
        Ok(k) => k,
        Err(e) => return report.fail("keys", e.to_string(), "see `sudo medgate keys list`"),
    };
    for role in Role::ALL {
        match keys.iter().find(|k| k.role == role && k.active) {
            None => report.fail(format!("{role} key"), "none active on the token", format!("sudo medgate keys generate --role {role}")),
            Some(k) if !(k.sensitive && k.never_extractable) => {
                report.fail(format!("{role} key"), format!("{} is not sensitive and never extractable", k.label), format!("rotate it: sudo medgate keys rotate --role {role}"))
            }
            Some(k) => report.ok(format!("{role} key"), format!("{} (CKA_ID {}), sensitive, never extractable", k.label, k.id_hex)),
        }
    }
}

/// The HIS listener's certificate (and the consortium one) certify the HSM's active tls key,
/// and the TLS configuration the listener builds from them is accepted.
fn certificates(cfg: &Config, hsm: &Arc<Hsm>, report: &mut Report) {
    let (version, spki) = match hsm.public_key_der(Role::Tls, None) {
        Ok(v) => v,
        Err(_) => return,
    };
    let mut files = vec![("his.certificate", cfg.his.certificate.clone())];
    if let Some(c) = cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium") {
        files.push(("consortium.certificate", c.certificate.clone()));
    }
    let mut mismatch = false;
    for (key, path) in files {
        if !report.readable(&path) {
            mismatch = true;
            continue;
        }
        let Ok(certs) = medgate_gateway::tls::load_certs(&path) else { continue };
        let Some(Ok(leaf)) = certs.first().map(|c| medgate_gateway::pki::certificate_facts(c.as_ref())) else { continue };
        if leaf.spki != spki {
            mismatch = true;
            report.fail(
                key,
                format!("{} certifies another key: its public key is not the HSM's active tls key (version {version})", path.display()),
                format!(
                    "sudo medgate keys csr --subject \"CN=...\" --dns ... --out gateway.csr; have the CA sign it (`medgate pki sign-gateway --csr gateway.csr --out {p}`); sudo medgate keys import-cert {p}",
                    p = path.display()
                ),
            );
            continue;
        }
        report.ok(key, format!("certifies the HSM's tls key (version {version})"));
    }
    // Said already: a certificate for another key, or a file the service cannot read.
    if mismatch || !report.readable(&cfg.his.client_ca) || cfg.his.crl.iter().any(|c| !report.readable(c)) {
        return;
    }
    match medgate_gateway::tls::server_config(hsm, &medgate_gateway::tls::TlsFiles::from_config(cfg)) {
        Ok(_) => report.ok("HIS TLS", "the listener's TLS configuration builds (certificate, client CA, CRLs)"),
        Err(e) => report.fail("HIS TLS", e.to_string(), "fix the file it names"),
    }
}
