//! The write side of the HIS interface: ITI-65 (`POST /`, a Provide Document Bundle) and
//! `POST /DocumentReference`, a custodian's status change (`PATCH /DocumentReference/{id}`),
//! and the reads of what a submission carried besides its documents (`GET /List/{id}`,
//! `GET /Patient/{id}`).
//!
//! Boundary: HTTP in, [`crate::gateway::Gateway`] calls, HTTP out, through the helpers of `api`.

use hyper::body::Incoming;
use hyper::Request;
use medgate_fhir::Submission;

use super::{body, caller, check_fhir_json, header, idempotency_key, with_location, Api, Resp, Rep};
use crate::tls::ClientIdentity;
use crate::GatewayError;

/// Whether the request asks for the created resources (`Prefer: return=representation`).
fn wants_representation(prefer: Option<&str>) -> bool {
    prefer.is_some_and(|p| p.split([';', ',']).any(|x| x.trim() == "return=representation"))
}

impl Api {
    /// `POST /` and `POST /DocumentReference`. A single create answers with the resource itself
    /// (201); a transaction with the transaction-response Bundle, 200 as FHIR and ITI-65 say (202
    /// while ledger entries wait in the outbox), its resources only when asked for.
    pub(super) async fn provide(&self, route: &str, client: &ClientIdentity, req: Request<Incoming>) -> Result<Resp, GatewayError> {
        let caller = caller(&req, client)?;
        check_fhir_json(&req)?;
        let idem = idempotency_key(&req)?;
        let single = route == "POST /DocumentReference";
        let represent = single || wants_representation(header(&req, "prefer")?);
        let bytes = body(req, self.body_limit(), self.body_timeout).await?;
        // Parsed, checked and sealed with a bounded number of others, the HIS systems waiting
        // taking turns (see `admission`); the slot goes with the create, which gives it back
        // once sealed.
        let slot = self.admission.admit(&client.system).await;
        let sub = if single { Submission::single(medgate_fhir::parse_document_reference(&bytes)?) } else { medgate_fhir::parse_transaction(&bytes)? };
        let gw = self.gateway.clone();
        let created = self.gateway.writes.to_the_end(async move { gw.create(&caller, sub, idem.as_deref(), represent, Some(Box::new(slot))).await }).await?;
        let (status, body) = if single {
            match created.body["entry"][0].get("resource") {
                Some(r) => (created.status, r.clone()),
                // A retry of a create whose record was erased since: its content is gone.
                None => return Err(GatewayError::Gone(format!("{} created by this request was erased since", created.location.unwrap_or_default()))),
            }
        } else {
            (if created.status == 201 { 200 } else { created.status }, created.body)
        };
        Ok(with_location(self.fhir(status, body, &Rep::default()), created.location, &self.public_base))
    }

    /// `PATCH /DocumentReference/{id}`: FHIRPath Patch Parameters setting `entered-in-error`.
    pub(super) async fn patch_status(&self, client: &ClientIdentity, req: Request<Incoming>, id: &str) -> Result<Resp, GatewayError> {
        let caller = caller(&req, client)?;
        check_fhir_json(&req)?;
        let bytes = body(req, self.body_limit(), self.body_timeout).await?;
        let status = medgate_fhir::parse_status_patch(&bytes)?;
        let (gw, id) = (self.gateway.clone(), id.to_owned());
        let changed = self.gateway.writes.to_the_end(async move { gw.change_status(&caller, &id, &status).await }).await?;
        Ok(self.fhir(200, changed, &Rep::default()))
    }

    /// `GET /List/{id}` (a SubmissionSet) and `GET /Patient/{id}` (the Patient it carried).
    pub(super) async fn read_submitted(&self, route: &str, client: &ClientIdentity, req: Request<Incoming>, id: &str) -> Result<Resp, GatewayError> {
        let caller = caller(&req, client)?;
        let rep = self.read_rep(&req)?;
        let mut res = if route == "GET /List/{id}" { self.gateway.read_list(&caller, id).await? } else { self.gateway.read_patient(&caller, id).await? };
        medgate_fhir::subset::subset(&mut res, rep.summary, rep.elements.as_deref());
        Ok(self.fhir(200, res, &rep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_representation_is_asked_by_prefer_only() {
        assert!(wants_representation(Some("return=representation")));
        assert!(wants_representation(Some("handling=strict; return=representation")));
        assert!(wants_representation(Some("respond-async, return=representation")));
        assert!(!wants_representation(Some("return=minimal")));
        assert!(!wants_representation(Some("return=OperationOutcome")));
        assert!(!wants_representation(None));
    }
}
