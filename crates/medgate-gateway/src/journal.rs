//! The key-event journal: `<state_directory>/key-events.jsonl`, one JSON line per event, appended
//! by the security officer's console and by the gateway's shred pass, and put on the ledger by
//! the gateway. Three kinds of line:
//! * a key event (generation, rotation, retirement, destruction, certificate import, PIN change,
//!   backup, restore): the original line shape, without a `kind`;
//! * an officer's approval of a request (`"kind": "approval"`): the request, the signature and
//!   the officer's enrolled name;
//! * an officer change (`"kind": "officer"`): an enrolment, a removal, a new quorum.
//!
//! Each line becomes one ledger entry ([`entry_for`]), whose nonce is derived from the line, so
//! that a line already on the chain is recognised. The officers enrolled and the requests
//! already used are derived from the journal by replaying it ([`officers`]), with the same
//! rules an auditor applies to the ledger ([`medgate_ledger::officers::audit`]).
//!
//! Boundary: the file, its lines and their entries. Who the officer at the console is, and the
//! HSM itself, are the callers'.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use medgate_hsm::KeyInfo;
use medgate_ledger::officers::{Approval, AuditReport, Officer, Request};
use medgate_ledger::{Entry, EntryBody};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The journal's file name in the state directory.
pub const FILE: &str = "key-events.jsonl";
/// The lock file beside it, held while the console checks approvals and runs an operation.
pub const LOCK_FILE: &str = "key-events.lock";

/// A key event, as logged and as later recorded on the ledger. Contains no key material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// Who: the enrolled officer's name (from their credential), the approving officers' names
    /// joined by `+`, the console's login name before any officer is enrolled (`unix:NAME`),
    /// or what in the gateway did it.
    pub officer: String,
    /// `generate`, `rotate`, `retire`, `destroy`, `import-cert`, `change-pin`, `backup-init`,
    /// `backup` or `restore`.
    pub action: String,
    /// The key role.
    pub role: String,
    /// The key version.
    pub version: u32,
    /// The key's CKA_ID, hex.
    pub key_id: String,
    /// The id of the approved request the operation ran under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// An officer's approval of a request, as the console checked it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    /// When it was recorded, RFC 3339 UTC.
    pub time: String,
    /// The officer's enrolled name.
    pub officer: String,
    /// What was approved.
    pub request: Request,
    /// The signature.
    pub approval: Approval,
}

/// A change of the officers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OfficerRecord {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// `enrol`, `remove` or `quorum`.
    pub action: String,
    /// The officer enrolled (name and public key) or removed (the public key is kept too).
    pub officer: Option<Officer>,
    /// The quorum M after the change.
    pub quorum: u32,
    /// The approved request it ran under.
    pub request: String,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A key event.
    Key(KeyEvent),
    /// An officer's approval.
    Approval(ApprovalRecord),
    /// An officer change.
    Officer(OfficerRecord),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Tagged {
    Approval(ApprovalRecord),
    Officer(OfficerRecord),
}

impl Line {
    /// The line as written to the file (no newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            Line::Key(ev) => serde_json::to_string(ev),
            Line::Approval(a) => serde_json::to_string(&Tagged::Approval(a.clone())),
            Line::Officer(o) => serde_json::to_string(&Tagged::Officer(o.clone())),
        }
    }

    fn parse(text: &str) -> Result<Line, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if value.get("kind").is_some() {
            Ok(match serde_json::from_value(value)? {
                Tagged::Approval(a) => Line::Approval(a),
                Tagged::Officer(o) => Line::Officer(o),
            })
        } else {
            serde_json::from_value(value).map(Line::Key)
        }
    }

    /// When the line was written.
    pub fn time(&self) -> &str {
        match self {
            Line::Key(ev) => &ev.time,
            Line::Approval(a) => &a.time,
            Line::Officer(o) => &o.time,
        }
    }
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
    /// A line is not a journal line.
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
    let ev = key_event(officer, action, info.role.as_str(), info.version, &info.id_hex, None);
    if let Some(dir) = state_dir.filter(|d| d.is_dir()) {
        append(dir, &[Line::Key(ev.clone())])?;
    }
    Ok(ev)
}

/// A key event at this time, logged.
pub fn key_event(officer: &str, action: &str, role: &str, version: u32, key_id: &str, request: Option<String>) -> KeyEvent {
    let ev = KeyEvent {
        time: crate::clock::now_rfc3339(),
        officer: officer.to_owned(),
        action: action.to_owned(),
        role: role.to_owned(),
        version,
        key_id: key_id.to_owned(),
        request,
    };
    tracing::info!(officer = %ev.officer, action = %ev.action, role = %ev.role, version = ev.version, key_id = %ev.key_id, request = ev.request.as_deref().unwrap_or("-"), "key event");
    ev
}

/// Appends lines, flushed, in one write(2): the gateway and the officer's console may append
/// at the same time.
pub fn append(state_dir: &Path, lines: &[Line]) -> Result<(), JournalError> {
    let path = state_dir.join(FILE);
    let file = |e: std::io::Error| JournalError::File { path: path.clone(), reason: e.to_string() };
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_json().map_err(|e| JournalError::File { path: path.clone(), reason: e.to_string() })?);
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(file)?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(file)
}

/// Reads every line of the journal (a missing file holds none).
pub fn read_lines(state_dir: &Path) -> Result<Vec<Line>, JournalError> {
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
        out.push(Line::parse(&line).map_err(|e| JournalError::Line { path: path.clone(), line: i + 1, reason: e.to_string() })?);
    }
    Ok(out)
}

