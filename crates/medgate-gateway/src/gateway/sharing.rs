//! Sharing between hospitals: reading a record another member holds (as the requester), and
//! answering another member's read under consent or break-glass (as the custodian).

use std::future::Future;
use std::time::Instant;

use medgate_ledger::{Entry, EntryBody};
use medgate_store::vault;

use super::{nonce, Caller, Document, Gateway, PURPOSES};
use crate::peer::{ReadGrant, ReadRequest};
use crate::metrics::Metrics;
use crate::GatewayError;

/// `step` of a granted read, timed from `started` to its success (see [`Metrics::observe_step`]).
async fn timed<T>(metrics: &Metrics, step: &str, started: Instant, f: impl Future<Output = Result<T, GatewayError>>) -> Result<T, GatewayError> {
    let out = f.await;
    if out.is_ok() {
        metrics.observe_step(step, started.elapsed());
    }
    out
}

impl Gateway {
    /// Fetches a record from its custodian: ciphertext and a data key re-wrapped for this
    /// hospital's sharing key; unwrapped in the HSM, decrypted here, checked against the hash on
    /// the ledger. The custodian records the access (granted or denied) on the ledger.
    pub(super) async fn read_remote(&self, caller: &Caller, entry: Entry) -> Result<Document, GatewayError> {
        let EntryBody::RecordAnchored { record_id, custodian, content_hash, content_type, .. } = entry.body else {
            return Err(GatewayError::internal("not a record entry"));
        };
        let sharing = self.sharing.clone().ok_or_else(|| GatewayError::internal("sharing is not configured"))?;
        let user = self.user_pseudonym(caller).await?;
        let transport = self.hsm.receives_transport_keys();
        let req = ReadRequest { record_id: record_id.clone(), user, role: caller.role.clone(), purpose: caller.purpose.clone(), transport };
        let asked = Instant::now();
        let grant = match sharing.read(&custodian, &req).await {
            Err(e) => {
                tracing::warn!(%custodian, error = %e, "custodian unreachable");
                return Err(GatewayError::Unavailable(format!("the custodian {custodian} could not be reached; retry later")));
            }
            Ok(Err((403, refusal))) if refusal.reason == "not-a-member" => {
                self.metrics.incr("peer_reads_denied");
                return Err(GatewayError::Forbidden(format!("the custodian {custodian} refused the read: {} is not a current member of the consortium", self.hospital)));
            }
            Ok(Err((403, refusal))) => {
                self.metrics.incr("peer_reads_denied");
                return Err(GatewayError::Forbidden(format!(
                    "the custodian {custodian} refused the read ({}); the refusal is on the ledger",
                    refusal.reason
                )));
            }
            Ok(Err((404, _))) => return Err(GatewayError::NotFound(format!("{custodian} no longer holds record {record_id}"))),
            Ok(Err((410, _))) => return Err(GatewayError::Gone(format!("record {record_id} was erased by its custodian {custodian}"))),
            Ok(Err((status, refusal))) => return Err(GatewayError::internal(format!("{custodian} answered {status}: {}", refusal.reason))),
            Ok(Ok(g)) => g,
        };
        self.metrics.observe_step("custodian", asked.elapsed());
        if grant.record_id != record_id || grant.content_hash != content_hash || grant.content_type != content_type {
            return Err(GatewayError::Integrity(record_id));
        }
        let b64 = |s: &str| medgate_ledger::keys::b64_decode(s).map_err(|_| GatewayError::Integrity(record_id.clone()));
        let blob = b64(&grant.shared_key)?;
        let transport = grant.transport_key.as_deref().map(b64).transpose()?;
        let context = transport_context(&custodian, &self.hospital, &record_id);
        let (hsm, unwrapping, from) = (self.hsm.clone(), Instant::now(), custodian.clone());
        let dk = tokio::task::spawn_blocking(move || match transport {
            Some(t) => hsm.open_from_peer(&from, &t, &blob, &context),
            None => hsm.unwrap_shared(&blob),
        });
        let dk = dk.await.map_err(GatewayError::internal)?.map_err(|e| match e {
            e if e.is_integrity() => {
                tracing::error!(record = %record_id, error = %e, "the HSM refused the shared key");
                GatewayError::Integrity(record_id.clone())
            }
            other => GatewayError::from(other),
        })?;
        self.metrics.observe_step("unwrap", unwrapping.elapsed());
        let bytes = vault::open_shared_document(&record_id, &content_type, &content_hash, &dk, &grant.doc_nonce, &grant.doc_ct).map_err(GatewayError::from)?;
        self.metrics.incr("peer_reads_granted");
        Ok(Document { content_type, bytes })
    }

