//! The parts of an ITI-65 submission around the create path of `records`: the relations it
//! makes (a replacement supersedes the document it replaces, in the same transaction), the
//! SubmissionSet sealed beside the records, what the idempotency store keeps (ids only), and the
//! answer, rendered from ids: at once from what the request holds, and for a retry from the
//! sealed records and lists and the ledger receipts, the same either way.

use std::borrow::Cow;
use std::collections::HashMap;

use medgate_fhir::{at_version, provide_response, AnswerEntry, Submission, SubmissionEntry};
use medgate_ledger::{Entry, EntryBody, Receipt};
use medgate_store::vault::{self, AnswerItem, IdemState, RecordChange, SealedList, StatusChange, StoredList, StoredRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Caller, Created, Gateway};
use crate::GatewayError;

/// Plaintext the request still holds, so its first answer needs no decryption: the submitted
/// DocumentReferences and the list by id, and the receipts the ledger just gave.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub references: HashMap<String, Value>,
    pub lists: HashMap<String, (StoredList, SealedList)>,
    pub records: HashMap<String, StoredRecord>,
    pub receipts: HashMap<String, Value>,
}

impl Known {
    pub(super) fn receipts(&mut self, receipts: Option<Vec<Receipt>>) {
        for r in receipts.into_iter().flatten() {
            self.receipts.insert(r.entry.id.clone(), r.to_json());
        }
    }
}

/// What a submission seals besides its records.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub list: Option<(StoredList, SealedList)>,
    pub changes: Vec<StatusChange>,
    /// The version each change makes of the record it changes.
    pub versions: HashMap<String, u32>,
    pub entries: Vec<Entry>,
}

/// A SubmissionSet to seal (see `Gateway::prepare_extras`), owned like a record's.
pub(super) struct ListJob {
    pub id: String,
    pub created: String,
    pub pseudonym: String,
    pub pv: u32,
    pub record_ids: Vec<String>,
    pub entry_id: String,
    pub content: SealedList,
}

/// The kind name an answer item has for a request entry.
fn kind_of(e: SubmissionEntry) -> &'static str {
    match e {
        SubmissionEntry::SubmissionSet => "List",
        SubmissionEntry::Document(_) => "DocumentReference",
        SubmissionEntry::Binary(_) => "Binary",
        SubmissionEntry::Patch(_) => "Patch",
        SubmissionEntry::Patient => "Patient",
    }
}

/// A document's relation to check against the store (see `Gateway::check_relations`).
struct Related {
    /// The document's index in the submission.
    document: usize,
    /// Where the relation is, for refusals.
    at: String,
    /// The document's patient pseudonym.
    pseudonym: String,
    code: String,
    target: String,
}

/// Where a document's relation is, for refusals: its entry in the Bundle, or the resource.
fn relation_at(sub: &Submission, k: usize, j: usize) -> String {
    match sub.entries.iter().position(|e| *e == SubmissionEntry::Document(k)) {
        Some(i) if sub.option.is_some() => format!("Bundle.entry[{i}].resource.relatesTo[{j}].target"),
        _ => format!("DocumentReference.relatesTo[{j}].target"),
    }
}

impl Gateway {
    /// Checks every relation against what is stored: its target exists and is about the same
    /// patient; a replaced document is this hospital's, `current`, and on the ledger. Returns
    /// (document index, record it replaces) for each replacement. The pseudonyms are made first
    /// (in the HSM, or cached); the lookups then run together on a blocking thread.
    pub(super) async fn check_relations(&self, sub: &Submission) -> Result<Vec<(usize, StoredRecord)>, GatewayError> {
        let mut relations = Vec::new();
        for (k, d) in sub.documents.iter().enumerate() {
            if d.relates_to.is_empty() {
                continue;
            }
            let (_, pseudonym) = self.patient_pseudonym(&d.patient).await?;
            for (j, r) in d.relates_to.iter().enumerate() {
                relations.push(Related { document: k, at: relation_at(sub, k, j), pseudonym: pseudonym.clone(), code: r.code.clone(), target: r.target.clone() });
            }
        }
        if relations.is_empty() {
            return Ok(Vec::new());
        }
        self.off_runtime(move |g| {
            let mut replaced = Vec::new();
            for r in relations {
                if let Some(rec) = g.related(&r)? {
                    replaced.push((r.document, rec));
                }
            }
            Ok(replaced)
        })
        .await
    }

