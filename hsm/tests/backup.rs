//! Key backup for disaster recovery, and officers' smart cards, against real tokens. SoftHSM2:
//! only the security officer can mark the backup key trusted; keys made after it leave the token
//! only wrapped under it (not under a key of the PIN holder's); a backup restores into a fresh
//! token whose keys open what the old ones wrapped and sign as they did. kryoptic never lets a
//! secret key be trusted, so it cannot hold a backup key, and says so. An officer's card (a
//! SoftHSM token with a P-256 key pair) signs approvals and derives ECDH secrets.

mod common;

use common::{Module, Token};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use medgate_hsm::backup::{install_backup_key, restore, BACKED_UP};
use medgate_hsm::{HsmError, Pin, Role};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

fn so_pin(t: &Token) -> Pin {
    Pin::from_file(&t.so_pin_file()).expect("SO PIN")
}

/// A logged-in session of this test on `t`, outside medgate, as a PIN holder would open one.
fn own_session(t: &Token) -> (cryptoki::context::Pkcs11, cryptoki::session::Session) {
    let p = cryptoki::context::Pkcs11::new(t.module.path()).expect("load");
    let _ = p.initialize(cryptoki::context::CInitializeArgs::new(cryptoki::context::CInitializeFlags::OS_LOCKING_OK));
    let slot = p
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == t.label).unwrap_or(false))
        .expect("token");
    let s = p.open_rw_session(slot).expect("session");
    let _ = s.login(UserType::User, Some(&cryptoki::types::AuthPin::from(t.pin_text())));
    (p, s)
}

#[test]
fn softhsm_backup_restores_into_a_fresh_token_and_the_keys_leave_only_under_the_backup_key() {
    let m = Module::SoftHsm;
    let (src, dst) = (Token::on(m, "backupsrc"), Token::on(m, "backupdst"));
    let (value, id) = ([7u8; 32], [1u8; 16]);
    // Keys made before the backup key stay never extractable. The SO logs in only where no
    // user session of the process is open: the pool is closed first.
    src.open(1).generate(Role::Tls).expect("tls");
    install_backup_key(&m.path(), &src.label, &so_pin(&src), &value, &id).expect("install the backup key");
    let again = install_backup_key(&m.path(), &src.label, &so_pin(&src), &value, &id).expect_err("one backup key");
    assert!(again.to_string().contains("already has a backup key"), "{again}");
    let wrong = install_backup_key(&m.path(), &src.label, &src.pin(), &value, &id).expect_err("the user PIN is not the SO's");
    assert!(matches!(wrong, HsmError::WrongSoPin(_)), "{wrong:?}");
    let hsm = src.open(1);
    assert!(hsm.has_backup_key().expect("backup key"));
    assert_eq!(hsm.backup_key_id().expect("id").as_deref(), Some(hex::encode(id).as_str()));
    for role in BACKED_UP {
        hsm.generate(role).expect("generate");
    }
    for k in hsm.list_keys().expect("list") {
        assert!(k.sensitive, "{k:?}");
        if k.role == Role::Tls {
            assert!(!k.extractable && k.never_extractable && !k.wrap_with_trusted, "{k:?}");
        } else {
            assert!(k.extractable && k.wrap_with_trusted && !k.never_extractable, "{k:?}");
        }
    }
    let wrapped = hsm.wrap_data_key(&[5u8; 32]).expect("wrap");
    let pseudonym = hsm.pseudonym_hmac(b"patient").expect("hmac");
    let (_, ledger_spki) = hsm.public_key_der(Role::Ledger, None).expect("ledger public key");
    let (_, sharing_spki) = hsm.public_key_der(Role::Sharing, None).expect("sharing public key");

    // A PIN holder's own AES key cannot wrap a backed-up key out; the backup key cannot unwrap.
    {
        let (_p, s) = own_session(&src);
        let own = s
            .generate_key(&Mechanism::AesKeyGen, &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Wrap(true), Attribute::Unwrap(true)])
            .expect("a session key of the PIN holder's");
        let kek = s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(b"medgate-kek-v1".to_vec())])
            .expect("find")[0];
        let err = s.wrap_key(&Mechanism::AesKeyWrapPad, own, kek).expect_err("only a trusted key may wrap it");
        assert!(matches!(err, cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::KeyNotWrappable, _)), "{err}");
        let mine_trusted = s.generate_key(&Mechanism::AesKeyGen, &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Trusted(true)]);
        assert!(mine_trusted.is_err(), "a PIN holder made a trusted key");
    }

    let backup = hsm.export_backup().expect("export");
    assert_eq!(backup.len(), 4, "{backup:?}");
    assert!(backup.iter().all(|k| k.role != "tls"));
    drop(hsm);

    // The wrong backup key is refused by the module, and nothing is left behind.
    let err = restore(&m.path(), &dst.label, &dst.pin(), &so_pin(&dst), &[8u8; 32], &id, &backup).expect_err("wrong key");
    assert!(err.to_string().contains("C_UnwrapKey"), "{err}");
    let n = restore(&m.path(), &dst.label, &dst.pin(), &so_pin(&dst), &value, &id, &backup).err();
    assert!(n.is_none(), "{n:?}");
    let restored = dst.open(1);
    assert_eq!(restored.unwrap_data_key(&wrapped).expect("unwrap after restore").as_slice(), &[5u8; 32]);
    assert_eq!(restored.pseudonym_hmac(b"patient").expect("hmac"), pseudonym);
    assert_eq!(restored.public_key_der(Role::Ledger, None).expect("ledger").1, ledger_spki);
    assert_eq!(restored.public_key_der(Role::Sharing, None).expect("sharing").1, sharing_spki);
    let sig = restored.sign_digest(Role::Ledger, &[9u8; 32]).expect("sign");
    assert_eq!(restored.backup_key_id().expect("id").as_deref(), Some(hex::encode(id).as_str()));
    let point = medgate_hsm::p256_spki_point(&ledger_spki).expect("point");
    // The restored ledger key signs as the old one did (verified over the digest's preimage).
    let digest_of = |m: &[u8]| -> [u8; 32] { ring::digest::digest(&ring::digest::SHA256, m).as_ref().try_into().expect("32") };
    let sig2 = restored.sign_digest(Role::Ledger, &digest_of(b"restored")).expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point[..]).verify(b"restored", &sig2.raw).expect("verifies with the old public key");
    assert_eq!(sig.key_version, 1);
    // A second restore into the same token is refused.
    let err = restore(&m.path(), &dst.label, &dst.pin(), &so_pin(&dst), &value, &id, &backup).expect_err("not fresh");
    assert!(err.to_string().contains("fresh token"), "{err}");
}

