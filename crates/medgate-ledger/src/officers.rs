//! Officer quorum: who a hospital's security officers are, what an officer approves, and the rule
//! that M of the N enrolled officers approve every operation that could make records unreadable
//! (destroying or retiring a key version, rotating the KEK, importing a key, changing a PIN,
//! changing the officers themselves, setting up the key backup).
//!
//! An officer is a name bound to a P-256 public key (their credential: a key on a smart card, or
//! a key file for tests). An approval is the officer's ECDSA P-256 signature over a [`Request`]:
//! the exact operation and its parameters (hospital, token label, key role and version, an
//! operation-specific detail), a random nonce, and a validity window of at most
//! [`MAX_VALIDITY_SECONDS`]. The request's id is the SHA-256 of its signed message, so an
//! approval cannot be moved to another operation, another hospital or another token, and a used
//! request id is never accepted again.
//!
//! Boundary: pure data and checks, for the officer's console and for auditors alike. Nothing here
//! reads a clock, a file or a credential: the caller passes the time and the approvals, and keeps
//! the record of used requests. The approvals and officer changes go on the ledger as
//! [`crate::EntryBody::KeyApproval`] and [`crate::EntryBody::OfficerChanged`] entries, which
//! [`audit`] re-checks.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::canon;

/// Longest validity window of a request: approvals are for an operation about to run.
pub const MAX_VALIDITY_SECONDS: i64 = 24 * 3600;
/// Clock difference tolerated between the console that issued a request and the one checking it.
pub const CLOCK_SKEW_SECONDS: i64 = 300;
/// Most officers a hospital enrols.
pub const MAX_OFFICERS: usize = 32;
/// The name the gateway's shred pass signs its key events with. It rotates the KEK and destroys
/// the versions no live record needs any more (crypto-shredding after an erasure), under no
/// request: it never makes a live record unreadable.
pub const SHRED_PASS: &str = "medgate-shred-pass";

/// Whether a key event of this action on this role needs the officers' approval.
pub fn key_event_needs_quorum(action: &str, role: &str) -> bool {
    matches!(action, "destroy" | "retire" | "change-pin" | "backup-init") || (action == "rotate" && role == "kek")
}

/// Operations that need the approval of a quorum of officers: each can make records unreadable
/// or hand the keys to someone else.
pub const QUORUM_OPERATIONS: [&str; 9] =
    ["destroy", "retire", "rotate-kek", "import-key", "change-pin", "officer-add", "officer-remove", "set-quorum", "backup-init"];

/// Every operation a request may name: the quorum operations, the first enrolment
/// (`officers-init`, approved by every officer enrolled), and the everyday operations that one
/// enrolled officer signs alone so that the journal names them from their credential.
pub const OPERATIONS: [&str; 15] = [
    "destroy",
    "retire",
    "rotate-kek",
    "import-key",
    "change-pin",
    "officer-add",
    "officer-remove",
    "set-quorum",
    "backup-init",
    "officers-init",
    "generate",
    "rotate",
    "import-cert",
    "backup",
    "restore",
];

/// Why a request, an approval or an officer change was refused. Carries names, ids and times
/// only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// A field does not have the required shape.
    #[error("{what}: {reason}")]
    Shape {
        /// Which field.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The approvals were given for another operation or other parameters.
    #[error("the approvals are for {field} {approved}, not {asked}: approve a request for this exact operation")]
    Mismatch {
        /// The parameter that differs.
        field: &'static str,
        /// What the officers approved.
        approved: String,
        /// What is being done.
        asked: String,
    },
    /// The request's validity window has passed.
    #[error("the approvals expired at {expires} (now {now}): approve a new request")]
    Expired {
        /// End of the window.
        expires: String,
        /// The time of the check.
        now: String,
    },
    /// The request is not valid yet (issued in the future).
    #[error("the request is issued at {issued}, after now ({now}): check the clocks")]
    NotYetValid {
        /// Start of the window.
        issued: String,
        /// The time of the check.
        now: String,
    },
    /// The request's id was used before: an approval is good for one operation only.
    #[error("request {0} was already used: approvals are good for one operation; approve a new request")]
    Replayed(String),
    /// A signature was made by a key that is not an enrolled officer's.
    #[error("an approval was signed by key {0}, which is not an enrolled officer's")]
    UnknownOfficer(String),
    /// A signature does not verify.
    #[error("the approval of officer {0} does not verify for this request")]
    BadSignature(String),
    /// The same officer approved twice.
    #[error("officer {0} approved more than once: each officer counts once")]
    Duplicate(String),
    /// Fewer approvals than the rule requires.
    #[error("{have} of the required {need} officers approved ({who}): one officer alone cannot do this")]
    TooFew {
        /// Distinct enrolled officers who approved.
        have: usize,
        /// How many the rule requires.
        need: usize,
        /// Their names.
        who: String,
    },
    /// An officer who had to approve did not.
    #[error("officer {0} must approve this request too")]
    Missing(String),
    /// An officer change that would break the rules (quorum out of range, duplicate names or keys).
    #[error("officer change refused: {0}")]
    Rule(String),
}