    /// Checks one relation (see [`Gateway::check_relations`]); the record it replaces, if it is
    /// a replacement.
    fn related(&self, r: &Related) -> Result<Option<StoredRecord>, GatewayError> {
        let (at, target) = (&r.at, format!("DocumentReference/{}", r.target));
        let Some(rec) = self.vault.get(&r.target).map_err(GatewayError::from)? else {
            return match self.remote_record(&r.target)? {
                Some(_) if r.code == "replaces" => {
                    Err(GatewayError::Forbidden(format!("{at}: {target} is held by another hospital; only its custodian may replace it")))
                }
                Some(e) if e.patient() == Some(r.pseudonym.as_str()) => Ok(None),
                _ => Err(GatewayError::invalid(at, "names no DocumentReference stored on this gateway or known to the ledger")),
            };
        };
        if rec.erased.is_some() {
            return Err(GatewayError::Conflict(format!("{at}: {target} was erased")));
        }
        if rec.patient_pseudonym != r.pseudonym {
            return Err(GatewayError::invalid(at, "names a document of another patient (XDSPatientIdDoesNotMatch)"));
        }
        if r.code != "replaces" {
            return Ok(None);
        }
        if rec.status() != "current" {
            let by = rec.changes.iter().rev().find_map(|c| c.replaced_by.as_deref()).map(|b| format!(" by DocumentReference/{b}")).unwrap_or_default();
            return Err(GatewayError::Conflict(format!("{at}: {target} is {}{by}; only a current document is replaced", rec.status())));
        }
        if self.ledger.store.location(&rec.entry_id).map_err(GatewayError::internal)?.is_none() {
            return Err(GatewayError::Unavailable(format!("{at}: {target} is not on the ledger yet (its entry waits in the outbox); retry once it is")));
        }
        Ok(Some(rec))
    }

    /// Makes the entries of the list and of each replacement, and what sealing the
    /// SubmissionSet takes (sealed with the records, see `records`). `ids[k]` is document
    /// `k`'s record id.
    pub(super) async fn prepare_extras(&self, caller: &Caller, sub: &mut Submission, ids: &[String], replaced: &[(usize, StoredRecord)]) -> Result<(Extras, Option<ListJob>), GatewayError> {
        let user = self.user_pseudonym(caller).await?;
        let created = crate::clock::now_rfc3339();
        let mut extras = Extras::default();
        for (k, old) in replaced {
            let entry = self.entry(EntryBody::RecordStatusChanged {
                record_id: old.id.clone(),
                patient: old.patient_pseudonym.clone(),
                custodian: self.hospital.clone(),
                status: "superseded".into(),
                replaced_by: Some(ids[*k].clone()),
                user: user.clone(),
                role: caller.role.clone(),
            });
            let change = RecordChange { status: "superseded".into(), replaced_by: Some(ids[*k].clone()), time: created.clone(), entry_id: entry.id.clone() };
            extras.changes.push(StatusChange { record_id: old.id.clone(), custodian: self.hospital.clone(), change });
            extras.versions.insert(old.id.clone(), old.version() + 1);
            extras.entries.push(entry);
        }
        // The SubmissionSet and Patient resource move into the sealed list: the request has no
        // further use for them. The entries are made by Entry::new: their ids are the hashes of
        // their content by construction, so only their fields are checked.
        let Some(ss) = sub.submission_set.take() else {
            for e in &extras.entries {
                e.validate_fields().map_err(GatewayError::internal)?;
            }
            return Ok((extras, None));
        };
        let (pv, pseudonym) = self.patient_pseudonym(&ss.patient).await?;
        let record_ids: Vec<String> = ss.items.iter().map(|k| ids[*k].clone()).collect();
        let id = vault::new_id()?;
        let entry = self.entry(EntryBody::ListAnchored {
            list_id: id.clone(),
            patient: pseudonym.clone(),
            pseudonym_key_version: pv,
            code: "submissionset".into(),
            record_ids: record_ids.clone(),
            custodian: self.hospital.clone(),
            user,
            role: caller.role.clone(),
            purpose: caller.purpose.clone(),
        });
        let content = SealedList {
            patient_system: ss.patient.system.clone(),
            patient_value: ss.patient.value.clone(),
            list: ss.into_stored_list(ids),
            patient_resource: sub.patient_resource.take(),
        };
        let job = ListJob { id, created, pseudonym, pv, record_ids, entry_id: entry.id.clone(), content };
        extras.entries.push(entry);
        for e in &extras.entries {
            e.validate_fields().map_err(GatewayError::internal)?;
        }
        Ok((extras, Some(job)))
    }

