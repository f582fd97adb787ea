//! Searches: a patient's DocumentReferences (ITI-67), SubmissionSet Lists (ITI-66), AuditEvents
//! and Consents.
//!
//! A patient's records are found through the patient's pseudonym in this vault (and, in
//! consortium mode, on the ledger). Their metadata is decrypted in memory, one HSM unwrap per
//! record, and matched there: nothing in clear, and no index of clear values, is ever written.
//! Each search is exactly one ledger entry, whatever it matched and whichever page it is.
//!
//! Records and lists other hospitals hold are known here only by what the ledger says of them
//! (a record's id, status, content type, size, hash, custodian, when anchored; a list's id, code
//! and the records it names). They are matched as such: a criterion on anything else (type,
//! date, author...) cannot be shown to hold for them, so they are left out, and the Bundle's
//! OperationOutcome says how many and why.
//!
//! Documents entered in error are shown only to a search that asks for them by status (MHD's
//! DocumentReference status value set is current | superseded); they stay readable by id.

use medgate_fhir::search::{self, Candidate, Note, Query};
use medgate_fhir::{document_reference_resource, PatientId, StoredDocument};
use medgate_ledger::{Entry, EntryBody};
use medgate_store::vault;
use medgate_store::StoreError;
use serde_json::Value;

use super::{Caller, Gateway};
use crate::GatewayError;

/// Parameters the ledger can answer for a record or a list held elsewhere.
const KNOWN_FOR_REMOTE: [&str; 5] = ["status", "_id", "_lastUpdated", "_lastupdated", "code"];

/// The list type code system of MHD.
const MHD_LIST_TYPES: &str = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes";

/// Where a candidate came from, to attach its ledger receipt once it is on the page.
struct Origin {
    id: String,
    entry_id: String,
}

