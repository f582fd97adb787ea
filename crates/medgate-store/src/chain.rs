//! The gateway's copy of the ledger: blocks, the index of every entry, the patient audit index,
//! and the state derived from valid batches (consents, record custodians, the consortium's
//! members and proposals, checkpoints and fork evidence).
//!
//! Boundary: storage and the rules that read it. [`ChainStore::persist`] stores a block with its
//! indexes and the removal of its entries from the outbox in one transaction, flushed; who cut
//! the block (the writer through an [`crate::Orderer`], or the consortium follower) is not its
//! business. [`ChainStore::batch_counts`] applies the entry rules every gateway applies alike.

use std::collections::{HashMap, HashSet};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};

use medgate_ledger::consent::ConsentState;
use medgate_ledger::{verify_ledger, Batch, Block, ChainReport, ChainState, Entry, EntryBody, LedgerError, Receipt};
use sha2::{Digest, Sha256};

use crate::error::{read_u64, to_json};
use crate::{Db, StoreError};

mod pieces;

/// The sled tree of ledger entries stored but not yet in a block (shared with the vault, which
/// writes them with the records they anchor).
pub(crate) const OUTBOX_TREE: &str = "outbox";

/// Where an entry sits in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Height of its block.
    pub height: u64,
    /// Index of its batch in the block.
    pub batch: u32,
    /// Index of the entry in the batch.
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
    db: Db,
    outbox: sled::Tree,
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
    /// Told of each block once it is flushed.
    listeners: crate::commit::Listeners,
}

/// Keys and values to write in the chain's meta tree with a block.
type MetaUpdates = Vec<(Vec<u8>, Vec<u8>)>;

fn consent_key(patient: &str, consent_id: &str) -> Vec<u8> {
    format!("{patient}/{consent_id}").into_bytes()
}

impl ChainStore {
    /// Opens the chain's trees in the gateway's database.
    pub fn open(db: &Db) -> Result<ChainStore, StoreError> {
        let (db, d) = (db.clone(), &db.0);
        Ok(ChainStore {
            outbox: d.open_tree(OUTBOX_TREE)?,
            blocks: d.open_tree("blocks")?,
            locations: d.open_tree("entry_locations")?,
            by_patient: d.open_tree("audit_by_patient")?,
            meta: d.open_tree("chain_meta")?,
            keys: d.open_tree("ledger_public_keys")?,
            consents: d.open_tree("consents")?,
            records: d.open_tree("record_index")?,
            forks: d.open_tree("fork_evidence")?,
            peer_checkpoints: d.open_tree("peer_checkpoints")?,
            listeners: crate::commit::Listeners::default(),
            db,
        })
    }

    /// Adds a listener told of every block committed from now on through this store or any of
    /// its clones (after the block is flushed).
    pub fn add_commit_listener(&self, listener: std::sync::Arc<dyn crate::CommitListener>) {
        self.listeners.add(listener);
    }

    /// (height of the last block, its hash) or None for an empty chain.
    pub fn head(&self) -> Result<Option<(u64, String)>, StoreError> {
        match self.blocks.last()? {
            None => Ok(None),
            Some((k, _)) => {
                let h = pieces::height_of(&k)?;
                let block = self.block(h)?.ok_or_else(|| StoreError::Format(format!("block {h}: vanished while read")))?;
                Ok(Some((h, hex::encode(block.hash()))))
            }
        }
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        match pieces::read(&self.blocks, height)? {
            None => Ok(None),
            Some(v) => Block::from_bytes(&v).map(Some).map_err(|e| StoreError::Format(format!("block {height}: {e}"))),
        }
    }

