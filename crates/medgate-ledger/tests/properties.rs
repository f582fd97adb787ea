//! Round trips of everything the ledger encodes, over generated values (proptest): entries of
//! every kind, signed batches, blocks cut from them, receipts, checkpoints, the chain state,
//! member cards and the genesis. Encode then decode gives the same value; the encoding of a
//! decoded value is byte for byte the one decoded (one canonical form); what was signed still
//! verifies after the trip.

#![allow(clippy::unwrap_used, reason = "test")]

use std::net::SocketAddr;

use medgate_ledger::membership::{Genesis, MemberCard};
use medgate_ledger::{check_receipt, verify_chain, Batch, Block, ChainState, Checkpoint, Entry, EntryBody, Receipt, UnsignedBatch, UnsignedCheckpoint};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A P-256 key in memory, standing in for the HSM's ledger key.
struct Key(EcdsaKeyPair);

impl Key {
    fn new() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Key(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
    }

    fn spki(&self) -> Vec<u8> {
        let mut out = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        out.extend_from_slice(self.0.public_key().as_ref());
        out
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec()
    }

    fn batch(&self, gateway: &str, seq: u64, entries: Vec<Entry>) -> Batch {
        let u = UnsignedBatch::new(gateway, seq, entries);
        u.check().unwrap();
        let sig = self.sign(&u.signing_message());
        u.sign(1, &sig)
    }
}

const GW: &str = "hospital-a";

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn code() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:/@+=|#~-]{1,40}"
}

fn hospital() -> impl Strategy<Value = String> {
    "[a-z][A-Za-z0-9._-]{0,30}".prop_filter("not root", |s| s != "root")
}

fn time() -> impl Strategy<Value = String> {
    (2000u32..2100, 1u32..=12, 1u32..=28, 0u32..24, 0u32..60, 0u32..60, proptest::option::of("[0-9]{1,9}")).prop_map(|(y, mo, d, h, mi, s, f)| {
        let frac = f.map(|f| format!(".{f}")).unwrap_or_default();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z")
    })
}

fn mime() -> impl Strategy<Value = String> {
    prop_oneof![Just("application/pdf".to_owned()), Just("text/plain".to_owned()), Just("application/fhir+json".to_owned()), Just("image/jpeg".to_owned())]
}

fn body() -> impl Strategy<Value = EntryBody> {
    prop_oneof![
        (code(), hex64(), any::<u32>(), hex64(), mime(), any::<u64>(), hospital(), hex64(), code(), code()).prop_map(
            |(record_id, patient, pseudonym_key_version, content_hash, content_type, size, custodian, user, role, purpose)| EntryBody::RecordAnchored {
                record_id,
                patient,
                pseudonym_key_version,
                content_hash,
                content_type,
                size,
                custodian,
                user,
                role,
                purpose
            }
        ),
        (code(), hex64(), hospital(), hospital(), hex64(), code(), code(), any::<bool>(), proptest::option::of(code())).prop_map(
            |(record_id, patient, custodian, reader, user, role, purpose, granted, reason)| EntryBody::RecordRead {
                record_id,
                patient,
                custodian,
                reader,
                user,
                role,
                purpose,
                granted,
                reason
            }
        ),
        (hex64(), hospital(), hex64(), code(), code(), any::<u32>())
            .prop_map(|(patient, reader, user, role, purpose, results)| EntryBody::PatientSearched { patient, reader, user, role, purpose, results }),
        (code(), hex64(), hospital(), hospital(), proptest::collection::vec(code(), 0..5), proptest::option::of(time()), proptest::option::of(time()), hex64(), code())
            .prop_map(|(consent_id, patient, custodian, grantee, record_ids, start, end, user, role)| EntryBody::ConsentRecorded {
                consent_id,
                patient,
                custodian,
                grantee,
                record_ids,
                start,
                end,
                user,
                role
            }),
        (code(), hex64(), hospital(), hex64(), code())
            .prop_map(|(record_id, patient, custodian, user, role)| EntryBody::RecordErased { record_id, patient, custodian, user, role }),
        (code(), hex64(), hospital(), hospital(), hex64(), code())
            .prop_map(|(consent_id, patient, custodian, grantee, user, role)| EntryBody::ConsentRevoked { consent_id, patient, custodian, grantee, user, role }),
        (proptest::sample::select(vec!["generate", "rotate", "retire", "destroy", "import-cert", "change-pin", "backup-init", "backup", "restore"]), code(), any::<u32>(), code(), code(), proptest::option::of(hex64())).prop_map(
            |(action, key_role, key_version, key_id, officer, request)| EntryBody::KeyEvent { action: action.to_owned(), key_role, key_version, key_id, officer, request }
        ),
        (code(), hex64(), any::<u32>(), proptest::collection::vec(code(), 1..5), hospital(), hex64(), code(), code()).prop_map(
            |(list_id, patient, pseudonym_key_version, record_ids, custodian, user, role, purpose)| EntryBody::ListAnchored {
                list_id,
                patient,
                pseudonym_key_version,
                code: "submissionset".to_owned(),
                record_ids,
                custodian,
                user,
                role,
                purpose
            }
        ),
        (code(), hex64(), hospital(), any::<bool>(), code(), hex64(), code()).prop_filter("a record does not replace itself", |t| t.0 != t.4).prop_map(|(record_id, patient, custodian, replaced, by, user, role)| {
            let (status, replaced_by) = if replaced { ("superseded", Some(by)) } else { ("entered-in-error", None) };
            EntryBody::RecordStatusChanged { record_id, patient, custodian, status: status.to_owned(), replaced_by, user, role }
        }),
        ("[0-9a-f]{32}", hospital()).prop_map(|(proposal_id, approver)| EntryBody::MembershipApproved { proposal_id, approver }),
    ]
}

