//! Consortium membership: the genesis document that names the founding members, the roster the
//! chain derives from it and from membership entries, and the rules those entries follow.
//!
//! Boundary: pure data and rules. The roster changes only through blocks ([`apply_block`], run by
//! the gateway's chain store and by [`crate::verify_ledger`] alike), so every gateway reading the
//! same chain from the same genesis holds the same roster at every height. Nothing here reads a
//! clock or the local configuration; the only I/O is reading and writing the genesis file and
//! the public key files a member card is made from.
//!
//! Rules: a change (`add`, `remove`, `update`) is proposed by a current member and takes effect
//! in the block where approvals from a strict majority of the current members (the proposer
//! counts as one) are on the chain. An `update` of a hospital's keys or address is decided by the
//! other members (a majority of them), so that a hospital whose new ledger key is not admitted
//! yet, and which therefore cannot sign anything that counts, is not locked out. The majority is
//! the consortium's trust anchor: it could as well remove a hospital and admit another under the
//! same id. A proposal lapses when the roster changes before it is carried (votes cast for one
//! roster do not carry a change in another), or when it gathers a majority the roster no longer
//! allows. A removed member's batches are flagged invalid from then on, its checkpoints are
//! refused and its peer requests answered 403. `medgate ledger verify` replays the roster from the
//! genesis, so every batch is checked against the keys its gateway held at that height.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hospital::{check_hospital_id, HOSPITAL_ID_RULE};
use crate::keys::{b64_decode, b64_encode, check_ledger_key, read_public_key, rsa_public_key, RsaPublicKey};
use crate::{Block, Entry, EntryBody};

/// What a hospital hands to the consortium to be named in the genesis or admitted later: its
/// public keys (from `medgate keys public-key`) and where its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberCard {
    /// The hospital's id ([`crate::hospital::check_hospital_id`]).
    pub hospital_id: String,
    /// Base64 DER SubjectPublicKeyInfo of the ledger signing key.
    pub ledger_public_key: String,
    /// Its version (HSM label `medgate-ledger-v<N>`).
    pub ledger_key_version: u32,
    /// Base64 DER SubjectPublicKeyInfo of the RSA sharing key; without it nobody can share
    /// records with this hospital.
    #[serde(default)]
    pub sharing_public_key: Option<String>,
    /// The hospital's peer listener, `IP:port`; without it its records cannot be fetched.
    #[serde(default)]
    pub peer_address: Option<SocketAddr>,
}

impl MemberCard {
    /// Builds a card from PEM public key files as `medgate keys public-key` writes them.
    pub fn from_files(
        hospital_id: &str,
        ledger_public_key: &Path,
        ledger_key_version: u32,
        sharing_public_key: Option<&Path>,
        peer_address: Option<SocketAddr>,
    ) -> Result<MemberCard, String> {
        let ledger = read_public_key(ledger_public_key).map_err(|e| e.to_string())?;
        let sharing = sharing_public_key.map(read_public_key).transpose().map_err(|e| e.to_string())?;
        let card = MemberCard {
            hospital_id: hospital_id.to_owned(),
            ledger_public_key: b64_encode(&ledger),
            ledger_key_version,
            sharing_public_key: sharing.map(|k| b64_encode(&k)),
            peer_address,
        };
        card.check()?;
        Ok(card)
    }

    /// The card's fields have the shapes a membership entry needs, the ledger key is an ECDSA
    /// P-256 key and the sharing key an RSA key, both strict DER.
    pub fn check(&self) -> Result<(), String> {
        if check_hospital_id(&self.hospital_id).is_err() {
            return Err(format!("hospital id {:?}: {HOSPITAL_ID_RULE}", self.hospital_id));
        }
        let entry = self.proposal("0".repeat(32), "add", &self.hospital_id);
        let probe = Entry::new(&self.hospital_id, "2000-01-01T00:00:00Z", [0; 16], entry);
        probe.validate().map_err(|e| format!("member card of {:?}: {e}", self.hospital_id))?;
        let ledger = b64_decode(&self.ledger_public_key).map_err(|e| format!("{}: ledger_public_key: {e}", self.hospital_id))?;
        check_ledger_key(&ledger).map_err(|e| format!("{}: ledger_public_key: {e}", self.hospital_id))?;
        if let Some(s) = &self.sharing_public_key {
            sharing_key(s).map_err(|e| format!("{}: sharing_public_key: {e}", self.hospital_id))?;
        }
        Ok(())
    }

