//! Ledger entries: what happened, who wrote it, and its content-addressed id.
//!
//! Boundary: an entry carries only pseudonyms (patient and user, HMAC under the HSM pseudonym key),
//! hashes, hospital ids and short codes. Never a patient identifier, a name, free text or document
//! content. [`Entry::validate`] enforces this by shape: pseudonyms and hashes must be lowercase hex,
//! every other string is a short code without spaces.

use serde::{Deserialize, Serialize};

use super::canon::{self, Obj};
use super::LedgerError;

/// Longest code field (hospital id, record id, role, purpose, ...), in bytes.
const MAX_CODE_LEN: usize = 128;
/// Most records one consent may list.
const MAX_CONSENT_RECORDS: usize = 256;

/// What happened. Serialized as an internally tagged object (`"kind": "record_anchored"`, ...).
///
/// Holds pseudonyms, hashes and codes only: `patient` and `user` are hex pseudonyms computed with
/// the HSM pseudonym key, `content_hash` is the hex SHA-256 of the document plaintext, hospital ids
/// name gateways. No patient identifier or document content may ever be put in an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryBody {
    /// A record was stored in the custodian's vault.
    RecordAnchored {
        /// Record id.
        record_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Version of the pseudonym key that computed `patient`.
        pseudonym_key_version: u32,
        /// Hex SHA-256 of the document plaintext.
        content_hash: String,
        /// MIME type of the document.
        content_type: String,
        /// Plaintext size in bytes.
        size: u64,
        /// Hospital id of the custodian.
        custodian: String,
        /// Pseudonym of the user who submitted the record (lowercase hex).
        user: String,
        /// Role of that user.
        role: String,
        /// Purpose of use code.
        purpose: String,
    },
    /// A record was read, or a read was refused.
    RecordRead {
        /// Record id.
        record_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the custodian.
        custodian: String,
        /// Hospital id of the reader.
        reader: String,
        /// Pseudonym of the reading user (lowercase hex).
        user: String,
        /// Role of that user.
        role: String,
        /// Purpose of use code.
        purpose: String,
        /// Whether the read was granted.
        granted: bool,
        /// Reason code (for a denial, or a break-glass grant); a code, not prose.
        reason: Option<String>,
    },
    /// The records of a patient were searched for.
    PatientSearched {
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the searching hospital.
        reader: String,
        /// Pseudonym of the searching user (lowercase hex).
        user: String,
        /// Role of that user.
        role: String,
        /// Purpose of use code.
        purpose: String,
        /// Number of records found.
        results: u32,
    },
    /// A patient's consent, recorded by the custodian hospital that holds the records: the
    /// grantee hospital may read them (all of the patient's records there, or those listed)
    /// within the period.
    ConsentRecorded {
        /// Consent id (server-assigned code).
        consent_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the custodian that records the consent (the grantor).
        custodian: String,
        /// Hospital id allowed to read.
        grantee: String,
        /// Records covered; empty means every record of the patient held by the custodian.
        record_ids: Vec<String>,
        /// Start of the period, RFC 3339 UTC, if bounded.
        start: Option<String>,
        /// End of the period, RFC 3339 UTC, if bounded.
        end: Option<String>,
        /// Pseudonym of the user who recorded it.
        user: String,
        /// Role of that user.
        role: String,
    },
    /// A consent withdrawn by the hospital that recorded it.
    ConsentRevoked {
        /// Consent id.
        consent_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the grantor.
        custodian: String,
        /// Hospital id that loses access.
        grantee: String,
        /// Pseudonym of the user who revoked it.
        user: String,
        /// Role of that user.
        role: String,
    },
    /// A record crypto-shredded by its custodian: its key material is destroyed, its hash
    /// stays on the ledger.
    RecordErased {
        /// Record id.
        record_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the custodian.
        custodian: String,
        /// Pseudonym of the user who erased it.
        user: String,
        /// Role of that user.
        role: String,
    },
    /// An IHE MHD SubmissionSet (a FHIR List) stored by the custodian with the records it
    /// submitted. Its content is sealed in the custodian's vault; the ledger knows its id, the
    /// patient pseudonym and the ids of the records it lists.
    ListAnchored {
        /// List id.
        list_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Version of the pseudonym key that computed `patient`.
        pseudonym_key_version: u32,
        /// `submissionset` (the MHD list type code).
        code: String,
        /// The records the list names, in its order.
        record_ids: Vec<String>,
        /// Hospital id of the custodian.
        custodian: String,
        /// Pseudonym of the user who submitted it (lowercase hex).
        user: String,
        /// Role of that user.
        role: String,
        /// Purpose of use code.
        purpose: String,
    },
    /// A record's status changed, by its custodian: `superseded` (replaced by `replaced_by`, a
    /// record of the same custodian) or `entered-in-error`. The record stays readable.
    RecordStatusChanged {
        /// Record id.
        record_id: String,
        /// Patient pseudonym (64 lowercase hex).
        patient: String,
        /// Hospital id of the custodian.
        custodian: String,
        /// The new status: `superseded` or `entered-in-error`.
        status: String,
        /// The record that replaces it (for `superseded` by a replacement).
        replaced_by: Option<String>,
        /// Pseudonym of the user who changed it.
        user: String,
        /// Role of that user.
        role: String,
    },
    /// An HSM key lifecycle event.
    KeyEvent {
        /// One of [`KEY_ACTIONS`].
        action: String,
        /// Which key (ledger signing, TLS, KEK, ...).
        key_role: String,
        /// Key version concerned.
        key_version: u32,
        /// HSM key id (CKA_ID), hex or code.
        key_id: String,
        /// Security officer id: the enrolled officer's name from their credential, the names
        /// of the approving officers joined by `+`, or what in the gateway did it.
        officer: String,
        /// The id of the officers' approved request ([`crate::officers::Request::id`]) the
        /// operation ran under, when it needed one; its [`EntryBody::KeyApproval`] entries come
        /// before it. Absent from older entries (and then left out of the canonical bytes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// One officer's signed approval of a request ([`crate::officers::Request`]), with every
    /// field of the request so that anyone can verify the signature from the ledger alone.
    KeyApproval {
        /// The request id: hex SHA-256 of the signed message.
        request: String,
        /// The operation approved (one of [`crate::officers::OPERATIONS`]).
        operation: String,
        /// The hospital the request names.
        hospital: String,
        /// The HSM token label the request names.
        token: String,
        /// The key role, if the request names one.
        key_role: Option<String>,
        /// The key version, if the request names one.
        key_version: Option<u32>,
        /// The operation-specific detail (a digest, a key id, a number or a code).
        detail: Option<String>,
        /// The request's nonce (32 lowercase hex).
        nonce: String,
        /// Start of the request's window.
        issued: String,
        /// End of the request's window.
        expires: String,
        /// The approving officer's enrolled name.
        officer: String,
        /// Their key id (64 lowercase hex).
        officer_key: String,
        /// Their ECDSA P-256 signature, raw `r || s` in low-S form (128 lowercase hex).
        signature: String,
    },
    /// A change of the hospital's security officers: an officer enrolled (`enrol`, with their
    /// public key) or removed (`remove`), or the quorum changed (`quorum`). `quorum` is M after
    /// the change. Carries names and public keys, nothing about patients.
    OfficerChanged {
        /// `enrol`, `remove` or `quorum`.
        action: String,
        /// The officer concerned (`enrol`, `remove`).
        officer: Option<String>,
        /// Their key id (64 lowercase hex).
        officer_key: Option<String>,
        /// Base64 DER SubjectPublicKeyInfo of their P-256 key (`enrol`).
        public_key: Option<String>,
        /// The quorum M after the change.
        quorum: u32,
        /// The approved request the change ran under.
        request: String,
    },
    /// A change of consortium membership proposed by a member: admit a hospital (`add`), drop
    /// one (`remove`), or replace a member's keys or peer address (`update`). It takes effect in
    /// the block where a majority of the current members (the proposer included) have approved
    /// it. Carries public keys and an address, nothing about patients.
    MembershipProposed {
        /// 32 lowercase hex characters chosen by the proposer.
        proposal_id: String,
        /// `add`, `remove` or `update`.
        action: String,
        /// The hospital concerned.
        hospital_id: String,
        /// Base64 DER SubjectPublicKeyInfo of its ledger signing key (`add`, `update`).
        ledger_public_key: Option<String>,
        /// Version of that key (`add`, `update`).
        ledger_key_version: Option<u32>,
        /// Base64 DER SubjectPublicKeyInfo of its RSA sharing key.
        sharing_public_key: Option<String>,
        /// Its peer listener, `IP:port`.
        peer_address: Option<String>,
        /// Hospital id of the proposing member.
        proposer: String,
    },
    /// A member's approval of an open membership proposal.
    MembershipApproved {
        /// The proposal approved.
        proposal_id: String,
        /// Hospital id of the approving member.
        approver: String,
    },
}