impl Gateway {
    /// `GET /DocumentReference?...` (ITI-67): one page of the patient's DocumentReferences.
    pub async fn search(&self, caller: &Caller, query: &Query) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let patient = patient_of(query)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let user = self.user_pseudonym(caller).await?;
        let (mut candidates, mut origins) = self.local_documents(&pseudonym).await?;
        let mut notes = query.ignored_notes();
        let now = crate::clock::now_micros();
        if self.sharing.is_some() {
            let (p, pat) = (pseudonym.clone(), patient.clone());
            let (remote, remote_origins) = self.off_runtime(move |g| g.remote_documents(&p, &pat)).await?;
            notes.extend(remote_note(query, &remote, now, "document"));
            candidates.extend(remote);
            origins.extend(remote_origins);
        }
        // A document its custodian entered in error is left out unless the search asks for
        // that status (MHD's DocumentReference status value set is current | superseded). It
        // stays readable by id.
        if !query.asks_status("entered-in-error") {
            candidates.retain(|c| c.resource["status"] != "entered-in-error");
        }
        let mut page = search::run(query, candidates, now);
        // The page's receipts, read from the chain off the runtime threads (see `Gateway::locate`).
        let anchors: Vec<Option<String>> = page.resources.iter().map(|r| origins.iter().find(|o| o.id == r["id"].as_str().unwrap_or_default()).map(|o| o.entry_id.clone())).collect();
        let receipts = self
            .off_runtime(move |g| anchors.iter().map(|a| a.as_ref().map_or(Ok(None), |id| g.ledger.store.receipt(id).map_err(GatewayError::internal))).collect::<Result<Vec<_>, _>>())
            .await?;
        for (r, receipt) in page.resources.iter_mut().zip(receipts) {
            if let Some(receipt) = receipt {
                medgate_fhir::attach_receipt(r, &receipt.to_json());
            }
        }
        self.record_access(vec![self.search_entry(caller, &pseudonym, user, page.resources.len())]).await?;
        Ok(search::searchset(query, page, &notes, &outcome_urn()))
    }

    fn search_entry(&self, caller: &Caller, pseudonym: &str, user: String, results: usize) -> Entry {
        self.entry(EntryBody::PatientSearched {
            patient: pseudonym.to_owned(),
            reader: self.hospital.clone(),
            user,
            role: caller.role.clone(),
            purpose: caller.purpose.clone(),
            results: u32::try_from(results).unwrap_or(u32::MAX),
        })
    }

    /// This hospital's live records of the patient, looked up and decrypted (metadata only) on
    /// one blocking thread: one HSM unwrap each. Records are read one at a time and their
    /// ciphertexts let go once opened, so that a page of a patient with a thousand documents
    /// holds their metadata only, not a thousand sealed documents twice over.
    async fn local_documents(&self, pseudonym: &str) -> Result<(Vec<Candidate>, Vec<Origin>), GatewayError> {
        let (hsm, store, pseudonym) = (self.hsm.clone(), self.vault.clone(), pseudonym.to_owned());
        let mut opened = super::blocking(move || -> Result<Vec<vault::OpenRecord>, StoreError> {
            let ids = store.record_ids_for(&pseudonym)?;
            let mut opened = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(rec) = store.get(&id)?.filter(|r| r.erased.is_none()) else { continue };
                let mut open = vault::open_latest(&hsm, &store, rec, false)?;
                (open.record.doc_ct, open.record.meta_ct) = (String::new(), String::new());
                opened.push(open);
            }
            Ok(opened)
        })
        .await?;
        opened.sort_by(|a, b| a.record.created.cmp(&b.record.created).then(a.record.id.cmp(&b.record.id)));
        let mut candidates = Vec::with_capacity(opened.len());
        let mut origins = Vec::with_capacity(opened.len());
        for open in opened {
            let resource = self.describe(&open.record, &open.meta.document_reference, None);
            candidates.push(Candidate { resource, stored_at: crate::clock::micros_of(&open.record.created) });
            origins.push(Origin { id: open.record.id.clone(), entry_id: open.record.entry_id.clone() });
        }
        Ok((candidates, origins))
    }

    /// Records other members hold, as the ledger describes them (their metadata stays sealed at
    /// the custodian; `GET /Binary/{id}` fetches them under consent).
    fn remote_documents(&self, pseudonym: &str, patient: &PatientId) -> Result<(Vec<Candidate>, Vec<Origin>), GatewayError> {
        let entries = self.ledger.store.entries_for_patient(pseudonym).map_err(GatewayError::internal)?;
        let erased: std::collections::HashSet<&str> =
            entries.iter().filter(|(e, _)| matches!(e.body, EntryBody::RecordErased { .. })).filter_map(|(e, _)| e.record_id()).collect();
        // The last status change the custodian anchored, per record.
        let mut status: std::collections::HashMap<&str, (&str, &str)> = std::collections::HashMap::new();
        for (e, _) in &entries {
            if let EntryBody::RecordStatusChanged { record_id, status: s, .. } = &e.body {
                status.insert(record_id, (s, &e.time));
            }
        }
        let mut candidates = Vec::new();
        let mut origins = Vec::new();
        for (e, _) in entries.iter().filter(|(e, _)| !e.record_id().is_some_and(|r| erased.contains(r))) {
            let EntryBody::RecordAnchored { record_id, custodian, content_type, content_hash, size, .. } = &e.body else { continue };
            if *custodian == self.hospital {
                continue;
            }
            let (now_status, changed) = status.get(record_id.as_str()).copied().unwrap_or(("current", &e.time));
            let reference = serde_json::json!({
                "resourceType": "DocumentReference",
                "status": now_status,
                "subject": {"identifier": {"system": patient.system, "value": patient.value}},
                "content": [{"attachment": {"contentType": content_type}}]
            });
            let mut resource = document_reference_resource(&StoredDocument {
                id: record_id,
                document_reference: &reference,
                created: &e.time,
                size: *size,
                content_hash,
                custodian,
                receipt: None,
            });
            resource["meta"]["lastUpdated"] = serde_json::json!(changed);
            candidates.push(Candidate { resource, stored_at: crate::clock::micros_of(&e.time) });
            origins.push(Origin { id: record_id.clone(), entry_id: e.id.clone() });
        }
        Ok((candidates, origins))
    }

    /// `GET /List?...` (ITI-66): one page of the patient's SubmissionSets, those stored here
    /// (decrypted) and, in consortium mode, those other hospitals anchored on the ledger.
    pub async fn search_lists(&self, caller: &Caller, query: &Query) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let patient = patient_of(query)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let user = self.user_pseudonym(caller).await?;
        let mut candidates: Vec<Candidate> = self
            .submission_sets_for(&pseudonym)
            .await?
            .into_iter()
            .map(|s| Candidate { stored_at: crate::clock::micros_of(&s.stored.created), resource: s.resource })
            .collect();
        let mut notes = query.ignored_notes();
        let now = crate::clock::now_micros();
        if self.sharing.is_some() {
            let (p, pat) = (pseudonym.clone(), patient.clone());
            let remote = self.off_runtime(move |g| g.remote_lists(&p, &pat)).await?;
            notes.extend(remote_note(query, &remote, now, "SubmissionSet"));
            candidates.extend(remote);
        }
        let page = search::run(query, candidates, now);
        self.record_access(vec![self.search_entry(caller, &pseudonym, user, page.resources.len())]).await?;
        Ok(search::searchset(query, page, &notes, &outcome_urn()))
    }

    /// SubmissionSets other members anchored for the patient, as the ledger describes them.
    fn remote_lists(&self, pseudonym: &str, patient: &PatientId) -> Result<Vec<Candidate>, GatewayError> {
        let entries = self.ledger.store.entries_for_patient(pseudonym).map_err(GatewayError::internal)?;
        Ok(entries
            .iter()
            .filter_map(|(e, _)| match &e.body {
                EntryBody::ListAnchored { list_id, code, record_ids, custodian, .. } if *custodian != self.hospital => {
                    let entry: Vec<Value> = record_ids.iter().map(|r| serde_json::json!({"item": {"reference": format!("DocumentReference/{r}")}})).collect();
                    let resource = serde_json::json!({
                        "resourceType": "List", "id": list_id, "meta": {"versionId": "1", "lastUpdated": e.time},
                        "status": "current", "mode": "working",
                        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": code}]},
                        "subject": {"identifier": {"system": patient.system, "value": patient.value}},
                        "entry": entry
                    });
                    Some(Candidate { resource, stored_at: crate::clock::micros_of(&e.time) })
                }
                _ => None,
            })
            .collect())
    }

    /// `GET /AuditEvent?patient.identifier=...`: the patient's ledger entries, paged.
    pub async fn audit(&self, caller: &Caller, query: &Query) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let (_, pseudonym) = self.patient_pseudonym(patient_of(query)?).await?;
        let wanted = pseudonym.clone();
        let entries = self.off_runtime(move |g| g.ledger.store.entries_for_patient(&wanted).map_err(GatewayError::internal)).await?;
        let candidates = entries
            .iter()
            .filter_map(|(e, height)| super::audit::audit_record(e, *height).map(|r| medgate_fhir::audit_event(&r)))
            .map(|resource| {
                let stored_at = resource["recorded"].as_str().and_then(crate::clock::micros_of);
                Candidate { resource, stored_at }
            })
            .collect();
        let page = search::run(query, candidates, crate::clock::now_micros());
        Ok(search::searchset(query, page, &query.ignored_notes(), &outcome_urn()))
    }

    /// `GET /Consent?patient.identifier=...`: every consent recorded for the patient, on any
    /// gateway, paged.
    pub async fn consents(&self, caller: &Caller, query: &Query) -> Result<Value, GatewayError> {
        self.may_read(caller)?;
        let patient = patient_of(query)?;
        let (_, pseudonym) = self.patient_pseudonym(patient).await?;
        let wanted = pseudonym.clone();
        let list = self.off_runtime(move |g| g.ledger.store.consents_for(&wanted).map_err(GatewayError::internal)).await?;
        let candidates = list
            .into_iter()
            .map(|c| {
                let sub = medgate_fhir::ConsentSubmission {
                    active: c.active,
                    patient: patient.clone(),
                    grantee: c.grantee,
                    record_ids: c.record_ids,
                    start: c.start,
                    end: c.end,
                };
                Candidate { resource: medgate_fhir::consent_resource(&c.consent_id, &sub, &c.custodian, None), stored_at: None }
            })
            .collect();
        let page = search::run(query, candidates, crate::clock::now_micros());
        Ok(search::searchset(query, page, &query.ignored_notes(), &outcome_urn()))
    }
}

