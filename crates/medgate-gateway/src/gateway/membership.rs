//! Membership changes in this hospital's name (proposals and approvals) and the roster as the
//! ledger holds it, for the admin listener.

use medgate_ledger::membership::{MemberCard, Proposal};
use medgate_ledger::EntryBody;
use medgate_store::vault;
use serde_json::Value;

use super::Gateway;
use crate::GatewayError;

impl Gateway {
    /// Opens a membership proposal in this hospital's name (admin listener, `medgate consortium
    /// propose`). Not queued in the outbox: a proposal the roster no longer allows would make
    /// every batch it rides in invalid, so it is checked here, submitted once, and a failure is
    /// reported to the operator, who proposes again. Answers the proposal as the chain holds it.
    pub async fn propose_membership(&self, action: &str, hospital_id: &str, card: Option<MemberCard>) -> Result<Proposal, GatewayError> {
        let roster = self.ledger.store.roster()?.ok_or_else(|| GatewayError::Conflict("membership needs ledger.mode = \"consortium\"".into()))?;
        if !roster.is_member(&self.hospital) {
            return Err(GatewayError::Conflict(format!("{} is not a current member; only members propose changes", self.hospital)));
        }
        let id = vault::new_id()?;
        let body = match (action, card) {
            ("add" | "update", Some(card)) => {
                if card.hospital_id != hospital_id {
                    return Err(GatewayError::BadRequest(format!("the member card is for {}, not {hospital_id}", card.hospital_id)));
                }
                card.check().map_err(GatewayError::BadRequest)?;
                card.proposal(id, action, &self.hospital)
            }
            ("remove", None) => EntryBody::MembershipProposed {
                proposal_id: id,
                action: "remove".into(),
                hospital_id: hospital_id.to_owned(),
                ledger_public_key: None,
                ledger_key_version: None,
                sharing_public_key: None,
                peer_address: None,
                proposer: self.hospital.clone(),
            },
            ("add" | "update", None) => return Err(GatewayError::BadRequest(format!("{action} needs the hospital's member card"))),
            _ => return Err(GatewayError::BadRequest(format!("unknown action {action:?}: add, remove or update"))),
        };
        let proposal = Proposal::from_entry(&body).ok_or_else(|| GatewayError::BadRequest("malformed proposal".into()))?;
        if !roster.admits(&proposal) {
            let why = match action {
                "add" => format!("{hospital_id} is already a member, or its card does not hold valid keys"),
                "remove" if roster.members.len() <= 1 => "the last member cannot be removed".to_owned(),
                _ => format!("{hospital_id} is not a current member, or the update changes an admitted key version"),
            };
            return Err(GatewayError::Conflict(why));
        }
        self.membership_entry(body, &proposal.proposal_id).await
    }

    /// Approves an open membership proposal in this hospital's name.
    pub async fn approve_membership(&self, proposal_id: &str) -> Result<Proposal, GatewayError> {
        let roster = self.ledger.store.roster()?;
        let Some(roster_version) = roster.filter(|r| r.is_member(&self.hospital)).map(|r| r.version) else {
            return Err(GatewayError::Conflict(format!("{} is not a current member; only members approve changes", self.hospital)));
        };
        let p = self.ledger.store.proposal(proposal_id)?.ok_or_else(|| {
            GatewayError::NotFound(format!("no membership proposal {proposal_id} on this ledger copy (yet: a proposal made elsewhere a moment ago may still be on its way)"))
        })?;
        match p.decided_at {
            Some(h) if p.lapsed => return Err(GatewayError::Conflict(format!("proposal {proposal_id} lapsed in block {h}; propose the change again"))),
            Some(h) => return Err(GatewayError::Conflict(format!("proposal {proposal_id} was already carried in block {h}"))),
            None if p.roster_version != roster_version => {
                return Err(GatewayError::Conflict(format!("proposal {proposal_id} lapsed: the membership changed since it was made; propose the change again")))
            }
            None => {}
        }
        if p.approvals.contains(&self.hospital) {
            return Err(GatewayError::Conflict(format!("{} already approved proposal {proposal_id}", self.hospital)));
        }
        let body = EntryBody::MembershipApproved { proposal_id: proposal_id.to_owned(), approver: self.hospital.clone() };
        self.membership_entry(body, proposal_id).await
    }

    pub(super) async fn membership_entry(&self, body: EntryBody, proposal_id: &str) -> Result<Proposal, GatewayError> {
        let entry = self.entry(body);
        entry.validate().map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        self.ledger.append_alone(vec![entry]).await.map_err(|e| {
            GatewayError::Unavailable(format!("the ledger did not confirm the entry ({e}); check `medgate consortium members` before proposing or approving again"))
        })?;
        let p = self.ledger.store.proposal(proposal_id)?.ok_or_else(|| GatewayError::internal("the proposal is not in the ledger state"))?;
        tracing::info!(proposal = %p.proposal_id, action = %p.action, hospital = %p.hospital_id, approvals = ?p.approvals, carried_at = ?p.decided_at, "membership entry on the ledger");
        Ok(p)
    }

    /// The roster and every proposal, for the admin listener.
    pub fn membership_json(&self) -> Result<Value, GatewayError> {
        let store = &self.ledger.store;
        let roster = store.roster()?.ok_or_else(|| GatewayError::Conflict("membership needs ledger.mode = \"consortium\"".into()))?;
        let proposals: Vec<Value> = store
            .proposals()?
            .into_iter()
            .map(|p| {
                let state = p.state(roster.version);
                let mut v = serde_json::to_value(&p).map_err(GatewayError::internal)?;
                v["state"] = Value::String(state);
                Ok(v)
            })
            .collect::<Result<_, GatewayError>>()?;
        Ok(serde_json::json!({
            "genesis": store.genesis_hash()?.map(hex::encode),
            "members": roster.members.values().collect::<Vec<_>>(),
            "proposals": proposals,
        }))
    }
}