/// The membership change actions a proposal may carry.
pub const MEMBERSHIP_ACTIONS: [&str; 3] = ["add", "remove", "update"];
/// Longest base64 public key a membership entry may carry.
const MAX_KEY_B64: usize = 1024;

/// The list type codes a [`EntryBody::ListAnchored`] may carry.
pub const LIST_CODES: [&str; 1] = ["submissionset"];
/// The statuses a [`EntryBody::RecordStatusChanged`] may set.
pub const RECORD_STATUSES: [&str; 2] = ["superseded", "entered-in-error"];
/// Most records one list may name.
const MAX_LIST_RECORDS: usize = 1024;

/// The key event actions an entry may record.
pub const KEY_ACTIONS: [&str; 9] = ["generate", "rotate", "retire", "destroy", "import-cert", "change-pin", "backup-init", "backup", "restore"];
/// The officer change actions an entry may record.
pub const OFFICER_ACTIONS: [&str; 3] = ["enrol", "remove", "quorum"];

/// A ledger entry.
///
/// `id` is `hex(SHA-256(canonical_bytes()))`, the hash of everything but the id: content
/// addressed, so a retried submission of the same entry has the same id, while `nonce` (16 random
/// bytes chosen by the caller) keeps two identical events apart. The Merkle leaf of an entry is
/// `SHA-256(0x00 || canonical_bytes())`.
///
/// Holds only pseudonyms, hashes and codes, never a patient identifier or document content (see
/// [`EntryBody`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Lowercase hex SHA-256 of the canonical bytes.
    pub id: String,
    /// Hospital id of the gateway that wrote the entry.
    pub gateway: String,
    /// When the event happened, RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`), set by the author.
    /// Informational: it takes no part in ordering or block hashing.
    pub time: String,
    /// 16 random bytes, lowercase hex (32 characters).
    pub nonce: String,
    /// What happened.
    pub body: EntryBody,
}

/// An entry's id: SHA-256 of its canonical bytes, in lowercase hex.
fn id_of(canonical: &[u8]) -> String {
    hex::encode(canon::sha256(canonical))
}

impl Entry {
    /// Builds an entry and computes its id. Call [`Entry::validate`] before submitting it: an
    /// entry that fails validation makes its whole batch invalid.
    pub fn new(gateway: &str, time: &str, nonce: [u8; 16], body: EntryBody) -> Entry {
        let mut entry = Entry {
            id: String::new(),
            gateway: gateway.to_owned(),
            time: time.to_owned(),
            nonce: hex::encode(nonce),
            body,
        };
        entry.id = entry.computed_id();
        entry
    }