    /// Answers another gateway's read (the custodian's side): consent on this ledger copy, or
    /// break-glass by a role the configuration names; the access goes on the ledger either way,
    /// before any key material leaves. A refusal carries the reason code the requester sees.
    pub async fn serve_peer_read(&self, requester: &str, req: ReadRequest) -> Result<ReadGrant, GatewayError> {
        let sharing = self.sharing.clone().ok_or_else(|| GatewayError::NotFound("no-sharing".into()))?;
        let Some(peer) = sharing.peer(requester).filter(|_| requester != self.hospital) else {
            return Err(GatewayError::Forbidden("not-a-member".into()));
        };
        let Some((n, e)) = peer.sharing_key.clone() else { return Err(GatewayError::Forbidden("no-sharing-key".into())) };
        if !PURPOSES.contains(&req.purpose.as_str()) {
            return Err(GatewayError::BadRequest("bad-request".into()));
        }
        // Read on this runtime thread, without a hand-over to the blocking pool: the lock a
        // hand-over would avoid waiting for is held only during this gateway's group commits; in the
        // runs that compared both (tests/benches/README.md, 2026-12-07, thirteenth stop) the
        // hand-over gained a peer's read nothing the spread between runs could show.
        let rec = match self.vault.get(&req.record_id) {
            Ok(Some(r)) if r.erased.is_some() => return Err(GatewayError::Gone("erased".into())),
            Ok(Some(r)) => r,
            Ok(None) => return Err(GatewayError::NotFound("unknown-record".into())),
            Err(e) => {
                tracing::error!(error = %e, "vault read for a peer failed");
                return Err(GatewayError::internal(e));
            }
        };
        let now = crate::clock::now_rfc3339();
        let consented = self.ledger.store.consents_for(&rec.patient_pseudonym)?.iter().any(|c| c.custodian == self.hospital && c.permits(requester, &rec.id, &now));
        let break_glass = !consented && req.purpose == "BTG" && sharing.break_glass_roles.contains(&req.role);
        let reason = match (consented, break_glass) {
            (true, _) => None,
            (false, true) => Some("break-glass"),
            (false, false) => Some("no-consent"),
        };
        if reason == Some("no-consent") {
            self.record_peer_access(requester, &req, &rec, &now, reason).await?;
            return Err(GatewayError::Forbidden("no-consent".into()));
        }
        // Granted: the HSM re-wraps while the access entry is put on the ledger; the key leaves
        // only once the entry is recorded.
        let started = Instant::now();
        let (recorded, shared) = tokio::join!(
            timed(&self.metrics, "access_entry", started, self.record_peer_access(requester, &req, &rec, &now, reason)),
            timed(&self.metrics, "rewrap", started, self.rewrap_for(requester, &rec, n, e, req.transport)),
        );
        recorded?;
        let (shared, transport) = shared?;
        Ok(ReadGrant {
            record_id: rec.id,
            content_type: rec.content_type,
            content_hash: rec.content_hash,
            doc_nonce: rec.doc_nonce,
            doc_ct: rec.doc_ct,
            shared_key: medgate_ledger::keys::b64_encode(&shared),
            transport_key: transport.map(|t| medgate_ledger::keys::b64_encode(&t)),
        })
    }