    /// The membership entry that proposes this card (`add` or `update`).
    pub fn proposal(&self, proposal_id: String, action: &str, proposer: &str) -> EntryBody {
        EntryBody::MembershipProposed {
            proposal_id,
            action: action.to_owned(),
            hospital_id: self.hospital_id.clone(),
            ledger_public_key: Some(self.ledger_public_key.clone()),
            ledger_key_version: Some(self.ledger_key_version),
            sharing_public_key: self.sharing_public_key.clone(),
            peer_address: self.peer_address.map(|a| a.to_string()),
            proposer: proposer.to_owned(),
        }
    }
}

/// The RSA key of a base64 sharing key SubjectPublicKeyInfo.
fn sharing_key(b64: &str) -> Result<RsaPublicKey, crate::keys::KeyError> {
    rsa_public_key(&b64_decode(b64)?)
}

/// Whether a base64 SubjectPublicKeyInfo is an ECDSA P-256 ledger key.
fn is_ledger_key(b64: &str) -> bool {
    b64_decode(b64).is_ok_and(|der| check_ledger_key(&der).is_ok())
}

/// The genesis document: the consortium's name and its founding members. Every gateway is
/// configured with the same file; its SHA-256 is the `prev_hash` of block 0, so a gateway
/// started from another genesis cuts different blocks and the checkpoint exchange reports the
/// fork at height 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The consortium's name.
    pub consortium: String,
    /// When it was written, RFC 3339 UTC (informational).
    pub created: String,
    /// The founding members.
    pub members: Vec<MemberCard>,
}

/// Largest genesis file read.
const MAX_GENESIS_BYTES: u64 = 1 << 20;

impl Genesis {
    /// Reads and checks a genesis file; returns it with its hash (SHA-256 of the file's bytes).
    pub fn read(path: &Path) -> Result<(Genesis, [u8; 32], Vec<u8>), String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_GENESIS_BYTES {
            return Err(format!("{}: larger than 1 MiB; not a genesis file", path.display()));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (g, hash) = Genesis::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((g, hash, bytes))
    }

    /// Parses and checks genesis bytes.
    pub fn parse(bytes: &[u8]) -> Result<(Genesis, [u8; 32]), String> {
        let g: Genesis = serde_json::from_slice(bytes).map_err(|e| format!("not a medgate genesis document: {e}"))?;
        g.check()?;
        Ok((g, Sha256::digest(bytes).into()))
    }

    /// At least one member, each once, every card well formed.
    pub fn check(&self) -> Result<(), String> {
        if self.consortium.trim().is_empty() {
            return Err("the consortium has no name".into());
        }
        if self.members.is_empty() {
            return Err("names no founding member".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            if !seen.insert(m.hospital_id.as_str()) {
                return Err(format!("{} is listed twice", m.hospital_id));
            }
            m.check()?;
        }
        Ok(())
    }

    /// A genesis for `members`, dated `created` (RFC 3339 UTC).
    pub fn new(consortium: &str, created: &str, members: Vec<MemberCard>) -> Result<Genesis, String> {
        let g = Genesis { consortium: consortium.to_owned(), created: created.to_owned(), members };
        g.check()?;
        Ok(g)
    }

    /// Writes the document (mode 0644: it holds public keys only); returns its hash.
    pub fn write(&self, path: &Path) -> Result<[u8; 32], String> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Sha256::digest(&bytes).into())
    }

    /// Pretty JSON, as `medgate consortium genesis` writes it (never an empty document).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| format!("genesis: {e}"))?;
        v.push(b'\n');
        Ok(v)
    }
}