    /// Deterministic bytes of the entry without its id: compact JSON
    /// `{"gateway":…,"time":…,"nonce":…,"body":{"kind":…,…}}`, fields in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write(&mut out, false);
        out
    }

    /// The Merkle leaf hash of this entry: `SHA-256(0x00 || canonical_bytes())`.
    pub fn leaf_hash(&self) -> [u8; 32] {
        super::merkle::leaf_hash(&self.canonical_bytes())
    }

    /// Checks that `id` is the hash of the entry's content, spelled in lowercase hex.
    pub fn check_id(&self) -> Result<(), LedgerError> {
        self.check_id_of(&self.canonical_bytes())
    }

    /// [`Entry::check_id`] with the entry's [`Entry::canonical_bytes`] already encoded.
    pub(crate) fn check_id_of(&self, canonical: &[u8]) -> Result<(), LedgerError> {
        if self.id == id_of(canonical) {
            Ok(())
        } else {
            Err(LedgerError::BadId {
                id: self.id.chars().take(64).collect(),
            })
        }
    }

    /// Checks the id and the shape of every field: pseudonyms and hashes are lowercase hex of the
    /// right length, the time is RFC 3339 UTC, hospital ids follow
    /// [`crate::hospital::check_hospital_id`], other codes are 1 to 128 characters from
    /// `A-Z a-z 0-9 - . _ : / @ + = | # ~` (no spaces, so no prose), the content type is a MIME
    /// type, and key event actions are from the fixed list.
    pub fn validate(&self) -> Result<(), LedgerError> {
        self.validate_fields()?;
        self.check_id()
    }

    /// [`Entry::validate`] without the id: for an entry [`Entry::new`] has just made, whose id
    /// is by construction the hash of its content, and for a caller that checks the id from
    /// canonical bytes it encodes anyway.
    pub fn validate_fields(&self) -> Result<(), LedgerError> {
        hospital("gateway", &self.gateway)?;
        if !is_utc_time(&self.time) {
            return Err(bad("time", "not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)"));
        }
        if !canon::is_hex(&self.nonce, 32) {
            return Err(bad("nonce", "not 32 lowercase hex characters"));
        }
        match &self.body {
            EntryBody::RecordAnchored {
                record_id,
                patient,
                pseudonym_key_version: _,
                content_hash,
                content_type,
                size: _,
                custodian,
                user,
                role,
                purpose,
            } => {
                code("record_id", record_id)?;
                patient_pseudonym(patient)?;
                if !canon::is_hex(content_hash, 64) {
                    return Err(bad("content_hash", "not 64 lowercase hex characters"));
                }
                mime("content_type", content_type)?;
                hospital("custodian", custodian)?;
                user_pseudonym(user)?;
                code("role", role)?;
                code("purpose", purpose)?;
            }
            EntryBody::RecordRead {
                record_id,
                patient,
                custodian,
                reader,
                user,
                role,
                purpose,
                granted: _,
                reason,
            } => {
                code("record_id", record_id)?;
                patient_pseudonym(patient)?;
                hospital("custodian", custodian)?;
                hospital("reader", reader)?;
                user_pseudonym(user)?;
                code("role", role)?;
                code("purpose", purpose)?;
                if let Some(reason) = reason {
                    code("reason", reason)?;
                }
            }
            EntryBody::PatientSearched {
                patient,
                reader,
                user,
                role,
                purpose,
                results: _,
            } => {
                patient_pseudonym(patient)?;
                hospital("reader", reader)?;
                user_pseudonym(user)?;
                code("role", role)?;
                code("purpose", purpose)?;
            }
            EntryBody::ConsentRecorded { consent_id, patient, custodian, grantee, record_ids, start, end, user, role } => {
                code("consent_id", consent_id)?;
                patient_pseudonym(patient)?;
                hospital("custodian", custodian)?;
                hospital("grantee", grantee)?;
                if record_ids.len() > MAX_CONSENT_RECORDS {
                    return Err(bad("record_ids", "lists more than 256 records"));
                }
                for r in record_ids {
                    code("record_ids", r)?;
                }
                for (field, t) in [("start", start), ("end", end)] {
                    if t.as_deref().is_some_and(|t| !is_utc_time(t)) {
                        return Err(bad(field, "not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)"));
                    }
                }
                user_pseudonym(user)?;
                code("role", role)?;
            }
            EntryBody::RecordErased { record_id, patient, custodian, user, role } => {
                code("record_id", record_id)?;
                patient_pseudonym(patient)?;
                hospital("custodian", custodian)?;
                user_pseudonym(user)?;
                code("role", role)?;
            }
            EntryBody::ConsentRevoked { consent_id, patient, custodian, grantee, user, role } => {
                code("consent_id", consent_id)?;
                patient_pseudonym(patient)?;
                hospital("custodian", custodian)?;
                hospital("grantee", grantee)?;
                user_pseudonym(user)?;
                code("role", role)?;
            }
            EntryBody::ListAnchored { list_id, patient, pseudonym_key_version: _, code: list_code, record_ids, custodian, user, role, purpose } => {
                code("list_id", list_id)?;
                patient_pseudonym(patient)?;
                if !LIST_CODES.contains(&list_code.as_str()) {
                    return Err(bad("code", "not submissionset"));
                }
                if record_ids.is_empty() || record_ids.len() > MAX_LIST_RECORDS {
                    return Err(bad("record_ids", "must list 1 to 1024 records"));
                }
                for r in record_ids {
                    code("record_ids", r)?;
                }
                hospital("custodian", custodian)?;
                user_pseudonym(user)?;
                code("role", role)?;
                code("purpose", purpose)?;
            }
            EntryBody::RecordStatusChanged { record_id, patient, custodian, status, replaced_by, user, role } => {
                code("record_id", record_id)?;
                patient_pseudonym(patient)?;
                hospital("custodian", custodian)?;
                if !RECORD_STATUSES.contains(&status.as_str()) {
                    return Err(bad("status", "not one of superseded, entered-in-error"));
                }
                match replaced_by {
                    Some(_) if status != "superseded" => return Err(bad("replaced_by", "only a superseded record is replaced")),
                    Some(r) if r == record_id => return Err(bad("replaced_by", "a record does not replace itself")),
                    Some(r) => code("replaced_by", r)?,
                    None => {}
                }
                user_pseudonym(user)?;
                code("role", role)?;
            }
            EntryBody::KeyEvent {
                action,
                key_role,
                key_version: _,
                key_id,
                officer,
                request,
            } => {
                if !KEY_ACTIONS.contains(&action.as_str()) {
                    return Err(bad(
                        "action",
                        "not one of generate, rotate, retire, destroy, import-cert, change-pin, backup-init, backup, restore",
                    ));
                }
                code("key_role", key_role)?;
                code("key_id", key_id)?;
                code("officer", officer)?;
                if request.as_deref().is_some_and(|r| !canon::is_hex(r, 64)) {
                    return Err(bad("request", "not 64 lowercase hex characters"));
                }
            }
            EntryBody::KeyApproval { request, officer_key, signature, officer, .. } => {
                if !canon::is_hex(request, 64) || !canon::is_hex(officer_key, 64) {
                    return Err(bad("request", "request and officer_key must be 64 lowercase hex characters"));
                }
                if !canon::is_hex(signature, 128) {
                    return Err(bad("signature", "not 128 lowercase hex characters"));
                }
                crate::officers::check_name(officer).map_err(|_| bad("officer", "not an officer name"))?;
                let (req, _, _) = crate::officers::approval_parts(&self.body).ok_or(bad("request", "not an approval"))?;
                req.validate().map_err(|_| bad("request", "the approved request is malformed"))?;
                if req.id() != *request {
                    return Err(bad("request", "is not the id of the approved request"));
                }
            }
            EntryBody::OfficerChanged { action, officer, officer_key, public_key, quorum: _, request } => {
                if !OFFICER_ACTIONS.contains(&action.as_str()) {
                    return Err(bad("action", "not one of enrol, remove, quorum"));
                }
                if !canon::is_hex(request, 64) {
                    return Err(bad("request", "not 64 lowercase hex characters"));
                }
                if let Some(o) = officer {
                    crate::officers::check_name(o).map_err(|_| bad("officer", "not an officer name"))?;
                }
                if officer_key.as_deref().is_some_and(|k| !canon::is_hex(k, 64)) {
                    return Err(bad("officer_key", "not 64 lowercase hex characters"));
                }
                if let Some(k) = public_key {
                    public_key_b64("public_key", k)?;
                }
                let complete = match action.as_str() {
                    "enrol" => officer.is_some() && officer_key.is_some() && public_key.is_some(),
                    "remove" => officer.is_some() && officer_key.is_some() && public_key.is_none(),
                    _ => officer.is_none() && officer_key.is_none() && public_key.is_none(),
                };
                if !complete {
                    return Err(bad("action", "enrol names an officer with their key, remove an officer, quorum nobody"));
                }
            }
            EntryBody::MembershipProposed {
                proposal_id,
                action,
                hospital_id,
                ledger_public_key,
                ledger_key_version,
                sharing_public_key,
                peer_address,
                proposer,
            } => {
                if !canon::is_hex(proposal_id, 32) {
                    return Err(bad("proposal_id", "not 32 lowercase hex characters"));
                }
                if !MEMBERSHIP_ACTIONS.contains(&action.as_str()) {
                    return Err(bad("action", "not one of add, remove, update"));
                }
                hospital("hospital_id", hospital_id)?;
                hospital("proposer", proposer)?;
                for (field, k) in [("ledger_public_key", ledger_public_key), ("sharing_public_key", sharing_public_key)] {
                    if let Some(k) = k {
                        public_key_b64(field, k)?;
                    }
                }
                if let Some(a) = peer_address {
                    if a.parse::<std::net::SocketAddr>().is_err() {
                        return Err(bad("peer_address", "not IP:port"));
                    }
                }
                let keyed = ledger_public_key.is_some() && ledger_key_version.is_some();
                match action.as_str() {
                    "remove" if ledger_public_key.is_some() || ledger_key_version.is_some() || sharing_public_key.is_some() || peer_address.is_some() => {
                        return Err(bad("action", "a removal carries no keys or address"))
                    }
                    "add" if !keyed => return Err(bad("ledger_public_key", "an admission needs the ledger public key and its version")),
                    "update" if ledger_public_key.is_some() != ledger_key_version.is_some() => {
                        return Err(bad("ledger_key_version", "a new ledger key needs its version, and a version its key"))
                    }
                    _ => {}
                }
            }
            EntryBody::MembershipApproved { proposal_id, approver } => {
                if !canon::is_hex(proposal_id, 32) {
                    return Err(bad("proposal_id", "not 32 lowercase hex characters"));
                }
                hospital("approver", approver)?;
            }
        }
        Ok(())
    }

    /// Pseudonym of the patient the entry is about, if any (for the audit index).
    pub fn patient(&self) -> Option<&str> {
        match &self.body {
            EntryBody::RecordAnchored { patient, .. }
            | EntryBody::RecordRead { patient, .. }
            | EntryBody::PatientSearched { patient, .. }
            | EntryBody::ConsentRecorded { patient, .. }
            | EntryBody::ConsentRevoked { patient, .. }
            | EntryBody::RecordErased { patient, .. }
            | EntryBody::ListAnchored { patient, .. }
            | EntryBody::RecordStatusChanged { patient, .. } => Some(patient),
            EntryBody::KeyEvent { .. }
            | EntryBody::KeyApproval { .. }
            | EntryBody::OfficerChanged { .. }
            | EntryBody::MembershipProposed { .. }
            | EntryBody::MembershipApproved { .. } => None,
        }
    }

    /// Id of the record the entry is about, if any.
    pub fn record_id(&self) -> Option<&str> {
        match &self.body {
            EntryBody::RecordAnchored { record_id, .. }
            | EntryBody::RecordRead { record_id, .. }
            | EntryBody::RecordErased { record_id, .. }
            | EntryBody::RecordStatusChanged { record_id, .. } => Some(record_id),
            EntryBody::PatientSearched { .. }
            | EntryBody::ListAnchored { .. }
            | EntryBody::KeyEvent { .. }
            | EntryBody::KeyApproval { .. }
            | EntryBody::OfficerChanged { .. }
            | EntryBody::MembershipProposed { .. }
            | EntryBody::MembershipApproved { .. }
            | EntryBody::ConsentRecorded { .. }
            | EntryBody::ConsentRevoked { .. } => None,
        }
    }

    fn computed_id(&self) -> String {
        id_of(&self.canonical_bytes())
    }

    /// Writes the entry as compact JSON, with the id first when `with_id` (the transport form,
    /// identical to `serde_json`'s) or without it (the canonical bytes).
    pub(super) fn write(&self, out: &mut Vec<u8>, with_id: bool) {
        let mut o = Obj::begin(out);
        if with_id {
            o.str("id", &self.id);
        }
        o.str("gateway", &self.gateway)
            .str("time", &self.time)
            .str("nonce", &self.nonce)
            .with("body", |out| self.body.write(out))
            .end();
    }
}

