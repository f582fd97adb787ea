//! The key-event journal: `<state_directory>/key-events.jsonl`, one JSON line per HSM key event
//! (generation, rotation, retirement, destruction, certificate import), appended by the security
//! officer's console and by the gateway's shred pass, and put on the ledger by the gateway.
//!
//! Boundary: the file and its lines. Who the officer is, and the HSM itself, are the callers'.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use medgate_hsm::KeyInfo;
use serde::{Deserialize, Serialize};

/// The journal's file name in the state directory.
pub const FILE: &str = "key-events.jsonl";

/// A key event, as logged and as later recorded on the ledger. Contains no key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyEvent {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Who: the officer at the console, or what in the gateway did it.
    pub officer: String,
    /// `generate`, `rotate`, `retire`, `destroy` or `import-cert`.
    pub action: String,
    /// The key role.
    pub role: String,
    /// The key version.
    pub version: u32,
    /// The key's CKA_ID, hex.
    pub key_id: String,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read, written or flushed.
    #[error("{path}: {reason}")]
    File {
        /// The journal file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A line is not a key event.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The journal file.
        path: PathBuf,
        /// Its line number (from 1).
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Logs the event and appends it, flushed, to the journal when the state directory exists.
/// `officer` names who (or what) caused it.
pub fn record_event_by(state_dir: Option<&Path>, officer: &str, action: &str, info: &KeyInfo) -> Result<KeyEvent, JournalError> {
    let ev = KeyEvent {
        time: crate::clock::now_rfc3339(),
        officer: officer.to_owned(),
        action: action.to_owned(),
        role: info.role.to_string(),
        version: info.version,
        key_id: info.id_hex.clone(),
    };
    tracing::info!(officer = %ev.officer, action = %ev.action, role = %ev.role, version = ev.version, key_id = %ev.key_id, "key event");
    if let Some(dir) = state_dir.filter(|d| d.is_dir()) {
        let path = dir.join(FILE);
        let file = |e: std::io::Error| JournalError::File { path: path.clone(), reason: e.to_string() };
        let line = serde_json::to_string(&ev).map_err(|e| JournalError::File { path: path.clone(), reason: e.to_string() })?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(file)?;
        // One write(2) per line: the gateway and the officer's console may append at the same time.
        f.write_all(format!("{line}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(file)?;
    }
    Ok(ev)
}

/// Reads the journal (a missing file holds no events).
pub fn read_events(state_dir: &Path) -> Result<Vec<KeyEvent>, JournalError> {
    let path = state_dir.join(FILE);
    let file = |e: std::io::Error| JournalError::File { path: path.clone(), reason: e.to_string() };
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file(e)),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(file)?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| JournalError::Line { path: path.clone(), line: i + 1, reason: e.to_string() })?);
    }
    Ok(out)
}
