//! Commits through an ordering service, several batches in flight.
//!
//! For each group: its records, idempotency states and entries are stored first, with the
//! entries in the outbox, in one transaction and one flush (whatever happens to the ordering
//! service from then on, nothing is lost; a group of entries alone flushes while its batch is
//! ordered, see [`Writer::submit_group`]). Its new entries are then signed as one batch and
//! submitted; as soon as the service holds the batch (its place in the order is fixed) the
//! writer goes on with the next group and answers the group's accesses (`Settle::Ordered`),
//! while a task waits for this one's block and answers the other requests, with their receipts.
//! Batches are submitted one after another, so their sequence numbers land in order.
//!
//! Sequence numbers are counted here while batches are in flight. When a batch fails (refused,
//! flagged invalid, or not seen in time), the batches after it cannot count either; the writer
//! then waits until nothing is in flight and reads the next number from the chain again. The
//! entries of those batches stay in the outbox for the background drain. Entries whose
//! validity depends on chain state ([`crate::ChainStore::rules_read_state`]), requests that
//! must be alone, and the drain itself are sent only when nothing is in flight, and nothing
//! follows them until they have landed.

use std::collections::HashMap;

use medgate_ledger::Receipt;
use tokio::sync::mpsc;

use super::{answer, drop_refused, GroupError, Inbox, Outcome, Pending, Refused, Settle, Writer};
use crate::error::to_json;
use crate::order::Landing;
use crate::vault::Deposit;
use crate::{ChainStore, StoreError};

/// Most groups submitted and not yet landed.
const IN_FLIGHT: usize = 8;

/// What the writer task tracks of the batches in flight.
#[derive(Debug, Default)]
struct Flight {
    /// Groups submitted whose blocks have not landed yet.
    groups: usize,
    /// The next sequence number, while it is known here; `None`: read it from the chain once
    /// nothing is in flight.
    next_seq: Option<u64>,
}

impl Flight {
    fn landed(&mut self, ok: bool) {
        self.groups = self.groups.saturating_sub(1);
        if !ok {
            self.next_seq = None;
        }
    }
}

pub(super) async fn run(w: Writer, mut rx: Inbox) {
    let (landed_tx, mut landed_rx) = mpsc::unbounded_channel::<bool>();
    let mut flight = Flight::default();
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
                Some(ok) = landed_rx.recv() => {
                    flight.landed(ok);
                    continue;
                }
            },
        };
        let group = w.gather(first, &mut rx, &mut carried).await;
        let barrier = group.iter().any(|p| p.alone || !p.durable || p.entries.iter().any(ChainStore::rules_read_state));
        // Room in the pipeline; and an empty one for a barrier, or to read the sequence again.
        while flight.groups >= IN_FLIGHT || (flight.groups > 0 && (barrier || flight.next_seq.is_none())) {
            match landed_rx.recv().await {
                Some(ok) => flight.landed(ok),
                None => break,
            }
        }
        w.submit_group(group, &mut flight, &landed_tx).await;
        while barrier && flight.groups > 0 {
            match landed_rx.recv().await {
                Some(ok) => flight.landed(ok),
                None => break,
            }
        }
    }
    tracing::info!("ledger writer stopped");
}

impl Writer {
    /// Stores the group, then signs and submits its batches; a task answers the group once they
    /// have landed.
    ///
    /// Records and idempotency states are flushed before their entries go to the ordering
    /// service: a block must never name a record this gateway could still lose. A group of
    /// entries alone (accesses, searches) flushes its outbox rows while its batch is signed and
    /// ordered, and its accesses are answered once both are done, before the block lands:
    /// nothing is disclosed before the access is durable here and its place in the order fixed.
    /// That takes the flush and the block off a cross-hospital read's path.
    async fn submit_group(&self, mut group: Vec<Pending>, flight: &mut Flight, landed_tx: &mpsc::UnboundedSender<bool>) {
        let flush_first = group.iter().any(|p| p.deposit.is_some());
        let wrote = match self.store_group(&mut group, flush_first).await {
            Ok(wrote) => wrote,
            Err(refused) => return answer(group, &Err(refused)),
        };
        if group.is_empty() {
            return;
        }
        let outbox_flush = async move {
            if wrote && !flush_first {
                self.flush().await.map_err(Refused::not_stored)
            } else {
                Ok(())
            }
        };
        let stored = |e: StoreError| Refused { why: e.to_string(), stored: true, conflict: false };
        let (known, fresh) = match self.split_known(&group) {
            Ok(v) => v,
            Err(e) => return answer(group, &outbox_flush.await.and(Err(stored(e)))),
        };
        if fresh.is_empty() {
            return answer(group, &outbox_flush.await.map(|()| known));
        }
        let (flushed, submitted) = tokio::join!(outbox_flush, self.submit_batches(fresh, flight));
        let landings = match submitted {
            Ok(l) => l,
            Err((submitted, e)) => {
                flight.next_seq = None;
                self.failed(&e.to_string(), group.iter().map(|p| p.entries.len()).sum());
                if !submitted.is_empty() {
                    // The batches the ordering service already holds still land. Until they
                    // have, the chain does not know their sequence numbers: they count as a
                    // group in flight, so the next group reads its number after them instead of
                    // reusing one (its batch would be flagged invalid).
                    flight.groups += 1;
                    let landed_tx = landed_tx.clone();
                    tokio::spawn(async move {
                        if let Err(r) = land(submitted, HashMap::new()).await {
                            tracing::error!(error = %r.why, "a batch submitted before the failure did not land; its entries stay in the outbox");
                        }
                        let _ = landed_tx.send(false);
                    });
                }
                return answer(group, &flushed.and(Err(stored(e))));
            }
        };
        flight.groups += 1;
        let (ordered, group): (Vec<Pending>, Vec<Pending>) = group.into_iter().partition(|p| p.settle == Settle::Ordered);
        match &flushed {
            Ok(()) => ordered.into_iter().for_each(|p| {
                let _ = p.reply.send(Ok(Vec::new()));
            }),
            Err(refused) => answer(ordered, &Err(refused.clone())),
        }
        let (events, landed_tx) = (self.parts.events.clone(), landed_tx.clone());
        tokio::spawn(async move {
            let landed = land(landings, known).await;
            if let Err(r) = &landed {
                tracing::error!(error = %r.why, "ledger append failed; entries stay in the outbox");
                events.incr("ledger_append_failures");
            }
            let ok = landed.is_ok();
            // A failed flush refuses the group even when its batch landed: the caller heard
            // nothing was stored, so nothing is disclosed.
            answer(group, &flushed.and(landed));
            let _ = landed_tx.send(ok);
        });
    }