    /// Re-checks every stored block from genesis offline (`medgate ledger verify`), with
    /// [`verify_ledger`]: a consortium copy from the genesis document stored with it, which must
    /// hash to the genesis hash recorded with the chain; `trusted` as there.
    pub fn verify(&self, trusted: &[Vec<u8>]) -> Result<ChainReport, medgate_ledger::ChainError> {
        let unreadable = |reason: String| medgate_ledger::ChainError::Decode { height: 0, source: LedgerError::Decode { what: "stored genesis", reason } };
        let genesis = match self.genesis_hash().map_err(|e| unreadable(e.to_string()))? {
            None => None,
            Some(hash) => {
                let bytes = self.genesis().map_err(|e| unreadable(e.to_string()))?.ok_or_else(|| unreadable("missing".into()))?;
                if <[u8; 32]>::from(Sha256::digest(&bytes)) != hash {
                    return Err(unreadable("does not hash to the genesis hash recorded with the chain".into()));
                }
                Some(bytes)
            }
        };
        verify_ledger(genesis.as_deref(), self.blocks(), &|g: &str, v: u32| self.public_key(g, v).ok().flatten(), trusted)
    }

    /// Overwrites the block stored at its height, unchecked and flushed: what a rewrite of this
    /// copy by someone else would do (the fork tests of the layers above).
    #[cfg(any(test, feature = "fixtures"))]
    pub fn overwrite_block(&self, block: &Block) -> Result<(), StoreError> {
        pieces::overwrite(&self.blocks, block.height, &block.to_bytes())?;
        self.db.flush_blocking()
    }