    /// The answer's items: one per request entry, in order, by id.
    pub(super) fn answer_items(sub: &Submission, records: &[StoredRecord], extras: &Extras) -> Vec<AnswerItem> {
        let list_id = extras.list.as_ref().map(|(l, _)| l.id.as_str()).unwrap_or_default();
        sub.entries
            .iter()
            .map(|e| match *e {
                SubmissionEntry::SubmissionSet | SubmissionEntry::Patient => AnswerItem::new(kind_of(*e), list_id, 1),
                SubmissionEntry::Document(k) | SubmissionEntry::Binary(k) => AnswerItem::new(kind_of(*e), &records[k].id, 1),
                SubmissionEntry::Patch(p) => {
                    let target = &sub.patches[p].target;
                    AnswerItem::new("Patch", target, extras.versions.get(target).copied().unwrap_or(2))
                }
            })
            .collect()
    }

    /// A submission sent again without its Idempotency-Key: one of its documents'
    /// masterIdentifier names an earlier submission. The same submission (same entries, same
    /// documents' content) is answered as the first time, with `200 OK`; anything else is a
    /// conflict.
    pub(super) async fn repeated_submission(&self, state: IdemState, sub: &Submission, k: usize, represent: bool) -> Result<Created, GatewayError> {
        let items = match state {
            IdemState::Committed { items } | IdemState::Answered { items, .. } => items,
            IdemState::Stored { record_ids } => record_ids.iter().map(|id| AnswerItem::new("DocumentReference", id, 1)).collect(),
            IdemState::Pending { .. } | IdemState::Done { .. } => return Err(GatewayError::internal("an idempotency state no longer written")),
        };
        self.vault.sync().await?;
        let layout: Vec<(&str, Option<&str>)> = sub.entries.iter().map(|e| (kind_of(*e), if let SubmissionEntry::Patch(p) = e { Some(sub.patches[*p].target.as_str()) } else { None })).collect();
        let earlier: Vec<(&str, Option<&str>)> = items.iter().map(|i| (i.kind.as_str(), (i.kind == "Patch").then_some(i.id.as_str()))).collect();
        let mut same = layout == earlier;
        let earlier_docs = items.iter().filter(|i| i.kind == "DocumentReference");
        for (d, it) in sub.documents.iter().zip(earlier_docs) {
            let rec = self.vault.get(&it.id).map_err(GatewayError::from)?;
            same &= rec.is_some_and(|r| r.content_hash == hex::encode(Sha256::digest(&d.data)));
        }
        if !same {
            let first = items.iter().find(|i| i.kind == "DocumentReference").map(|i| format!(" (DocumentReference/{})", i.id)).unwrap_or_default();
            return Err(GatewayError::Conflict(format!(
                "document {k} of this submission: its masterIdentifier is already used by a stored document{first}, submitted with other content or in another submission"
            )));
        }
        self.metrics.incr("conditional_create_hits");
        self.answer(&items, &Known::default(), true, represent).await
    }

    /// The answer for a request key seen before, rendered again from what it names.
    pub(super) async fn replay_create(&self, state: IdemState, represent: bool) -> Result<Created, GatewayError> {
        let (items, status) = match state {
            IdemState::Committed { items } => (items, None),
            IdemState::Answered { status, items } => (items, Some(status)),
            IdemState::Stored { record_ids } => (record_ids.iter().map(|id| AnswerItem::new("DocumentReference", id, 1)).collect(), None),
            // Not returned by a claim (see `Vault::claim`), and converted when the vault opens.
            IdemState::Pending { .. } | IdemState::Done { .. } => return Err(super::in_flight()),
        };
        // Stored by an earlier attempt that may not have finished answering: answer once what
        // it stored is surely on disk.
        self.vault.sync().await?;
        self.metrics.incr("idempotent_replays");
        let mut created = self.answer(&items, &Known::default(), false, represent).await?;
        if let Some(s) = status {
            created.status = s;
        }
        Ok(created)
    }