    /// One transaction for the group's deposits and the entries it hands over (in the outbox),
    /// then, with `flush`, one flush. A request the stored state refuses (a status change it
    /// does not allow) is answered at once and taken out of the group, which is written again
    /// without it. `Ok(true)` when something was written.
    async fn store_group(&self, group: &mut Vec<Pending>, flush: bool) -> Result<bool, Refused> {
        loop {
            let mut parts = Vec::new();
            let mut loose = Deposit::default();
            for (i, p) in group.iter().enumerate().filter(|(_, p)| p.durable) {
                let outbox = p.entries.iter().map(|e| Ok((e.id.clone(), to_json("ledger entry", e)?))).collect::<Result<Vec<_>, StoreError>>();
                let outbox = outbox.map_err(Refused::not_stored)?;
                match &p.deposit {
                    Some(d) => parts.push((i, d.with_outbox(outbox))),
                    None => loose.outbox.extend(outbox),
                }
            }
            if !loose.outbox.is_empty() {
                parts.push((group.len(), loose));
            }
            if parts.is_empty() {
                return Ok(false);
            }
            let refs: Vec<(usize, &Deposit)> = parts.iter().map(|(i, d)| (*i, d)).collect();
            match self.parts.vault.write_all(&refs).map_err(|e| GroupError::from_deposits(e, group.len())) {
                Ok(()) if flush => return self.flush().await.map(|()| true).map_err(Refused::not_stored),
                Ok(()) => return Ok(true),
                Err(GroupError::Refused { index, error }) => {
                    drop_refused(group, index, error);
                    if group.is_empty() {
                        return Ok(false);
                    }
                }
                Err(GroupError::Failed(refused)) => return Err(refused),
            }
        }
    }

    /// Signs the new entries in batches and submits them one after another; the landings in
    /// the same order. On a failure, also the landings of the batches submitted before it.
    async fn submit_batches(&self, fresh: Vec<medgate_ledger::Entry>, flight: &mut Flight) -> Result<Vec<Landing>, (Vec<Landing>, StoreError)> {
        let (store, gateway) = (&self.parts.store, self.parts.gateway.as_str());
        let mut seq = match flight.next_seq {
            Some(s) => s,
            None => self.parts.orderer.next_seq(store, gateway).map_err(|e| (Vec::new(), e))?,
        };
        let mut landings = Vec::new();
        for chunk in fresh.chunks(self.parts.policy.max_entries.max(1)) {
            match self.submit_one(seq, chunk).await {
                Ok(landing) => landings.push(landing),
                Err(e) => return Err((landings, e)),
            }
            self.parts.events.incr("ledger_batches");
            seq += 1;
            flight.next_seq = Some(seq);
        }
        Ok(landings)
    }

    /// Signs one batch with sequence number `seq` and hands it to the ordering service.
    async fn submit_one(&self, seq: u64, entries: &[medgate_ledger::Entry]) -> Result<Landing, StoreError> {
        let (store, gateway) = (&self.parts.store, self.parts.gateway.as_str());
        let (batch, key_version, spki) = self.sign(seq, entries.to_vec()).await?;
        self.parts.orderer.admit(store, gateway, key_version, &spki)?;
        super::timed(self.parts.events.as_ref(), "submit", self.parts.orderer.clone().submit(store.clone(), batch)).await
    }
}

/// Waits for each batch's block, in order, and collects the receipts.
async fn land(landings: Vec<Landing>, mut receipts: HashMap<String, Receipt>) -> Outcome {
    for landing in landings {
        let ordered = landing.await.map_err(|e| Refused { why: e.to_string(), stored: true, conflict: false })?;
        for r in Receipt::for_batch(&ordered.block, ordered.index).map_err(|e| Refused { why: e.to_string(), stored: true, conflict: false })? {
            receipts.insert(r.entry.id.clone(), r);
        }
    }
    Ok(receipts)
}
