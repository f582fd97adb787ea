//! What the exporter is told: one audit event, as plain values read from a ledger entry, and
//! where that entry sits on the ledger.
//!
//! Boundary: the same shape rules as the ledger's own entries. The patient and the user are
//! lowercase-hex pseudonyms (HMAC under the HSM pseudonym key), every other field is a short code
//! without spaces, the time is RFC 3339 UTC. [`AuditEvent::validate`] refuses anything else, so a
//! patient identifier, a name or free text cannot reach an audit message by mistake.

use thiserror::Error;

/// Longest code field (hospital id, record id, role, purpose, ...), in bytes; as on the ledger.
const MAX_CODE_LEN: usize = 128;

/// Where an entry sits on the ledger: block height, then index within the block. Ledger order is
/// the order of positions; the exporter sends events in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Block height.
    pub height: u64,
    /// Index of the entry in its block.
    pub index: u32,
}

impl Position {
    pub fn new(height: u64, index: u32) -> Position {
        Position { height, index }
    }
}

/// One audited event: a ledger entry written by this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The ledger entry id (64 lowercase hex): content addressed, so it names the event uniquely
    /// across retries; the repository deduplicates on it.
    pub entry_id: String,
    /// When the event happened, RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS[.f]Z`), as on the ledger.
    pub time: String,
    /// Hospital id of the gateway that recorded it.
    pub gateway: String,
    /// What happened.
    pub detail: EventDetail,
}

/// Who asked: the end user as the HIS asserted them (pseudonymised) and the requesting hospital.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// User pseudonym (lowercase hex, 32 to 128 characters).
    pub user: String,
    /// The user's role code (`physician`, `nurse`, ...).
    pub role: String,
    /// HL7 v3 purpose of use (`TREAT`, `BTG`, ...), when the event has one.
    pub purpose: Option<String>,
    /// Hospital id of the requesting system (this hospital's HIS, or a peer gateway).
    pub hospital: String,
}

/// The outcome of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Granted (own record, or under consent).
    Granted,
    /// Granted without consent, as break-glass (purpose `BTG`, a role allowed to).
    BreakGlass,
    /// Refused; `reason` is the ledger's reason code.
    Denied { reason: String },
}

/// A key lifecycle action in the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Generate,
    Rotate,
    Retire,
    Destroy,
    ImportCert,
    /// A token PIN (user or SO) changed under the officers' quorum.
    ChangePin,
    /// The backup key installed and split between the officers.
    BackupInit,
    /// A key backup exported, wrapped under the backup key.
    Backup,
    /// Keys restored into a token from a backup.
    Restore,
}

impl KeyAction {
    /// The ledger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAction::Generate => "generate",
            KeyAction::Rotate => "rotate",
            KeyAction::Retire => "retire",
            KeyAction::Destroy => "destroy",
            KeyAction::ImportCert => "import-cert",
            KeyAction::ChangePin => "change-pin",
            KeyAction::BackupInit => "backup-init",
            KeyAction::Backup => "backup",
            KeyAction::Restore => "restore",
        }
    }

    /// Parses the ledger's spelling.
    pub fn parse(s: &str) -> Option<KeyAction> {
        Some(match s {
            "generate" => KeyAction::Generate,
            "rotate" => KeyAction::Rotate,
            "retire" => KeyAction::Retire,
            "destroy" => KeyAction::Destroy,
            "import-cert" => KeyAction::ImportCert,
            "change-pin" => KeyAction::ChangePin,
            "backup-init" => KeyAction::BackupInit,
            "backup" => KeyAction::Backup,
            "restore" => KeyAction::Restore,
            _ => return None,
        })
    }
}