fn shape(what: &'static str, reason: impl Into<String>) -> QuorumError {
    QuorumError::Shape { what, reason: reason.into() }
}

/// Parses the request time format: RFC 3339 UTC to the second, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(what: &'static str, s: &str) -> Result<i64, QuorumError> {
    if s.len() != 20 || !s.ends_with('Z') {
        return Err(shape(what, format!("{s:?} is not YYYY-MM-DDTHH:MM:SSZ")));
    }
    OffsetDateTime::parse(s, &Rfc3339).map(|t| t.unix_timestamp()).map_err(|e| shape(what, format!("{s:?}: {e}")))
}

/// Formats unix seconds as the request time format.
pub fn format_time(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// A short code: 1 to 128 characters from `A-Z a-z 0-9 - . _ : / @ + =`.
fn code(what: &'static str, s: &str) -> Result<(), QuorumError> {
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/@+=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(shape(what, format!("{:?} is not a short code", s.chars().take(40).collect::<String>())))
    }
}

/// Checks an officer name: 1 to 64 characters from `A-Z a-z 0-9 - . _ @`.
pub fn check_name(name: &str) -> Result<(), QuorumError> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(shape("officer name", format!("{:?} must be 1 to 64 characters from A-Z a-z 0-9 - . _ @", name.chars().take(40).collect::<String>())))
    }
}

/// Checks a PKCS#11 token label: 1 to 32 printable ASCII characters.
pub fn check_token_label(label: &str) -> Result<(), QuorumError> {
    if !label.is_empty() && label.len() <= 32 && label.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(shape("token", "1 to 32 printable ASCII characters"))
    }
}

/// What the officers approve: one operation with all its parameters, a nonce and a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// One of [`OPERATIONS`].
    pub operation: String,
    /// The hospital whose appliance runs it.
    pub hospital: String,
    /// The label of the HSM token it acts on.
    pub token: String,
    /// The key role concerned, if any.
    pub role: Option<String>,
    /// The key version concerned, if any.
    pub version: Option<u32>,
    /// Operation-specific: the SHA-256 of an officer set or card, an officer's key id, a new
    /// quorum, which PIN, the SHA-256 of an imported key. A short code.
    pub detail: Option<String>,
    /// 16 random bytes, lowercase hex.
    pub nonce: String,
    /// Start of the window, `YYYY-MM-DDTHH:MM:SSZ`.
    pub issued: String,
    /// End of the window, at most [`MAX_VALIDITY_SECONDS`] after `issued`.
    pub expires: String,
}

impl Request {
    /// The bytes each officer signs: fixed text lines, one per field, `-` for an absent one.
    pub fn message(&self) -> Vec<u8> {
        let opt = |s: Option<&str>| s.unwrap_or("-").to_owned();
        format!(
            "medgate officer approval v1\noperation {}\nhospital {}\ntoken {}\nrole {}\nversion {}\ndetail {}\nnonce {}\nissued {}\nexpires {}\n",
            self.operation,
            self.hospital,
            self.token,
            opt(self.role.as_deref()),
            self.version.map_or("-".to_owned(), |v| v.to_string()),
            opt(self.detail.as_deref()),
            self.nonce,
            self.issued,
            self.expires,
        )
        .into_bytes()
    }

    /// The request id: lowercase hex SHA-256 of [`Request::message`].
    pub fn id(&self) -> String {
        hex::encode(canon::sha256(&self.message()))
    }