    /// Renders the answer: 201 when every entry is in a block, 202 while some wait in the
    /// outbox, 200 for a repeated submission (its entries `200 OK`). Each entry's response
    /// carries the receipt of what anchors it (DocumentReference, List, status change); with
    /// `represent` (`Prefer: return=representation`) the DocumentReferences and the List are in
    /// the answer too, each with its receipt, as a read shows them at that version.
    pub(super) async fn answer(&self, items: &[AnswerItem], known: &Known, repeat: bool, represent: bool) -> Result<Created, GatewayError> {
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            out.push(self.answer_entry(it, known, repeat, represent).await?);
        }
        let anchored = out.iter().all(|e| e.receipt.is_some());
        let status = if repeat { 200 } else if anchored { 201 } else { 202 };
        let location = items.iter().find(|i| i.kind == "DocumentReference").map(|i| format!("DocumentReference/{}", i.id));
        Ok(Created { status, body: provide_response(&out), location })
    }

    fn receipt_of(&self, entry_id: &str, known: &Known) -> Result<Option<Value>, GatewayError> {
        if let Some(r) = known.receipts.get(entry_id) {
            return Ok(Some(r.clone()));
        }
        Ok(self.ledger.store.receipt(entry_id).map_err(GatewayError::internal)?.map(|r| r.to_json()))
    }

    async fn answer_entry(&self, it: &AnswerItem, known: &Known, repeat: bool, represent: bool) -> Result<AnswerEntry, GatewayError> {
        let created = if repeat { "200 OK" } else { "201 Created" };
        let missing = || GatewayError::internal(format!("{} {} named by an idempotency state is missing", it.kind, it.id));
        if matches!(it.kind.as_str(), "List" | "Patient") {
            // What the request holds is borrowed, not copied: an answer is rendered per request.
            let (stored, sealed): (Cow<'_, StoredList>, Option<&SealedList>) = match known.lists.get(&it.id) {
                Some((l, s)) => (Cow::Borrowed(l), Some(s)),
                None => (Cow::Owned(self.vault.get_list(&it.id).map_err(GatewayError::from)?.ok_or_else(missing)?), None),
            };
            let receipt = self.receipt_of(&stored.entry_id, known)?;
            let resource = match (it.kind.as_str(), sealed) {
                ("Patient", _) => None,
                _ if !represent => None,
                (_, Some(sealed)) => Some(self.list_resource(&stored, sealed, receipt.as_ref())),
                (_, None) => Some(self.submission_set(&self.open_list(stored.as_ref().clone()).await?)?.resource),
            };
            let resource_type = if it.kind == "List" { "List" } else { "Patient" };
            let show_receipt = it.kind == "List";
            let (id, last_modified) = (stored.id.clone(), stored.created.clone());
            return Ok(AnswerEntry { status: created, resource_type, id, version: 1, last_modified, resource, receipt, show_receipt });
        }
        let rec: Cow<'_, StoredRecord> = match known.records.get(&it.id) {
            Some(r) => Cow::Borrowed(r),
            None => Cow::Owned(self.vault.get(&it.id).map_err(GatewayError::from)?.ok_or_else(missing)?),
        };
        let (status, resource_type, entry_id) = match it.kind.as_str() {
            "DocumentReference" => (created, "DocumentReference", rec.entry_id.clone()),
            "Binary" => (created, "Binary", rec.entry_id.clone()),
            "Patch" => ("200 OK", "DocumentReference", rec.changes.get(it.version.saturating_sub(2) as usize).map(|c| c.entry_id.clone()).ok_or_else(missing)?),
            _ => return Err(missing()),
        };
        let receipt = self.receipt_of(&entry_id, known)?;
        let resource = if represent && it.kind == "DocumentReference" && rec.erased.is_none() {
            let reference = match known.references.get(&rec.id) {
                Some(r) => r.clone(),
                None => self.open(rec.as_ref().clone(), false).await?.meta.document_reference,
            };
            Some(self.describe_at(&rec, &reference, receipt.as_ref(), 1))
        } else {
            None
        };
        let show_receipt = it.kind != "Binary";
        Ok(AnswerEntry { status, resource_type, id: rec.id.clone(), version: it.version, last_modified: rec.version_time(it.version).to_owned(), resource, receipt, show_receipt })
    }

    /// The DocumentReference of `rec` as it was at `version`: status, versionId, lastUpdated.
    pub(super) fn describe_at(&self, rec: &StoredRecord, reference: &Value, receipt: Option<&Value>, version: u32) -> Value {
        let status = match version.checked_sub(2).and_then(|i| rec.changes.get(i as usize)) {
            Some(c) => c.status.as_str(),
            None => "current",
        };
        at_version(self.describe_plain(rec, reference, receipt), status, version, rec.version_time(version))
    }
}