impl EntryBody {
    fn write(&self, out: &mut Vec<u8>) {
        let mut o = Obj::begin(out);
        match self {
            EntryBody::RecordAnchored {
                record_id,
                patient,
                pseudonym_key_version,
                content_hash,
                content_type,
                size,
                custodian,
                user,
                role,
                purpose,
            } => o
                .str("kind", "record_anchored")
                .str("record_id", record_id)
                .str("patient", patient)
                .u64("pseudonym_key_version", u64::from(*pseudonym_key_version))
                .str("content_hash", content_hash)
                .str("content_type", content_type)
                .u64("size", *size)
                .str("custodian", custodian)
                .str("user", user)
                .str("role", role)
                .str("purpose", purpose),
            EntryBody::RecordRead {
                record_id,
                patient,
                custodian,
                reader,
                user,
                role,
                purpose,
                granted,
                reason,
            } => o
                .str("kind", "record_read")
                .str("record_id", record_id)
                .str("patient", patient)
                .str("custodian", custodian)
                .str("reader", reader)
                .str("user", user)
                .str("role", role)
                .str("purpose", purpose)
                .bool("granted", *granted)
                .opt_str("reason", reason.as_deref()),
            EntryBody::PatientSearched {
                patient,
                reader,
                user,
                role,
                purpose,
                results,
            } => o
                .str("kind", "patient_searched")
                .str("patient", patient)
                .str("reader", reader)
                .str("user", user)
                .str("role", role)
                .str("purpose", purpose)
                .u64("results", u64::from(*results)),
            EntryBody::ConsentRecorded { consent_id, patient, custodian, grantee, record_ids, start, end, user, role } => o
                .str("kind", "consent_recorded")
                .str("consent_id", consent_id)
                .str("patient", patient)
                .str("custodian", custodian)
                .str("grantee", grantee)
                .array("record_ids", record_ids, |out, r| canon::write_str(out, r))
                .opt_str("start", start.as_deref())
                .opt_str("end", end.as_deref())
                .str("user", user)
                .str("role", role),
            EntryBody::RecordErased { record_id, patient, custodian, user, role } => o
                .str("kind", "record_erased")
                .str("record_id", record_id)
                .str("patient", patient)
                .str("custodian", custodian)
                .str("user", user)
                .str("role", role),
            EntryBody::ConsentRevoked { consent_id, patient, custodian, grantee, user, role } => o
                .str("kind", "consent_revoked")
                .str("consent_id", consent_id)
                .str("patient", patient)
                .str("custodian", custodian)
                .str("grantee", grantee)
                .str("user", user)
                .str("role", role),
            EntryBody::ListAnchored { list_id, patient, pseudonym_key_version, code, record_ids, custodian, user, role, purpose } => o
                .str("kind", "list_anchored")
                .str("list_id", list_id)
                .str("patient", patient)
                .u64("pseudonym_key_version", u64::from(*pseudonym_key_version))
                .str("code", code)
                .array("record_ids", record_ids, |out, r| canon::write_str(out, r))
                .str("custodian", custodian)
                .str("user", user)
                .str("role", role)
                .str("purpose", purpose),
            EntryBody::RecordStatusChanged { record_id, patient, custodian, status, replaced_by, user, role } => o
                .str("kind", "record_status_changed")
                .str("record_id", record_id)
                .str("patient", patient)
                .str("custodian", custodian)
                .str("status", status)
                .opt_str("replaced_by", replaced_by.as_deref())
                .str("user", user)
                .str("role", role),
            EntryBody::KeyEvent {
                action,
                key_role,
                key_version,
                key_id,
                officer,
                request,
            } => {
                o.str("kind", "key_event")
                    .str("action", action)
                    .str("key_role", key_role)
                    .u64("key_version", u64::from(*key_version))
                    .str("key_id", key_id)
                    .str("officer", officer);
                // Left out when absent, as serde leaves it out: older entries keep their ids.
                if let Some(r) = request {
                    o.str("request", r);
                }
                &mut o
            }
            EntryBody::KeyApproval {
                request,
                operation,
                hospital,
                token,
                key_role,
                key_version,
                detail,
                nonce,
                issued,
                expires,
                officer,
                officer_key,
                signature,
            } => o
                .str("kind", "key_approval")
                .str("request", request)
                .str("operation", operation)
                .str("hospital", hospital)
                .str("token", token)
                .opt_str("key_role", key_role.as_deref())
                .opt_u64("key_version", key_version.map(u64::from))
                .opt_str("detail", detail.as_deref())
                .str("nonce", nonce)
                .str("issued", issued)
                .str("expires", expires)
                .str("officer", officer)
                .str("officer_key", officer_key)
                .str("signature", signature),
            EntryBody::OfficerChanged { action, officer, officer_key, public_key, quorum, request } => o
                .str("kind", "officer_changed")
                .str("action", action)
                .opt_str("officer", officer.as_deref())
                .opt_str("officer_key", officer_key.as_deref())
                .opt_str("public_key", public_key.as_deref())
                .u64("quorum", u64::from(*quorum))
                .str("request", request),
            EntryBody::MembershipProposed {
                proposal_id,
                action,
                hospital_id,
                ledger_public_key,
                ledger_key_version,
                sharing_public_key,
                peer_address,
                proposer,
            } => o
                .str("kind", "membership_proposed")
                .str("proposal_id", proposal_id)
                .str("action", action)
                .str("hospital_id", hospital_id)
                .opt_str("ledger_public_key", ledger_public_key.as_deref())
                .opt_u64("ledger_key_version", ledger_key_version.map(u64::from))
                .opt_str("sharing_public_key", sharing_public_key.as_deref())
                .opt_str("peer_address", peer_address.as_deref())
                .str("proposer", proposer),
            EntryBody::MembershipApproved { proposal_id, approver } => o
                .str("kind", "membership_approved")
                .str("proposal_id", proposal_id)
                .str("approver", approver),
        }
        .end();
    }
}

