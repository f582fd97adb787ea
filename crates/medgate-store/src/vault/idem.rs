//! What the idempotency store may hold: ids, resource type names and versions, checked before
//! anything is written, and the conversion of the whole responses earlier versions kept there.
//!
//! A request's answer is never stored: a retry's answer is rendered again from the sealed records
//! and lists (decrypted) and the ledger receipts, from the [`AnswerItem`]s kept under its key.

use serde::{Deserialize, Serialize};

use super::{IdemState, Vault, VaultError};
use crate::error::to_json;
use crate::StoreError;

/// The resource kinds an answer item may name.
const KINDS: [&str; 6] = ["List", "DocumentReference", "Binary", "Patch", "Patient", "Consent"];

/// One entry of a create's answer, by id: its kind (`List`, `DocumentReference`, `Binary`,
/// `Patient`, `Consent`, or `Patch` for a status change of the DocumentReference `id`), the id,
/// and the version the answer named.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnswerItem {
    pub kind: String,
    pub id: String,
    pub version: u32,
}

impl AnswerItem {
    pub fn new(kind: &str, id: &str, version: u32) -> AnswerItem {
        AnswerItem { kind: kind.to_owned(), id: id.to_owned(), version }
    }
}

/// Refuses anything but ids and the known kinds: no free text can reach the store this way.
pub(super) fn check_items(items: &[AnswerItem]) -> Result<(), StoreError> {
    for it in items {
        let id_ok = (1..=64).contains(&it.id.len()) && it.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !KINDS.contains(&it.kind.as_str()) || !id_ok || it.version == 0 {
            return Err(StoreError::corrupt("idempotency state", "an answer item must name a known kind, an id and a version"));
        }
    }
    Ok(())
}

/// Checks a state about to be written: never a response body.
pub(super) fn check_state(state: &IdemState) -> Result<(), StoreError> {
    match state {
        IdemState::Committed { items } | IdemState::Answered { items, .. } => check_items(items),
        IdemState::Stored { record_ids } => check_items(&record_ids.iter().map(|id| AnswerItem::new("DocumentReference", id, 1)).collect::<Vec<_>>()),
        IdemState::Done { .. } | IdemState::Pending { .. } => Err(StoreError::corrupt("idempotency state", "response bodies and pending claims are no longer written")),
    }
}

/// What [`Vault::migrate_idempotency`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Whole responses replaced by the ids they named.
    pub converted: usize,
    /// Whole responses that named nothing this version can render again, removed.
    pub removed: usize,
}

/// The ids a response kept by an earlier version named: every entry's `response.location` of a
/// transaction-response (`Type/id`, `Type/id/_history/n`), or the id of a single resource.
fn items_of(body: &serde_json::Value) -> Option<Vec<AnswerItem>> {
    let from_location = |loc: &str| -> Option<AnswerItem> {
        let mut parts = loc.split('/');
        let (kind, id) = (parts.next()?, parts.next()?);
        let version = match (parts.next(), parts.next()) {
            (None, _) => 1,
            (Some("_history"), Some(v)) => v.parse().ok()?,
            _ => return None,
        };
        Some(AnswerItem::new(kind, id, version))
    };
    let items = match body.get("resourceType")?.as_str()? {
        "Bundle" => body.get("entry")?.as_array()?.iter().map(|e| from_location(e.pointer("/response/location")?.as_str()?)).collect::<Option<Vec<_>>>()?,
        kind @ ("Consent" | "DocumentReference") => vec![AnswerItem::new(kind, body.get("id")?.as_str()?, 1)],
        _ => return None,
    };
    (!items.is_empty() && check_items(&items).is_ok()).then_some(items)
}