#[test]
fn kryoptic_cannot_hold_a_backup_key_and_says_so() {
    let m = Module::Kryoptic;
    let t = Token::on(m, "backupsrc");
    let err = install_backup_key(&m.path(), &t.label, &so_pin(&t), &[7u8; 32], &[1u8; 16]).expect_err("kryoptic");
    assert!(matches!(err, HsmError::BackupUnsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("libkryoptic_pkcs11.so") && text.contains("trusted") && text.contains("vendor"), "{text}");
    let hsm = t.open(1);
    assert!(!hsm.has_backup_key().expect("no backup key"));
    hsm.generate(Role::Kek).expect("generate");
    assert!(hsm.list_keys().expect("list").iter().all(|k| k.never_extractable && !k.wrap_with_trusted));
    let err = hsm.export_backup().expect_err("no backup key");
    assert!(err.to_string().contains("backup init"), "{err}");
}

#[test]
fn an_officers_card_signs_and_derives_on_the_card() {
    let m = Module::SoftHsm;
    let t = Token::on(m, "card");
    let key_id = [0x0a, 0x0b];
    {
        let (_p, s) = own_session(&t);
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
                Attribute::Verify(true),
                Attribute::Id(key_id.to_vec()),
            ],
            &[Attribute::Token(true), Attribute::Private(true), Attribute::Sensitive(true), Attribute::Sign(true), Attribute::Derive(true), Attribute::Id(key_id.to_vec())],
        )
        .expect("an officer's key pair on the card");
    }
    let card = medgate_hsm::card::Card::open(&m.path(), &t.label, &key_id, &t.pin()).expect("open the card");
    let point = medgate_hsm::p256_spki_point(card.public_key_der()).expect("P-256");
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, b"approve").as_ref().try_into().expect("32");
    let sig = card.sign_digest(&digest).expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point[..]).verify(b"approve", &sig).expect("verifies");
    // ECDH on the card gives what an ephemeral key computes on the other side.
    let rng = ring::rand::SystemRandom::new();
    let eph = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).expect("eph");
    let eph_pub = eph.compute_public_key().expect("public").as_ref().to_vec();
    let theirs = ring::agreement::agree_ephemeral(eph, &ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, &point[..]), |k| k.to_vec()).expect("agree");
    assert_eq!(card.ecdh(&eph_pub).expect("ecdh on the card").as_slice(), &theirs[..]);
    let wrong = medgate_hsm::card::Card::open(&m.path(), &t.label, &[0xff], &t.pin()).expect_err("no such key");
    assert!(wrong.to_string().contains("CKA_ID ff"), "{wrong}");
}
