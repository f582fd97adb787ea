//! `medgate keys`: the security officer's console commands. Every key event is logged with who,
//! what and when, and appended to the key-event journal (`medgate_gateway::journal`) so that the
//! gateway puts it on the ledger; who is the officer named by their credential
//! (`crate::officers`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use medgate_gateway::config::HsmOnly;
use medgate_hsm::{Hsm, HsmError, KeyInfo, Pin, Role};

use crate::exit::Failure;

/// The person at the console by their login: the invoking user behind sudo, else the login
/// name, else the uid. Only journalled (as `unix:NAME`) before any officer is enrolled; after,
/// an officer is named by the credential they sign with (`crate::officers`).
pub fn officer() -> String {
    for var in ["SUDO_USER", "LOGNAME", "USER"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

/// Opens the HSM with the PIN from the configured file or credential.
pub fn open_hsm(cfg: &HsmOnly) -> Result<Arc<Hsm>, Failure> {
    let pin = Pin::resolve(cfg.hsm.pin_file.as_deref()).map_err(|e| Failure::config(e.to_string()))?;
    open_hsm_with(cfg, pin)
}

/// Opens the HSM with a PIN already read.
pub fn open_hsm_with(cfg: &HsmOnly, pin: Pin) -> Result<Arc<Hsm>, Failure> {
    Hsm::open(cfg.hsm_config(), pin).map(Arc::new).map_err(Failure::hsm)
}

/// Makes the officer's command act as the service account (see [`crate::account`]), so that a
/// token it creates, the keys it generates and the key-event journal it writes are the
/// service's: as root it becomes that user; as another user it refuses, with the fix. Without
/// a service account it runs as it was started, unless the configuration is the installed one
/// (then the account is only missing because the state directory is: refused, with the fix).
/// Call it after reading what only root may read (the PINs).
pub fn act_as_service(config: &Path, state_dir: Option<&Path>) -> Result<(), Failure> {
    let me = crate::account::Account::current();
    match crate::account::service_account(config, state_dir) {
        Some(svc) if svc.uid == me.uid => Ok(()),
        Some(svc) if me.uid.is_root() => {
            // The officer is the person who started the command, never the service account
            // it now acts as: without SUDO_USER, LOGNAME or USER, name the user who started it.
            if ["SUDO_USER", "LOGNAME", "USER"].iter().all(|v| std::env::var_os(v).is_none_or(|x| x.is_empty())) {
                std::env::set_var("LOGNAME", &me.name);
            }
            crate::account::become_account(&svc).map_err(Failure::runtime)?;
            tracing::debug!(user = %svc.name, reason = %svc.reason, "acting as the service's user");
            Ok(())
        }
        Some(svc) => Err(Failure::usage(format!(
            "refusing to act as {}: the service runs as {} ({}), and a token, key or journal entry made by {} may be invisible to it. Run the command as root (sudo medgate keys ...): it switches to {} by itself",
            me.name, svc.name, svc.reason, me.name, svc.name
        ))),
        None if me.uid.is_root() && config == Path::new(medgate_gateway::config::DEFAULT_PATH) => {
            let dir = state_dir.map_or_else(|| "gateway.state_directory".to_owned(), |d| d.display().to_string());
            Err(Failure::config(format!(
                "refusing to act as root: cannot tell which user the service runs as, because {dir} is missing or owned by root, and a token made by root is invisible to the service. Create it for the service first (systemd-tmpfiles --create medgate.conf, or install -d -m 0700 -o medgate -g medgate {dir}), then run this again"
            )))
        }
        None => Ok(()),
    }
}

/// `medgate keys probe`: the module probed on its own, printed for people or as JSON. With the
/// user PIN when it can be read (the template attributes and keys are then checked too); without
/// it the report says what was not checked. Exits 64 (a configuration the gateway refuses) when
/// the token cannot serve medgate, naming every refused role or unusable key. `pin` is read
/// before the command acts as the service.
pub fn probe(cfg: &HsmOnly, pin: Result<Pin, medgate_hsm::PinError>, json: bool) -> Result<(), Failure> {
    let pin = match pin {
        Ok(pin) => Some(pin),
        Err(e) => {
            eprintln!("note: no user PIN ({e}); template attributes and keys are not checked");
            None
        }
    };
    let report = medgate_hsm::probe(&cfg.hsm.module, &cfg.hsm.token_label, pin.as_ref()).map_err(Failure::hsm)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    if report.token_slot.is_none() {
        return Err(Failure::config(format!("no token labelled {:?} in any slot of {}", cfg.hsm.token_label, cfg.hsm.module.display())));
    }
    refusal(&report)
}

/// The probe's refusals as one failure (exit 64), or nothing when the token can serve medgate.
pub fn refusal(report: &medgate_hsm::ProbeReport) -> Result<(), Failure> {
    let refusals = report.refusals();
    if refusals.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = refusals.iter().map(|e| format!("  - {e}")).collect();
    Err(Failure::config(format!(
        "the token {:?} cannot serve medgate:\n{}\n(docs/HSM.md lists what each module can hold)",
        report.token_label,
        lines.join("\n")
    )))
}

/// `medgate keys list`: the keys as a table for the officer (with the backup key), or as JSON.
pub fn list(hsm: &Hsm, json: bool) -> Result<(), Failure> {
    let keys = hsm.list_keys().map_err(Failure::hsm)?;
    if json {
        // An array of keys, as scripts have read it; the backup key is `keys backup status`'s.
        let v: Vec<_> = keys.iter().map(key_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::runtime(e.to_string()))?);
    } else {
        print_table(&keys);
        match hsm.backup_key_id().map_err(Failure::hsm)? {
            Some(id) => println!("backup key: medgate-backup-v1 (CKA_ID {id}), trusted, wrap-only; new kek, pseudonym, sharing and ledger versions can be backed up"),
            None => println!("backup key: none (`medgate keys backup init`; README, \"Disaster recovery\")"),
        }
    }
    Ok(())
}

/// Prints the keys as a table for the officer.
pub fn print_table(keys: &[KeyInfo]) {
    println!("{:<10} {:>3}  {:<24} {:<32} {:<16} {:<8} PROTECTION", "ROLE", "VER", "LABEL", "CKA_ID", "ALGORITHM", "STATE");
    for k in keys {
        let state = if k.retired {
            "retired"
        } else if k.active {
            "active"
        } else {
            "old"
        };
        let extraction = if !k.extractable && k.never_extractable {
            ",never-extractable"
        } else if k.wrap_with_trusted {
            ",wrap-with-trusted-only"
        } else {
            ",EXTRACTABLE"
        };
        let protection = format!(
            "{}{}{}",
            if k.sensitive { "sensitive" } else { "NOT-SENSITIVE" },
            extraction,
            if k.has_certificate { ",certificate" } else { "" }
        );
        println!(
            "{:<10} {:>3}  {:<24} {:<32} {:<16} {:<8} {}",
            k.role.as_str(),
            k.version,
            k.label,
            k.id_hex,
            k.role.algorithm(),
            state,
            protection
        );
    }
    if keys.is_empty() {
        println!("(no medgate keys on this token: `medgate keys generate --role ROLE`)");
    }
}

/// One key as JSON (`medgate keys list --json`).
pub fn key_json(k: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "role": k.role.as_str(), "version": k.version, "label": k.label, "id": k.id_hex,
        "algorithm": k.role.algorithm(), "active": k.active, "retired": k.retired,
        "sensitive": k.sensitive, "always_sensitive": k.always_sensitive,
        "extractable": k.extractable, "never_extractable": k.never_extractable,
        "wrap_with_trusted": k.wrap_with_trusted,
        "can_sign_or_wrap": k.can_create, "certificate": k.has_certificate,
    })
}

