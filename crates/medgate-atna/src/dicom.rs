//! The DICOM audit message (DICOM PS3.15 Annex A.5, the XML that IHE ITI-20 carries over syslog)
//! for one [`AuditEvent`], with the codes of the IHE Basic Audit Log Patterns (BALP) and of the
//! MHD audit profiles.
//!
//! Boundary: a validated event and the audit source in, UTF-8 XML out. The patient appears only
//! as the ledger pseudonym, typed as an anonymous identifier (HL7 v2 table 0203 `ANON`); the user
//! only as the user pseudonym. No name, identifier, document metadata or free text is written.
//!
//! Sources of the codes (cited beside each use):
//! - DICOM PS3.15 A.5.1 schema: element order (EventIdentification: EventID, EventTypeCode*,
//!   EventOutcomeDescription?, PurposeOfUse*; ActiveParticipant: RoleIDCode*; then
//!   AuditSourceIdentification; ParticipantObjectIdentification: ParticipantObjectIDTypeCode,
//!   ParticipantObjectName | ParticipantObjectQuery, ParticipantObjectDetail*), coded values as
//!   `csd-code` / `codeSystemName` / `originalText` (CP-1638 for AuditSourceTypeCode), the
//!   ParticipantObjectTypeCode(Role) and DataLifeCycle value lists.
//! - DICOM PS3.16 CID 400 (Audit Event ID): 110106 Export, 110107 Import, 110110 Patient Record,
//!   110112 Query, 110113 Security Alert; CID 401 (Audit Event Type): 110127 Emergency Override
//!   Started, 110129 Security Configuration; CID 402 (Audit Active Participant Role ID): 110150
//!   Application, 110152 Destination Role ID, 110153 Source Role ID.
//! - IHE MHD audit profiles (IHE.MHD.ProvideBundle.Audit.Recipient: 110107 Import, action C,
//!   subtype ITI-65; IHE.MHD.FindDocumentReferences.Audit.Responder: 110112 Query, action E,
//!   subtype ITI-67, query entity role 24; IHE.MHD.RetrieveDocument.Audit.Responder: 110106
//!   Export, action R, subtype ITI-68, document entity type 2 role 3).
//! - IHE BALP (ITI.BasicAudit): PatientRead (client 110152 Destination, server 110153 Source),
//!   PatientQuery and PatientCreate/PatientUpdate (client 110153 Source, server 110152
//!   Destination), PatientDelete (client 110150 Application, server provenance-participant-type
//!   `custodian`, action D, subtype restful-interaction `delete`), AuthZconsent (110113 Security
//!   Alert, outcome failure on deny), patient entity type 1 role 1.

use base64::Engine;

use crate::event::{Access, AuditEvent, EventDetail, KeyAction, Position, Requester};

/// Who reports: the gateway, as AuditSourceIdentification and as an active participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSource {
    /// AuditSourceID: the gateway's name (its host name, as in the syslog HOSTNAME).
    pub source_id: String,
    /// AuditEnterpriseSiteID: the hospital id.
    pub site_id: String,
}

/// EventOutcomeIndicator values (DICOM PS3.15 A.5.1).
const SUCCESS: &str = "0";
const MINOR_FAILURE: &str = "4";

/// `codeSystemName` values.
const DCM: &str = "DCM";
const IHE_TRANSACTIONS: &str = "IHE Transactions";
/// HL7 v3 ActReason (purpose of use), OID 2.16.840.1.113883.5.8.
const ACT_REASON: &str = "2.16.840.1.113883.5.8";
/// HL7 v2 table 0203 Identifier Type, OID 2.16.840.1.113883.18.108 (`ANON`: anonymous identifier).
const V2_0203: &str = "2.16.840.1.113883.18.108";
/// RFC 3881 ParticipantObjectIDTypeCode values (9: Report Number).
const RFC3881: &str = "RFC-3881";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
const PROVENANCE_PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
/// medgate's own code systems (roles as the HIS asserts them, id types, key events).
const MEDGATE_ROLE: &str = "urn:medgate:role";
const MEDGATE_ID_TYPE: &str = "urn:medgate:id-type";
const MEDGATE_KEY_EVENT: &str = "urn:medgate:key-event";