    /// Every stored block in height order, decoded lazily (for `ledger verify`).
    pub fn blocks(&self) -> impl Iterator<Item = Result<Block, medgate_ledger::LedgerError>> + '_ {
        pieces::all(&self.blocks).map(|kv| match kv {
            Ok((_, v)) => Block::from_bytes(&v),
            Err(e) => Err(medgate_ledger::LedgerError::Decode { what: "stored block", reason: e.to_string() }),
        })
    }

    pub fn location(&self, entry_id: &str) -> Result<Option<Location>, StoreError> {
        Ok(self.locations.get(entry_id.as_bytes())?.and_then(|v| Location::decode(&v)))
    }

    pub fn receipt(&self, entry_id: &str) -> Result<Option<Receipt>, StoreError> {
        let Some(loc) = self.location(entry_id)? else { return Ok(None) };
        let Some(block) = self.block(loc.height)? else { return Ok(None) };
        Receipt::for_entry(&block, loc.batch as usize, loc.entry as usize)
            .map(Some)
            .map_err(|e| StoreError::Format(e.to_string()))
    }

    /// The entries about one patient pseudonym, in ledger order, with their block height. Each
    /// block that holds some of them is read once, and only those entries are decoded from it
    /// ([`Block::pick_entries`]): a patient's few entries in a block of many cost what they are.
    pub fn entries_for_patient(&self, pseudonym: &str) -> Result<Vec<(Entry, u64)>, StoreError> {
        let mut out = Vec::new();
        // The index is ordered by location: one block's entries are next to each other.
        let mut block: Option<(u64, Vec<medgate_ledger::Place>)> = None;
        for kv in self.by_patient.scan_prefix(format!("{pseudonym}/").as_bytes()) {
            let (_, v) = kv?;
            let Some(loc) = Location::decode(&v) else { continue };
            match &mut block {
                Some((h, places)) if *h == loc.height => places.push((loc.batch, loc.entry)),
                _ => {
                    if let Some((h, places)) = block.replace((loc.height, vec![(loc.batch, loc.entry)])) {
                        self.pick(h, &places, &mut out)?;
                    }
                }
            }
        }
        if let Some((h, places)) = block {
            self.pick(h, &places, &mut out)?;
        }
        Ok(out)
    }

    /// Appends the entries of block `height` at `places` to `out`, with the height.
    fn pick(&self, height: u64, places: &[medgate_ledger::Place], out: &mut Vec<(Entry, u64)>) -> Result<(), StoreError> {
        let Some(bytes) = pieces::read(&self.blocks, height)? else { return Ok(()) };
        let picked = Block::pick_entries(&bytes, places).map_err(|e| StoreError::Format(format!("block {height}: {e}")))?;
        out.extend(picked.into_iter().map(|(_, e)| (e, height)));
        Ok(())
    }

    /// Ledger public keys (SPKI DER) by version, as recorded when they signed.
    pub fn public_key(&self, gateway: &str, version: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.keys.get(format!("{gateway}/{version}").as_bytes())?.map(|v| v.to_vec()))
    }

    pub(crate) fn remember_key(&self, gateway: &str, version: u32, spki: &[u8]) -> Result<(), StoreError> {
        self.keys.insert(format!("{gateway}/{version}").as_bytes(), spki)?;
        Ok(())
    }

    /// The sequence number of this gateway's next batch on a standalone chain (the first is 1).
    pub(crate) fn next_seq(&self) -> Result<u64, StoreError> {
        self.meta.get(b"next_batch_seq")?.map_or(Ok(1), |v| read_u64("next batch sequence number", &v))
    }

    /// The state the stored chain leaves behind (consortium mode keeps it next to the chain).
    pub fn state(&self) -> Result<ChainState, StoreError> {
        match self.meta.get(b"chain_state")? {
            None => Ok(self.genesis_hash()?.map_or_else(ChainState::new, ChainState::after_genesis)),
            Some(v) => ChainState::from_bytes(&v).map_err(|e| StoreError::Format(format!("chain state: {e}"))),
        }
    }

    /// Every read granted as break-glass, on any gateway, in ledger order with its block height:
    /// the list a privacy officer reviews.
    pub fn break_glass_reads(&self) -> Result<Vec<(Entry, u64)>, StoreError> {
        let mut out = Vec::new();
        for block in self.blocks() {
            let block = block.map_err(|e| StoreError::Format(e.to_string()))?;
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
    pub fn record_fork(&self, height: u64, theirs: &medgate_ledger::Checkpoint, ours: &str) -> Result<(), StoreError> {
        let v = serde_json::json!({"height": height, "ours": ours, "theirs": theirs});
        self.forks.insert(format!("{height:020}/{}", theirs.gateway).as_bytes(), to_json("fork evidence", &v)?)?;
        self.db.flush_blocking()
    }

    /// Every fork seen, as stored evidence.
    pub fn forks(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.forks.iter().values().map(|v| serde_json::from_slice(&v?).map_err(|e| StoreError::corrupt("fork evidence", e))).collect()
    }

    /// Remembers the latest checkpoint a peer sent (for the lag metric).
    pub fn remember_peer_checkpoint(&self, cp: &medgate_ledger::Checkpoint) -> Result<(), StoreError> {
        self.peer_checkpoints.insert(cp.gateway.as_bytes(), to_json("peer checkpoint", cp)?)?;
        Ok(())
    }

    /// The latest checkpoint of every peer that sent one.
    pub fn peer_checkpoints(&self) -> Result<Vec<medgate_ledger::Checkpoint>, StoreError> {
        self.peer_checkpoints.iter().values().map(|v| serde_json::from_slice(&v?).map_err(|e| StoreError::Format(e.to_string()))).collect()
    }

    /// The entry that anchored a record, whichever hospital holds it.
    pub fn anchored(&self, record_id: &str) -> Result<Option<Entry>, StoreError> {
        let Some(loc) = self.records.get(record_id.as_bytes())?.and_then(|v| Location::decode(&v)) else { return Ok(None) };
        Ok(self
            .block(loc.height)?
            .and_then(|b| b.batches.get(loc.batch as usize).and_then(|x| x.entries.get(loc.entry as usize)).cloned()))
    }

    pub fn consent(&self, patient: &str, consent_id: &str) -> Result<Option<ConsentState>, StoreError> {
        match self.consents.get(consent_key(patient, consent_id))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Format(format!("consent {consent_id}: {e}"))),
        }
    }

    /// Every consent recorded for a patient pseudonym, active or not.
    pub fn consents_for(&self, patient: &str) -> Result<Vec<ConsentState>, StoreError> {
        let mut out = Vec::new();
        for kv in self.consents.scan_prefix(format!("{patient}/").as_bytes()) {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Format(format!("consent: {e}")))?);
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
    pub fn member_key_checked(&self, gateway: &str, version: u32) -> Result<Option<Vec<u8>>, StoreError> {
        match self.roster()? {
            Some(r) => Ok(r.ledger_key(gateway, version)),
            None => self.public_key(gateway, version),
        }
    }

    /// Adopts the genesis document on a new ledger copy (stores it, the founding roster and
    /// the founders' keys, flushed), or checks that an existing copy started from the same one.
    pub fn adopt_genesis(&self, genesis: &medgate_ledger::membership::Genesis, hash: [u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(stored) = self.genesis_hash()? {
            if stored == hash {
                return Ok(());
            }
            return Err(StoreError::Format(format!(
                "this ledger copy started from genesis {}, but the configured genesis file hashes to {}; a gateway cannot change consortium",
                hex::encode(stored),
                hex::encode(hash)
            )));
        }
        if !self.blocks.is_empty() {
            return Err(StoreError::Format("this ledger copy has blocks but no genesis: it was written in standalone mode; start the consortium member on a new state directory".into()));
        }
        let roster = medgate_ledger::membership::Roster::from_genesis(genesis);
        for m in roster.members.values() {
            self.remember_member_keys(m)?;
        }
        let members = to_json("membership roster", &roster)?;
        (&self.meta,)
            .transaction(|(meta,)| {
                meta.insert(&b"members"[..], members.as_slice())?;
                meta.insert(&b"genesis"[..], bytes)?;
                meta.insert(&b"genesis_hash"[..], &hash[..])?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| StoreError::Storage(format!("{e:?}")))?;
        self.db.flush_blocking()
    }

    /// Records a member's admitted ledger keys in the key table, which keeps every key a member
    /// ever held (for offline checks of what it signed). Repeating it is harmless.
    fn remember_member_keys(&self, m: &medgate_ledger::membership::MemberState) -> Result<(), StoreError> {
        for (v, der) in m.ledger_keys_der() {
            self.remember_key(&m.hospital_id, v, &der)?;
        }
        Ok(())
    }

    /// The hospital this ledger copy belongs to: the one recorded by [`ChainStore::claim_hospital`],
    /// else, on a standalone copy from before that was recorded, the writer of its first batch.
    pub fn hospital(&self) -> Result<Option<String>, StoreError> {
        if let Some(v) = self.meta.get(b"hospital_id")? {
            return Ok(Some(String::from_utf8_lossy(&v).into_owned()));
        }
        if self.genesis_hash()?.is_some() {
            return Ok(None);
        }
        let first = self.blocks().next().transpose().map_err(|e| StoreError::Format(e.to_string()))?;
        Ok(first.and_then(|b| b.batches.first().map(|x| x.gateway.clone())))
    }

    /// Binds this ledger copy to the hospital it belongs to, or checks that it is this one: a
    /// copy written as another hospital is refused, since every entry names its custodian and
    /// the consortium knows the gateway by that name. A consortium copy from before the binding
    /// was recorded is bound to `hospital` (its first batch may be another member's).
    pub fn claim_hospital(&self, hospital: &str) -> Result<(), StoreError> {
        match self.hospital()? {
            Some(s) if s != hospital => Err(StoreError::WrongHospital { stored: s, configured: hospital.to_owned() }),
            _ if self.meta.contains_key(b"hospital_id")? => Ok(()),
            _ => {
                self.meta.insert(&b"hospital_id"[..], hospital.as_bytes())?;
                self.db.flush_blocking()
            }
        }
    }

    /// The genesis hash of a consortium chain (`None` on a standalone one).
    pub fn genesis_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.meta.get(b"genesis_hash")?.and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// The genesis document as adopted.
    pub fn genesis(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(b"genesis")?.map(|v| v.to_vec()))
    }

    /// The current members (`None` on a standalone chain).
    pub fn roster(&self) -> Result<Option<medgate_ledger::membership::Roster>, StoreError> {
        match self.meta.get(b"members")? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Format(format!("membership roster: {e}"))),
        }
    }

    /// Whether a hospital is a current member of the consortium.
    pub fn is_member(&self, hospital_id: &str) -> bool {
        matches!(self.roster(), Ok(Some(r)) if r.is_member(hospital_id))
    }

    pub fn proposal(&self, proposal_id: &str) -> Result<Option<medgate_ledger::membership::Proposal>, StoreError> {
        match self.meta.get(format!("proposal/{proposal_id}").as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Format(format!("proposal {proposal_id}: {e}"))),
        }
    }

    /// Every membership proposal, open or decided.
    pub fn proposals(&self) -> Result<Vec<medgate_ledger::membership::Proposal>, StoreError> {
        self.meta
            .scan_prefix(b"proposal/")
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| StoreError::Format(format!("proposal: {e}"))))
            .collect()
    }

    /// What a block changes in the membership: opened proposals, approvals, and the roster when
    /// a proposal is carried. Deterministic from the block and the stored state. Also records
    /// admitted keys in the key table (for offline verification; harmless if repeated).
    fn membership_updates(&self, block: &Block) -> Result<MetaUpdates, StoreError> {
        let Some(mut roster) = self.roster()? else { return Ok(Vec::new()) };
        let (touched, roster_changed) = medgate_ledger::membership::apply_block(&mut roster, block, &mut |id| self.proposal(id).ok().flatten());
        for p in touched.iter().filter(|p| p.decided_at == Some(block.height)) {
            tracing::info!(proposal = %p.proposal_id, action = %p.action, hospital = %p.hospital_id, height = block.height, approvals = ?p.approvals, "membership change carried");
            if let Some(m) = roster.get(&p.hospital_id) {
                self.remember_member_keys(m)?;
            }
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> =
            touched.iter().map(|p| Ok((format!("proposal/{}", p.proposal_id).into_bytes(), to_json("proposal", p)?))).collect::<Result<_, StoreError>>()?;
        if roster_changed {
            out.push((b"members".to_vec(), to_json("membership roster", &roster)?));
        }
        Ok(out)
    }

    /// Whether a verified, in-sequence batch counts on this chain: none of its entries is
    /// already on it (a resubmitted outbox entry is recorded once), and it keeps the entry rules.
    /// The same test whether the block is cut here from the ordered stream or fetched from a peer.
    /// A store error is returned, never turned into a verdict.
    pub fn batch_counts(&self, batch: &Batch) -> Result<bool, StoreError> {
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
    /// only the custodian that anchored a record erases it or changes its status, and a list is
    /// anchored by its custodian only; a member proposes membership changes
    /// in its own name, once per id, that the roster allows, and approves in its own name
    /// proposals that exist (a late or repeated approval changes nothing and harms nothing).
    pub fn entry_rules_hold(&self, batch: &Batch) -> Result<bool, StoreError> {
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
                EntryBody::RecordErased { record_id, custodian, .. } | EntryBody::RecordStatusChanged { record_id, custodian, .. } => {
                    *custodian == batch.gateway
                        && self.anchored(record_id)?.is_some_and(|a| matches!(&a.body, EntryBody::RecordAnchored { custodian: c, .. } if c == custodian))
                }
                EntryBody::ListAnchored { custodian, .. } => *custodian == batch.gateway,
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

    /// Whether the entry rules ([`ChainStore::entry_rules_hold`]) read chain state for `e`
    /// (consents, anchored records, membership), so that a batch still on its way could change
    /// its verdict. The writer sends batches holding such entries only when none of its batches
    /// is in flight. Keep in step with the rules above: every other entry counts whatever the
    /// state, once it is not already on the chain.
    pub fn rules_read_state(e: &Entry) -> bool {
        match &e.body {
            EntryBody::MembershipProposed { .. }
            | EntryBody::MembershipApproved { .. }
            | EntryBody::ConsentRecorded { .. }
            | EntryBody::ConsentRevoked { .. }
            | EntryBody::RecordErased { .. }
            | EntryBody::RecordStatusChanged { .. } => true,
            EntryBody::RecordRead { reader, custodian, purpose, granted: true, .. } => reader != custodian && purpose != "BTG",
            _ => false,
        }
    }

    /// Stores a block with its indexes in one transaction, then flushes: the block, the location
    /// of every entry of its valid batches, the patient audit index, the removal of this
    /// gateway's entries from the outbox, and `meta` updates (sequence number, chain state).
    /// Then the commit listeners hear of it.
    pub async fn persist(&self, block: &Block, meta_updates: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        self.apply(block, meta_updates)?;
        self.db.flush().await?;
        self.committed(block);
        Ok(())
    }

    /// Tells the commit listeners of `block`, once it is flushed. Whoever stores blocks without
    /// [`ChainStore::persist`] (the group commit, the follower) calls this after its flush, for
    /// each block in height order.
    pub(crate) fn committed(&self, block: &Block) {
        self.listeners.committed(block);
    }

    /// As [`ChainStore::persist`], without the flush and without telling the listeners: the
    /// follower stores the blocks that arrived together, then flushes once before it says where
    /// they landed (and then calls [`ChainStore::committed`] for each).
    pub(crate) fn apply(&self, block: &Block, meta_updates: &[(&[u8], Vec<u8>)]) -> Result<(), StoreError> {
        self.apply_with(block, meta_updates, Outboxed::Any)
    }

    /// As [`ChainStore::apply`], removing from the outbox only the entries `outboxed` names.
    pub(crate) fn apply_with(&self, block: &Block, meta_updates: &[(&[u8], Vec<u8>)], outboxed: Outboxed<'_>) -> Result<(), StoreError> {
        let prepared = self.prepare(block)?;
        self.block_trees()
            .as_slice()
            .transaction(|t| write_block(&BlockViews::of(t), block, &prepared, meta_updates, outboxed))
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })
    }

    /// The trees a block is written to, in the order [`BlockViews::of`] reads them.
    pub(crate) fn block_trees(&self) -> [&sled::Tree; 7] {
        [&self.blocks, &self.locations, &self.by_patient, &self.meta, &self.outbox, &self.consents, &self.records]
    }

    /// What storing `block` needs that is read before the transaction: its bytes and its
    /// membership updates (deterministic from the block and the stored state).
    pub(crate) fn prepare(&self, block: &Block) -> Result<PreparedBlock, StoreError> {
        Ok(PreparedBlock { bytes: block.to_bytes(), membership: self.membership_updates(block)? })
    }

    /// The database the chain lives in (for the writer's group commit).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

/// A block's bytes and membership updates, read before its transaction.
#[derive(Debug)]
pub(crate) struct PreparedBlock {
    bytes: Vec<u8>,
    membership: MetaUpdates,
}

/// The chain's trees inside a transaction (see [`ChainStore::block_trees`]).
pub(crate) struct BlockViews<'a> {
    blocks: &'a TransactionalTree,
    locs: &'a TransactionalTree,
    pats: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    out: &'a TransactionalTree,
    cons: &'a TransactionalTree,
    recs: &'a TransactionalTree,
}