/// A current member as the chain knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The member's hospital id.
    pub hospital_id: String,
    /// Every ledger key version admitted for it (base64 DER SPKI).
    pub ledger_keys: BTreeMap<u32, String>,
    /// Base64 DER SubjectPublicKeyInfo of its RSA sharing key, if it has one.
    pub sharing_public_key: Option<String>,
    /// Its peer listener, if it serves records.
    pub peer_address: Option<SocketAddr>,
    /// Block height where it was admitted; `None` for a founding member.
    pub admitted_at: Option<u64>,
}

impl MemberState {
    fn from_card(card: &MemberCard, admitted_at: Option<u64>) -> MemberState {
        MemberState {
            hospital_id: card.hospital_id.clone(),
            ledger_keys: BTreeMap::from([(card.ledger_key_version, card.ledger_public_key.clone())]),
            sharing_public_key: card.sharing_public_key.clone(),
            peer_address: card.peer_address,
            admitted_at,
        }
    }

    /// The RSA sharing key, if the member has one.
    pub fn sharing_key(&self) -> Option<RsaPublicKey> {
        sharing_key(self.sharing_public_key.as_ref()?).ok()
    }

    /// A ledger key version as DER.
    pub fn ledger_key(&self, version: u32) -> Option<Vec<u8>> {
        b64_decode(self.ledger_keys.get(&version)?).ok()
    }

    /// Every admitted ledger key version, as DER.
    pub fn ledger_keys_der(&self) -> impl Iterator<Item = (u32, Vec<u8>)> + '_ {
        self.ledger_keys.keys().filter_map(|v| Some((*v, self.ledger_key(*v)?)))
    }
}

/// A membership proposal and the approvals it gathered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// 32 lowercase hex characters chosen by the proposer.
    pub proposal_id: String,
    /// `add`, `remove` or `update`.
    pub action: String,
    /// The hospital concerned.
    pub hospital_id: String,
    /// For `add` and `update`: the keys and address proposed (an `update` may leave some out).
    pub card: Option<ProposedCard>,
    /// The member that proposed it.
    pub proposer: String,
    /// Members that approved, the proposer first.
    pub approvals: Vec<String>,
    /// Height of the block where it took effect, or lapsed.
    pub decided_at: Option<u64>,
    /// The roster version it was opened against; it lapses if the roster changes first.
    #[serde(default)]
    pub roster_version: u64,
    /// Decided without effect: the roster changed first, or no longer allowed it.
    #[serde(default)]
    pub lapsed: bool,
}

/// The keys and address of an `add` or `update` proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedCard {
    /// Base64 DER SubjectPublicKeyInfo of the proposed ledger key.
    pub ledger_public_key: Option<String>,
    /// Its version.
    pub ledger_key_version: Option<u32>,
    /// Base64 DER SubjectPublicKeyInfo of the proposed RSA sharing key.
    pub sharing_public_key: Option<String>,
    /// The proposed peer listener.
    pub peer_address: Option<SocketAddr>,
}

impl Proposal {
    /// The full card of an `add` proposal: the hospital and the keys and address proposed.
    fn admission_card(&self) -> Option<MemberCard> {
        let c = self.card.as_ref()?;
        Some(MemberCard {
            hospital_id: self.hospital_id.clone(),
            ledger_public_key: c.ledger_public_key.clone()?,
            ledger_key_version: c.ledger_key_version?,
            sharing_public_key: c.sharing_public_key.clone(),
            peer_address: c.peer_address,
        })
    }

    /// Where it stands, given the current roster version: `open`, `carried in block N`, or
    /// `lapsed ...`.
    pub fn state(&self, roster_version: u64) -> String {
        match self.decided_at {
            Some(h) if self.lapsed => format!("lapsed in block {h}"),
            Some(h) => format!("carried in block {h}"),
            None if self.roster_version != roster_version => "lapsed (membership changed)".to_owned(),
            None => "open".to_owned(),
        }
    }