/// What happened, one variant per ledger entry kind that is audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    /// A record was stored (ITI-65 Provide Document Bundle).
    RecordStored { record_id: String, patient: String, by: Requester },
    /// An ITI-65 SubmissionSet was stored: the list of the records one Provide Document Bundle
    /// brought (each record has its own [`EventDetail::RecordStored`]).
    SubmissionSetStored { list_id: String, patient: String, records: u32, by: Requester },
    /// A record's status changed: `superseded` by a replacement, or `entered-in-error`.
    RecordStatusChanged { record_id: String, patient: String, status: String, replaced_by: Option<String>, by: Requester },
    /// A patient's records were searched for (ITI-67 Find Document References).
    PatientSearched { patient: String, results: u32, by: Requester },
    /// A record was read, or the read was refused (ITI-68 Retrieve Document).
    RecordRead { record_id: String, patient: String, custodian: String, by: Requester, access: Access },
    /// A record was erased by crypto-shredding.
    RecordErased { record_id: String, patient: String, by: Requester },
    /// A consent was recorded: `grantee` may read the patient's records here.
    ConsentRecorded { consent_id: String, patient: String, grantee: String, by: Requester },
    /// A consent was withdrawn.
    ConsentWithdrawn { consent_id: String, patient: String, grantee: String, by: Requester },
    /// An HSM key lifecycle event, done by a security officer (or by the gateway itself).
    KeyEvent { action: KeyAction, key_role: String, key_version: u32, key_id: String, officer: String },
}

/// A field that breaks the shape rules.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("audit event {entry}: field {field}: {problem}")]
pub struct EventError {
    /// The entry id as given (at most 64 characters of it).
    pub entry: String,
    pub field: &'static str,
    pub problem: &'static str,
}