impl<'a> BlockViews<'a> {
    /// The views of the trees [`ChainStore::block_trees`] lists, in that order.
    pub(crate) fn of(t: &'a [TransactionalTree]) -> BlockViews<'a> {
        BlockViews { blocks: &t[0], locs: &t[1], pats: &t[2], meta: &t[3], out: &t[4], cons: &t[5], recs: &t[6] }
    }

    /// The outbox (which the vault's deposits share).
    pub(crate) fn outbox(&self) -> &'a TransactionalTree {
        self.out
    }
}

/// Which entries of a block may wait in this store's outbox, and are removed from it with the
/// block. Inside a transaction, removing a key that is not there costs as much as removing one
/// that is (a lookup of the old value, another at the commit), for every entry of every block.
/// Naming too few is safe, if slower to clear: an entry left behind in the outbox is found
/// on the chain by the next drain, which removes it without appending it again.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outboxed<'a> {
    /// Any of them (a block of unknown origin).
    Any,
    /// The entries of this gateway's batches: another hospital's entries never wait here (the
    /// consortium follower).
    Gateway(&'a str),
    /// These entries only (the group commit: the entries a deposit hands over go straight into
    /// the block; others may come from the outbox).
    Ids(&'a HashSet<&'a str>),
}

impl Outboxed<'_> {
    fn may_hold(&self, batch: &Batch, entry: &Entry) -> bool {
        match self {
            Outboxed::Any => true,
            Outboxed::Gateway(me) => batch.gateway == *me,
            Outboxed::Ids(ids) => ids.contains(entry.id.as_str()),
        }
    }
}