    /// Checks every field's shape and the window's length.
    pub fn validate(&self) -> Result<(), QuorumError> {
        if !OPERATIONS.contains(&self.operation.as_str()) {
            return Err(shape("operation", format!("{:?} is not one of {}", self.operation, OPERATIONS.join(", "))));
        }
        crate::hospital::check_hospital_id(&self.hospital).map_err(|e| shape("hospital", e.to_string()))?;
        check_token_label(&self.token)?;
        if let Some(r) = &self.role {
            code("role", r)?;
        }
        if let Some(d) = &self.detail {
            code("detail", d)?;
        }
        if !canon::is_hex(&self.nonce, 32) {
            return Err(shape("nonce", "not 32 lowercase hex characters"));
        }
        let (issued, expires) = (parse_time("issued", &self.issued)?, parse_time("expires", &self.expires)?);
        if expires <= issued || expires - issued > MAX_VALIDITY_SECONDS {
            return Err(shape("expires", format!("the window must be more than 0 s and at most {} h", MAX_VALIDITY_SECONDS / 3600)));
        }
        Ok(())
    }

    /// Whether this request names the same operation and parameters as `asked` (everything but
    /// the nonce and the window), naming the first field that differs.
    pub fn same_operation(&self, asked: &Request) -> Result<(), QuorumError> {
        let opt_u = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
        let opt_s = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let pairs = [
            ("operation", self.operation.clone(), asked.operation.clone()),
            ("hospital", self.hospital.clone(), asked.hospital.clone()),
            ("token", self.token.clone(), asked.token.clone()),
            ("role", opt_s(&self.role), opt_s(&asked.role)),
            ("version", opt_u(self.version), opt_u(asked.version)),
            ("detail", opt_s(&self.detail), opt_s(&asked.detail)),
        ];
        for (field, approved, asked) in pairs {
            if approved != asked {
                return Err(QuorumError::Mismatch { field, approved, asked });
            }
        }
        Ok(())
    }

    /// Whether the window holds `now` (unix seconds), with [`CLOCK_SKEW_SECONDS`] of tolerance
    /// before its start.
    pub fn check_window(&self, now: i64) -> Result<(), QuorumError> {
        let (issued, expires) = (parse_time("issued", &self.issued)?, parse_time("expires", &self.expires)?);
        if now > expires {
            return Err(QuorumError::Expired { expires: self.expires.clone(), now: format_time(now) });
        }
        if now + CLOCK_SKEW_SECONDS < issued {
            return Err(QuorumError::NotYetValid { issued: self.issued.clone(), now: format_time(now) });
        }
        Ok(())
    }

    /// Whether this is an operation that needs a quorum.
    pub fn needs_quorum(&self) -> bool {
        QUORUM_OPERATIONS.contains(&self.operation.as_str())
    }
}

/// One officer's signature over a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The signer's key id: lowercase hex SHA-256 of their public key (DER SubjectPublicKeyInfo).
    pub officer_key: String,
    /// ECDSA P-256 over [`Request::message`], raw `r || s` in low-S form, lowercase hex.
    pub signature: String,
}

/// An officer: a name bound to a P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Officer {
    /// Their name as the journal and the ledger show it (see [`check_name`]).
    pub name: String,
    /// Base64 DER SubjectPublicKeyInfo of their P-256 signing key.
    pub public_key: String,
}

impl Officer {
    /// Checks the name and that the key is a P-256 public key; returns the key id.
    pub fn check(&self) -> Result<String, QuorumError> {
        check_name(&self.name)?;
        let der = crate::keys::b64_decode(&self.public_key).map_err(|e| shape("public_key", e.to_string()))?;
        crate::keys::check_ledger_key(&der).map_err(|_| shape("public_key", "not an ECDSA P-256 SubjectPublicKeyInfo"))?;
        Ok(key_id(&der))
    }

    /// The key id: lowercase hex SHA-256 of the DER public key.
    pub fn key_id(&self) -> String {
        crate::keys::b64_decode(&self.public_key).map(|d| key_id(&d)).unwrap_or_default()
    }

    /// The card's digest, which an `officer-add` request carries as its detail.
    pub fn digest(&self) -> String {
        hex::encode(canon::sha256(format!("medgate officer v1\n{} {}\n", self.name, self.key_id()).as_bytes()))
    }

