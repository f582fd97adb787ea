//! Checkpoints and forks: signing the chain head and exchanging it with the other members, the
//! blocks a catching-up member fetches, and compaction below what every member checkpointed.

use medgate_ledger::{Checkpoint, UnsignedCheckpoint};

use super::Gateway;
use crate::GatewayError;

impl Gateway {
    /// Signs a checkpoint of the stored chain head in the HSM and sends it to every peer.
    /// A peer that answers 409 holds another block at that height: a fork, which halts this
    /// gateway's submissions too.
    pub async fn send_checkpoint(&self) -> Result<(), GatewayError> {
        let sharing = self.sharing.clone().ok_or_else(|| GatewayError::Conflict("no sharing".into()))?;
        let Some((height, _)) = self.ledger.store.head()? else { return Ok(()) };
        let Some(cp) = self.checkpoint_at(height).await? else { return Ok(()) };
        let mut failed = Vec::new();
        for (peer, p) in &sharing.other_members() {
            if p.address.is_none() {
                continue;
            }
            match sharing.send_checkpoint(peer, &cp).await {
                Ok((200, _)) => {}
                Ok((409, body)) => {
                    // The peer's own signed checkpoint at that height, checked before it counts.
                    let theirs = serde_json::from_str::<crate::peer::Refusal>(&body)
                        .ok()
                        .and_then(|r| Checkpoint::from_bytes(r.reason.as_bytes()).ok())
                        .filter(|t| t.gateway == *peer && t.height == height)
                        .filter(|t| t.verify(&|g: &str, v: u32| self.ledger.store.member_key(g, v)).is_ok());
                    match theirs {
                        Some(t) => failed.push(self.fork_seen(&t, &cp.block_hash)),
                        None => failed.push(format!("{peer} answered 409 without a valid checkpoint")),
                    }
                }
                Ok((status, why)) => failed.push(format!("{peer}: {status} {why}")),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(GatewayError::Unavailable(failed.join("; ")))
        }
    }

    /// Signs a checkpoint of this gateway's block at `height` in the HSM.
    pub(super) async fn checkpoint_at(&self, height: u64) -> Result<Option<Checkpoint>, GatewayError> {
        let Some(block) = self.ledger.store.block(height)? else { return Ok(None) };
        let unsigned = UnsignedCheckpoint::new(&self.hospital, height, block.hash(), block.order_position);
        let digest = unsigned.signing_digest();
        let hsm = self.hsm.clone();
        let sig = super::blocking(move || hsm.sign_digest(medgate_hsm::Role::Ledger, &digest)).await?;
        Ok(Some(unsigned.sign(sig.key_version, &sig.raw)))
    }

    /// Two signed hashes at one height: keep both checkpoints as evidence, halt submissions,
    /// raise the alert.
    pub(super) fn fork_seen(&self, theirs: &Checkpoint, ours: &str) -> String {
        let reason = format!(
            "fork: {} signed block {} at height {}, this gateway holds {}",
            theirs.gateway,
            &theirs.block_hash[..16.min(theirs.block_hash.len())],
            theirs.height,
            &ours[..16.min(ours.len())]
        );
        tracing::error!(peer = %theirs.gateway, height = theirs.height, theirs = %theirs.block_hash, ours = %ours, "LEDGER FORK: two signed hashes at one height; submissions halted, evidence kept");
        if let Err(e) = self.ledger.store.record_fork(theirs.height, theirs, ours) {
            tracing::error!(error = %e, "fork evidence could not be stored");
        }
        self.metrics.incr("ledger_forks");
        if let Some(link) = self.sharing.as_ref().and_then(|s| s.link.as_ref()) {
            link.halt(reason.clone());
        }
        reason
    }

    /// Blocks from `from` on, for a member catching up (JSON array of blocks). Blocks hold only
    /// pseudonyms, hashes and codes.
    pub fn blocks_for_peer(&self, requester: &str, from: u64) -> Result<Vec<u8>, GatewayError> {
        let sharing = self.sharing.as_ref().ok_or_else(|| GatewayError::NotFound("no-sharing".into()))?;
        if sharing.peer(requester).is_none() || requester == self.hospital {
            return Err(GatewayError::Forbidden("not-a-member".into()));
        }
        let mut out = b"[".to_vec();
        for (i, h) in (from..from.saturating_add(crate::peer::MAX_BLOCKS_PER_FETCH)).enumerate() {
            match self.ledger.store.block(h) {
                Ok(Some(b)) => {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(&b.to_bytes());
                }
                Ok(None) => break,
                Err(e) => return Err(e.into()),
            }
        }
        out.push(b']');
        Ok(out)
    }

    /// Compacts the ordering service below what every member has checkpointed: the smallest
    /// order position among this gateway's stored chain and every peer's last signed checkpoint.
    /// Refused while any member has sent no checkpoint, or while the ledger is halted.
    pub async fn compact_ordering(&self) -> Result<u64, GatewayError> {
        let refused = |m: &str| GatewayError::Conflict(m.to_owned());
        let sharing = self.sharing.clone().ok_or_else(|| refused("compaction needs the consortium mode"))?;
        let link = sharing.link.clone().ok_or_else(|| refused("no consortium link"))?;
        if let Some(why) = link.halted() {
            return Err(refused(&format!("the ledger is halted ({why}); nothing is compacted")));
        }
        let own = self.ledger.store.state()?.order_position().ok_or_else(|| refused("this gateway has no block yet"))?;
        let cps = self.ledger.store.peer_checkpoints()?;
        let mut safe = own;
        for (member, _) in sharing.other_members() {
            let cp = cps
                .iter()
                .find(|c| c.gateway == *member)
                .ok_or_else(|| refused(&format!("{member} has sent no checkpoint yet; nothing is compacted")))?;
            safe = safe.min(cp.order_position);
        }
        // Keep the revision every member last checkpointed: a restarted member resumes after it.
        link.compact(safe).await.map_err(GatewayError::Conflict)?;
        tracing::info!(revision = safe, "ordering service compacted below what every member has checkpointed");
        Ok(safe)
    }

    /// A peer's signed checkpoint: checked with the member's ledger key and compared with this
    /// gateway's block at that height. On a fork the peer gets 409 and this gateway's own signed
    /// checkpoint for that height, so both sides keep both signatures as evidence.
    pub async fn accept_checkpoint(&self, from: &str, cp: &Checkpoint) -> Result<String, GatewayError> {
        if cp.gateway != from || from == self.hospital {
            return Err(GatewayError::Forbidden("checkpoint-not-from-its-sender".into()));
        }
        let store = &self.ledger.store;
        cp.verify(&|g: &str, v: u32| store.member_key(g, v)).map_err(|e| GatewayError::Forbidden(format!("bad-signature: {e}")))?;
        if let Err(e) = store.remember_peer_checkpoint(cp) {
            tracing::warn!(error = %e, peer = %from, "peer checkpoint not remembered");
        }
        let Some(mine) = self.checkpoint_at(cp.height).await? else { return Ok("behind".into()) };
        if mine.block_hash == cp.block_hash {
            return Ok("agree".into());
        }
        self.fork_seen(cp, &mine.block_hash);
        Err(GatewayError::Conflict(serde_json::to_string(&mine).map_err(GatewayError::internal)?))
    }
}