/// Asks the officer to type the label back; refuses without `--yes` when there is no terminal.
pub fn confirm(label: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage("refusing to destroy a key without confirmation: stdin is not a terminal (pass --yes)"));
    }
    eprint!("This destroys {label} for ever; whatever it protects becomes unreadable.\nType the label to confirm: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(|e| Failure::runtime(e.to_string()))?;
    if answer.trim() == label {
        Ok(())
    } else {
        Err(Failure::usage("confirmation did not match; nothing destroyed"))
    }
}

/// Reads a certificate file, PEM or DER.
pub fn read_certificate(path: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    if bytes.starts_with(b"-----BEGIN") {
        let mut rd = bytes.as_slice();
        let first = rustls_pemfile::certs(&mut rd).next();
        match first {
            Some(Ok(c)) => Ok(c.to_vec()),
            _ => Err(Failure::usage(format!("{}: no CERTIFICATE block", path.display()))),
        }
    } else {
        Ok(bytes)
    }
}

/// The key of `role` at `version`.
pub fn role_key(hsm: &Hsm, role: Role, version: u32) -> Result<KeyInfo, Failure> {
    hsm.list_keys()
        .map_err(Failure::hsm)?
        .into_iter()
        .find(|k| k.role == role && k.version == version)
        .ok_or_else(|| Failure::hsm(HsmError::KeyMissing { role, detail: format!(" (version {version})") }))
}

/// The state directory the journal lives in, if configured.
pub fn state_dir(cfg: &HsmOnly) -> Option<PathBuf> {
    cfg.state_directory.clone()
}