    /// Records a peer's read (granted unless `reason` is `no-consent`): durable here and held by
    /// the ordering service before this returns ([`medgate_store::Ledger::record_access`]).
    async fn record_peer_access(&self, requester: &str, req: &ReadRequest, rec: &vault::StoredRecord, now: &str, reason: Option<&str>) -> Result<(), GatewayError> {
        let granted = reason != Some("no-consent");
        let entry = Entry::new(
            &self.hospital,
            now,
            nonce(),
            EntryBody::RecordRead {
                record_id: rec.id.clone(),
                patient: rec.patient_pseudonym.clone(),
                custodian: self.hospital.clone(),
                reader: requester.to_owned(),
                user: req.user.clone(),
                role: req.role.clone(),
                purpose: req.purpose.clone(),
                granted,
                reason: reason.map(str::to_owned),
            },
        );
        if entry.validate().is_err() {
            return Err(GatewayError::BadRequest("bad-request".into()));
        }
        if let Err(e) = self.ledger.record_access(vec![entry]).await {
            tracing::error!(error = %e, "access entry for a peer read could not be stored; refused");
            return Err(GatewayError::Unavailable("ledger-unavailable".into()));
        }
        tracing::info!(%requester, granted, reason = reason.unwrap_or("consent"), "peer read");
        Ok(())
    }

    /// The record's data key for a peer, and the transport key it is sealed under (wrapped for
    /// the peer's sharing key) when the peer offered one, this HSM can make one and the KEK
    /// version is not RFC 5649 ([`medgate_hsm::Hsm::share_with_peer`]); else the data key
    /// re-wrapped inside the HSM for the peer's RSA sharing key.
    async fn rewrap_for(&self, requester: &str, rec: &vault::StoredRecord, modulus: Vec<u8>, exponent: Vec<u8>, offered: bool) -> Result<(Vec<u8>, Option<Vec<u8>>), GatewayError> {
        let bytes = medgate_ledger::keys::b64_decode(&rec.wrapped_key).map_err(|_| GatewayError::Integrity(rec.id.clone()))?;
        let wrapped = medgate_hsm::WrappedKey { kek_version: rec.kek_version, bytes };
        let hsm = self.hsm.clone();
        let context = (offered && hsm.makes_transport_keys()).then(|| transport_context(&self.hospital, requester, &rec.id));
        let work = move || match context {
            Some(c) => hsm.share_with_peer(&wrapped, &modulus, &exponent, &c).map(|w| (w.key, w.transport)),
            None => hsm.rewrap_for_peer(&wrapped, &modulus, &exponent).map(|k| (k, None)),
        };
        match tokio::task::spawn_blocking(work).await? {
            Ok(s) => Ok(s),
            Err(e) if e.is_integrity() => {
                tracing::error!(record = %rec.id, error = %e, "the HSM refused the record's wrapped key");
                Err(GatewayError::Integrity(rec.id.clone()))
            }
            Err(e) => {
                tracing::error!(error = %e, "re-wrapping for a peer failed");
                Err(GatewayError::Unavailable("hsm-unavailable".into()))
            }
        }
    }
}

/// What a data key sealed under a transport key is bound to: the custodian, the requester and
/// the record (the seal's AAD), so that a seal cannot be passed off for another record or pair.
fn transport_context(custodian: &str, requester: &str, record_id: &str) -> Vec<u8> {
    serde_json::to_vec(&[custodian, requester, record_id]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// The seal's context names both hospitals and the record, in their places: a seal made
    /// for one pair does not open for the same pair the other way round.
    #[test]
    fn the_transport_context_tells_custodian_requester_and_record_apart() {
        let c = super::transport_context;
        let base = c("hospital-a", "hospital-b", "rec-1");
        for other in [c("hospital-b", "hospital-a", "rec-1"), c("hospital-a", "hospital-b", "rec-2"), c("hospital-a", "hospital-c", "rec-1"), c("hospital-a\"", "hospital-b", "rec-1")] {
            assert_ne!(base, other);
        }
        assert_eq!(base, c("hospital-a", "hospital-b", "rec-1"));
    }
}