/// A coded value: (code, code system name, original text).
type Code<'a> = (&'a str, &'a str, &'a str);

/// Whether the message reports a failure (used for the syslog severity).
pub fn is_failure(event: &AuditEvent) -> bool {
    matches!(event.detail, EventDetail::RecordRead { access: Access::Denied { .. }, .. })
}

/// The DICOM audit message for `event` at `position` (without the XML declaration).
/// `event` must have passed [`AuditEvent::validate`].
pub fn audit_message(source: &AuditSource, position: Position, event: &AuditEvent) -> String {
    let mut x = Xml::default();
    x.open("AuditMessage", &[]);
    let gateway = |x: &mut Xml, role: (&str, &str, &str)| {
        x.open("ActiveParticipant", &[("UserID", &source.source_id), ("UserIsRequestor", "false"), ("NetworkAccessPointID", &source.source_id), ("NetworkAccessPointTypeCode", "1")]);
        x.coded("RoleIDCode", role.0, role.1, role.2);
        x.close("ActiveParticipant");
    };
    match &event.detail {
        EventDetail::RecordStored { patient, by, .. } | EventDetail::SubmissionSetStored { patient, by, .. } => {
            // IHE.MHD.ProvideBundle.Audit.Recipient; BALP PatientCreate: the document, or the
            // SubmissionSet that listed it.
            event_identification(&mut x, event, ("110107", DCM, "Import"), "C", SUCCESS, None, &[("ITI-65", IHE_TRANSACTIONS, "Provide Document Bundle")], by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110153", DCM, "Source Role ID"));
            gateway(&mut x, ("110152", DCM, "Destination Role ID"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            if let EventDetail::RecordStored { record_id, .. } = &event.detail {
                document_object(&mut x, record_id, Some("1"));
            } else if let EventDetail::SubmissionSetStored { list_id, records, .. } = &event.detail {
                // A System Object (2), Job (20), id type "submission set classificationNode"
                // (XDS metadata UUID).
                x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", list_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "20")]);
                x.coded("ParticipantObjectIDTypeCode", "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata", "submission set classificationNode");
                x.detail("records", &records.to_string());
                x.close("ParticipantObjectIdentification");
            }
        }
        EventDetail::RecordStatusChanged { record_id, patient, status, replaced_by, by } => {
            // BALP PatientUpdate of a DocumentReference: 110110 Patient Record, action U; the
            // document amended (3), or logically deleted (14) when entered in error.
            event_identification(&mut x, event, ("110110", DCM, "Patient Record"), "U", SUCCESS, None, &[("update", RESTFUL_INTERACTION, "update")], by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110153", DCM, "Source Role ID"));
            gateway(&mut x, ("110152", DCM, "Destination Role ID"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            let lifecycle = if status == "entered-in-error" { "14" } else { "3" };
            x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", record_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "3"), ("ParticipantObjectDataLifeCycle", lifecycle)]);
            x.coded("ParticipantObjectIDTypeCode", "9", RFC3881, "Report Number");
            x.detail("status", status);
            if let Some(r) = replaced_by {
                x.detail("replaced-by", r);
            }
            x.close("ParticipantObjectIdentification");
        }
        EventDetail::PatientSearched { patient, results, by } => {
            // IHE.MHD.FindDocumentReferences.Audit.Responder; BALP PatientQuery.
            event_identification(&mut x, event, ("110112", DCM, "Query"), "E", SUCCESS, None, &[("ITI-67", IHE_TRANSACTIONS, "Find Document References")], by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110153", DCM, "Source Role ID"));
            gateway(&mut x, ("110152", DCM, "Destination Role ID"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            // The query as it would read with the pseudonym in place of the patient identifier
            // the HIS sent (which is never written anywhere).
            let query = format!("DocumentReference?patient=urn:medgate:pseudonym|{patient}");
            x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", "DocumentReference"), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "24")]);
            x.coded("ParticipantObjectIDTypeCode", "ITI-67", IHE_TRANSACTIONS, "Find Document References");
            x.text_element("ParticipantObjectQuery", &b64(query.as_bytes()));
            x.detail("results", &results.to_string());
            x.close("ParticipantObjectIdentification");
        }
        EventDetail::RecordRead { record_id, patient, custodian, by, access } => {
            // IHE.MHD.RetrieveDocument.Audit.Responder; BALP PatientRead. A break-glass read adds
            // DCM 110127 Emergency Override Started; a refused read is a minor failure whose
            // EventOutcomeDescription is the ledger's reason code (BALP AuthZconsent: deny is a
            // failure outcome).
            let (outcome, description, types): (&str, Option<&str>, &[Code]) = match access {
                Access::Granted => (SUCCESS, None, &[("ITI-68", IHE_TRANSACTIONS, "Retrieve Document")]),
                Access::BreakGlass => (SUCCESS, Some("break-glass"), &[("ITI-68", IHE_TRANSACTIONS, "Retrieve Document"), ("110127", DCM, "Emergency Override Started")]),
                Access::Denied { reason } => (MINOR_FAILURE, Some(reason.as_str()), &[("ITI-68", IHE_TRANSACTIONS, "Retrieve Document")]),
            };
            event_identification(&mut x, event, ("110106", DCM, "Export"), "R", outcome, description, types, by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110152", DCM, "Destination Role ID"));
            gateway(&mut x, ("110153", DCM, "Source Role ID"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", record_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "3"), ("ParticipantObjectDataLifeCycle", "6")]);
            x.coded("ParticipantObjectIDTypeCode", "9", RFC3881, "Report Number");
            x.detail("custodian", custodian);
            x.close("ParticipantObjectIdentification");
        }
        EventDetail::RecordErased { record_id, patient, by } => {
            // BALP PatientDelete; DICOM 110110 Patient Record with action D (as IHE ITI-62 Delete
            // Document Set); the document is permanently erased (life cycle 15).
            event_identification(&mut x, event, ("110110", DCM, "Patient Record"), "D", SUCCESS, None, &[("delete", RESTFUL_INTERACTION, "delete")], by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110150", DCM, "Application"));
            gateway(&mut x, ("custodian", PROVENANCE_PARTICIPANT_TYPE, "Custodian"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            document_object(&mut x, record_id, Some("15"));
        }
        EventDetail::ConsentRecorded { consent_id, patient, grantee, by } | EventDetail::ConsentWithdrawn { consent_id, patient, grantee, by } => {
            // BALP PatientCreate / PatientUpdate of a Consent resource.
            let withdrawn = matches!(event.detail, EventDetail::ConsentWithdrawn { .. });
            let (action, interaction) = if withdrawn { ("U", "update") } else { ("C", "create") };
            event_identification(&mut x, event, ("110110", DCM, "Patient Record"), action, SUCCESS, None, &[(interaction, RESTFUL_INTERACTION, interaction)], by.purpose.as_deref());
            user(&mut x, by);
            system(&mut x, by, ("110153", DCM, "Source Role ID"));
            gateway(&mut x, ("110152", DCM, "Destination Role ID"));
            audit_source(&mut x, source);
            patient_object(&mut x, patient);
            let lifecycle = if withdrawn { "3" } else { "1" };
            x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", consent_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "4"), ("ParticipantObjectDataLifeCycle", lifecycle)]);
            x.coded("ParticipantObjectIDTypeCode", "Consent", RESOURCE_TYPES, "Consent");
            x.detail("grantee", grantee);
            x.close("ParticipantObjectIdentification");
        }
        EventDetail::KeyEvent { action, key_role, key_version, key_id, officer } => {
            // DCM 110113 Security Alert / 110129 Security Configuration, with the key action as a
            // medgate event type; the officer is the requestor, the key a Security Resource (13).
            let kind = key_event_code(*action);
            event_identification(&mut x, event, ("110113", DCM, "Security Alert"), "E", SUCCESS, None, &[("110129", DCM, "Security Configuration"), kind], None);
            x.open("ActiveParticipant", &[("UserID", officer), ("UserIsRequestor", "true")]);
            x.close("ActiveParticipant");
            gateway(&mut x, ("110150", DCM, "Application"));
            audit_source(&mut x, source);
            x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", key_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "13")]);
            x.coded("ParticipantObjectIDTypeCode", "hsm-key", MEDGATE_ID_TYPE, "HSM key id (CKA_ID)");
            x.text_element("ParticipantObjectName", &format!("{key_role} v{key_version}"));
            x.detail("key-role", key_role);
            x.detail("key-version", &key_version.to_string());
            x.detail("action", action.as_str());
            x.close("ParticipantObjectIdentification");
        }
    }
    // The ledger entry this message reports: its id is the message's unique id (the repository
    // deduplicates on it), its position says where to verify it.
    x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", &event.entry_id), ("ParticipantObjectTypeCode", "2")]);
    x.coded("ParticipantObjectIDTypeCode", "ledger-entry", MEDGATE_ID_TYPE, "medgate ledger entry id");
    x.detail("ledger-position", &format!("{}:{}", position.height, position.index));
    x.detail("gateway", &event.gateway);
    x.close("ParticipantObjectIdentification");
    x.close("AuditMessage");
    x.out
}

fn key_event_code(action: KeyAction) -> (&'static str, &'static str, &'static str) {
    match action {
        KeyAction::Generate => ("key-generate", MEDGATE_KEY_EVENT, "Key generated in the HSM"),
        KeyAction::Rotate => ("key-rotate", MEDGATE_KEY_EVENT, "Key rotated in the HSM"),
        KeyAction::Retire => ("key-retire", MEDGATE_KEY_EVENT, "Key version retired"),
        KeyAction::Destroy => ("key-destroy", MEDGATE_KEY_EVENT, "Key destroyed in the HSM"),
        KeyAction::ImportCert => ("key-import-cert", MEDGATE_KEY_EVENT, "Certificate imported for a key"),
        KeyAction::ChangePin => ("key-change-pin", MEDGATE_KEY_EVENT, "HSM token PIN changed"),
        KeyAction::BackupInit => ("key-backup-init", MEDGATE_KEY_EVENT, "Key backup key installed and split between officers"),
        KeyAction::Backup => ("key-backup", MEDGATE_KEY_EVENT, "Keys backed up, wrapped under the backup key"),
        KeyAction::Restore => ("key-restore", MEDGATE_KEY_EVENT, "Keys restored into the HSM from a backup"),
    }
}

#[allow(clippy::too_many_arguments, reason = "one call per event kind, each argument a distinct field of EventIdentification")]
fn event_identification(
    x: &mut Xml,
    event: &AuditEvent,
    id: (&str, &str, &str),
    action: &str,
    outcome: &str,
    description: Option<&str>,
    types: &[(&str, &str, &str)],
    purpose: Option<&str>,
) {
    x.open("EventIdentification", &[("EventActionCode", action), ("EventDateTime", &event.time), ("EventOutcomeIndicator", outcome)]);
    x.coded("EventID", id.0, id.1, id.2);
    for t in types {
        x.coded("EventTypeCode", t.0, t.1, t.2);
    }
    if let Some(d) = description {
        x.text_element("EventOutcomeDescription", d);
    }
    if let Some(p) = purpose {
        x.coded("PurposeOfUse", p, ACT_REASON, p);
    }
    x.close("EventIdentification");
}

/// The end user: the pseudonym, and the role the HIS asserted.
fn user(x: &mut Xml, by: &Requester) {
    x.open("ActiveParticipant", &[("UserID", &by.user), ("UserIsRequestor", "true")]);
    x.coded("RoleIDCode", &by.role, MEDGATE_ROLE, &by.role);
    x.close("ActiveParticipant");
}

/// The requesting system, named by its hospital id.
fn system(x: &mut Xml, by: &Requester, role: (&str, &str, &str)) {
    x.open("ActiveParticipant", &[("UserID", &by.hospital), ("UserIsRequestor", "false")]);
    x.coded("RoleIDCode", role.0, role.1, role.2);
    x.close("ActiveParticipant");
}

fn audit_source(x: &mut Xml, source: &AuditSource) {
    x.open("AuditSourceIdentification", &[("AuditEnterpriseSiteID", &source.site_id), ("AuditSourceID", &source.source_id)]);
    // 4: application server process (DICOM PS3.15 A.5.1.2.1, coded as in CP-1638).
    x.coded("AuditSourceTypeCode", "4", DCM, "Application Server Process or Thread");
    x.close("AuditSourceIdentification");
}

/// The patient, as the ledger pseudonym: Person (1), Patient (1), id type HL7 v2-0203 `ANON`.
fn patient_object(x: &mut Xml, pseudonym: &str) {
    x.open("ParticipantObjectIdentification", &[("ParticipantObjectID", pseudonym), ("ParticipantObjectTypeCode", "1"), ("ParticipantObjectTypeCodeRole", "1")]);
    x.coded("ParticipantObjectIDTypeCode", "ANON", V2_0203, "Anonymous identifier");
    x.close("ParticipantObjectIdentification");
}

/// The document: System Object (2), Report (3), id type RFC 3881 Report Number (9).
fn document_object(x: &mut Xml, record_id: &str, lifecycle: Option<&str>) {
    let mut attrs = vec![("ParticipantObjectID", record_id), ("ParticipantObjectTypeCode", "2"), ("ParticipantObjectTypeCodeRole", "3")];
    if let Some(l) = lifecycle {
        attrs.push(("ParticipantObjectDataLifeCycle", l));
    }
    x.open("ParticipantObjectIdentification", &attrs);
    x.coded("ParticipantObjectIDTypeCode", "9", RFC3881, "Report Number");
    x.close("ParticipantObjectIdentification");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A minimal compact XML writer: every attribute value and text is escaped.
#[derive(Default)]
struct Xml {
    out: String,
    /// Whether the last `open` still waits for its `>` (so an empty element can close as `/>`).
    pending: bool,
}

impl Xml {
    fn open(&mut self, tag: &str, attrs: &[(&str, &str)]) {
        self.finish_start();
        self.out.push('<');
        self.out.push_str(tag);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_into(&mut self.out, v);
            self.out.push('"');
        }
        self.pending = true;
    }

    fn finish_start(&mut self) {
        if self.pending {
            self.out.push('>');
            self.pending = false;
        }
    }

    fn close(&mut self, tag: &str) {
        if self.pending {
            self.out.push_str("/>");
            self.pending = false;
        } else {
            self.out.push_str("</");
            self.out.push_str(tag);
            self.out.push('>');
        }
    }

    fn coded(&mut self, tag: &str, code: &str, system: &str, text: &str) {
        self.open(tag, &[("csd-code", code), ("codeSystemName", system), ("originalText", text)]);
        self.close(tag);
    }

    fn text_element(&mut self, tag: &str, text: &str) {
        self.open(tag, &[]);
        self.finish_start();
        escape_into(&mut self.out, text);
        self.close(tag);
    }

    /// A ParticipantObjectDetail: the value is base64, as the schema's ValuePair requires.
    fn detail(&mut self, kind: &str, value: &str) {
        let v = b64(value.as_bytes());
        self.open("ParticipantObjectDetail", &[("type", kind), ("value", &v)]);
        self.close("ParticipantObjectDetail");
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::{read_event, requester};

    fn source() -> AuditSource {
        AuditSource { source_id: "gw1.hospital-a.example".into(), site_id: "hospital-a".into() }
    }

    #[test]
    fn a_denied_read_is_an_export_with_a_minor_failure_and_its_reason() {
        let xml = audit_message(&source(), Position::new(7, 2), &read_event(Access::Denied { reason: "no-consent".into() }));
        assert!(xml.starts_with("<AuditMessage><EventIdentification EventActionCode=\"R\""), "{xml}");
        assert!(xml.contains("EventOutcomeIndicator=\"4\""), "{xml}");
        assert!(xml.contains("<EventID csd-code=\"110106\" codeSystemName=\"DCM\" originalText=\"Export\"/>"), "{xml}");
        assert!(xml.contains("<EventTypeCode csd-code=\"ITI-68\" codeSystemName=\"IHE Transactions\""), "{xml}");
        assert!(xml.contains("<EventOutcomeDescription>no-consent</EventOutcomeDescription>"), "{xml}");
        assert!(xml.contains("<ParticipantObjectIDTypeCode csd-code=\"ANON\""), "{xml}");
        assert!(xml.ends_with("</AuditMessage>"), "{xml}");
    }

    #[test]
    fn a_break_glass_read_names_the_emergency_override() {
        let xml = audit_message(&source(), Position::new(1, 0), &read_event(Access::BreakGlass));
        assert!(xml.contains("<EventTypeCode csd-code=\"110127\" codeSystemName=\"DCM\" originalText=\"Emergency Override Started\"/>"), "{xml}");
        assert!(xml.contains("EventOutcomeIndicator=\"0\""), "{xml}");
    }

    #[test]
    fn an_erasure_is_a_patient_record_delete_with_permanent_erasure() {
        let mut e = read_event(Access::Granted);
        e.detail = EventDetail::RecordErased { record_id: "rec-9".into(), patient: "cd".repeat(32), by: requester() };
        let xml = audit_message(&source(), Position::new(1, 0), &e);
        assert!(xml.contains("EventActionCode=\"D\""), "{xml}");
        assert!(xml.contains("csd-code=\"110110\""), "{xml}");
        assert!(xml.contains("ParticipantObjectID=\"rec-9\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\" ParticipantObjectDataLifeCycle=\"15\""), "{xml}");
    }

    #[test]
    fn a_submission_set_is_an_iti65_import_and_a_status_change_an_update() {
        let mut e = read_event(Access::Granted);
        e.detail = EventDetail::SubmissionSetStored { list_id: "list-1".into(), patient: "cd".repeat(32), records: 3, by: requester() };
        e.validate().expect("valid");
        let xml = audit_message(&source(), Position::new(1, 0), &e);
        assert!(xml.contains("EventActionCode=\"C\""), "{xml}");
        assert!(xml.contains("<EventTypeCode csd-code=\"ITI-65\""), "{xml}");
        assert!(xml.contains("ParticipantObjectID=\"list-1\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"20\""), "{xml}");
        e.detail = EventDetail::RecordStatusChanged { record_id: "rec-1".into(), patient: "cd".repeat(32), status: "entered-in-error".into(), replaced_by: None, by: requester() };
        e.validate().expect("valid");
        let xml = audit_message(&source(), Position::new(1, 0), &e);
        assert!(xml.contains("EventActionCode=\"U\""), "{xml}");
        assert!(xml.contains("ParticipantObjectID=\"rec-1\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\" ParticipantObjectDataLifeCycle=\"14\""), "{xml}");
        e.detail = EventDetail::RecordStatusChanged { record_id: "rec-1".into(), patient: "cd".repeat(32), status: "superseded".into(), replaced_by: Some("rec 2".into()), by: requester() };
        assert!(e.validate().is_err(), "a replacement id with a space is refused");
    }

    #[test]
    fn values_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, "a<b>&\"'");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