/// The patient a search must name.
fn patient_of(query: &Query) -> Result<&PatientId, GatewayError> {
    query.patient.as_ref().ok_or_else(|| GatewayError::BadRequest("patient.identifier: required, as patient.identifier=system|value".into()))
}

/// Says how many records held by other hospitals a filter left out because the ledger does not
/// carry what it filters on.
fn remote_note(query: &Query, remote: &[Candidate], now: i64, what: &str) -> Option<Note> {
    let opaque: Vec<&str> = query.filter_names().into_iter().filter(|n| !KNOWN_FOR_REMOTE.contains(n)).collect();
    if opaque.is_empty() {
        return None;
    }
    let left_out = remote.iter().filter(|c| !query.matches(&c.resource, now)).count();
    (left_out > 0).then(|| Note {
        severity: "information",
        code: "informational",
        text: format!(
            "{left_out} {what}(s) of this patient held by other hospitals were left out: their metadata stays sealed at the custodian, and the ledger cannot answer {}. Search without those parameters to list them.",
            opaque.join(", ")
        ),
        location: None,
    })
}

/// A fresh `urn:uuid:` (version 4) for the OperationOutcome entry of a searchset.
fn outcome_urn() -> String {
    let mut b = [0u8; 16];
    // The system CSPRNG does not fail on Linux; a zero UUID would still be a valid URN.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("urn:uuid:{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use medgate_fhir::search::{parse_query, DOCUMENT_REFERENCE};
    use serde_json::json;

    fn query(pairs: &[(&str, &str)]) -> Query {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
        parse_query(&DOCUMENT_REFERENCE, &pairs, false).expect("query")
    }

    fn remote(id: &str) -> Candidate {
        // What the ledger gives for a record another hospital holds.
        Candidate {
            resource: json!({"resourceType": "DocumentReference", "id": id, "status": "current", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
                             "content": [{"attachment": {"contentType": "application/pdf"}}]}),
            stored_at: None,
        }
    }

    #[test]
    fn records_held_elsewhere_are_matched_on_what_the_ledger_knows() {
        let held = [remote("r1"), remote("r2")];
        // Status, id and lastUpdated are known: remote records match or not, and nothing is said.
        for pairs in [vec![("status", "current")], vec![("_id", "r1")], vec![("_lastUpdated", "ge2025")]] {
            assert_eq!(remote_note(&query(&pairs), &held, 0, "document"), None, "{pairs:?}");
        }
        assert!(query(&[("status", "current")]).matches(&held[0].resource, 0));
        assert!(!query(&[("status", "superseded")]).matches(&held[0].resource, 0));
        // A filter on sealed metadata leaves them out, and the Bundle says how many and why.
        let q = query(&[("status", "current"), ("type", "http://loinc.org|34133-9")]);
        assert!(!q.matches(&held[0].resource, 0));
        let note = remote_note(&q, &held, 0, "document").expect("a note");
        assert!(note.text.starts_with("2 document(s)") && note.text.contains("type") && !note.text.contains("status"), "{}", note.text);
        assert_eq!(note.severity, "information");
        // Unless the filter asks for what they lack.
        assert_eq!(remote_note(&query(&[("type:missing", "true")]), &held, 0, "document"), None);
    }

    #[test]
    fn outcome_urns_are_version_4_uuids() {
        let u = outcome_urn();
        assert_eq!(u.len(), "urn:uuid:".len() + 36, "{u}");
        assert_eq!(&u[23..24], "4", "{u}");
        assert_ne!(u, outcome_urn());
    }
}