    /// The proposal an entry opens, if it is a well-formed proposal entry.
    pub fn from_entry(body: &EntryBody) -> Option<Proposal> {
        let EntryBody::MembershipProposed { proposal_id, action, hospital_id, ledger_public_key, ledger_key_version, sharing_public_key, peer_address, proposer } = body else {
            return None;
        };
        let peer_address = match peer_address {
            Some(a) => Some(a.parse().ok()?),
            None => None,
        };
        let card = (action != "remove").then(|| ProposedCard {
            ledger_public_key: ledger_public_key.clone(),
            ledger_key_version: *ledger_key_version,
            sharing_public_key: sharing_public_key.clone(),
            peer_address,
        });
        Some(Proposal {
            proposal_id: proposal_id.clone(),
            action: action.clone(),
            hospital_id: hospital_id.clone(),
            card,
            proposer: proposer.clone(),
            approvals: vec![proposer.clone()],
            decided_at: None,
            roster_version: 0,
            lapsed: false,
        })
    }
}

/// The current members, by hospital id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The members by hospital id.
    pub members: BTreeMap<String, MemberState>,
    /// Changes carried since the genesis.
    #[serde(default)]
    pub version: u64,
}

impl Roster {
    /// The founding roster of a genesis document.
    pub fn from_genesis(g: &Genesis) -> Roster {
        Roster { members: g.members.iter().map(|c| (c.hospital_id.clone(), MemberState::from_card(c, None))).collect(), version: 0 }
    }

    /// Whether `hospital_id` is a current member.
    pub fn is_member(&self, hospital_id: &str) -> bool {
        self.members.contains_key(hospital_id)
    }

    /// A current member.
    pub fn get(&self, hospital_id: &str) -> Option<&MemberState> {
        self.members.get(hospital_id)
    }

    /// A current member's ledger key by version: what batch and checkpoint checks accept.
    pub fn ledger_key(&self, hospital_id: &str, version: u32) -> Option<Vec<u8>> {
        self.members.get(hospital_id)?.ledger_key(version)
    }

    /// Whether the approvals of current members are a strict majority of the current members.
    pub fn carried(&self, approvals: &[String]) -> bool {
        let yes = self.members.keys().filter(|m| approvals.contains(m)).count();
        yes * 2 > self.members.len()
    }

    /// Whether `p` is carried: a strict majority of the current members, or for an `update`, of
    /// the members other than the hospital concerned (whose approval then does not count).
    pub fn carries(&self, p: &Proposal) -> bool {
        if p.action != "update" {
            return self.carried(&p.approvals);
        }
        let others: Vec<&String> = self.members.keys().filter(|m| **m != p.hospital_id).collect();
        let yes = others.iter().filter(|m| p.approvals.contains(m)).count();
        !others.is_empty() && yes * 2 > others.len()
    }

    /// Whether a proposal may be opened against this roster (the proposer's membership and
    /// the uniqueness of the id are checked by the caller).
    pub fn admits(&self, p: &Proposal) -> bool {
        match p.action.as_str() {
            "add" => !self.is_member(&p.hospital_id) && p.admission_card().is_some_and(|c| c.check().is_ok()),
            // The last member cannot be removed: nobody would be left to order anything.
            "remove" => self.is_member(&p.hospital_id) && self.members.len() > 1,
            "update" => {
                self.is_member(&p.hospital_id)
                    && p.card.as_ref().is_some_and(|c| {
                        let key_ok = match (&c.ledger_public_key, c.ledger_key_version) {
                            (Some(k), Some(v)) => {
                                // A version keeps the key it was admitted with.
                                let same_or_new = self.members[&p.hospital_id].ledger_keys.get(&v).is_none_or(|old| old == k);
                                same_or_new && is_ledger_key(k)
                            }
                            (None, None) => true,
                            _ => false,
                        };
                        let sharing_ok = c.sharing_public_key.as_ref().is_none_or(|s| sharing_key(s).is_ok());
                        key_ok && sharing_ok && (c.ledger_public_key.is_some() || c.sharing_public_key.is_some() || c.peer_address.is_some())
                    })
            }
            _ => false,
        }
    }

