//! The gateway's copy of the ledger and its standalone orderer.
//!
//! One writer task owns appends: it gathers entries into a batch (up to `batch_max_entries`, or
//! whatever arrived within `batch_max_delay_ms`), has the HSM sign the batch's Merkle root once,
//! submits the batch to the [`Orderer`], cuts the block for the ordered position, and stores the
//! block, the entry locations, the patient audit index and the removal of those entries from the
//! outbox in one sled transaction, flushed before any caller hears back. Callers get a
//! [`Receipt`] per entry.
//!
//! The standalone orderer is an in-process sequencer over sled: idempotent (the same batch hash
//! always gets the same position), gap-free, durable. A consortium orderer plugs in behind the
//! same trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medgate_hsm::{Hsm, Role};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot};

use medgate_ledger::consent::ConsentState;
use medgate_ledger::{Batch, Block, ChainState, Entry, EntryBody, Receipt, UnsignedBatch};
use crate::metrics::Metrics;
use crate::vault::Vault;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("ledger storage: {0}")]
    Storage(String),
    #[error("ledger signing: {0}")]
    Hsm(#[from] medgate_hsm::HsmError),
    #[error("ordering: {0}")]
    Order(String),
    #[error("ledger format: {0}")]
    Format(String),
    #[error("the ledger writer has stopped")]
    Stopped,
}

impl From<sled::Error> for ChainError {
    fn from(e: sled::Error) -> Self {
        ChainError::Storage(e.to_string())
    }
}

/// How this gateway's batches get their place in the total order.
#[derive(Debug, Clone)]
pub enum Ordering {
    /// The in-process sequencer: one hospital, no etcd.
    Standalone(Sequencer),
    /// The consortium's etcd cluster; blocks are cut by the follower from the ordered stream.
    Consortium(Arc<crate::consortium::Link>),
}

/// The standalone orderer: a durable counter in the gateway's own sled database.
#[derive(Debug, Clone)]
pub struct Sequencer {
    positions: sled::Tree,
    meta: sled::Tree,
}

impl Sequencer {
    pub fn open(db: &sled::Db) -> Result<Sequencer, ChainError> {
        Ok(Sequencer { positions: db.open_tree("sequencer")?, meta: db.open_tree("sequencer_meta")? })
    }

    /// The batch's position in the order. Submitting the same batch again (same hash) returns
    /// the same position and creates nothing new.
    fn order(&self, batch_hash: [u8; 32]) -> Result<u64, ChainError> {
        let r = (&self.positions, &self.meta).transaction(|(pos, meta)| {
            if let Some(p) = pos.get(batch_hash)? {
                return Ok(u64::from_be_bytes(p.as_ref().try_into().unwrap_or([0; 8])));
            }
            let next = meta.get(b"next")?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(1);
            pos.insert(&batch_hash, &next.to_be_bytes())?;
            meta.insert(b"next", &(next + 1).to_be_bytes())?;
            Ok::<u64, ConflictableTransactionError<()>>(next)
        });
        r.map_err(|e: TransactionError<()>| ChainError::Storage(format!("{e:?}")))
    }
}

/// Where an entry sits in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub height: u64,
    pub batch: u32,
    pub entry: u32,
}

impl Location {
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.height.to_be_bytes());
        b[8..12].copy_from_slice(&self.batch.to_be_bytes());
        b[12..].copy_from_slice(&self.entry.to_be_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Location> {
        Some(Location {
            height: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            batch: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            entry: u32::from_be_bytes(b.get(12..16)?.try_into().ok()?),
        })
    }
}

/// Read access to the stored chain (blocks, entry locations, patient index).
#[derive(Debug, Clone)]
pub struct ChainStore {
    db: sled::Db,
    blocks: sled::Tree,
    locations: sled::Tree,
    by_patient: sled::Tree,
    meta: sled::Tree,
    keys: sled::Tree,
    consents: sled::Tree,
    /// record id → location of the entry that anchored it (every hospital's records).
    records: sled::Tree,
    /// Evidence of forks: height → the peer's signed checkpoint and our block hash there.
    forks: sled::Tree,
    /// Latest checkpoint each peer sent: gateway → checkpoint JSON.
    peer_checkpoints: sled::Tree,
}

/// Keys and values to write in the chain's meta tree with a block.
type MetaUpdates = Vec<(Vec<u8>, Vec<u8>)>;

fn consent_key(patient: &str, consent_id: &str) -> Vec<u8> {
    format!("{patient}/{consent_id}").into_bytes()
}