impl AuditEvent {
    /// Checks every field's shape: pseudonyms are lowercase hex of the right length, codes are 1
    /// to 128 characters from `A-Z a-z 0-9 - . _ : / @ + = | # ~`, the time is RFC 3339 UTC.
    pub fn validate(&self) -> Result<(), EventError> {
        let err = |field: &'static str, problem: &'static str| EventError {
            entry: self.entry_id.chars().take(64).collect(),
            field,
            problem,
        };
        if !is_hex(&self.entry_id, 64) {
            return Err(err("entry_id", "not 64 lowercase hex characters"));
        }
        if !is_utc_time(&self.time) {
            return Err(err("time", "not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)"));
        }
        let code = |field: &'static str, v: &str| if is_code(v) { Ok(()) } else { Err(err(field, "not a code (1 to 128 characters, no spaces)")) };
        let patient = |v: &str| if is_hex(v, 64) { Ok(()) } else { Err(err("patient", "not a 64 lowercase hex pseudonym")) };
        let requester = |r: &Requester| -> Result<(), EventError> {
            let n = r.user.len();
            if !((32..=128).contains(&n) && n % 2 == 0 && r.user.bytes().all(is_lower_hex)) {
                return Err(err("user", "not a lowercase hex pseudonym of 32 to 128 characters"));
            }
            code("role", &r.role)?;
            if let Some(p) = &r.purpose {
                code("purpose", p)?;
            }
            code("hospital", &r.hospital)
        };
        code("gateway", &self.gateway)?;
        match &self.detail {
            EventDetail::RecordStored { record_id, patient: p, by }
            | EventDetail::RecordErased { record_id, patient: p, by } => {
                code("record_id", record_id)?;
                patient(p)?;
                requester(by)
            }
            EventDetail::PatientSearched { patient: p, results: _, by } => {
                patient(p)?;
                requester(by)
            }
            EventDetail::SubmissionSetStored { list_id, patient: p, records: _, by } => {
                code("list_id", list_id)?;
                patient(p)?;
                requester(by)
            }
            EventDetail::RecordStatusChanged { record_id, patient: p, status, replaced_by, by } => {
                code("record_id", record_id)?;
                patient(p)?;
                code("status", status)?;
                if let Some(r) = replaced_by {
                    code("replaced_by", r)?;
                }
                requester(by)
            }
            EventDetail::RecordRead { record_id, patient: p, custodian, by, access } => {
                code("record_id", record_id)?;
                patient(p)?;
                code("custodian", custodian)?;
                if let Access::Denied { reason } = access {
                    code("reason", reason)?;
                }
                requester(by)
            }
            EventDetail::ConsentRecorded { consent_id, patient: p, grantee, by }
            | EventDetail::ConsentWithdrawn { consent_id, patient: p, grantee, by } => {
                code("consent_id", consent_id)?;
                patient(p)?;
                code("grantee", grantee)?;
                requester(by)
            }
            EventDetail::KeyEvent { action: _, key_role, key_version: _, key_id, officer } => {
                code("key_role", key_role)?;
                code("key_id", key_id)?;
                code("officer", officer)
            }
        }
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(is_lower_hex)
}

/// A code as the ledger allows it: no spaces, no markup characters.
pub(crate) fn is_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CODE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/@+=|#~".contains(&b))
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with plausible ranges (not a full calendar check).
pub(crate) fn is_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if !seps.iter().all(|&(i, c)| b.get(i) == Some(&c)) {
        return false;
    }
    let (Some(_), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19)) else {
        return false;
    };
    if !((1..=12).contains(&mo) && (1..=31).contains(&d) && h <= 23 && mi <= 59 && sec <= 60) {
        return false;
    }
    match b.get(19..) {
        Some(b"Z") => true,
        Some([b'.', frac @ .., b'Z']) => (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn requester() -> Requester {
        Requester { user: "ab".repeat(16), role: "physician".into(), purpose: Some("TREAT".into()), hospital: "hospital-a".into() }
    }

    pub(crate) fn read_event(access: Access) -> AuditEvent {
        AuditEvent {
            entry_id: "e1".repeat(32),
            time: "2026-11-28T10:00:00.123456789Z".into(),
            gateway: "hospital-a".into(),
            detail: EventDetail::RecordRead {
                record_id: "rec-1".into(),
                patient: "cd".repeat(32),
                custodian: "hospital-a".into(),
                by: requester(),
                access,
            },
        }
    }

    #[test]
    fn a_well_formed_event_passes() {
        assert_eq!(read_event(Access::Granted).validate(), Ok(()));
    }

    #[test]
    fn a_patient_identifier_in_place_of_the_pseudonym_is_refused() {
        let mut e = read_event(Access::Granted);
        if let EventDetail::RecordRead { patient, .. } = &mut e.detail {
            *patient = "urn:oid:1.2.3|123456".into();
        }
        assert_eq!(e.validate().map_err(|e| e.field), Err("patient"));
    }

    #[test]
    fn prose_in_a_code_is_refused() {
        let mut e = read_event(Access::Denied { reason: "John Doe asked".into() });
        assert_eq!(e.validate().map_err(|e| e.field), Err("reason"));
        e.detail = EventDetail::RecordRead {
            record_id: "r<1>".into(),
            patient: "cd".repeat(32),
            custodian: "hospital-a".into(),
            by: requester(),
            access: Access::Granted,
        };
        assert_eq!(e.validate().map_err(|e| e.field), Err("record_id"));
    }

    #[test]
    fn a_user_name_in_place_of_the_user_pseudonym_is_refused() {
        let mut e = read_event(Access::Granted);
        if let EventDetail::RecordRead { by, .. } = &mut e.detail {
            by.user = "dr.house".into();
        }
        assert_eq!(e.validate().map_err(|e| e.field), Err("user"));
    }

    #[test]
    fn times_must_be_utc() {
        let mut e = read_event(Access::Granted);
        e.time = "2026-11-28T10:00:00+01:00".into();
        assert_eq!(e.validate().map_err(|e| e.field), Err("time"));
    }

    #[test]
    fn key_actions_round_trip() {
        for a in [KeyAction::Generate, KeyAction::Rotate, KeyAction::Retire, KeyAction::Destroy, KeyAction::ImportCert] {
            assert_eq!(KeyAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(KeyAction::parse("export"), None);
    }
}