    fn verify(&self, message: &[u8], signature_hex: &str) -> bool {
        crate::keys::b64_decode(&self.public_key)
            .ok()
            .is_some_and(|der| super::p256::verify(&der, message, signature_hex).is_ok())
    }
}

/// The key id of a DER public key: lowercase hex SHA-256.
pub fn key_id(der: &[u8]) -> String {
    hex::encode(canon::sha256(der))
}

/// The enrolled officers and the quorum M (of N = their number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OfficerSet {
    /// How many distinct officers must approve a quorum operation.
    pub quorum: u32,
    /// The enrolled officers.
    pub officers: Vec<Officer>,
}

impl OfficerSet {
    /// Checks the set: 2 <= M <= N <= [`MAX_OFFICERS`], names and keys unique, keys P-256. One
    /// officer alone can never be a quorum.
    pub fn check(&self) -> Result<(), QuorumError> {
        let n = self.officers.len();
        if n > MAX_OFFICERS {
            return Err(QuorumError::Rule(format!("at most {MAX_OFFICERS} officers")));
        }
        if self.quorum < 2 || self.quorum as usize > n {
            return Err(QuorumError::Rule(format!(
                "the quorum must be at least 2 and at most the number of officers ({n}), not {}: one officer alone never decides",
                self.quorum
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for o in &self.officers {
            let id = o.check()?;
            if !names.insert(o.name.clone()) {
                return Err(QuorumError::Rule(format!("two officers named {}", o.name)));
            }
            if !keys.insert(id) {
                return Err(QuorumError::Rule(format!("officer {} shares a key with another officer", o.name)));
            }
        }
        Ok(())
    }

    /// The set's digest, which an `officers-init` request carries as its detail: SHA-256 of the
    /// quorum and each officer's name and key id, in key id order.
    pub fn digest(&self) -> String {
        let mut lines: Vec<String> = self.officers.iter().map(|o| format!("{} {}\n", o.name, o.key_id())).collect();
        lines.sort_by(|a, b| a.split(' ').nth(1).cmp(&b.split(' ').nth(1)));
        let text = format!("medgate officers v1\nquorum {}\n{}", self.quorum, lines.concat());
        hex::encode(canon::sha256(text.as_bytes()))
    }

    /// The officer with this key id.
    pub fn by_key(&self, key_id_hex: &str) -> Option<&Officer> {
        self.officers.iter().find(|o| o.key_id() == key_id_hex)
    }

    /// The distinct enrolled officers whose approvals of `request` verify, after checking the
    /// request's shape and window at `now` (unix seconds). Any approval that does not verify,
    /// comes from an unknown key or repeats an officer refuses the whole set.
    pub fn approvers(&self, request: &Request, approvals: &[Approval], now: i64) -> Result<Vec<&Officer>, QuorumError> {
        request.validate()?;
        request.check_window(now)?;
        let message = request.message();
        let mut out: Vec<&Officer> = Vec::new();
        for a in approvals {
            let officer = self.by_key(&a.officer_key).ok_or_else(|| QuorumError::UnknownOfficer(a.officer_key.clone()))?;
            if !officer.verify(&message, &a.signature) {
                return Err(QuorumError::BadSignature(officer.name.clone()));
            }
            if out.iter().any(|o| o.name == officer.name) {
                return Err(QuorumError::Duplicate(officer.name.clone()));
            }
            out.push(officer);
        }
        Ok(out)
    }

    /// Checks that at least M distinct enrolled officers approved `request`; returns them.
    pub fn check_quorum(&self, request: &Request, approvals: &[Approval], now: i64) -> Result<Vec<&Officer>, QuorumError> {
        let who = self.approvers(request, approvals, now)?;
        let need = self.quorum as usize;
        if who.len() < need.max(2) {
            let names: Vec<&str> = who.iter().map(|o| o.name.as_str()).collect();
            return Err(QuorumError::TooFew { have: who.len(), need: need.max(2), who: if names.is_empty() { "nobody".into() } else { names.join(", ") } });
        }
        Ok(who)
    }

    /// Checks that every officer of this set approved `request` (the first enrolment: each
    /// officer proves they hold their key).
    pub fn check_all(&self, request: &Request, approvals: &[Approval], now: i64) -> Result<(), QuorumError> {
        let who = self.approvers(request, approvals, now)?;
        for o in &self.officers {
            if !who.iter().any(|w| w.name == o.name) {
                return Err(QuorumError::Missing(o.name.clone()));
            }
        }
        Ok(())
    }
}

/// The names of approvers joined by `+`, as the `officer` field of a key event.
pub fn joined_names(officers: &[&Officer]) -> String {
    let mut names: Vec<&str> = officers.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    names.join("+")
}

/// What [`audit`] found on a ledger copy (or the officer's journal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Officer changes replayed.
    pub officer_changes: usize,
    /// Approvals read.
    pub approvals: usize,
    /// Key events that carry an approved request id.
    pub approved_events: usize,
    /// Everything that breaks the rules, as entry id and reason.
    pub problems: Vec<(String, String)>,
    /// The officers enrolled at the end, as the valid changes left them.
    pub officers: OfficerSet,
    /// Every request id that has approvals: each is good for one operation, so none may be
    /// approved again.
    pub used: std::collections::BTreeSet<String>,
}

/// Replays the officer changes and approvals in ledger order: every approval must verify with
/// the key of an officer enrolled at that point (or, for an enrolment, of the officer being
/// enrolled), every officer change and every key event that names a request must have the
/// approvals its rule requires (every officer for the first enrolment, the quorum for the
/// rest), and no request id may be used by two operations. Changes that break a rule are
/// reported and not applied.
pub fn audit<'a>(entries: impl IntoIterator<Item = &'a crate::Entry>) -> AuditReport {
    let mut replay = Replay::default();
    for e in entries {
        if let Err(why) = replay.apply(e) {
            replay.report.problems.push((e.id.clone(), why));
        }
    }
    replay.report.officers = replay.set;
    replay.report
}

#[derive(Default)]
struct Replay {
    set: OfficerSet,
    /// The first enrolment being assembled: request id and the officers so far.
    init: Option<(String, OfficerSet)>,
    /// Approvals by request id.
    approved: std::collections::BTreeMap<String, (Request, Vec<Approval>)>,
    /// Request ids an operation ran under.
    done: std::collections::BTreeSet<String>,
    report: AuditReport,
}

impl Replay {
    fn apply(&mut self, e: &crate::Entry) -> Result<(), String> {
        use crate::EntryBody;
        let now = entry_time(&e.time);
        match &e.body {
            EntryBody::KeyApproval { .. } => {
                self.report.approvals += 1;
                let Some((request, approval, _)) = approval_parts(&e.body) else { return Ok(()) };
                let id = request.id();
                self.report.used.insert(id.clone());
                self.approved.entry(id).or_insert_with(|| (request, Vec::new())).1.push(approval);
                Ok(())
            }
            EntryBody::OfficerChanged { request, action, .. } => {
                self.report.officer_changes += 1;
                let first_of_init = action == "enrol" && self.init.as_ref().is_none_or(|(r, _)| r != request);
                if (action != "enrol" || first_of_init) && !self.done.insert(request.clone()) {
                    return Err(format!("request {request} used by a second operation"));
                }
                let Some((req, approvals)) = self.approved.get(request).cloned() else {
                    return Err(format!("officer change under request {request}: no approvals before it"));
                };
                self.change(&e.body, &req, &approvals, now)
            }
            EntryBody::KeyEvent { request: None, action, key_role, officer, .. }
                if !self.set.officers.is_empty() && key_event_needs_quorum(action, key_role) && officer != SHRED_PASS =>
            {
                Err(format!("{action} of a {key_role} key by {officer} ran without the officers' approval"))
            }
            EntryBody::KeyEvent { request: Some(request), .. } => {
                self.report.approved_events += 1;
                if !self.done.insert(request.clone()) {
                    return Err(format!("request {request} used by a second operation"));
                }
                let Some((req, approvals)) = self.approved.get(request) else {
                    return Err(format!("request {request}: no approvals before the key event"));
                };
                let checked = if req.needs_quorum() {
                    self.set.check_quorum(req, approvals, now).map(|_| ())
                } else {
                    self.set.approvers(req, approvals, now).and_then(|w| if w.is_empty() { Err(QuorumError::TooFew { have: 0, need: 1, who: "nobody".into() }) } else { Ok(()) })
                };
                checked.and_then(|_| key_event_matches(req, &e.body)).map_err(|why| format!("request {request}: {why}"))
            }
            _ => Ok(()),
        }
    }

    /// Applies one officer change whose request was approved by `approvals`.
    fn change(&mut self, body: &crate::EntryBody, req: &Request, approvals: &[Approval], now: i64) -> Result<(), String> {
        let crate::EntryBody::OfficerChanged { action, officer, public_key, quorum, request, .. } = body else { return Ok(()) };
        let named = || Officer { name: officer.clone().unwrap_or_default(), public_key: public_key.clone().unwrap_or_default() };
        match (action.as_str(), req.operation.as_str()) {
            ("enrol", "officers-init") => {
                if !self.set.officers.is_empty() {
                    return Err("officers are already enrolled: a second first enrolment is refused".into());
                }
                let (_, pending) = self.init.get_or_insert_with(|| (request.clone(), OfficerSet { quorum: *quorum, officers: Vec::new() }));
                pending.officers.push(named());
                if req.detail.as_deref() != Some(pending.digest().as_str()) {
                    return Ok(()); // not complete yet
                }
                let (_, complete) = self.init.take().unwrap_or_default();
                complete.check().map_err(|e| e.to_string())?;
                complete.check_all(req, approvals, now).map_err(|e| e.to_string())?;
                self.set = complete;
                Ok(())
            }
            ("enrol", "officer-add") => {
                let new = named();
                if req.detail.as_deref() != Some(new.digest().as_str()) {
                    return Err(format!("the officer-add request does not name officer {}", new.name));
                }
                let mut with = self.set.clone();
                with.officers.push(new.clone());
                let known: Vec<Approval> = approvals.iter().filter(|a| a.officer_key != new.key_id()).cloned().collect();
                self.set.check_quorum(req, &known, now).map_err(|e| e.to_string())?;
                let who = with.approvers(req, approvals, now).map_err(|e| e.to_string())?;
                if !who.iter().any(|o| o.name == new.name) {
                    return Err(format!("officer {} did not sign their own enrolment", new.name));
                }
                with.quorum = *quorum;
                with.check().map_err(|e| e.to_string())?;
                self.set = with;
                Ok(())
            }
            ("remove", "officer-remove") | ("quorum", "set-quorum") => {
                self.set.check_quorum(req, approvals, now).map_err(|e| e.to_string())?;
                let mut after = self.set.clone();
                if action == "remove" {
                    let key = req.detail.clone().unwrap_or_default();
                    after.officers.retain(|o| o.key_id() != key);
                    if after.officers.len() == self.set.officers.len() {
                        return Err(format!("no enrolled officer has key {key}"));
                    }
                } else if req.detail.as_deref() != Some(quorum.to_string().as_str()) {
                    return Err(format!("the set-quorum request is for {}, not {quorum}", req.detail.clone().unwrap_or_default()));
                }
                after.quorum = *quorum;
                after.check().map_err(|e| e.to_string())?;
                self.set = after;
                Ok(())
            }
            (a, op) => Err(format!("officer change {a} under a {op} request")),
        }
    }
}

/// An entry's time (RFC 3339 UTC, with or without a fraction) in unix seconds; 0 if malformed
/// (an entry's time was checked when its batch was).
fn entry_time(time: &str) -> i64 {
    parse_time("time", &format!("{}Z", time.get(..19).unwrap_or(""))).unwrap_or(0)
}

/// The request, the approval and the officer's name of a [`crate::EntryBody::KeyApproval`].
pub(crate) fn approval_parts(body: &crate::EntryBody) -> Option<(Request, Approval, String)> {
    let crate::EntryBody::KeyApproval { operation, hospital, token, key_role, key_version, detail, nonce, issued, expires, officer, officer_key, signature, .. } = body
    else {
        return None;
    };
    let request = Request {
        operation: operation.clone(),
        hospital: hospital.clone(),
        token: token.clone(),
        role: key_role.clone(),
        version: *key_version,
        detail: detail.clone(),
        nonce: nonce.clone(),
        issued: issued.clone(),
        expires: expires.clone(),
    };
    Some((request, Approval { officer_key: officer_key.clone(), signature: signature.clone() }, officer.clone()))
}

fn key_event_matches(req: &Request, body: &crate::EntryBody) -> Result<(), QuorumError> {
    let crate::EntryBody::KeyEvent { key_role, key_version, .. } = body else { return Ok(()) };
    if req.role.as_deref().is_some_and(|r| r != key_role) {
        return Err(QuorumError::Mismatch { field: "role", approved: req.role.clone().unwrap_or_default(), asked: key_role.clone() });
    }
    if req.version.is_some_and(|v| v != *key_version) {
        return Err(QuorumError::Mismatch { field: "version", approved: req.version.unwrap_or(0).to_string(), asked: key_version.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{approval_entry, nonce, request, TestKey};
    use super::*;
    use crate::{Entry, EntryBody};

    const NOW: i64 = 1_735_787_045; // 2025-01-02T03:04:05Z, inside the test request's window

    fn three() -> (Vec<TestKey>, OfficerSet) {
        let keys: Vec<TestKey> = (0..3).map(|_| TestKey::new()).collect();
        let names = ["alice", "bob", "carol"];
        let set = OfficerSet { quorum: 2, officers: keys.iter().zip(names).map(|(k, n)| k.officer(n)).collect() };
        (keys, set)
    }

    #[test]
    fn times_parse_and_format_alike() {
        assert_eq!(format_time(NOW), "2025-01-02T03:04:05Z");
        assert_eq!(parse_time("t", "2025-01-02T03:04:05Z"), Ok(NOW));
        assert!(parse_time("t", "2025-01-02T03:04:05.1Z").is_err());
        assert!(parse_time("t", "2025-01-02T03:04:05+00:00").is_err());
    }

    #[test]
    fn m_approvals_pass_and_m_minus_one_do_not() {
        let (keys, set) = three();
        set.check().expect("a 2 of 3 set");
        let req = request("hospital-a", "destroy");
        let who = set.check_quorum(&req, &[keys[0].approve(&req), keys[2].approve(&req)], NOW).expect("quorum");
        assert_eq!(joined_names(&who), "alice+carol");
        let err = set.check_quorum(&req, &[keys[1].approve(&req)], NOW).expect_err("one is not two");
        assert!(matches!(err, QuorumError::TooFew { have: 1, need: 2, .. }), "{err}");
        assert!(err.to_string().contains("one officer alone"), "{err}");
    }

    #[test]
    fn expired_replayed_elsewhere_mismatched_forged_and_repeated_approvals_are_refused() {
        let (keys, set) = three();
        let req = request("hospital-a", "destroy");
        let both = [keys[0].approve(&req), keys[1].approve(&req)];
        let later = parse_time("t", &req.expires).expect("time") + 1;
        assert!(matches!(set.check_quorum(&req, &both, later), Err(QuorumError::Expired { .. })));
        assert!(matches!(set.check_quorum(&req, &both, NOW - 3600), Err(QuorumError::NotYetValid { .. })));
        // The same signatures do not fit a request for another version, hospital or operation.
        for change in [
            Request { version: Some(2), ..req.clone() },
            Request { hospital: "hospital-b".into(), ..req.clone() },
            Request { operation: "retire".into(), ..req.clone() },
            Request { nonce: "22".repeat(16), ..req.clone() },
        ] {
            assert!(matches!(set.check_quorum(&change, &both, NOW), Err(QuorumError::BadSignature(_))), "{change:?}");
            assert!(req.same_operation(&change).is_err() || change.nonce != req.nonce);
        }
        let asked = Request { version: Some(2), ..req.clone() };
        assert!(matches!(req.same_operation(&asked), Err(QuorumError::Mismatch { field: "version", .. })));
        let stranger = TestKey::new();
        assert!(matches!(set.check_quorum(&req, &[both[0].clone(), stranger.approve(&req)], NOW), Err(QuorumError::UnknownOfficer(_))));
        assert!(matches!(set.check_quorum(&req, &[both[0].clone(), both[0].clone()], NOW), Err(QuorumError::Duplicate(_))));
        let mut forged = both[1].clone();
        forged.officer_key = both[0].officer_key.clone();
        assert!(matches!(set.check_quorum(&req, &[forged, both[1].clone()], NOW), Err(QuorumError::BadSignature(_))));
        // A window longer than a day is refused outright.
        let long = Request { expires: "2025-01-03T03:00:01Z".into(), ..req.clone() };
        assert!(long.validate().is_err());
    }

    #[test]
    fn a_lone_officer_is_never_a_quorum() {
        let (_, mut set) = three();
        set.quorum = 1;
        assert!(matches!(set.check(), Err(QuorumError::Rule(_))));
        set.quorum = 4;
        assert!(matches!(set.check(), Err(QuorumError::Rule(_))));
        set.quorum = 2;
        set.officers[1].name = "alice".into();
        assert!(matches!(set.check(), Err(QuorumError::Rule(_))));
    }

    fn enrol(set: &OfficerSet, req: &Request, o: &Officer, n: u64) -> Entry {
        Entry::new(
            "hospital-a",
            "2025-01-02T03:04:05Z",
            nonce(n),
            EntryBody::OfficerChanged {
                action: "enrol".into(),
                officer: Some(o.name.clone()),
                officer_key: Some(o.key_id()),
                public_key: Some(o.public_key.clone()),
                quorum: set.quorum,
                request: req.id(),
            },
        )
    }

    fn key_event(req: &Request, officer: &str, n: u64) -> Entry {
        Entry::new(
            "hospital-a",
            "2025-01-02T03:04:06Z",
            nonce(n),
            EntryBody::KeyEvent {
                action: "destroy".into(),
                key_role: "kek".into(),
                key_version: 1,
                key_id: "0a".into(),
                officer: officer.into(),
                request: Some(req.id()),
            },
        )
    }

    #[test]
    fn the_audit_replays_enrolment_approvals_and_key_events() {
        let (keys, set) = three();
        let init = Request { operation: "officers-init".into(), role: None, version: None, detail: Some(set.digest()), ..request("hospital-a", "x") };
        let mut entries: Vec<Entry> = Vec::new();
        for (i, (k, o)) in keys.iter().zip(&set.officers).enumerate() {
            entries.push(approval_entry("hospital-a", k, &init, &o.name, 20 + i as u64));
        }
        for (i, o) in set.officers.iter().enumerate() {
            entries.push(enrol(&set, &init, o, 30 + i as u64));
        }
        let destroy = Request { nonce: "33".repeat(16), ..request("hospital-a", "destroy") };
        entries.push(approval_entry("hospital-a", &keys[0], &destroy, "alice", 40));
        entries.push(approval_entry("hospital-a", &keys[1], &destroy, "bob", 41));
        entries.push(key_event(&destroy, "alice+bob", 42));
        for e in &entries {
            assert_eq!(e.validate(), Ok(()), "{e:?}");
        }
        let report = audit(&entries);
        assert_eq!(report.problems, Vec::<(String, String)>::new());
        assert_eq!((report.officer_changes, report.approvals, report.approved_events), (3, 5, 1));

        // The same request used twice, and an operation approved by one officer only.
        let mut bad = entries.clone();
        bad.push(key_event(&destroy, "alice+bob", 43));
        let lone = Request { nonce: "44".repeat(16), ..request("hospital-a", "destroy") };
        bad.push(approval_entry("hospital-a", &keys[2], &lone, "carol", 44));
        bad.push(key_event(&lone, "carol", 45));
        let report = audit(&bad);
        let why: Vec<&str> = report.problems.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("second operation"), "{why:?}");
        assert!(why[1].contains("1 of the required 2"), "{why:?}");

        // Once officers are enrolled, a destruction without their approval is flagged; the
        // shred pass's own is not.
        let mut bypass = entries.clone();
        for (officer, n) in [("root", 50), (SHRED_PASS, 51)] {
            bypass.push(Entry::new(
                "hospital-a",
                "2025-01-02T03:04:07Z",
                nonce(n),
                EntryBody::KeyEvent { action: "destroy".into(), key_role: "kek".into(), key_version: 2, key_id: "0b".into(), officer: officer.into(), request: None },
            ));
        }
        let report = audit(&bypass);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].1.contains("by root ran without the officers' approval"), "{:?}", report.problems);

        // An enrolment the officers did not all sign is flagged.
        let mut unsigned = entries[..2].to_vec();
        unsigned.extend(entries[3..6].iter().cloned());
        let report = audit(&unsigned);
        assert!(report.problems.iter().any(|(_, w)| w.contains("carol must approve")), "{:?}", report.problems);
    }
}