/// Reads the key events of the journal (a missing file holds none).
pub fn read_events(state_dir: &Path) -> Result<Vec<KeyEvent>, JournalError> {
    Ok(read_lines(state_dir)?
        .into_iter()
        .filter_map(|l| match l {
            Line::Key(ev) => Some(ev),
            _ => None,
        })
        .collect())
}

/// The ledger entry of a journal line, written by gateway `hospital`. Its nonce is derived from
/// the line, so the same line always gives the same entry id. A key event's officer is kept to
/// the characters a ledger code allows.
pub fn entry_for(line: &Line, hospital: &str) -> Result<Entry, serde_json::Error> {
    let digest = Sha256::digest(line.to_json()?.as_bytes());
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&digest[..16]);
    let time = if line.time().ends_with('Z') { line.time().to_owned() } else { crate::clock::now_rfc3339() };
    let body = match line.clone() {
        Line::Key(ev) => {
            let officer: String = ev.officer.chars().map(|c| if c.is_ascii_alphanumeric() || "-._@:+".contains(c) { c } else { '_' }).take(128).collect();
            EntryBody::KeyEvent { action: ev.action, key_role: ev.role, key_version: ev.version, key_id: ev.key_id, officer, request: ev.request }
        }
        Line::Approval(a) => EntryBody::KeyApproval {
            request: a.request.id(),
            operation: a.request.operation,
            hospital: a.request.hospital,
            token: a.request.token,
            key_role: a.request.role,
            key_version: a.request.version,
            detail: a.request.detail,
            nonce: a.request.nonce,
            issued: a.request.issued,
            expires: a.request.expires,
            officer: a.officer,
            officer_key: a.approval.officer_key,
            signature: a.approval.signature,
        },
        Line::Officer(o) => EntryBody::OfficerChanged {
            action: o.action.clone(),
            officer: o.officer.as_ref().filter(|_| o.action != "quorum").map(|x| x.name.clone()),
            officer_key: o.officer.as_ref().filter(|_| o.action != "quorum").map(|x| x.key_id()),
            public_key: o.officer.as_ref().filter(|_| o.action == "enrol").map(|x| x.public_key.clone()),
            quorum: o.quorum,
            request: o.request,
        },
    };
    Ok(Entry::new(hospital, &time, nonce, body))
}

/// The officers enrolled and the requests used, from replaying the journal with the ledger's
/// rules; problems (a line that breaks a rule, which is then not applied) are in the report.
/// `hospital` is only the entries' author for the replay.
pub fn officers(lines: &[Line], hospital: &str) -> AuditReport {
    let entries: Vec<Entry> = lines.iter().filter_map(|l| entry_for(l, hospital).ok()).collect();
    medgate_ledger::officers::audit(&entries)
}

/// An exclusive lock on the journal, held while the console checks approvals, records them and
/// runs the operation, so that two consoles cannot use one request twice. Released on drop.
#[derive(Debug)]
pub struct JournalLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the journal lock in `state_dir`, waiting for another console to finish.
pub fn lock(state_dir: &Path) -> Result<JournalLock, JournalError> {
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::File { path: path.clone(), reason: e.to_string() })?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| JournalError::File { path: path.clone(), reason: e.to_string() })?;
    Ok(JournalLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_lines_new_lines_and_their_entries() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = r#"{"time":"2025-01-02T03:04:05Z","officer":"alice","action":"rotate","role":"kek","version":2,"key_id":"0a"}"#;
        std::fs::write(dir.path().join(FILE), format!("{old}\n")).expect("write");
        let request = Request {
            operation: "destroy".into(),
            hospital: "hospital-a".into(),
            token: "medgate".into(),
            role: Some("kek".into()),
            version: Some(1),
            detail: None,
            nonce: "11".repeat(16),
            issued: "2025-01-02T03:00:00Z".into(),
            expires: "2025-01-02T04:00:00Z".into(),
        };
        let approval = Line::Approval(ApprovalRecord {
            time: "2025-01-02T03:04:06Z".into(),
            officer: "alice".into(),
            request: request.clone(),
            approval: Approval { officer_key: "ab".repeat(32), signature: "cd".repeat(64) },
        });
        let event = Line::Key(KeyEvent { request: Some(request.id()), ..key_event("alice+bob", "destroy", "kek", 1, "0a", None) });
        append(dir.path(), &[approval.clone(), event.clone()]).expect("append");
        let lines = read_lines(dir.path()).expect("read");
        assert_eq!(lines.len(), 3);
        assert!(matches!(&lines[0], Line::Key(ev) if ev.request.is_none() && ev.action == "rotate"));
        assert_eq!(lines[1], approval);
        assert_eq!(lines[2], event);
        // An old line keeps its shape (and so its entry id) when written again.
        assert_eq!(lines[0].to_json().expect("json"), old);
        assert_eq!(read_events(dir.path()).expect("events").len(), 2);
        for l in &lines {
            let e = entry_for(l, "hospital-a").expect("entry");
            assert_eq!(e.validate(), Ok(()), "{l:?}");
            assert_eq!(entry_for(l, "hospital-a").expect("entry").id, e.id, "same line, same entry");
        }
        let e = entry_for(&lines[1], "hospital-a").expect("entry");
        assert!(matches!(e.body, EntryBody::KeyApproval { ref request, .. } if *request == request_id(&lines[1])));
    }

    fn request_id(l: &Line) -> String {
        match l {
            Line::Approval(a) => a.request.id(),
            _ => String::new(),
        }
    }
}