    /// Applies a carried proposal at `height`.
    pub fn apply(&mut self, p: &Proposal, height: u64) {
        self.version += 1;
        match (p.action.as_str(), &p.card) {
            ("add", _) => {
                if let Some(card) = p.admission_card() {
                    self.members.insert(p.hospital_id.clone(), MemberState::from_card(&card, Some(height)));
                }
            }
            ("remove", _) => {
                self.members.remove(&p.hospital_id);
            }
            ("update", Some(c)) => {
                if let Some(m) = self.members.get_mut(&p.hospital_id) {
                    // The new key replaces the old ones for new batches: a key that leaked stops
                    // counting here. Older batches are checked against the roster of their height.
                    if let (Some(key), Some(version)) = (&c.ledger_public_key, c.ledger_key_version) {
                        m.ledger_keys = BTreeMap::from([(version, key.clone())]);
                    }
                    if c.sharing_public_key.is_some() {
                        m.sharing_public_key = c.sharing_public_key.clone();
                    }
                    if c.peer_address.is_some() {
                        m.peer_address = c.peer_address;
                    }
                }
            }
            _ => {}
        }
    }
}

/// What one block changes in the membership: the proposals it opened or approved (as they
/// stand after it) and whether the roster changed. Reads only the valid batches' membership
/// entries; `stored` finds a proposal opened in an earlier block. Applies carried changes to
/// `roster`. The same function runs when a gateway stores a block and when `medgate ledger
/// verify` replays a chain, so both see the same roster at every height.
pub fn apply_block(roster: &mut Roster, block: &Block, stored: &mut dyn FnMut(&str) -> Option<Proposal>) -> (Vec<Proposal>, bool) {
    let mut touched: BTreeMap<String, Proposal> = BTreeMap::new();
    let mut changed = false;
    for (batch, valid) in block.batches.iter().zip(&block.valid) {
        if !*valid {
            continue;
        }
        for e in &batch.entries {
            let (mut p, voter) = match &e.body {
                EntryBody::MembershipProposed { proposal_id, .. } => {
                    // An id is opened once (the entry rules refuse a second; this keeps it so).
                    if touched.contains_key(proposal_id) || stored(proposal_id).is_some() {
                        continue;
                    }
                    match Proposal::from_entry(&e.body) {
                        Some(mut p) => {
                            p.roster_version = roster.version;
                            (p, None)
                        }
                        None => continue,
                    }
                }
                EntryBody::MembershipApproved { proposal_id, approver } => {
                    match touched.get(proposal_id).cloned().or_else(|| stored(proposal_id)) {
                        Some(p) => (p, Some(approver.clone())),
                        None => continue,
                    }
                }
                _ => continue,
            };
            if p.decided_at.is_some() {
                continue;
            }
            if let Some(v) = voter {
                if !p.approvals.contains(&v) {
                    p.approvals.push(v);
                }
            }
            if p.roster_version != roster.version {
                // Votes cast for another roster: the change must be proposed again.
                p.decided_at = Some(block.height);
                p.lapsed = true;
            } else if roster.carries(&p) {
                if roster.admits(&p) {
                    roster.apply(&p, block.height);
                    changed = true;
                } else {
                    p.lapsed = true;
                }
                p.decided_at = Some(block.height);
            }
            touched.insert(p.proposal_id.clone(), p);
        }
    }
    (touched.into_values().collect(), changed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn card(id: &str) -> MemberCard {
        // A fixed P-256 SPKI and a fixed RSA-2048 SPKI are enough for shape checks.
        MemberCard {
            hospital_id: id.into(),
            ledger_public_key: crate::testkit::P256_SPKI_B64.into(),
            ledger_key_version: 1,
            sharing_public_key: None,
            peer_address: Some("127.0.0.1:7000".parse().unwrap()),
        }
    }


    fn proposal(action: &str, id: &str, proposer: &str) -> Proposal {
        let body = match action {
            "remove" => EntryBody::MembershipProposed {
                proposal_id: "a".repeat(32),
                action: "remove".into(),
                hospital_id: id.into(),
                ledger_public_key: None,
                ledger_key_version: None,
                sharing_public_key: None,
                peer_address: None,
                proposer: proposer.into(),
            },
            a => card(id).proposal("a".repeat(32), a, proposer),
        };
        Proposal::from_entry(&body).unwrap()
    }

    fn roster(ids: &[&str]) -> Roster {
        Roster::from_genesis(&Genesis { consortium: "c".into(), created: "2026-01-01T00:00:00Z".into(), members: ids.iter().map(|i| card(i)).collect() })
    }

    #[test]
    fn majority_is_strict() {
        let r = roster(&["a", "b", "c"]);
        assert!(!r.carried(&["a".into()]));
        assert!(r.carried(&["a".into(), "b".into()]));
        // Approvals of non-members do not count.
        assert!(!r.carried(&["a".into(), "x".into(), "y".into()]));
        let r4 = roster(&["a", "b", "c", "d"]);
        assert!(!r4.carried(&["a".into(), "b".into()]));
        assert!(r4.carried(&["a".into(), "b".into(), "d".into()]));
    }

    #[test]
    fn add_remove_update_follow_the_roster() {
        let mut r = roster(&["a", "b", "c"]);
        let add = proposal("add", "d", "a");
        assert!(r.admits(&add));
        assert!(!r.admits(&proposal("add", "b", "a")), "a member cannot be admitted twice");
        r.apply(&add, 7);
        assert_eq!(r.get("d").unwrap().admitted_at, Some(7));
        assert!(r.ledger_key("d", 1).is_some());
        assert!(r.ledger_key("d", 2).is_none());
        let remove = proposal("remove", "c", "a");
        assert!(r.admits(&remove));
        r.apply(&remove, 9);
        assert!(!r.is_member("c"));
        assert!(r.ledger_key("c", 1).is_none(), "a removed member's key no longer verifies new batches");
        assert!(!r.admits(&proposal("remove", "c", "a")));
        let mut up = proposal("update", "d", "d");
        up.card.as_mut().unwrap().ledger_key_version = Some(2);
        assert!(r.admits(&up));
        r.apply(&up, 11);
        assert!(r.ledger_key("d", 2).is_some());
        assert!(r.ledger_key("d", 1).is_none(), "the new key replaces the old one for new batches");
        assert_eq!(r.version, 3);
    }

    #[test]
    fn an_update_is_decided_by_the_other_members() {
        let r = roster(&["a", "b", "c"]);
        let mut up = proposal("update", "c", "a");
        assert!(!r.carries(&up), "one of the two others");
        up.approvals.push("c".into());
        assert!(!r.carries(&up), "the hospital concerned does not count");
        up.approvals.push("b".into());
        assert!(r.carries(&up));
        // Two members: the other one decides alone (a hospital locked out by an unadmitted key
        // cannot approve anything).
        let two = roster(&["a", "b"]);
        assert!(two.carries(&proposal("update", "b", "a")));
        assert!(!two.carries(&proposal("remove", "b", "a")), "a removal needs a majority of all");
    }

    fn block(height: u64, gateway: &str, body: EntryBody, valid: bool) -> crate::Block {
        let entry = crate::Entry::new(gateway, "2026-11-28T10:00:00Z", [height as u8; 16], body);
        // apply_block reads entries only; signatures are the block checks' business.
        let batch = crate::UnsignedBatch::new(gateway, height + 1, vec![entry]).sign(1, &[0u8; 64]);
        crate::Block { height, prev_hash: "0".repeat(64), order_position: height, batches: vec![batch], valid: vec![valid] }
    }

    /// Applies a block as the store does: proposals it touched are kept. Whether the roster changed.
    fn run(r: &mut Roster, b: &crate::Block, stored: &mut BTreeMap<String, Proposal>) -> bool {
        let (touched, changed) = apply_block(r, b, &mut |id| stored.get(id).cloned());
        for p in touched {
            stored.insert(p.proposal_id.clone(), p);
        }
        changed
    }

    #[test]
    fn a_block_carries_a_change_once_a_majority_approved_and_not_before() {
        let mut r = roster(&["a", "b", "c"]);
        let mut stored: BTreeMap<String, Proposal> = BTreeMap::new();
        let id = "a".repeat(32);
        let approve = |who: &str| EntryBody::MembershipApproved { proposal_id: id.clone(), approver: who.into() };
        assert!(!run(&mut r, &block(0, "a", card("d").proposal(id.clone(), "add", "a"), true), &mut stored));
        assert!(!r.is_member("d"));
        // An approval in a batch flagged invalid counts for nothing.
        assert!(!run(&mut r, &block(1, "b", approve("b"), false), &mut stored));
        assert_eq!(stored[&id].approvals, ["a"]);
        assert!(run(&mut r, &block(2, "b", approve("b"), true), &mut stored));
        assert_eq!(r.get("d").unwrap().admitted_at, Some(2));
        assert_eq!(stored[&id].decided_at, Some(2));
        // A late approval changes nothing.
        assert!(!run(&mut r, &block(3, "c", approve("c"), true), &mut stored));
        assert_eq!(stored[&id].approvals, ["a", "b"]);
        // The same id proposed again is not a new proposal.
        assert!(!run(&mut r, &block(4, "c", card("e").proposal(id.clone(), "add", "c"), true), &mut stored));
        assert_eq!(stored[&id].hospital_id, "d");
    }

    #[test]
    fn votes_cast_for_one_roster_do_not_carry_a_change_in_another() {
        let mut r = roster(&["a", "b", "c"]);
        let mut stored: BTreeMap<String, Proposal> = BTreeMap::new();
        let (first, second) = ("1".repeat(32), "2".repeat(32));
        // Two proposals to admit d, opened against the same roster; the first is carried.
        run(&mut r, &block(0, "a", card("d").proposal(first.clone(), "add", "a"), true), &mut stored);
        run(&mut r, &block(1, "b", card("d").proposal(second.clone(), "add", "b"), true), &mut stored);
        assert!(run(&mut r, &block(2, "b", EntryBody::MembershipApproved { proposal_id: first, approver: "b".into() }, true), &mut stored));
        assert_eq!(stored[&second].state(r.version), "lapsed (membership changed)");
        // d is removed later; an approval of the stale second proposal must not re-admit it.
        let remove = EntryBody::MembershipProposed {
            proposal_id: "3".repeat(32),
            action: "remove".into(),
            hospital_id: "d".into(),
            ledger_public_key: None,
            ledger_key_version: None,
            sharing_public_key: None,
            peer_address: None,
            proposer: "a".into(),
        };
        run(&mut r, &block(3, "a", remove, true), &mut stored);
        run(&mut r, &block(4, "b", EntryBody::MembershipApproved { proposal_id: "3".repeat(32), approver: "b".into() }, true), &mut stored);
        run(&mut r, &block(5, "c", EntryBody::MembershipApproved { proposal_id: "3".repeat(32), approver: "c".into() }, true), &mut stored);
        assert!(!r.is_member("d"));
        assert!(!run(&mut r, &block(6, "c", EntryBody::MembershipApproved { proposal_id: second.clone(), approver: "c".into() }, true), &mut stored));
        assert!(!r.is_member("d"), "a stale vote re-admitted a removed hospital");
        assert!(stored[&second].lapsed);
    }

    #[test]
    fn the_last_member_stays() {
        let r = roster(&["a"]);
        assert!(!r.admits(&proposal("remove", "a", "a")));
    }

    #[test]
    fn an_update_cannot_change_an_admitted_key_version() {
        let r = roster(&["a", "b"]);
        let mut up = proposal("update", "a", "a");
        up.card.as_mut().unwrap().ledger_public_key = Some(card("a").ledger_public_key.replace('b', "c"));
        assert!(!r.admits(&up));
    }

    #[test]
    fn genesis_rejects_duplicates_and_empty() {
        let g = Genesis { consortium: "c".into(), created: "x".into(), members: vec![card("a"), card("a")] };
        assert!(g.check().unwrap_err().contains("twice"));
        let g = Genesis { consortium: "c".into(), created: "x".into(), members: vec![] };
        assert!(g.check().is_err());
        let g = Genesis { consortium: "c".into(), created: "x".into(), members: vec![card("a")] };
        let (parsed, hash) = Genesis::parse(&g.to_bytes().unwrap()).unwrap();
        assert_eq!(parsed, g);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(g.to_bytes().unwrap())));
    }
}