/// Writes a block with its indexes inside a transaction: the block, the location of every entry
/// of its valid batches, the patient audit index, the removal of its entries from the outbox
/// (those `outboxed` names), the derived state (record custodians, consents), `meta_updates` and
/// the membership updates.
pub(crate) fn write_block(
    v: &BlockViews<'_>,
    block: &Block,
    prepared: &PreparedBlock,
    meta_updates: &[(&[u8], Vec<u8>)],
    outboxed: Outboxed<'_>,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let height = block.height;
    pieces::write(v.blocks, height, &prepared.bytes)?;
    for (bi, (b, valid)) in block.batches.iter().zip(&block.valid).enumerate() {
        if !*valid {
            continue;
        }
        for (ei, e) in b.entries.iter().enumerate() {
            let loc = Location { height, batch: bi as u32, entry: ei as u32 }.encode();
            v.locs.insert(e.id.as_bytes(), &loc)?;
            if let Some(p) = e.patient() {
                let mut k = format!("{p}/").into_bytes();
                k.extend_from_slice(&loc);
                v.pats.insert(k, &loc)?;
            }
            if outboxed.may_hold(b, e) {
                v.out.remove(e.id.as_bytes())?;
            }
            derive_state(v, e, &loc)?;
        }
    }
    for (k, val) in meta_updates {
        v.meta.insert(*k, val.as_slice())?;
    }
    for (k, val) in &prepared.membership {
        v.meta.insert(k.as_slice(), val.as_slice())?;
    }
    Ok(())
}

