//! Ledger entries rendered as FHIR AuditEvent resources, in the style of IHE Basic Audit Log
//! Patterns (BALP): who (pseudonymised user, role, hospital), what (the record), when, why
//! (purpose of use) and the outcome.
//!
//! Boundary: typed values in, FHIR JSON out. The patient appears only as the ledger pseudonym.

use serde_json::{json, Value};

use super::resources::HOSPITAL_SYSTEM;

/// Identifier system of ledger pseudonyms (patients and users).
pub const PSEUDONYM_SYSTEM: &str = "urn:medgate:pseudonym";
/// Identifier system of ledger entry ids.
pub const LEDGER_ENTRY_SYSTEM: &str = "urn:medgate:ledger-entry";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A record was stored (ITI-65).
    Create,
    /// A record was read (ITI-68), or the read was refused.
    Read,
    /// A patient's records were searched for (ITI-67).
    Search,
    /// A consent was recorded (access granted to another hospital).
    ConsentGranted,
    /// A consent was revoked.
    ConsentRevoked,
    /// A record was erased (crypto-shredded).
    Erase,
    /// A record's status was changed by its custodian (superseded, entered-in-error).
    StatusChange,
}

/// One ledger entry about a patient, reduced to what an AuditEvent shows.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub entry_id: &'a str,
    /// Block height the entry is in.
    pub height: u64,
    /// When it happened (RFC 3339).
    pub time: &'a str,
    pub action: AuditAction,
    /// Whether the access was granted.
    pub granted: bool,
    /// Reason code of a denial or break-glass.
    pub reason: Option<&'a str>,
    /// The record concerned, if any.
    pub record_id: Option<&'a str>,
    /// Its resource type: `DocumentReference`, or `List` / `Patient` for a SubmissionSet and
    /// the Patient a submission carried.
    pub record_type: &'a str,
    /// The patient pseudonym.
    pub patient: &'a str,
    /// The hospital whose gateway wrote the entry.
    pub hospital: &'a str,
    /// The user pseudonym, role and purpose of use the HIS asserted.
    pub user: &'a str,
    pub role: &'a str,
    pub purpose: &'a str,
}

/// The AuditEvent for one ledger entry.
pub fn audit_event(r: &AuditRecord<'_>) -> Value {
    let (code, action, subtype) = match r.action {
        AuditAction::Create => ("C", "Create", ("ITI-65", "Provide Document Bundle")),
        AuditAction::Read => ("R", "Read", ("ITI-68", "Retrieve Document")),
        AuditAction::Search => ("E", "Query", ("ITI-67", "Find Document References")),
        AuditAction::ConsentGranted => ("C", "Create", ("consent-granted", "Consent recorded")),
        AuditAction::ConsentRevoked => ("U", "Update", ("consent-revoked", "Consent revoked")),
        AuditAction::Erase => ("D", "Delete", ("erasure", "Record erased (crypto-shredded)")),
        AuditAction::StatusChange => ("U", "Update", ("status-changed", "Record status changed")),
    };
    let mut entity = vec![json!({
        "what": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": r.patient}},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
    })];
    if let Some(id) = r.record_id {
        entity.push(json!({
            "what": {"reference": format!("{}/{id}", r.record_type)},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3", "display": "Report"}
        }));
    }
    let mut outcome_desc = if r.granted { "granted".to_owned() } else { "denied".to_owned() };
    if let Some(reason) = r.reason {
        outcome_desc.push_str(": ");
        outcome_desc.push_str(reason);
    }
    json!({
        "resourceType": "AuditEvent",
        "id": r.entry_id,
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": "urn:ihe:event-type-code", "code": subtype.0, "display": subtype.1}],
        "action": code,
        "recorded": r.time,
        "outcome": if r.granted { "0" } else { "4" },
        "outcomeDesc": outcome_desc,
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": r.purpose}]}],
        "agent": [{
            "who": {"identifier": {"system": PSEUDONYM_SYSTEM, "value": r.user}},
            "role": [{"coding": [{"system": "urn:medgate:role", "code": r.role}]}],
            "requestor": true,
            "location": {"identifier": {"system": HOSPITAL_SYSTEM, "value": r.hospital}}
        }],
        "source": {
            "observer": {"identifier": {"system": HOSPITAL_SYSTEM, "value": r.hospital}},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
        },
        "entity": entity,
        "extension": [{"url": LEDGER_ENTRY_SYSTEM, "valueString": format!("{} at height {} ({action})", r.entry_id, r.height)}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_read_is_a_minor_failure_with_its_reason() {
        let r = AuditRecord {
            entry_id: "e1",
            height: 2,
            time: "2026-01-01T00:00:00Z",
            action: AuditAction::Read,
            granted: false,
            reason: Some("no-consent"),
            record_id: Some("r1"),
            record_type: "DocumentReference",
            patient: "aa",
            hospital: "hospital-b",
            user: "bb",
            role: "physician",
            purpose: "TREAT",
        };
        let e = audit_event(&r);
        assert_eq!(e["action"], "R");
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["outcomeDesc"], "denied: no-consent");
        assert_eq!(e["entity"][1]["what"]["reference"], "DocumentReference/r1");
        assert_eq!(e["subtype"][0]["code"], "ITI-68");
    }
}
