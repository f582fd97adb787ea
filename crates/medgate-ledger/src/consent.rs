//! Consents as the chain knows them: derived from the consent entries of valid batches, the same
//! on every gateway that holds the same chain.
//!
//! Boundary: the derived value and the rule that reads it ([`ConsentState::permits`]); where it
//! is stored is the store's business.

use serde::{Deserialize, Serialize};

use crate::{Entry, EntryBody};

/// A consent as the chain knows it (derived from consent entries of valid batches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentState {
    /// Consent id.
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Hospital that recorded it (the grantor).
    pub custodian: String,
    /// Hospital allowed to read.
    pub grantee: String,
    /// Records covered; empty: every record of the patient held by the custodian.
    pub record_ids: Vec<String>,
    /// Start of the period, RFC 3339 UTC, if bounded.
    pub start: Option<String>,
    /// End of the period, RFC 3339 UTC, if bounded.
    pub end: Option<String>,
    /// False once revoked.
    pub active: bool,
    /// Entry that recorded it.
    pub recorded_by: String,
    /// Entry that revoked it.
    pub revoked_by: Option<String>,
}

impl ConsentState {
    /// The consent a `ConsentRecorded` entry records (`None` for any other entry).
    pub fn from_entry(e: &Entry) -> Option<ConsentState> {
        match &e.body {
            EntryBody::ConsentRecorded { consent_id, patient, custodian, grantee, record_ids, start, end, .. } => Some(ConsentState {
                consent_id: consent_id.clone(),
                patient: patient.clone(),
                custodian: custodian.clone(),
                grantee: grantee.clone(),
                record_ids: record_ids.clone(),
                start: start.clone(),
                end: end.clone(),
                active: true,
                recorded_by: e.id.clone(),
                revoked_by: None,
            }),
            _ => None,
        }
    }

    /// Whether it lets `reader` read `record_id` at `time` (RFC 3339). Times are compared as
    /// instants (strings would misorder `…:17.8Z` and `…:17Z`); an unreadable time permits nothing.
    pub fn permits(&self, reader: &str, record_id: &str, time: &str) -> bool {
        let parse = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok();
        let Some(at) = parse(time) else { return false };
        let within = |bound: &Option<String>, ok: &dyn Fn(time::OffsetDateTime) -> bool| match bound {
            None => true,
            Some(b) => parse(b).is_some_and(ok),
        };
        self.active
            && self.grantee == reader
            && (self.record_ids.is_empty() || self.record_ids.iter().any(|r| r == record_id))
            && within(&self.start, &|s| s <= at)
            && within(&self.end, &|e| at <= e)
    }
}

#[cfg(test)]
mod tests {
    use super::ConsentState;

    fn consent(start: Option<&str>, end: Option<&str>) -> ConsentState {
        ConsentState {
            consent_id: "c".into(),
            patient: "p".into(),
            custodian: "hospital-a".into(),
            grantee: "hospital-b".into(),
            record_ids: vec![],
            start: start.map(str::to_owned),
            end: end.map(str::to_owned),
            active: true,
            recorded_by: "e".into(),
            revoked_by: None,
        }
    }

    #[test]
    fn periods_compare_instants_not_strings() {
        let c = consent(Some("2026-11-28T10:00:17Z"), Some("2026-11-28T10:00:18Z"));
        assert!(c.permits("hospital-b", "r", "2026-11-28T10:00:17.8Z"), "17.8 s is inside [17 s, 18 s]");
        assert!(!c.permits("hospital-b", "r", "2026-11-28T10:00:18.5Z"));
        assert!(!c.permits("hospital-b", "r", "2026-11-28T10:00:16.99Z"));
        assert!(!c.permits("hospital-c", "r", "2026-11-28T10:00:17.8Z"), "another grantee");
        assert!(!c.permits("hospital-b", "r", "not a time"));
        let mut revoked = consent(None, None);
        assert!(revoked.permits("hospital-b", "any", "2030-01-01T00:00:00Z"));
        revoked.active = false;
        assert!(!revoked.permits("hospital-b", "any", "2030-01-01T00:00:00Z"));
    }
}