impl Vault {
    /// Replaces every idempotency state an earlier version wrote with the whole response in it
    /// (patient identifier, author, title...) by [`IdemState::Answered`] with the ids the
    /// response named, so its retries still get their answer, rendered again; a response that
    /// names nothing renderable is removed (its retry is then served as a new request, which a
    /// masterIdentifier still keeps from storing twice). Flushed before it returns.
    ///
    /// The old bytes leave the tree at once; sled's own files may keep them until it rewrites
    /// those segments, as they keep any overwritten value.
    pub fn migrate_idempotency(&self) -> Result<Migrated, VaultError> {
        let mut m = Migrated::default();
        for kv in self.idempotency.iter() {
            let (k, v) = kv?;
            let Ok(IdemState::Done { status, body }) = serde_json::from_slice::<IdemState>(&v) else { continue };
            match items_of(&body) {
                Some(items) => {
                    self.idempotency.insert(&k, to_json("idempotency state", &IdemState::Answered { status, items })?)?;
                    m.converted += 1;
                }
                None => {
                    self.idempotency.remove(&k)?;
                    m.removed += 1;
                }
            }
        }
        if m.converted + m.removed > 0 {
            self.db.flush_blocking()?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Claim;
    use crate::Db;
    use serde_json::json;

    const MRN: &str = "MRN-4471-SECRET";

    #[test]
    fn responses_kept_by_earlier_versions_become_ids_at_start_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let (bundle, consent, opaque) = (Vault::idem_key("request\nhis", "a"), Vault::idem_key("consent\nhis", "b"), Vault::idem_key("request\nhis", "c"));
        {
            let db = Db::open(dir.path()).expect("db");
            let v = Vault::open(&db).expect("vault");
            let done = |status: u16, body: serde_json::Value| serde_json::to_vec(&IdemState::Done { status, body }).expect("json");
            let response = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"fullUrl": "DocumentReference/r1", "resource": {"resourceType": "DocumentReference", "id": "r1", "subject": {"identifier": {"value": MRN}}},
                 "response": {"status": "201 Created", "location": "DocumentReference/r1"}},
                {"response": {"status": "201 Created", "location": "DocumentReference/r2/_history/1"}}]});
            v.idempotency.insert(&bundle, done(201, response)).expect("insert");
            v.idempotency.insert(&consent, done(200, json!({"resourceType": "Consent", "id": "c1", "patient": {"identifier": {"value": MRN}}}))).expect("insert");
            v.idempotency.insert(&opaque, done(201, json!({"note": MRN}))).expect("insert");
            db.flush_blocking().expect("flush");
        }
        let db = Db::reopen(dir.path());
        let v = Vault::open(&db).expect("vault, migrating as it opens");
        let state = |k: &[u8]| v.idempotency.get(k).expect("get").map(|b| String::from_utf8_lossy(&b).into_owned());
        for k in [&bundle, &consent] {
            assert!(!state(k).expect("kept").contains(MRN), "{:?}", state(k));
        }
        let Claim::Existing(IdemState::Answered { status, items }) = v.claim(&bundle).expect("claim") else { panic!("converted") };
        assert_eq!((status, items), (201, vec![AnswerItem::new("DocumentReference", "r1", 1), AnswerItem::new("DocumentReference", "r2", 1)]));
        let Claim::Existing(IdemState::Answered { status, items }) = v.claim(&consent).expect("claim") else { panic!("converted") };
        assert_eq!((status, items), (200, vec![AnswerItem::new("Consent", "c1", 1)]));
        assert_eq!(state(&opaque), None, "what names nothing is removed");
        assert_eq!(v.migrate_idempotency().expect("again"), Migrated::default(), "nothing left to convert");
    }

    #[test]
    fn only_ids_and_known_kinds_are_written() {
        assert!(check_items(&[AnswerItem::new("List", "0a1b", 1), AnswerItem::new("Patch", "r-1.x_2", 2)]).is_ok());
        for bad in [AnswerItem::new("Note", "r1", 1), AnswerItem::new("List", "Jane Doe", 1), AnswerItem::new("List", "", 1), AnswerItem::new("List", "r1", 0)] {
            assert!(check_items(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(check_state(&IdemState::Done { status: 201, body: json!({}) }).is_err());
        assert!(check_state(&IdemState::Stored { record_ids: vec!["r1".to_owned(), "a b".into()] }).is_err());
    }
}
