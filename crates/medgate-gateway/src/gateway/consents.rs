//! Consents: a patient's consent recorded by the custodian, and withdrawn by it (listed by
//! `search`).

use medgate_fhir::{consent_resource, ConsentSubmission};
use medgate_ledger::consent::ConsentState;
use medgate_ledger::{Entry, EntryBody};
use medgate_store::vault::{self, AnswerItem, Claim, IdemState, Vault};

use super::{in_flight, Caller, Created, Gateway};
use crate::GatewayError;

impl Gateway {
    /// `POST /Consent` (status active): the patient lets `grantee` read their records held here.
    /// Answers 201 once the consent entry is in a block, 202 while it waits in the outbox.
    ///
    /// A retry creates nothing new: with an `Idempotency-Key` it gets the first answer (the
    /// idempotency store keeps the status and the consent id; the answer is rendered again from
    /// the ledger and the retried request); without one, a consent with the same terms that is
    /// active on the ledger (200) or waiting in the outbox (202) is answered instead of
    /// recording a second one.
    pub async fn record_consent(&self, caller: &Caller, sub: &ConsentSubmission, idempotency_key: Option<&str>) -> Result<Created, GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not record consents", caller.client.role)));
        }
        let request_key = idempotency_key.map(|k| Vault::idem_key(&format!("consent\n{}", caller.client.system), k));
        // Held until the answer is kept. A retry after a crash in between finds no answer and
        // records afresh, which finds the same consent on the ledger or in the outbox.
        let held = match &request_key {
            None => None,
            Some(k) => match self.claim(k).await? {
                Claim::New(held) => Some(held),
                Claim::InFlight => return Err(in_flight()),
                Claim::Existing(state) => return self.replay_consent(state, sub).await,
            },
        };
        let result = self.record_consent_claimed(caller, sub).await;
        if let (Some(held), Ok(c)) = (held, &result) {
            let id = c.body["id"].as_str().unwrap_or_default();
            if let Err(e) = self.finish(held, c.status, vec![AnswerItem::new("Consent", id, 1)]).await {
                tracing::warn!(error = %e, "idempotency state of a consent request not kept");
            }
        }
        result
    }

    /// The first answer to a consent request, for its retry: the consent it named, found on the
    /// ledger (or in the outbox) for the retried request's patient and with its terms, rendered
    /// with the status the first answer had. A key used for another consent is a conflict.
    async fn replay_consent(&self, state: IdemState, sub: &ConsentSubmission) -> Result<Created, GatewayError> {
        let (status, consent_id) = match state {
            IdemState::Answered { status, items } => match items.as_slice() {
                [it] if it.kind == "Consent" => (status, it.id.clone()),
                _ => return Err(GatewayError::Conflict("this Idempotency-Key was used for another kind of request".into())),
            },
            _ => return Err(GatewayError::Conflict("this Idempotency-Key was used for another kind of request".into())),
        };
        let (_, pseudonym) = self.patient_pseudonym(&sub.patient).await?;
        let mut found = self.ledger.store.consent(&pseudonym, &consent_id).map_err(GatewayError::internal)?;
        if found.is_none() {
            found = self.in_outbox(|e| ConsentState::from_entry(e).filter(|c| c.consent_id == consent_id && c.patient == pseudonym))?;
        }
        let (mut wanted, mut ids) = (sub.record_ids.clone(), found.as_ref().map(|c| c.record_ids.clone()).unwrap_or_default());
        wanted.sort();
        ids.sort();
        let Some(c) = found.filter(|c| c.custodian == self.hospital && c.grantee == sub.grantee && ids == wanted && c.start == sub.start && c.end == sub.end) else {
            return Err(GatewayError::Conflict("this Idempotency-Key was used for another consent (another patient or other terms)".into()));
        };
        self.metrics.incr("idempotent_replays");
        let receipt = self.ledger.store.receipt(&c.recorded_by).map_err(GatewayError::internal)?;
        let body = consent_resource(&consent_id, sub, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
        Ok(Created { status, body, location: Some(format!("Consent/{consent_id}")) })
    }

    pub(super) async fn record_consent_claimed(&self, caller: &Caller, sub: &ConsentSubmission) -> Result<Created, GatewayError> {
        if !sub.active {
            return Err(GatewayError::invalid("Consent.status", "to withdraw a consent, PUT /Consent/{id} with status 'inactive'"));
        }
        if sub.grantee == self.hospital {
            return Err(GatewayError::invalid("Consent.provision.actor[0]", "names this hospital; a consent grants access to another hospital"));
        }
        let (_, pseudonym) = self.patient_pseudonym(&sub.patient).await?;
        let held = self.vault.records_for(&pseudonym).map_err(GatewayError::from)?;
        if held.is_empty() {
            return Err(GatewayError::invalid(
                "Consent.patient",
                "this hospital holds no record of the patient; a consent is recorded by the hospital that holds the records",
            ));
        }
        for (i, id) in sub.record_ids.iter().enumerate() {
            if !held.iter().any(|r| &r.id == id) {
                return Err(GatewayError::invalid(
                    format!("Consent.provision.data[{i}].reference"),
                    "is not a record of this patient held here",
                ));
            }
        }
        // The same terms, already active on the ledger or waiting in the outbox: the answer to a
        // retry, not a second consent. One consent is recorded at a time, so a retry that races
        // its first attempt waits for it and then finds it.
        let _one = self.consenting.lock().await;
        let mut wanted = sub.record_ids.clone();
        wanted.sort();
        let same_terms = |c: &ConsentState| {
            let mut ids = c.record_ids.clone();
            ids.sort();
            c.active && c.custodian == self.hospital && c.grantee == sub.grantee && ids == wanted && c.start == sub.start && c.end == sub.end
        };
        if let Some(c) = self.ledger.store.consents_for(&pseudonym).map_err(GatewayError::internal)?.into_iter().find(|c| same_terms(c)) {
            self.metrics.incr("consents_already_recorded");
            let receipt = self.ledger.store.receipt(&c.recorded_by).map_err(GatewayError::internal)?;
            let body = consent_resource(&c.consent_id, sub, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
            return Ok(Created { status: 200, body, location: Some(format!("Consent/{}", c.consent_id)) });
        }
        if let Some(c) = self.in_outbox(|e| ConsentState::from_entry(e).filter(|c| c.patient == pseudonym && same_terms(c)))? {
            self.metrics.incr("consents_already_recorded");
            let body = consent_resource(&c.consent_id, sub, &self.hospital, None);
            return Ok(Created { status: 202, body, location: Some(format!("Consent/{}", c.consent_id)) });
        }
        let user = self.user_pseudonym(caller).await?;
        let consent_id = vault::new_id()?;
        let entry = self.entry(EntryBody::ConsentRecorded {
            consent_id: consent_id.clone(),
            patient: pseudonym,
            custodian: self.hospital.clone(),
            grantee: sub.grantee.clone(),
            record_ids: sub.record_ids.clone(),
            start: sub.start.clone(),
            end: sub.end.clone(),
            user,
            role: caller.role.clone(),
        });
        let receipt = self.anchor(vec![entry]).await?.and_then(|mut r| r.pop());
        let status = if receipt.is_some() { 201 } else { 202 };
        let body = consent_resource(&consent_id, sub, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
        Ok(Created { status, body, location: Some(format!("Consent/{consent_id}")) })
    }

    /// `PUT /Consent/{id}` with status inactive: withdraws a consent this hospital recorded.
    /// Withdrawing one already withdrawn answers the same (a retried request is not an error).
    pub async fn revoke_consent(&self, caller: &Caller, consent_id: &str, sub: &ConsentSubmission) -> Result<Created, GatewayError> {
        if !caller.client.may_write() {
            return Err(GatewayError::Forbidden(format!("certificate role {:?} may not withdraw consents", caller.client.role)));
        }
        if sub.active {
            return Err(GatewayError::invalid("Consent.status", "must be 'inactive' to withdraw; a consent is not changed in place"));
        }
        let (_, pseudonym) = self.patient_pseudonym(&sub.patient).await?;
        // One consent change at a time, as for recording: a retry that races its first attempt
        // waits for it, then finds the consent withdrawn (on the ledger, or its withdrawal in the
        // outbox) instead of withdrawing it a second time (a second withdrawal would make its
        // batch invalid, with the entries signed beside it).
        let _one = self.consenting.lock().await;
        let current = self
            .ledger
            .store
            .consent(&pseudonym, consent_id)
            .map_err(GatewayError::internal)?
            .ok_or_else(|| GatewayError::NotFound(format!("no consent {} for this patient", consent_id.chars().take(64).collect::<String>())))?;
        if current.custodian != self.hospital {
            return Err(GatewayError::Forbidden("only the hospital that recorded a consent may withdraw it".into()));
        }
        if current.grantee != sub.grantee {
            return Err(GatewayError::invalid("Consent.provision.actor[0]", "does not match the grantee of the consent being withdrawn"));
        }
        let mut status = 200;
        let mut receipt = None;
        // Withdrawn on the ledger: the same answer again. Active, with its withdrawal waiting in
        // the outbox (the ledger could not take it yet): 202 again, not a second withdrawal.
        let waiting = || self.in_outbox(|e| matches!(&e.body, EntryBody::ConsentRevoked { consent_id: c, patient, .. } if c == consent_id && *patient == pseudonym).then_some(()));
        if current.active && waiting()?.is_some() {
            status = 202;
        } else if current.active {
            let user = self.user_pseudonym(caller).await?;
            let entry = self.entry(EntryBody::ConsentRevoked {
                consent_id: consent_id.to_owned(),
                patient: pseudonym,
                custodian: self.hospital.clone(),
                grantee: current.grantee.clone(),
                user,
                role: caller.role.clone(),
            });
            receipt = self.anchor(vec![entry]).await?.and_then(|mut r| r.pop());
            if receipt.is_none() {
                status = 202;
            }
        }
        let shown = ConsentSubmission { active: false, record_ids: current.record_ids, start: current.start, end: current.end, ..sub.clone() };
        let body = consent_resource(consent_id, &shown, &self.hospital, receipt.map(|r| r.to_json()).as_ref());
        Ok(Created { status, body, location: Some(format!("Consent/{consent_id}")) })
    }

    /// The first entry waiting in the outbox (entries the ledger has not taken yet) for which
    /// `f` answers something.
    fn in_outbox<T>(&self, mut f: impl FnMut(&Entry) -> Option<T>) -> Result<Option<T>, GatewayError> {
        for (_, bytes) in self.vault.outbox().map_err(GatewayError::from)? {
            let Ok(e) = serde_json::from_slice::<Entry>(&bytes) else { continue };
            if let Some(found) = f(&e) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}