fn bad(field: &'static str, reason: &'static str) -> LedgerError {
    LedgerError::BadEntry { field, reason }
}

/// A short code: hospital id, record id, role, purpose, reason, key id, officer id.
fn code(field: &'static str, value: &str) -> Result<(), LedgerError> {
    if value.is_empty() || value.len() > MAX_CODE_LEN {
        return Err(bad(field, "must be 1 to 128 characters"));
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:/@+=|#~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(field, "only A-Z a-z 0-9 - . _ : / @ + = | # ~ are allowed"))
    }
}

/// A hospital id ([`crate::hospital::check_hospital_id`]): the one rule for every field that
/// names a gateway.
fn hospital(field: &'static str, value: &str) -> Result<(), LedgerError> {
    crate::hospital::check_hospital_id(value).map_err(|reason| bad(field, reason))
}

/// Standard base64 of a DER public key, at most [`MAX_KEY_B64`] characters.
fn public_key_b64(field: &'static str, value: &str) -> Result<(), LedgerError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_KEY_B64
        && value.len() % 4 == 0
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(field, "not a base64 public key of at most 1024 characters"))
    }
}

/// A MIME type, parameters allowed (`text/plain; charset=utf-8`).
fn mime(field: &'static str, value: &str) -> Result<(), LedgerError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_CODE_LEN
        && value.contains('/')
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+/;= ".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(field, "not a MIME type"))
    }
}

