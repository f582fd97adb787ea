//! `medgate keys`: the security officer's console commands. Every key event is logged with who,
//! what and when, and appended to `<state_directory>/key-events.jsonl` so that the gateway puts it
//! on the ledger.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use medgate_hsm::{Hsm, HsmError, KeyInfo, Pin, Role};
use serde::{Deserialize, Serialize};

use crate::cli::Failure;
use crate::config::HsmOnly;

/// A key event, as logged and as later recorded on the ledger. Contains no key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyEvent {
    pub time: String,
    pub officer: String,
    pub action: String,
    pub role: String,
    pub version: u32,
    pub key_id: String,
}

/// The person at the console: the invoking user behind sudo, else the login name, else the uid.
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

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Logs the event and appends it, flushed, to the key-event journal when the state directory exists.
pub fn record_event(state_dir: Option<&Path>, action: &str, info: &KeyInfo) -> Result<KeyEvent, Failure> {
    record_event_by(state_dir, &officer(), action, info)
}

/// As [`record_event`], for an event the gateway itself caused (`officer` names what did it).
pub fn record_event_by(state_dir: Option<&Path>, officer: &str, action: &str, info: &KeyInfo) -> Result<KeyEvent, Failure> {
    let ev = KeyEvent {
        time: now_rfc3339(),
        officer: officer.to_owned(),
        action: action.to_owned(),
        role: info.role.to_string(),
        version: info.version,
        key_id: info.id_hex.clone(),
    };
    tracing::info!(officer = %ev.officer, action = %ev.action, role = %ev.role, version = ev.version, key_id = %ev.key_id, "key event");
    if let Some(dir) = state_dir.filter(|d| d.is_dir()) {
        let path = dir.join("key-events.jsonl");
        let line = serde_json::to_string(&ev).map_err(|e| Failure::runtime(format!("key event: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
        // One write(2) per line: the gateway and the officer's console may append at the same time.
        f.write_all(format!("{line}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    }
    Ok(ev)
}

/// Reads the key-event journal (missing file = no events).
pub fn read_events(state_dir: &Path) -> Result<Vec<KeyEvent>, String> {
    let path = state_dir.join("key-events.jsonl");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?);
    }
    Ok(out)
}

pub fn open_hsm(cfg: &HsmOnly) -> Result<Arc<Hsm>, Failure> {
    let pin = Pin::resolve(cfg.hsm.pin_file.as_deref()).map_err(|e| Failure::config(e.to_string()))?;
    Hsm::open(cfg.hsm_config(), pin).map(Arc::new).map_err(Failure::hsm)
}

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
        let protection = format!(
            "{}{}{}",
            if k.sensitive && k.always_sensitive { "sensitive" } else { "NOT-SENSITIVE" },
            if !k.extractable && k.never_extractable { ",never-extractable" } else { ",EXTRACTABLE" },
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

pub fn key_json(k: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "role": k.role.as_str(), "version": k.version, "label": k.label, "id": k.id_hex,
        "algorithm": k.role.algorithm(), "active": k.active, "retired": k.retired,
        "sensitive": k.sensitive, "always_sensitive": k.always_sensitive,
        "extractable": k.extractable, "never_extractable": k.never_extractable,
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

pub fn role_key(hsm: &Hsm, role: Role, version: u32) -> Result<KeyInfo, Failure> {
    hsm.list_keys()
        .map_err(Failure::hsm)?
        .into_iter()
        .find(|k| k.role == role && k.version == version)
        .ok_or_else(|| Failure::hsm(HsmError::KeyMissing { role, detail: format!(" (version {version})") }))
}

pub fn state_dir(cfg: &HsmOnly) -> Option<PathBuf> {
    cfg.state_directory.clone()
}