fn entry(gateway: &'static str) -> impl Strategy<Value = Entry> {
    (time(), any::<[u8; 16]>(), body()).prop_map(move |(t, nonce, body)| Entry::new(gateway, &t, nonce, body))
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), 1u16..).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

/// One entry encoded with serde_json and with the ledger's canonical writer (through a batch).
fn assert_entry_round_trip(e: &Entry) {
    let bytes = serde_json::to_vec(e).unwrap();
    let back: Entry = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&back, e);
    assert_eq!(serde_json::to_vec(&back).unwrap(), bytes, "one encoding");
    assert_eq!(back.canonical_bytes(), e.canonical_bytes());
    assert_eq!(back.leaf_hash(), e.leaf_hash());
    assert_eq!(back.validate(), Ok(()));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn entries_of_every_kind_round_trip_and_keep_their_id(e in entry(GW)) {
        prop_assert_eq!(e.validate(), Ok(()));
        assert_entry_round_trip(&e);
    }

    #[test]
    fn signed_batches_round_trip_in_one_canonical_form(entries in proptest::collection::vec(entry(GW), 1..12), seq in 1u64..1_000_000) {
        let key = Key::new();
        let spki = key.spki();
        let lookup = move |g: &str, v: u32| (g == GW && v == 1).then(|| spki.clone());
        let b = key.batch(GW, seq, entries);
        let bytes = b.to_bytes();
        prop_assert_eq!(&bytes, &serde_json::to_vec(&b).unwrap(), "the canonical writer is serde_json's form");
        let back = Batch::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &b);
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(back.hash(), b.hash());
        prop_assert_eq!(back.verify(&lookup), Ok(()));
    }

    #[test]
    fn blocks_receipts_and_checkpoints_round_trip_and_verify(
        batches in proptest::collection::vec(proptest::collection::vec(entry(GW), 1..5), 1..4),
        position in 0u64..1_000_000,
    ) {
        let key = Key::new();
        let spki = key.spki();
        let lookup = {
            let spki = spki.clone();
            move |g: &str, v: u32| (g == GW && v == 1).then(|| spki.clone())
        };
        let mut state = ChainState::new();
        let mut chain = Vec::new();
        for (i, entries) in batches.into_iter().enumerate() {
            let b = key.batch(GW, i as u64 + 1, entries);
            let block = state.cut(position + i as u64, vec![b], &lookup, &mut |_| true).unwrap();
            prop_assert_eq!(&block.valid, &vec![true]);
            chain.push(block);
        }
        for block in &chain {
            let bytes = block.to_bytes();
            let back = Block::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, block);
            prop_assert_eq!(back.to_bytes(), bytes);
            prop_assert_eq!(back.hash(), block.hash());
            for i in 0..block.batches[0].entries.len() {
                let r = Receipt::for_entry(block, 0, i).unwrap();
                let json = serde_json::to_vec(&r.to_json()).unwrap();
                let back = Receipt::from_bytes(&json).unwrap();
                prop_assert_eq!(&back, &r);
                prop_assert_eq!(serde_json::to_vec(&back.to_json()).unwrap(), json.clone());
                prop_assert!(check_receipt(&json, &spki).is_ok());
            }
        }
        let report = verify_chain(chain.iter().cloned().map(Ok), &lookup).unwrap();
        prop_assert_eq!(report.blocks, chain.len() as u64);
        let saved = state.to_bytes();
        let restored = ChainState::from_bytes(&saved).unwrap();
        prop_assert_eq!(&restored, &state);
        prop_assert_eq!(restored.to_bytes(), saved);
        let head = state.head();
        let height = state.height().unwrap();
        let u = UnsignedCheckpoint::new(GW, height, head, position);
        let msg = format!("medgate-checkpoint-v1\n{GW}\n{height}\n{}\n{position}", hex::encode(head));
        let cp = u.sign(1, &key.sign(msg.as_bytes()));
        let bytes = serde_json::to_vec(&cp).unwrap();
        let back = Checkpoint::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &cp);
        prop_assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
        prop_assert_eq!(back.verify(&lookup), Ok(()));
    }

    #[test]
    fn member_cards_and_the_genesis_round_trip(
        members in proptest::collection::btree_map(hospital(), (1u32..100, any::<bool>(), proptest::option::of(socket_addr())), 1..5),
        name in "[A-Za-z][A-Za-z0-9 -]{0,30}",
        created in time(),
    ) {
        let key = Key::new();
        let ledger_b64 = medgate_ledger::keys::b64_encode(&key.spki());
        let cards: Vec<MemberCard> = members
            .into_iter()
            .map(|(hospital_id, (version, sharing, peer_address))| MemberCard {
                hospital_id,
                ledger_public_key: ledger_b64.clone(),
                ledger_key_version: version,
                sharing_public_key: sharing.then(|| RSA_SPKI_B64.to_owned()),
                peer_address,
            })
            .collect();
        for card in &cards {
            prop_assert_eq!(card.check(), Ok(()));
            let bytes = serde_json::to_vec(card).unwrap();
            let back: MemberCard = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, card);
            prop_assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
        }
        let genesis = Genesis::new(&name, &created, cards).unwrap();
        let bytes = genesis.to_bytes().unwrap();
        let (back, hash) = Genesis::parse(&bytes).unwrap();
        prop_assert_eq!(&back, &genesis);
        prop_assert_eq!(back.to_bytes().unwrap(), bytes.clone(), "a written genesis is written again byte for byte");
        let (_, again) = Genesis::parse(&bytes).unwrap();
        prop_assert_eq!(hash, again);
    }
}

/// An RSA-2048 public key (SubjectPublicKeyInfo, base64): a sharing key for member cards.
const RSA_SPKI_B64: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsecIXOHxmwkzRhJtAnENsfBnzCbesa9oMvdoZYKXobc+4n28P039KRRH+z6+A2NoA0UE7BIkFkoyfKBCpSDMHMT03mY7A/7SGClCOHCzwRhCDwONfKnCXE7Uk3v7oxyHRqXj7RYaiw2bCb8FmjiJy7j+fN8/RH70KIM9MWT3QT6crSwhoh2chzst+GYWfdyC782P8YBDRRyuyFV0HPdaqKqXvt9CcYLNcOmQbqRJZ/6RJgR9mUQlMkwZHiEWdS6WSi2EMdEKBamBwm4K+DcD6Xs8xgzILXRuqSym1f644rdyyy9V93ExRYq6l+sdRuiTVBuL3MHAlHwzPLDz5O/jBwIDAQAB";