fn patient_pseudonym(value: &str) -> Result<(), LedgerError> {
    if canon::is_hex(value, 64) {
        Ok(())
    } else {
        Err(bad("patient", "not a 64 lowercase hex pseudonym"))
    }
}

/// User pseudonyms: lowercase hex, 32 to 128 characters, even length.
fn user_pseudonym(value: &str) -> Result<(), LedgerError> {
    let n = value.len();
    if (32..=128).contains(&n) && n % 2 == 0 && canon::is_lower_hex(value) {
        Ok(())
    } else {
        Err(bad("user", "not a lowercase hex pseudonym of 32 to 128 characters"))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with plausible ranges (not a full calendar check).
fn is_utc_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if !seps.iter().all(|&(i, c)| b.get(i) == Some(&c)) {
        return false;
    }
    let fields = (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    let (Some(_), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = fields else {
        return false;
    };
    if !((1..=12).contains(&mo) && (1..=31).contains(&d) && h <= 23 && mi <= 59 && sec <= 60) {
        return false;
    }
    match b.get(19..) {
        Some(b"Z") => true,
        Some([b'.', frac @ .., b'Z']) => {
            (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{anchored, nonce, one_of_each, pseudonym};
    use super::*;

    #[test]
    fn id_is_deterministic_and_content_addressed() {
        for e in one_of_each("hospital-a") {
            let again = Entry::new(&e.gateway, &e.time, nonce_of(&e), e.body.clone());
            assert_eq!(e.id, again.id);
            assert_eq!(e.id, hex::encode(canon::sha256(&e.canonical_bytes())));
            assert_eq!(e.check_id(), Ok(()));
            assert_eq!(e.validate(), Ok(()));
        }
    }

    fn nonce_of(e: &Entry) -> [u8; 16] {
        let mut n = [0u8; 16];
        hex::decode_to_slice(&e.nonce, &mut n).unwrap_or_default();
        n
    }

    /// Every field, changed on its own, changes the id.
    #[test]
    fn id_changes_with_every_field() {
        let base = Entry::new(
            "hospital-a",
            "2025-01-02T03:04:05Z",
            nonce(7),
            EntryBody::RecordRead {
                record_id: "r".into(),
                patient: pseudonym("p"),
                custodian: "c".into(),
                reader: "d".into(),
                user: pseudonym("u"),
                role: "x".into(),
                purpose: "y".into(),
                granted: true,
                reason: None,
            },
        );
        let mut variants: Vec<Entry> = Vec::new();
        let mut with = |f: &dyn Fn(&mut Entry)| {
            let mut e = base.clone();
            f(&mut e);
            variants.push(Entry::new(&e.gateway, &e.time, nonce_of(&e), e.body));
        };
        with(&|e| e.gateway = "hospital-b".into());
        with(&|e| e.time = "2025-01-02T03:04:06Z".into());
        with(&|e| e.nonce = hex::encode(nonce(8)));
        let fields: [&dyn Fn(&mut EntryBody); 9] = [
            &|b| set_str(b, "record_id"),
            &|b| set_str(b, "patient"),
            &|b| set_str(b, "custodian"),
            &|b| set_str(b, "reader"),
            &|b| set_str(b, "user"),
            &|b| set_str(b, "role"),
            &|b| set_str(b, "purpose"),
            &|b| {
                if let EntryBody::RecordRead { granted, .. } = b {
                    *granted = false;
                }
            },
            &|b| {
                if let EntryBody::RecordRead { reason, .. } = b {
                    *reason = Some("break-glass".into());
                }
            },
        ];
        for f in fields {
            with(&|e| f(&mut e.body));
        }
        assert_eq!(variants.len(), 12);
        let mut ids: Vec<&str> = variants.iter().map(|e| e.id.as_str()).collect();
        ids.push(&base.id);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 13, "every change must give a new id");

        // Numbers of the other kinds too.
        let a = anchored("hospital-a", 1);
        let mut b = a.clone();
        if let EntryBody::RecordAnchored { size, .. } = &mut b.body {
            *size += 1;
        }
        assert_ne!(a.id, Entry::new(&b.gateway, &b.time, nonce(1), b.body).id);
    }

    fn set_str(b: &mut EntryBody, field: &str) {
        if let EntryBody::RecordRead {
            record_id,
            patient,
            custodian,
            reader,
            user,
            role,
            purpose,
            ..
        } = b
        {
            let target = match field {
                "record_id" => record_id,
                "patient" => patient,
                "custodian" => custodian,
                "reader" => reader,
                "user" => user,
                "role" => role,
                _ => purpose,
            };
            target.push('0');
        }
    }

    #[test]
    fn tampering_is_detected_by_check_id() {
        let mut e = anchored("hospital-a", 1);
        e.time = "2025-01-02T03:04:06Z".into();
        assert!(matches!(e.check_id(), Err(LedgerError::BadId { .. })));
        let mut e = anchored("hospital-a", 1);
        e.id = e.id.to_uppercase();
        assert!(matches!(e.check_id(), Err(LedgerError::BadId { .. })));
    }

    #[test]
    fn validate_is_the_fields_and_the_id() {
        for e in one_of_each("hospital-a") {
            assert_eq!(e.validate_fields(), Ok(()));
            assert_eq!(e.validate(), Ok(()));
        }
        // A tampered time keeps a valid shape: only the id check sees it.
        let mut e = anchored("hospital-a", 1);
        e.time = "2025-01-02T03:04:06Z".into();
        assert_eq!(e.validate_fields(), Ok(()));
        assert!(matches!(e.validate(), Err(LedgerError::BadId { .. })));
        // A malformed field is refused by both, before the id is looked at.
        let mut e = anchored("hospital-a", 1);
        e.nonce = "not hex".into();
        assert!(e.validate_fields().is_err());
        assert_eq!(e.validate(), e.validate_fields());
    }

    #[test]
    fn canonical_bytes_survive_a_round_trip_and_match_serde() {
        for e in one_of_each("hospital-a") {
            let mut ours = Vec::new();
            e.write(&mut ours, true);
            let theirs = serde_json::to_vec(&e).unwrap_or_default();
            assert_eq!(ours, theirs, "transport form must equal serde_json's");
            let back: Entry = serde_json::from_slice(&theirs).unwrap_or_else(|_| anchored("x", 0));
            assert_eq!(back, e);
            assert_eq!(back.canonical_bytes(), e.canonical_bytes());
            let mut again = Vec::new();
            back.write(&mut again, true);
            assert_eq!(again, ours);
        }
    }

    #[test]
    fn canonical_bytes_are_pinned() {
        let e = Entry::new(
            "hospital-a",
            "2025-01-02T03:04:05Z",
            [0u8; 16],
            EntryBody::KeyEvent {
                action: "generate".into(),
                key_role: "ledger".into(),
                key_version: 1,
                key_id: "01".into(),
                officer: "so-1".into(),
                request: None,
            },
        );
        assert_eq!(
            String::from_utf8_lossy(&e.canonical_bytes()),
            r#"{"gateway":"hospital-a","time":"2025-01-02T03:04:05Z","nonce":"00000000000000000000000000000000","body":{"kind":"key_event","action":"generate","key_role":"ledger","key_version":1,"key_id":"01","officer":"so-1"}}"#
        );
    }

    #[test]
    fn membership_entries_are_pinned_too() {
        let e = Entry::new(
            "hospital-a",
            "2025-01-02T03:04:05Z",
            [0u8; 16],
            EntryBody::MembershipProposed {
                proposal_id: "ab".repeat(16),
                action: "remove".into(),
                hospital_id: "hospital-c".into(),
                ledger_public_key: None,
                ledger_key_version: None,
                sharing_public_key: None,
                peer_address: None,
                proposer: "hospital-a".into(),
            },
        );
        assert_eq!(
            String::from_utf8_lossy(&e.canonical_bytes()),
            r#"{"gateway":"hospital-a","time":"2025-01-02T03:04:05Z","nonce":"00000000000000000000000000000000","body":{"kind":"membership_proposed","proposal_id":"abababababababababababababababab","action":"remove","hospital_id":"hospital-c","ledger_public_key":null,"ledger_key_version":null,"sharing_public_key":null,"peer_address":null,"proposer":"hospital-a"}}"#
        );
        assert_eq!(e.validate(), Ok(()));
        let mut keyed = e.clone();
        if let EntryBody::MembershipProposed { ledger_key_version, .. } = &mut keyed.body {
            *ledger_key_version = Some(2);
        }
        let keyed = Entry::new(&keyed.gateway, &keyed.time, [0u8; 16], keyed.body);
        assert!(keyed.validate().is_err(), "a removal carries no keys");
    }

    #[test]
    fn list_and_status_entries_are_pinned_and_shape_checked() {
        let list = Entry::new(
            "hospital-a",
            "2025-01-02T03:04:05Z",
            [0u8; 16],
            EntryBody::ListAnchored {
                list_id: "l1".into(),
                patient: "ab".repeat(32),
                pseudonym_key_version: 2,
                code: "submissionset".into(),
                record_ids: vec!["r1".into(), "r2".into()],
                custodian: "hospital-a".into(),
                user: "cd".repeat(16),
                role: "physician".into(),
                purpose: "TREAT".into(),
            },
        );
        assert_eq!(
            String::from_utf8_lossy(&list.canonical_bytes()),
            format!(
                r#"{{"gateway":"hospital-a","time":"2025-01-02T03:04:05Z","nonce":"00000000000000000000000000000000","body":{{"kind":"list_anchored","list_id":"l1","patient":"{}","pseudonym_key_version":2,"code":"submissionset","record_ids":["r1","r2"],"custodian":"hospital-a","user":"{}","role":"physician","purpose":"TREAT"}}}}"#,
                "ab".repeat(32),
                "cd".repeat(16)
            )
        );
        assert_eq!(list.validate(), Ok(()));
        let status = |status: &str, replaced_by: Option<&str>| {
            Entry::new(
                "hospital-a",
                "2025-01-02T03:04:05Z",
                [0u8; 16],
                EntryBody::RecordStatusChanged {
                    record_id: "r1".into(),
                    patient: "ab".repeat(32),
                    custodian: "hospital-a".into(),
                    status: status.into(),
                    replaced_by: replaced_by.map(str::to_owned),
                    user: "cd".repeat(16),
                    role: "physician".into(),
                },
            )
        };
        assert_eq!(
            String::from_utf8_lossy(&status("superseded", Some("r2")).canonical_bytes()),
            format!(
                r#"{{"gateway":"hospital-a","time":"2025-01-02T03:04:05Z","nonce":"00000000000000000000000000000000","body":{{"kind":"record_status_changed","record_id":"r1","patient":"{}","custodian":"hospital-a","status":"superseded","replaced_by":"r2","user":"{}","role":"physician"}}}}"#,
                "ab".repeat(32),
                "cd".repeat(16)
            )
        );
        assert_eq!(status("superseded", Some("r2")).validate(), Ok(()));
        assert_eq!(status("superseded", None).validate(), Ok(()));
        assert_eq!(status("entered-in-error", None).validate(), Ok(()));
        for (e, field) in [
            (status("current", None), "status"),
            (status("Deprecated by Dr Jane Doe", None), "status"),
            (status("entered-in-error", Some("r2")), "replaced_by"),
            (status("superseded", Some("r1")), "replaced_by"),
            (status("superseded", Some("r 2")), "replaced_by"),
        ] {
            assert!(matches!(e.validate(), Err(LedgerError::BadEntry { field: f, .. }) if f == field), "{field}: {:?}", e.validate());
        }
        let mut bad = list.clone();
        for (change, field) in [
            (Box::new(|b: &mut EntryBody| if let EntryBody::ListAnchored { code, .. } = b { *code = "folder note".into() }) as Box<dyn Fn(&mut EntryBody)>, "code"),
            (Box::new(|b: &mut EntryBody| if let EntryBody::ListAnchored { record_ids, .. } = b { record_ids.clear() }), "record_ids"),
            (Box::new(|b: &mut EntryBody| if let EntryBody::ListAnchored { record_ids, .. } = b { record_ids.push("Jane Doe".into()) }), "record_ids"),
            (Box::new(|b: &mut EntryBody| if let EntryBody::ListAnchored { patient, .. } = b { *patient = "12345".into() }), "patient"),
        ] {
            let mut body = list.body.clone();
            change(&mut body);
            bad = Entry::new(&bad.gateway, &bad.time, [0u8; 16], body);
            assert!(matches!(bad.validate(), Err(LedgerError::BadEntry { field: f, .. }) if f == field), "{field}: {:?}", bad.validate());
        }
        assert_eq!(list.patient(), Some("ab".repeat(32).as_str()));
        assert_eq!(list.record_id(), None);
        assert_eq!(status("superseded", None).record_id(), Some("r1"));
    }

    #[test]
    fn decoding_rejects_unknown_fields_and_kinds() {
        let e = anchored("hospital-a", 1);
        let json = String::from_utf8(serde_json::to_vec(&e).unwrap_or_default()).unwrap_or_default();
        let extra_top = json.replacen("{\"id\"", "{\"name\":\"Jane Doe\",\"id\"", 1);
        assert!(serde_json::from_str::<Entry>(&extra_top).is_err());
        let extra_body = json.replacen("\"kind\"", "\"name\":\"Jane Doe\",\"kind\"", 1);
        assert!(serde_json::from_str::<Entry>(&extra_body).is_err());
        let bad_kind = json.replacen("record_anchored", "record_deleted", 1);
        assert!(serde_json::from_str::<Entry>(&bad_kind).is_err());
        let dup = json.replacen("{\"id\"", "{\"gateway\":\"x\",\"id\"", 1);
        assert!(serde_json::from_str::<Entry>(&dup).is_err());
        assert!(serde_json::from_str::<Entry>(&json).is_ok());
    }

    #[test]
    fn validation_refuses_identifiers_and_prose() {
        let ok = anchored("hospital-a", 1);
        assert_eq!(ok.validate(), Ok(()));
        type Change = Box<dyn Fn(&mut EntryBody)>;
        let cases: Vec<(&str, Change)> = vec![
            ("patient", Box::new(|b| set_anchored(b, "patient", "1234567890"))),
            ("patient", Box::new(|b| set_anchored(b, "patient", &pseudonym("p").to_uppercase()))),
            ("user", Box::new(|b| set_anchored(b, "user", "jdoe"))),
            ("content_hash", Box::new(|b| set_anchored(b, "content_hash", "abc"))),
            ("content_type", Box::new(|b| set_anchored(b, "content_type", "pdf"))),
            ("role", Box::new(|b| set_anchored(b, "role", "Jane Doe"))),
            ("purpose", Box::new(|b| set_anchored(b, "purpose", ""))),
            ("record_id", Box::new(|b| set_anchored(b, "record_id", &"r".repeat(129)))),
            ("custodian", Box::new(|b| set_anchored(b, "custodian", "a\nb"))),
        ];
        for (field, change) in cases {
            let mut body = ok.body.clone();
            change(&mut body);
            let e = Entry::new(&ok.gateway, &ok.time, nonce(1), body);
            assert!(
                matches!(e.validate(), Err(LedgerError::BadEntry { field: f, .. }) if f == field),
                "{field}: {:?}",
                e.validate()
            );
        }
        let key = |action: &str| {
            Entry::new(
                "hospital-a",
                "2025-01-02T03:04:05Z",
                nonce(1),
                EntryBody::KeyEvent {
                    action: action.into(),
                    key_role: "kek".into(),
                    key_version: 1,
                    key_id: "01".into(),
                    officer: "so".into(),
                    request: None,
                },
            )
        };
        assert_eq!(key("import-cert").validate(), Ok(()));
        assert!(matches!(
            key("export").validate(),
            Err(LedgerError::BadEntry { field: "action", .. })
        ));
        let mut tampered = ok.clone();
        tampered.nonce = hex::encode(nonce(2));
        assert!(matches!(tampered.validate(), Err(LedgerError::BadId { .. })));
    }

    fn set_anchored(b: &mut EntryBody, field: &str, value: &str) {
        if let EntryBody::RecordAnchored {
            record_id,
            patient,
            content_hash,
            content_type,
            custodian,
            user,
            role,
            purpose,
            ..
        } = b
        {
            let target = match field {
                "record_id" => record_id,
                "patient" => patient,
                "content_hash" => content_hash,
                "content_type" => content_type,
                "custodian" => custodian,
                "user" => user,
                "role" => role,
                _ => purpose,
            };
            *target = value.to_owned();
        }
    }

    #[test]
    fn times_must_be_rfc3339_utc() {
        for ok in ["2025-01-02T03:04:05Z", "2025-12-31T23:59:60.123456789Z", "1999-01-01T00:00:00.1Z"] {
            assert!(is_utc_time(ok), "{ok}");
        }
        for bad in [
            "2025-01-02 03:04:05Z",
            "2025-01-02T03:04:05+01:00",
            "2025-01-02T03:04:05",
            "2025-13-02T03:04:05Z",
            "2025-01-00T03:04:05Z",
            "2025-01-02T24:04:05Z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05.1234567890Z",
            "2025-01-02t03:04:05z",
            "+025-01-02T03:04:05Z",
            "",
        ] {
            assert!(!is_utc_time(bad), "{bad}");
        }
    }

    #[test]
    fn patient_and_record_accessors() {
        let all = one_of_each("hospital-a");
        assert_eq!(all[0].patient(), Some(pseudonym("patient 1").as_str()));
        assert_eq!(all[0].record_id(), Some("rec-1"));
        assert_eq!(all[1].record_id(), Some("rec-1"));
        assert_eq!(all[2].patient(), Some(pseudonym("patient 1").as_str()));
        assert_eq!(all[2].record_id(), None);
        assert_eq!(all[3].patient(), None);
        assert_eq!(all[3].record_id(), None);
    }
}