impl ChainStore {
    pub fn open(db: &sled::Db) -> Result<ChainStore, ChainError> {
        Ok(ChainStore {
            db: db.clone(),
            blocks: db.open_tree("blocks")?,
            locations: db.open_tree("entry_locations")?,
            by_patient: db.open_tree("audit_by_patient")?,
            meta: db.open_tree("chain_meta")?,
            keys: db.open_tree("ledger_public_keys")?,
            consents: db.open_tree("consents")?,
            records: db.open_tree("record_index")?,
            forks: db.open_tree("fork_evidence")?,
            peer_checkpoints: db.open_tree("peer_checkpoints")?,
        })
    }

    /// (height of the last block, its hash) or None for an empty chain.
    pub fn head(&self) -> Result<Option<(u64, String)>, ChainError> {
        match self.blocks.last()? {
            None => Ok(None),
            Some((k, v)) => {
                let h = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| ChainError::Format("block key".into()))?);
                let block = Block::from_bytes(&v).map_err(|e| ChainError::Format(format!("block {h}: {e}")))?;
                Ok(Some((h, hex::encode(block.hash()))))
            }
        }
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, ChainError> {
        match self.blocks.get(height.to_be_bytes())? {
            None => Ok(None),
            Some(v) => Block::from_bytes(&v).map(Some).map_err(|e| ChainError::Format(format!("block {height}: {e}"))),
        }
    }

    /// Every stored block in height order, decoded lazily (for `ledger verify`).
    pub fn blocks(&self) -> impl Iterator<Item = Result<Block, medgate_ledger::LedgerError>> + '_ {
        self.blocks.iter().map(|kv| match kv {
            Ok((_, v)) => Block::from_bytes(&v),
            Err(e) => Err(medgate_ledger::LedgerError::Decode { what: "stored block", reason: e.to_string() }),
        })
    }

    pub fn raw_blocks(&self) -> &sled::Tree {
        &self.blocks
    }

    pub fn location(&self, entry_id: &str) -> Result<Option<Location>, ChainError> {
        Ok(self.locations.get(entry_id.as_bytes())?.and_then(|v| Location::decode(&v)))
    }

    pub fn receipt(&self, entry_id: &str) -> Result<Option<Receipt>, ChainError> {
        let Some(loc) = self.location(entry_id)? else { return Ok(None) };
        let Some(block) = self.block(loc.height)? else { return Ok(None) };
        Receipt::for_entry(&block, loc.batch as usize, loc.entry as usize)
            .map(Some)
            .map_err(|e| ChainError::Format(e.to_string()))
    }

    /// The entries about one patient pseudonym, in ledger order, with their block height.
    pub fn entries_for_patient(&self, pseudonym: &str) -> Result<Vec<(Entry, u64)>, ChainError> {
        let mut out = Vec::new();
        let mut cache: HashMap<u64, Block> = HashMap::new();
        for kv in self.by_patient.scan_prefix(format!("{pseudonym}/").as_bytes()) {
            let (_, v) = kv?;
            let Some(loc) = Location::decode(&v) else { continue };
            if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(loc.height) {
                if let Some(b) = self.block(loc.height)? {
                    e.insert(b);
                }
            }
            if let Some(entry) = cache
                .get(&loc.height)
                .and_then(|b| b.batches.get(loc.batch as usize))
                .and_then(|b| b.entries.get(loc.entry as usize))
            {
                out.push((entry.clone(), loc.height));
            }
        }
        Ok(out)
    }

    /// Ledger public keys (SPKI DER) by version, as recorded when they signed.
    pub fn public_key(&self, gateway: &str, version: u32) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self.keys.get(format!("{gateway}/{version}").as_bytes())?.map(|v| v.to_vec()))
    }

    fn remember_key(&self, gateway: &str, version: u32, spki: &[u8]) -> Result<(), ChainError> {
        self.keys.insert(format!("{gateway}/{version}").as_bytes(), spki)?;
        Ok(())
    }

    fn next_seq(&self) -> Result<u64, ChainError> {
        Ok(self.meta.get(b"next_batch_seq")?.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))).unwrap_or(1))
    }

    /// The state the stored chain leaves behind (consortium mode keeps it next to the chain).
    pub fn state(&self) -> Result<ChainState, ChainError> {
        match self.meta.get(b"chain_state")? {
            None => Ok(self.genesis_hash()?.map_or_else(ChainState::new, ChainState::after_genesis)),
            Some(v) => ChainState::from_bytes(&v).map_err(|e| ChainError::Format(format!("chain state: {e}"))),
        }
    }

    /// Every read granted as break-glass, on any gateway, in ledger order with its block height:
    /// the list a privacy officer reviews.
    pub fn break_glass_reads(&self) -> Result<Vec<(Entry, u64)>, ChainError> {
        let mut out = Vec::new();
        for block in self.blocks() {
            let block = block.map_err(|e| ChainError::Format(e.to_string()))?;
            for (batch, valid) in block.batches.iter().zip(&block.valid) {
                if !*valid {
                    continue;
                }
                for e in &batch.entries {
                    if let EntryBody::RecordRead { granted: true, reason: Some(r), .. } = &e.body {
                        if r == "break-glass" {
                            out.push((e.clone(), block.height));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Keeps a fork's evidence (the peer's signed checkpoint, our hash at that height), flushed.
    pub fn record_fork(&self, height: u64, theirs: &medgate_ledger::Checkpoint, ours: &str) -> Result<(), ChainError> {
        let v = serde_json::json!({"height": height, "ours": ours, "theirs": theirs});
        self.forks.insert(format!("{height:020}/{}", theirs.gateway).as_bytes(), serde_json::to_vec(&v).unwrap_or_default())?;
        self.db.flush()?;
        Ok(())
    }

    /// Every fork seen, as stored evidence.
    pub fn forks(&self) -> Result<Vec<serde_json::Value>, ChainError> {
        self.forks.iter().values().map(|v| Ok(serde_json::from_slice(&v?).unwrap_or_default())).collect()
    }

    /// Remembers the latest checkpoint a peer sent (for the lag metric).
    pub fn remember_peer_checkpoint(&self, cp: &medgate_ledger::Checkpoint) -> Result<(), ChainError> {
        self.peer_checkpoints.insert(cp.gateway.as_bytes(), serde_json::to_vec(cp).unwrap_or_default())?;
        Ok(())
    }

    /// The latest checkpoint of every peer that sent one.
    pub fn peer_checkpoints(&self) -> Result<Vec<medgate_ledger::Checkpoint>, ChainError> {
        self.peer_checkpoints.iter().values().map(|v| serde_json::from_slice(&v?).map_err(|e| ChainError::Format(e.to_string()))).collect()
    }

    /// The entry that anchored a record, whichever hospital holds it.
    pub fn anchored(&self, record_id: &str) -> Result<Option<Entry>, ChainError> {
        let Some(loc) = self.records.get(record_id.as_bytes())?.and_then(|v| Location::decode(&v)) else { return Ok(None) };
        Ok(self
            .block(loc.height)?
            .and_then(|b| b.batches.get(loc.batch as usize).and_then(|x| x.entries.get(loc.entry as usize)).cloned()))
    }

    pub fn consent(&self, patient: &str, consent_id: &str) -> Result<Option<ConsentState>, ChainError> {
        match self.consents.get(consent_key(patient, consent_id))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| ChainError::Format(format!("consent {consent_id}: {e}"))),
        }
    }

    /// Every consent recorded for a patient pseudonym, active or not.
    pub fn consents_for(&self, patient: &str) -> Result<Vec<ConsentState>, ChainError> {
        let mut out = Vec::new();
        for kv in self.consents.scan_prefix(format!("{patient}/").as_bytes()) {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| ChainError::Format(format!("consent: {e}")))?);
        }
        Ok(out)
    }

    /// A member's ledger key by gateway and version, as checkpoint checks look it up (a store
    /// error counts as no key). Block cutting uses [`ChainStore::member_key_checked`].
    pub fn member_key(&self, gateway: &str, version: u32) -> Option<Vec<u8>> {
        self.member_key_checked(gateway, version).unwrap_or_else(|e| {
            tracing::error!(error = %e, "membership roster unreadable; refusing the key lookup");
            None
        })
    }

    /// A member's ledger key by gateway and version. On a consortium chain only current
    /// members' admitted keys count (a key a gateway rotated on its own counts nowhere until a
    /// membership update admits it); a standalone chain knows only its own keys. A store error
    /// is an error, not a missing key: flagging a batch invalid because of a local fault would
    /// fork this gateway from the others.
    pub fn member_key_checked(&self, gateway: &str, version: u32) -> Result<Option<Vec<u8>>, ChainError> {
        match self.roster()? {
            Some(r) => Ok(r.ledger_key(gateway, version)),
            None => self.public_key(gateway, version),
        }
    }

    /// Adopts the genesis document on a new ledger copy (stores it, the founding roster and
    /// the founders' keys, flushed), or checks that an existing copy started from the same one.
    pub fn adopt_genesis(&self, genesis: &medgate_ledger::membership::Genesis, hash: [u8; 32], bytes: &[u8]) -> Result<(), ChainError> {
        if let Some(stored) = self.genesis_hash()? {
            if stored == hash {
                return Ok(());
            }
            return Err(ChainError::Format(format!(
                "this ledger copy started from genesis {}, but the configured genesis file hashes to {}; a gateway cannot change consortium",
                hex::encode(stored),
                hex::encode(hash)
            )));
        }
        if !self.blocks.is_empty() {
            return Err(ChainError::Format("this ledger copy has blocks but no genesis: it was written in standalone mode; start the consortium member on a new state directory".into()));
        }
        let roster = medgate_ledger::membership::Roster::from_genesis(genesis);
        for m in roster.members.values() {
            self.remember_member_keys(m)?;
        }
        (&self.meta,)
            .transaction(|(meta,)| {
                meta.insert(&b"members"[..], serde_json::to_vec(&roster).unwrap_or_default())?;
                meta.insert(&b"genesis"[..], bytes)?;
                meta.insert(&b"genesis_hash"[..], &hash[..])?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| ChainError::Storage(format!("{e:?}")))?;
        self.db.flush()?;
        Ok(())
    }

    /// Records a member's admitted ledger keys in the key table, which keeps every key a member
    /// ever held (for offline checks of what it signed). Repeating it is harmless.
    fn remember_member_keys(&self, m: &medgate_ledger::membership::MemberState) -> Result<(), ChainError> {
        for (v, der) in m.ledger_keys_der() {
            self.remember_key(&m.hospital_id, v, &der)?;
        }
        Ok(())
    }

    /// The genesis hash of a consortium chain (`None` on a standalone one).
    pub fn genesis_hash(&self) -> Result<Option<[u8; 32]>, ChainError> {
        Ok(self.meta.get(b"genesis_hash")?.and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// The genesis document as adopted.
    pub fn genesis(&self) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self.meta.get(b"genesis")?.map(|v| v.to_vec()))
    }

    /// The current members (`None` on a standalone chain).
    pub fn roster(&self) -> Result<Option<medgate_ledger::membership::Roster>, ChainError> {
        match self.meta.get(b"members")? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| ChainError::Format(format!("membership roster: {e}"))),
        }
    }

    /// Whether a hospital is a current member of the consortium.
    pub fn is_member(&self, hospital_id: &str) -> bool {
        matches!(self.roster(), Ok(Some(r)) if r.is_member(hospital_id))
    }

    pub fn proposal(&self, proposal_id: &str) -> Result<Option<medgate_ledger::membership::Proposal>, ChainError> {
        match self.meta.get(format!("proposal/{proposal_id}").as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| ChainError::Format(format!("proposal {proposal_id}: {e}"))),
        }
    }

    /// Every membership proposal, open or decided.
    pub fn proposals(&self) -> Result<Vec<medgate_ledger::membership::Proposal>, ChainError> {
        self.meta
            .scan_prefix(b"proposal/")
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| ChainError::Format(format!("proposal: {e}"))))
            .collect()
    }

    /// What a block changes in the membership: opened proposals, approvals, and the roster when
    /// a proposal is carried. Deterministic from the block and the stored state. Also records
    /// admitted keys in the key table (for offline verification; harmless if repeated).
    fn membership_updates(&self, block: &Block) -> Result<MetaUpdates, ChainError> {
        let Some(mut roster) = self.roster()? else { return Ok(Vec::new()) };
        let (touched, roster_changed) = medgate_ledger::membership::apply_block(&mut roster, block, &mut |id| self.proposal(id).ok().flatten());
        for p in touched.iter().filter(|p| p.decided_at == Some(block.height)) {
            tracing::info!(proposal = %p.proposal_id, action = %p.action, hospital = %p.hospital_id, height = block.height, approvals = ?p.approvals, "membership change carried");
            if let Some(m) = roster.get(&p.hospital_id) {
                self.remember_member_keys(m)?;
            }
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> =
            touched.iter().map(|p| (format!("proposal/{}", p.proposal_id).into_bytes(), serde_json::to_vec(p).unwrap_or_default())).collect();
        if roster_changed {
            out.push((b"members".to_vec(), serde_json::to_vec(&roster).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Whether a verified, in-sequence batch counts on this chain: none of its entries is
    /// already on it (a resubmitted outbox entry is recorded once), and it keeps the entry rules.
    /// The same test whether the block is cut here from the ordered stream or fetched from a peer.
    /// A store error is returned, never turned into a verdict.
    pub fn batch_counts(&self, batch: &Batch) -> Result<bool, ChainError> {
        for e in &batch.entries {
            if self.location(&e.id)?.is_some() {
                return Ok(false);
            }
        }
        self.entry_rules_hold(batch)
    }

    /// The entry rules every gateway applies to a batch before it counts (deterministic, from
    /// the chain's own state): only the custodian records a consent for its patient, and a
    /// consent id is recorded once; only the hospital that recorded a consent revokes it; a read
    /// of another hospital's record is granted only under an active consent or as break-glass;
    /// only the custodian that anchored a record erases it; a member proposes membership changes
    /// in its own name, once per id, that the roster allows, and approves in its own name
    /// proposals that exist (a late or repeated approval changes nothing and harms nothing).
    pub fn entry_rules_hold(&self, batch: &Batch) -> Result<bool, ChainError> {
        let mut recorded_here: HashMap<String, ConsentState> = HashMap::new();
        let mut proposals_here: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let roster = self.roster()?;
        for e in &batch.entries {
            let ok = match &e.body {
                EntryBody::MembershipProposed { proposal_id, proposer, .. } => {
                    *proposer == batch.gateway
                        && proposals_here.insert(proposal_id.as_str())
                        && self.proposal(proposal_id)?.is_none()
                        && roster.as_ref().is_some_and(|r| medgate_ledger::membership::Proposal::from_entry(&e.body).is_some_and(|p| r.admits(&p)))
                }
                EntryBody::MembershipApproved { proposal_id, approver } => {
                    *approver == batch.gateway && !proposals_here.contains(proposal_id.as_str()) && self.proposal(proposal_id)?.is_some()
                }
                EntryBody::ConsentRecorded { consent_id, patient, custodian, .. } => {
                    *custodian == batch.gateway && !recorded_here.contains_key(consent_id) && self.consent(patient, consent_id)?.is_none()
                }
                EntryBody::ConsentRevoked { consent_id, patient, custodian, grantee, .. } => {
                    let known = match recorded_here.get(consent_id) {
                        Some(c) => Some(c.clone()),
                        None => self.consent(patient, consent_id)?,
                    };
                    *custodian == batch.gateway && known.is_some_and(|c| c.active && c.custodian == batch.gateway && c.grantee == *grantee)
                }
                EntryBody::RecordErased { record_id, custodian, .. } => {
                    *custodian == batch.gateway
                        && self.anchored(record_id)?.is_some_and(|a| matches!(&a.body, EntryBody::RecordAnchored { custodian: c, .. } if c == custodian))
                }
                EntryBody::RecordRead { record_id, patient, custodian, reader, purpose, granted: true, .. } if reader != custodian && purpose != "BTG" => {
                    self.consents_for(patient)?.iter().any(|c| c.custodian == *custodian && c.permits(reader, record_id, &e.time))
                }
                _ => true,
            };
            if !ok {
                return Ok(false);
            }
            if let EntryBody::ConsentRecorded { consent_id, .. } = &e.body {
                if let Some(c) = ConsentState::from_entry(e) {
                    recorded_here.insert(consent_id.clone(), c);
                }
            }
        }
        Ok(true)
    }

    /// Stores a block with its indexes in one transaction, then flushes: the block, the location
    /// of every entry of its valid batches, the patient audit index, the removal of this
    /// gateway's entries from the outbox, and `meta` updates (sequence number, chain state).
    pub(crate) async fn persist(&self, block: &Block, outbox: &sled::Tree, meta_updates: &[(&[u8], Vec<u8>)]) -> Result<(), ChainError> {
        let height = block.height;
        let bytes = block.to_bytes();
        let membership = self.membership_updates(block)?;
        (&self.blocks, &self.locations, &self.by_patient, &self.meta, outbox, &self.consents, &self.records)
            .transaction(|(blocks, locs, pats, meta, out, cons, recs)| {
                blocks.insert(&height.to_be_bytes(), bytes.as_slice())?;
                for (bi, (b, valid)) in block.batches.iter().zip(&block.valid).enumerate() {
                    if !*valid {
                        continue;
                    }
                    for (ei, e) in b.entries.iter().enumerate() {
                        let loc = Location { height, batch: bi as u32, entry: ei as u32 }.encode();
                        locs.insert(e.id.as_bytes(), &loc)?;
                        if let Some(p) = e.patient() {
                            let mut k = format!("{p}/").into_bytes();
                            k.extend_from_slice(&loc);
                            pats.insert(k, &loc)?;
                        }
                        out.remove(e.id.as_bytes())?;
                        match &e.body {
                            EntryBody::RecordAnchored { record_id, .. } if recs.get(record_id.as_bytes())?.is_none() => {
                                recs.insert(record_id.as_bytes(), &loc)?;
                            }
                            EntryBody::ConsentRecorded { .. } => {
                                if let Some(c) = ConsentState::from_entry(e) {
                                    cons.insert(consent_key(&c.patient, &c.consent_id), serde_json::to_vec(&c).unwrap_or_default())?;
                                }
                            }
                            EntryBody::ConsentRevoked { consent_id, patient, .. } => {
                                let key = consent_key(patient, consent_id);
                                if let Some(v) = cons.get(&key)? {
                                    if let Ok(mut c) = serde_json::from_slice::<ConsentState>(&v) {
                                        c.active = false;
                                        c.revoked_by = Some(e.id.clone());
                                        cons.insert(key, serde_json::to_vec(&c).unwrap_or_default())?;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                for (k, v) in meta_updates {
                    meta.insert(*k, v.as_slice())?;
                }
                for (k, v) in &membership {
                    meta.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| ChainError::Storage(format!("{e:?}")))?;
        crate::vault::flush(&self.db).await?;
        Ok(())
    }
}

struct Pending {
    entries: Vec<Entry>,
    reply: oneshot::Sender<Result<Vec<Receipt>, String>>,
    /// In a batch of its own: entries whose validity depends on a state that may change while
    /// they are on their way (membership) must not take other entries down with them.
    alone: bool,
}

/// Handle to the ledger writer. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    pub store: ChainStore,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("entries", &self.entries.len()).finish()
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_entries: usize,
    pub max_delay: Duration,
}

impl Ledger {
    /// Starts the writer task. Entries left in the vault's outbox by a crash are appended first.
    /// Entries the outbox still holds are appended in the background by the caller's drain task
    /// when this first attempt fails (the ordering service may be unreachable at start).
    pub async fn start(
        gateway: String,
        store: ChainStore,
        hsm: Arc<Hsm>,
        ordering: Ordering,
        vault: Vault,
        policy: BatchPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, ChainError> {
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        let writer = Writer { gateway, store: store.clone(), hsm, ordering, vault: vault.clone(), policy, metrics, keys: Mutex::new(HashMap::new()) };
        tokio::spawn(writer.run(rx));
        let ledger = Ledger { tx, store };
        if let Err(e) = ledger.drain_outbox(&vault).await {
            tracing::warn!(error = %e, outbox = vault.outbox_len(), "outbox entries not yet on the ledger; retrying in the background");
        }
        Ok(ledger)
    }

    /// Whether the writer task still takes entries.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Appends entries and waits until they are in a stored, flushed block.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, ChainError> {
        self.send(entries, false).await
    }

    /// As [`Ledger::append`], in a batch that holds these entries only.
    pub async fn append_alone(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, ChainError> {
        self.send(entries, true).await
    }

    async fn send(&self, entries: Vec<Entry>, alone: bool) -> Result<Vec<Receipt>, ChainError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Pending { entries, reply, alone }).await.map_err(|_| ChainError::Stopped)?;
        rx.await.map_err(|_| ChainError::Stopped)?.map_err(ChainError::Order)
    }

    /// Appends whatever the outbox holds that is not on the chain yet (after a crash or an outage).
    pub async fn drain_outbox(&self, vault: &Vault) -> Result<usize, ChainError> {
        let mut todo = Vec::new();
        for (id, bytes) in vault.outbox().map_err(|e| ChainError::Storage(e.to_string()))? {
            if self.store.location(&id)?.is_some() {
                vault.outbox_tree().remove(id.as_bytes())?;
                continue;
            }
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| ChainError::Format(format!("outbox entry {id}: {e}")))?;
            todo.push(entry);
        }
        let n = todo.len();
        if n > 0 {
            tracing::info!(entries = n, "appending ledger entries left in the outbox");
            for chunk in todo.chunks(256) {
                self.append(chunk.to_vec()).await?;
            }
        }
        Ok(n)
    }
}

struct Writer {
    gateway: String,
    store: ChainStore,
    hsm: Arc<Hsm>,
    ordering: Ordering,
    vault: Vault,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
    keys: Mutex<HashMap<u32, Vec<u8>>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Pending>) {
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => break,
                },
            };
            let alone = first.alone;
            let mut group = vec![first];
            let mut count = group[0].entries.len();
            let deadline = tokio::time::Instant::now() + self.policy.max_delay;
            while !alone && count < self.policy.max_entries {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) if p.alone => {
                        carried = Some(p);
                        break;
                    }
                    Ok(Some(p)) => {
                        count += p.entries.len();
                        group.push(p);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let entries: Vec<Entry> = group.iter().flat_map(|p| p.entries.iter().cloned()).collect();
            // One request may bring more entries than a batch may hold: one block per chunk.
            let mut committed = Ok(Vec::with_capacity(entries.len()));
            for chunk in entries.chunks(self.policy.max_entries.max(1)) {
                match self.commit(chunk.to_vec()).await {
                    Ok(r) => {
                        if let Ok(all) = committed.as_mut() {
                            all.extend(r);
                        }
                    }
                    Err(e) => {
                        committed = Err(e);
                        break;
                    }
                }
            }
            match committed {
                Ok(receipts) => {
                    let mut it = receipts.into_iter();
                    for p in group {
                        let mine: Vec<Receipt> = it.by_ref().take(p.entries.len()).collect();
                        let _ = p.reply.send(Ok(mine));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, entries = count, "ledger append failed; entries stay in the outbox");
                    self.metrics.incr("ledger_append_failures");
                    for p in group {
                        let _ = p.reply.send(Err(e.to_string()));
                    }
                }
            }
        }
        tracing::info!("ledger writer stopped");
    }

    fn public_key(&self, version: u32) -> Result<Vec<u8>, ChainError> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&version) {
            return Ok(k.clone());
        }
        let (_, spki) = self.hsm.public_key_der(Role::Ledger, Some(version))?;
        self.store.remember_key(&self.gateway, version, &spki)?;
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(version, spki.clone());
        Ok(spki)
    }

    /// Appends entries, answering those already on the chain (an outbox drain racing the
    /// request that first submitted them) from the chain, and each entry once even when it was
    /// queued twice: a batch holding an entry that is already on the chain would be flagged
    /// invalid, and with it every other entry in it.
    async fn commit(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, ChainError> {
        let mut known: HashMap<String, Receipt> = HashMap::new();
        let mut fresh = Vec::new();
        for e in &entries {
            if known.contains_key(&e.id) || fresh.iter().any(|f: &Entry| f.id == e.id) {
                continue;
            }
            match self.store.receipt(&e.id)? {
                Some(r) => {
                    known.insert(e.id.clone(), r);
                }
                None => fresh.push(e.clone()),
            }
        }
        if !fresh.is_empty() {
            for r in self.commit_fresh(fresh).await? {
                known.insert(r.entry.id.clone(), r);
            }
        }
        entries
            .iter()
            .map(|e| known.get(&e.id).cloned().ok_or_else(|| ChainError::Format(format!("no receipt for entry {}", e.id))))
            .collect()
    }

    async fn commit_fresh(&self, entries: Vec<Entry>) -> Result<Vec<Receipt>, ChainError> {
        let seq = match &self.ordering {
            Ordering::Standalone(_) => self.store.next_seq()?,
            // The next number after this gateway's last valid batch on the ordered chain.
            Ordering::Consortium(_) => self.store.state()?.last_seq(&self.gateway) + 1,
        };
        let unsigned = UnsignedBatch::new(&self.gateway, seq, entries);
        unsigned.check().map_err(|e| ChainError::Format(format!("batch refused before signing: {e}")))?;
        let digest = unsigned.signing_digest();
        let hsm = self.hsm.clone();
        let sig = tokio::task::spawn_blocking(move || hsm.sign_digest(Role::Ledger, &digest))
            .await
            .map_err(|e| ChainError::Order(e.to_string()))??;
        let batch: Batch = unsigned.sign(sig.key_version, &sig.raw);
        let spki = self.public_key(sig.key_version)?;
        let gw = self.gateway.clone();
        batch
            .verify(&|g: &str, v: u32| if g == gw && v == sig.key_version { Some(spki.clone()) } else { None })
            .map_err(|e| ChainError::Format(format!("own batch does not verify: {e}")))?;
        let n = batch.entries.len();
        let (block, index) = match &self.ordering {
            Ordering::Standalone(seq_orderer) => {
                let position = seq_orderer.order(batch.hash())?;
                let (height, prev_hash) = match self.store.head()? {
                    None => (0, "0".repeat(64)),
                    Some((h, hash)) => (h + 1, hash),
                };
                let block = Block { height, prev_hash, order_position: position, batches: vec![batch], valid: vec![true] };
                self.store.persist(&block, self.vault.outbox_tree(), &[(b"next_batch_seq", (seq + 1).to_be_bytes().to_vec())]).await?;
                (block, 0)
            }
            Ordering::Consortium(link) => {
                if let Some(why) = link.halted() {
                    return Err(ChainError::Order(format!("the consortium ledger is halted ({why}); entries stay in the outbox")));
                }
                let roster = self.store.roster()?;
                let Some(me) = roster.as_ref().and_then(|r| r.get(&self.gateway)) else {
                    return Err(ChainError::Order(format!(
                        "{} is not a current member of the consortium (not yet admitted, or removed); entries stay in the outbox",
                        self.gateway
                    )));
                };
                // A batch signed by a key version the consortium has not admitted is flagged
                // invalid everywhere: say so here instead of filling the chain with them.
                if me.ledger_key(sig.key_version).as_deref() != Some(spki.as_slice()) {
                    let admitted: Vec<String> = me.ledger_keys.keys().map(|v| format!("v{v}")).collect();
                    return Err(ChainError::Order(format!(
                        "this hospital's ledger key v{} is not the one the consortium admitted ({}); another member must propose `medgate consortium propose --update` with a member card for v{}; entries stay in the outbox",
                        sig.key_version,
                        if admitted.is_empty() { "none".to_owned() } else { admitted.join(", ") },
                        sig.key_version
                    )));
                }
                let hash = batch.hash();
                let waiter = link.landed.waiter();
                link.submit(&batch).await.map_err(ChainError::Order)?;
                let (height, valid) = waiter.wait(hash, link.land_timeout()).await.ok_or_else(|| {
                    ChainError::Order("the ordering service took the batch but it was not seen in a block in time; its entries stay in the outbox".into())
                })?;
                if !valid {
                    return Err(ChainError::Order(format!("batch {seq} was flagged invalid in block {height}; its entries stay in the outbox")));
                }
                let block = self.store.block(height)?.ok_or_else(|| ChainError::Storage(format!("block {height} missing")))?;
                let index = block.batches.iter().position(|b| b.hash() == hash).ok_or_else(|| ChainError::Storage(format!("batch not in block {height}")))?;
                (block, index)
            }
        };
        self.metrics.incr("ledger_batches");
        (0..n)
            .map(|i| Receipt::for_entry(&block, index, i).map_err(|e| ChainError::Format(e.to_string())))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod membership_rules {
    use super::*;
    use medgate_ledger::membership::{Genesis, MemberCard};


    /// Base64 DER of a fixed P-256 public key (shape checks only).
    const P256_SPKI_B64: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8VCZ4n49Ubfrc7xdVEeHnqynb8ysdTNviUwqdVONnXPg1dzDVEMkq5O2mmXFd9OF6WbACh4i/Tlt3A9JZYGLdg==";

    fn card(id: &str) -> MemberCard {
        MemberCard { hospital_id: id.into(), ledger_public_key: P256_SPKI_B64.into(), ledger_key_version: 1, sharing_public_key: None, peer_address: None }
    }

    /// A consortium store for members a, b, c.
    fn store() -> ChainStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let s = ChainStore::open(&db).unwrap();
        let g = Genesis::new("c", "2026-01-01T00:00:00Z", vec![card("a"), card("b"), card("c")]).unwrap();
        let bytes = g.to_bytes();
        let (_, hash) = Genesis::parse(&bytes).unwrap();
        s.adopt_genesis(&g, hash, &bytes).unwrap();
        s
    }

    /// A batch from `gateway` (the rules do not look at signatures).
    fn batch(gateway: &str, seq: u64, bodies: Vec<EntryBody>) -> Batch {
        let entries = bodies.into_iter().enumerate().map(|(i, b)| Entry::new(gateway, "2026-11-28T10:00:00Z", [seq as u8 + i as u8; 16], b)).collect();
        UnsignedBatch::new(gateway, seq, entries).sign(1, &[0u8; 64])
    }

    fn approve(id: &str, who: &str) -> EntryBody {
        EntryBody::MembershipApproved { proposal_id: id.into(), approver: who.into() }
    }

    async fn commit(s: &ChainStore, b: Batch) {
        let mut state = s.state().unwrap();
        let block = state.cut(state.next_height(), vec![b], &|_: &str, _: u32| None, &mut |_: &Batch| true).unwrap();
        // Validity is the rules' verdict here, not the (absent) signature's.
        let block = Block { valid: vec![true], ..block };
        let outbox = s.db.open_tree("outbox").unwrap();
        s.persist(&block, &outbox, &[(b"chain_state", state.to_bytes())]).await.unwrap();
    }

    #[tokio::test]
    async fn proposals_and_approvals_follow_the_rules_on_every_gateway_alike() {
        let s = store();
        let id = "a".repeat(32);
        assert!(!s.entry_rules_hold(&batch("b", 1, vec![card("d").proposal(id.clone(), "add", "a")])).unwrap(), "a proposal in another member's name");
        assert!(!s.entry_rules_hold(&batch("a", 1, vec![card("b").proposal(id.clone(), "add", "a")])).unwrap(), "admitting a member");
        assert!(!s.entry_rules_hold(&batch("a", 1, vec![approve(&id, "a")])).unwrap(), "approving a proposal nobody made");
        let open = batch("a", 1, vec![card("d").proposal(id.clone(), "add", "a")]);
        assert!(s.entry_rules_hold(&open).unwrap());
        commit(&s, open).await;
        assert!(!s.entry_rules_hold(&batch("c", 1, vec![card("e").proposal(id.clone(), "add", "c")])).unwrap(), "an id proposed twice");
        assert!(!s.entry_rules_hold(&batch("b", 1, vec![approve(&id, "c")])).unwrap(), "an approval in another member's name");
        let yes = batch("b", 1, vec![approve(&id, "b")]);
        assert!(s.entry_rules_hold(&yes).unwrap());
        commit(&s, yes).await;
        assert!(s.is_member("d"));
        assert_eq!(s.proposal(&id).unwrap().unwrap().decided_at, Some(1));
        // A late or repeated approval is harmless: it changes nothing and invalidates nothing.
        assert!(s.entry_rules_hold(&batch("c", 1, vec![approve(&id, "c"), approve(&id, "c")])).unwrap());
        assert!(s.entry_rules_hold(&batch("b", 2, vec![approve(&id, "b")])).unwrap());
    }
}