/// The state an entry of a valid batch changes: the custodian index of anchored records, and
/// consents recorded or revoked.
fn derive_state(v: &BlockViews<'_>, e: &Entry, loc: &[u8; 16]) -> Result<(), ConflictableTransactionError<StoreError>> {
    match &e.body {
        EntryBody::RecordAnchored { record_id, .. } => {
            // The first anchor of a record stands, as it did with a get before the insert: one
            // lookup (the insert's own) instead of two; a record id anchored again gets its
            // first location back.
            if let Some(first) = v.recs.insert(record_id.as_bytes(), loc)? {
                v.recs.insert(record_id.as_bytes(), first)?;
            }
        }
        EntryBody::ConsentRecorded { .. } => {
            if let Some(c) = ConsentState::from_entry(e) {
                v.cons.insert(consent_key(&c.patient, &c.consent_id), to_json("consent", &c).map_err(ConflictableTransactionError::Abort)?)?;
            }
        }
        EntryBody::ConsentRevoked { consent_id, patient, .. } => {
            let key = consent_key(patient, consent_id);
            if let Some(val) = v.cons.get(&key)? {
                let mut c: ConsentState = serde_json::from_slice(&val).map_err(|e| ConflictableTransactionError::Abort(StoreError::corrupt("consent", e)))?;
                c.active = false;
                c.revoked_by = Some(e.id.clone());
                v.cons.insert(key, to_json("consent", &c).map_err(ConflictableTransactionError::Abort)?)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod membership_rules {
    use super::*;
    use medgate_ledger::membership::{Genesis, MemberCard};
    use medgate_ledger::UnsignedBatch;

    /// Base64 DER of a fixed P-256 public key (shape checks only).
    const P256_SPKI_B64: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8VCZ4n49Ubfrc7xdVEeHnqynb8ysdTNviUwqdVONnXPg1dzDVEMkq5O2mmXFd9OF6WbACh4i/Tlt3A9JZYGLdg==";

    fn card(id: &str) -> MemberCard {
        MemberCard { hospital_id: id.into(), ledger_public_key: P256_SPKI_B64.into(), ledger_key_version: 1, sharing_public_key: None, peer_address: None }
    }

    /// A consortium store for members a, b, c.
    fn store() -> ChainStore {
        let s = ChainStore::open(&Db::temporary().unwrap()).unwrap();
        let g = Genesis::new("c", "2026-01-01T00:00:00Z", vec![card("a"), card("b"), card("c")]).unwrap();
        let bytes = g.to_bytes().unwrap();
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
        s.persist(&block, &[(b"chain_state", state.to_bytes())]).await.unwrap();
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
