//! The HSM boundary against a real SoftHSM2 token.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{module, Token};
use medgate_hsm::{Hsm, HsmError, Role, WrappedKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};
use sha2::{Digest, Sha256};

fn all_roles(hsm: &Hsm) {
    for role in Role::ALL {
        let info = hsm.generate(role).expect("generate");
        assert_eq!((info.role, info.version, info.active), (role, 1, true));
    }
}

/// The P-256 point from a P-256 SubjectPublicKeyInfo (its last 65 bytes).
fn point(spki: &[u8]) -> &[u8] {
    &spki[spki.len() - 65..]
}

#[test]
fn every_generated_key_is_sensitive_and_never_extractable() {
    let t = Token::new("attrs");
    let hsm = t.open(2);
    all_roles(&hsm);
    let keys = hsm.list_keys().expect("list");
    assert_eq!(keys.len(), 5, "{keys:?}");
    let mut ids: Vec<_> = keys.iter().map(|k| k.id_hex.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every key has its own CKA_ID");
    for k in &keys {
        assert!(k.sensitive && k.always_sensitive, "{k:?}");
        assert!(!k.extractable && k.never_extractable, "{k:?}");
        assert!(k.can_create && k.active && !k.retired, "{k:?}");
    }
    // The same facts as the officer's own tool reports them.
    let out = Command::new("pkcs11-tool")
        .args(["--module"])
        .arg(module())
        .args(["--token-label", "attrs", "-O", "--login", "--pin"])
        .arg(t.pin_text())
        .env("SOFTHSM2_CONF", t.dir.join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool (install opensc)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pkcs11-tool -O failed: {}", String::from_utf8_lossy(&out.stderr));
    // One block per object: a header line, then indented attribute lines.
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks.retain(|b| b.starts_with("Private Key") || b.starts_with("Secret Key"));
    assert_eq!(blocks.len(), 5, "{text}");
    for b in &blocks {
        let access = b.lines().find(|l| l.trim_start().starts_with("Access:")).unwrap_or_default();
        assert!(access.contains("sensitive, always sensitive, never extractable"), "{b}");
        assert!(!access.contains(" extractable") || access.contains("never extractable"), "{b}");
    }
}

#[test]
fn signatures_verify_both_ways_with_standard_tools() {
    let t = Token::new("sign");
    let hsm = t.open(2);
    hsm.generate(Role::Ledger).expect("generate");
    let (_, spki) = hsm.public_key_der(Role::Ledger, None).expect("public key");
    let (_, pem) = hsm.public_key_pem(Role::Ledger, None).expect("pem");
    let work = tempfile::tempdir().expect("tmp");
    let msg = b"ledger batch root";
    let digest: [u8; 32] = Sha256::digest(msg).into();

    // medgate signature → ring and openssl
    let sig = hsm.sign_digest(Role::Ledger, &digest).expect("sign");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point(&spki)).verify(msg, &sig.raw).expect("raw verifies");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point(&spki)).verify(msg, &sig.der).expect("der verifies");
    std::fs::write(work.path().join("pub.pem"), &pem).expect("write");
    std::fs::write(work.path().join("msg"), msg).expect("write");
    std::fs::write(work.path().join("sig.der"), &sig.der).expect("write");
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der", "msg"])
        .current_dir(work.path())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A signature over another message must not verify.
    let other: [u8; 32] = Sha256::digest(b"something else").into();
    let bad = hsm.sign_digest(Role::Ledger, &other).expect("sign");
    assert!(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point(&spki)).verify(msg, &bad.raw).is_err());

    // pkcs11-tool signature, selected by CKA_ID → the public key medgate exports
    let id = hsm.list_keys().expect("list").into_iter().find(|k| k.role == Role::Ledger).expect("ledger").id_hex;
    std::fs::write(work.path().join("digest"), digest).expect("write");
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(module())
        .args(["--token-label", "sign", "--login", "--pin"])
        .arg(t.pin_text())
        .args(["--sign", "-m", "ECDSA", "--id", &id, "-i", "digest", "-o", "p11sig"])
        .current_dir(work.path())
        .env("SOFTHSM2_CONF", t.dir.join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool --sign: {}", String::from_utf8_lossy(&out.stderr));
    let p11sig = std::fs::read(work.path().join("p11sig")).expect("read");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point(&spki))
        .verify(msg, &p11sig)
        .expect("pkcs11-tool's signature verifies with medgate's exported key");
}

#[test]
fn data_keys_wrap_unwrap_and_tampering_is_an_integrity_error() {
    let t = Token::new("wrap");
    let hsm = t.open(2);
    hsm.generate(Role::Kek).expect("generate");
    let dk = [7u8; 32];
    let w = hsm.wrap_data_key(&dk).expect("wrap");
    assert_eq!(w.kek_version, 1);
    assert_eq!(w.bytes.len(), 40, "KWP of 32 bytes is 40 bytes");
    assert_ne!(&w.bytes[..32], &dk[..]);
    assert_eq!(hsm.unwrap_data_key(&w).expect("unwrap").as_slice(), &dk);
    let mut bad = w.clone();
    bad.bytes[5] ^= 1;
    assert!(matches!(hsm.unwrap_data_key(&bad), Err(HsmError::Integrity)), "{:?}", hsm.unwrap_data_key(&bad));
    // The KEK may not be used for anything but key wrapping: signing with it is refused.
    assert!(matches!(hsm.sign_digest(Role::Kek, &[0; 32]), Err(HsmError::Invalid(_))));
    assert!(hsm.wrap_data_key(&[1u8; 3]).is_err(), "too short");
}

#[test]
fn rotation_keeps_old_versions_for_unwrap_until_retired() {
    let t = Token::new("rotate");
    let hsm = t.open(2);
    hsm.generate(Role::Kek).expect("generate");
    hsm.generate(Role::Ledger).expect("generate");
    let dk = [9u8; 32];
    let old = hsm.wrap_data_key(&dk).expect("wrap v1");
    assert!(matches!(hsm.generate(Role::Kek), Err(HsmError::Invalid(m)) if m.contains("rotate")));

    let v2 = hsm.rotate(Role::Kek).expect("rotate");
    assert_eq!((v2.version, v2.active), (2, true));
    let new = hsm.wrap_data_key(&dk).expect("wrap v2");
    assert_eq!(new.kek_version, 2);
    assert_eq!(hsm.unwrap_data_key(&old).expect("old still unwraps").as_slice(), &dk);
    let keys = hsm.list_keys().expect("list");
    let v1 = keys.iter().find(|k| k.role == Role::Kek && k.version == 1).expect("v1");
    assert!(!v1.active && !v1.can_create, "the HSM no longer lets v1 wrap: {v1:?}");

    assert!(matches!(hsm.retire(Role::Kek, 2), Err(HsmError::Invalid(m)) if m.contains("active")));
    hsm.retire(Role::Kek, 1).expect("retire v1");
    assert!(matches!(hsm.unwrap_data_key(&old), Err(HsmError::KeyMissing { .. })));
    let keys = hsm.list_keys().expect("list");
    assert!(keys.iter().any(|k| k.label == "medgate-kek-v1-retired" && k.retired));
    assert_eq!(hsm.unwrap_data_key(&new).expect("v2").as_slice(), &dk);

    // Ledger rotation: new signatures use v2, v1's public key stays exportable for verification.
    hsm.rotate(Role::Ledger).expect("rotate ledger");
    let sig = hsm.sign_digest(Role::Ledger, &[1; 32]).expect("sign");
    assert_eq!(sig.key_version, 2);
    assert_eq!(hsm.public_key_der(Role::Ledger, Some(1)).expect("v1 public").0, 1);

    assert!(matches!(hsm.destroy(Role::Kek, 2), Err(HsmError::Invalid(_))), "active key is protected");
    assert_eq!(hsm.destroy(Role::Kek, 1).expect("destroy"), 1);
    assert!(hsm.list_keys().expect("list").iter().all(|k| !(k.role == Role::Kek && k.version == 1)));
    assert!(matches!(hsm.destroy(Role::Kek, 1), Err(HsmError::KeyMissing { .. })));
}

#[test]
fn pseudonyms_are_stable_hmacs_and_random_is_random() {
    let t = Token::new("hmac");
    let hsm = t.open(1);
    assert!(matches!(hsm.pseudonym_hmac(b"x"), Err(HsmError::KeyMissing { role: Role::Pseudonym, .. })));
    hsm.generate(Role::Pseudonym).expect("generate");
    let (v, a) = hsm.pseudonym_hmac(b"urn:oid:1.2.3|12345").expect("hmac");
    let (_, b) = hsm.pseudonym_hmac(b"urn:oid:1.2.3|12345").expect("hmac");
    let (_, c) = hsm.pseudonym_hmac(b"urn:oid:1.2.3|12346").expect("hmac");
    assert_eq!((v, a), (1, b));
    assert_ne!(a, c);
    let r1 = hsm.random(32).expect("random");
    let r2 = hsm.random(32).expect("random");
    assert_eq!(r1.len(), 32);
    assert_ne!(r1, r2);
}

#[test]
fn wrong_pin_is_reported_and_not_retried() {
    let t = Token::new("wrongpin");
    let dir = tempfile::tempdir().expect("tmp");
    let pin_path = dir.path().join("pin");
    std::fs::write(&pin_path, "not-the-pin\n").expect("write");
    std::fs::set_permissions(&pin_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let wrong = medgate_hsm::Pin::from_file(&pin_path).expect("pin");
    let err = Hsm::open(t.config(2), wrong).expect_err("wrong PIN");
    assert!(matches!(err, HsmError::WrongPin), "{err}");
    assert!(err.to_string().contains("rejected the user PIN"), "{err}");
    // The right PIN still works: one failed attempt did not lock the token.
    let hsm = t.open(1);
    hsm.generate(Role::Pseudonym).expect("generate");
}

#[test]
fn missing_module_and_missing_token_are_named() {
    let t = Token::new("missing");
    let mut cfg = t.config(1);
    cfg.module = "/nonexistent/libpkcs11.so".into();
    let err = Hsm::open(cfg, t.pin()).expect_err("no module");
    assert!(err.to_string().contains("/nonexistent/libpkcs11.so"), "{err}");
    let mut cfg = t.config(1);
    cfg.token_label = "no-such-token".into();
    let err = Hsm::open(cfg, t.pin()).expect_err("no token");
    assert!(err.to_string().contains("no-such-token"), "{err}");
}

#[test]
fn pool_serves_many_threads_with_bounded_sessions() {
    let t = Token::new("pool");
    let hsm = Arc::new(t.open(2));
    hsm.generate(Role::Kek).expect("generate");
    hsm.generate(Role::Ledger).expect("generate");
    let threads: Vec<_> = (0..6u8)
        .map(|i| {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                for j in 0..50u8 {
                    let dk = [i ^ j; 32];
                    let w: WrappedKey = hsm.wrap_data_key(&dk).expect("wrap");
                    assert_eq!(hsm.unwrap_data_key(&w).expect("unwrap").as_slice(), &dk);
                    hsm.sign_digest(Role::Ledger, &[j; 32]).expect("sign");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("thread");
    }
    let stats = hsm.stats();
    let ops: u64 = stats.ops.iter().filter(|(k, _)| ["wrap", "unwrap", "sign"].contains(k)).map(|(_, n)| n).sum();
    assert_eq!(ops, 6 * 50 * 3);
    assert!(stats.pool_waits > 0, "six threads on two sessions must have waited: {stats:?}");
    assert_eq!(stats.errors.iter().map(|(_, n)| n).sum::<u64>(), 0, "{stats:?}");
}

#[test]
fn tls_signing_key_signs_inside_the_hsm() {
    use rustls::sign::SigningKey;
    let t = Token::new("tls");
    let hsm = Arc::new(t.open(1));
    hsm.generate(Role::Tls).expect("generate");
    let key = medgate_hsm::tls::HsmSigningKey::new(hsm.clone()).expect("signing key");
    assert!(key.choose_scheme(&[rustls::SignatureScheme::ED25519]).is_none());
    let signer = key.choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256]).expect("p256");
    let sig = signer.sign(b"transcript").expect("sign");
    let spki = key.public_key().expect("spki");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point(spki.as_ref())).verify(b"transcript", &sig).expect("verifies");
}

#[test]
fn a_data_key_rewrapped_for_a_sharing_key_unwraps_to_the_same_bytes() {
    let t = Token::new("sharing");
    let hsm = t.open(1);
    hsm.generate(Role::Kek).expect("kek");
    hsm.generate(Role::Sharing).expect("sharing");
    let dk = [0x5au8; 32];
    let wrapped = hsm.wrap_data_key(&dk).expect("wrap");
    let (_, spki) = hsm.public_key_der(Role::Sharing, None).expect("sharing public key");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("RSA SPKI");
    assert_eq!(n.len(), 384, "RSA-3072");
    let blob = hsm.rewrap_for_peer(&wrapped, &n, &e).expect("rewrap");
    assert_eq!(blob.len(), 384);
    assert!(!blob.windows(32).any(|w| w == dk), "the data key travels encrypted");
    assert_eq!(hsm.unwrap_shared(&blob).expect("unwrap").as_slice(), &dk);
    let mut bad = blob.clone();
    bad[10] ^= 1;
    assert!(matches!(hsm.unwrap_shared(&bad), Err(medgate_hsm::HsmError::Integrity)), "an altered blob is an integrity error");
}

#[test]
fn the_shared_pseudonym_key_imports_once_and_gives_the_same_pseudonyms() {
    let t = Token::new("pseudoimport");
    let hsm = t.open(1);
    let info = hsm.import_pseudonym_key(&[7u8; 32]).expect("import");
    assert_eq!(info.version, 1);
    let (_, mac) = hsm.pseudonym_hmac(b"urn:oid:1.2|42").expect("hmac");
    // HMAC-SHA256 with key 0x07 * 32, computed in process: the same key gives the same pseudonym.
    let expected = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]), b"urn:oid:1.2|42");
    assert_eq!(mac.as_slice(), expected.as_ref());
    assert!(hsm.import_pseudonym_key(&[8u8; 32]).is_err(), "a second import must be refused");
    let keys = hsm.list_keys().expect("list");
    let k = keys.iter().find(|k| k.role == Role::Pseudonym).expect("listed");
    assert!(k.sensitive && !k.extractable, "{k:?}");
}

#[test]
fn rewrap_moves_a_data_key_to_the_active_kek_so_the_old_version_can_be_destroyed() {
    let t = Token::new("rewrap");
    let hsm = t.open(2);
    hsm.generate(Role::Kek).expect("generate");
    let dk = [0x3cu8; 32];
    let v1 = hsm.wrap_data_key(&dk).expect("wrap");
    assert_eq!(v1.kek_version, 1);
    // Under the active version already: nothing to do, no HSM work.
    assert_eq!(hsm.rewrap_data_key(&v1).expect("rewrap"), v1);

    assert_eq!(hsm.rotate(Role::Kek).expect("rotate").version, 2);
    let v2 = hsm.rewrap_data_key(&v1).expect("rewrap");
    assert_eq!(v2.kek_version, 2);
    assert_ne!(v2.bytes, v1.bytes);
    assert!(!v2.bytes.windows(32).any(|w| w == dk), "the data key stays wrapped");
    assert_eq!(hsm.unwrap_data_key(&v2).expect("unwrap").as_slice(), &dk);

    let mut bad = v1.clone();
    bad.bytes[3] ^= 1;
    assert!(matches!(hsm.rewrap_data_key(&bad), Err(HsmError::Integrity)), "{:?}", hsm.rewrap_data_key(&bad));

    assert_eq!(hsm.destroy(Role::Kek, 1).expect("destroy v1"), 1);
    assert!(matches!(hsm.unwrap_data_key(&v1), Err(HsmError::KeyMissing { role: Role::Kek, .. })));
    assert!(matches!(hsm.rewrap_data_key(&v1), Err(HsmError::KeyMissing { role: Role::Kek, .. })));
    assert_eq!(hsm.unwrap_data_key(&v2).expect("still readable under v2").as_slice(), &dk);
}

#[test]
fn wraps_keep_working_while_the_kek_rotates_under_them() {
    let t = Token::new("rotatewhilewrapping");
    // Two pools on one token: `other` rotates (as the officer's console would), so `hsm` keeps a
    // cached handle of a version that may no longer wrap.
    let hsm = Arc::new(t.open(2));
    let other = t.open(1);
    hsm.generate(Role::Kek).expect("generate");
    assert_eq!(hsm.wrap_data_key(&[1u8; 32]).expect("wrap").kek_version, 1);
    assert_eq!(other.rotate(Role::Kek).expect("rotate").version, 2);
    let w = hsm.wrap_data_key(&[2u8; 32]).expect("a wrap after a rotation elsewhere still works");
    assert_eq!(w.kek_version, 2, "and uses the version that is active now");

    // Rotations in the pool itself while threads wrap: no wrap fails, every key unwraps. Each
    // rotation waits until both threads have wrapped since the one before, and the threads stop
    // only once both have wrapped after the last.
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
    let stop = Arc::new(AtomicBool::new(false));
    let wrapped: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let threads: Vec<_> = (0..2u8)
        .map(|i| {
            let (hsm, stop, wrapped) = (hsm.clone(), stop.clone(), wrapped.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(SeqCst) {
                    let dk = [i.wrapping_add(n as u8); 32];
                    let w = hsm.wrap_data_key(&dk).expect("wrap during rotation");
                    assert_eq!(hsm.unwrap_data_key(&w).expect("unwrap").as_slice(), &dk);
                    n += 1;
                    wrapped[usize::from(i)].store(n, SeqCst);
                }
                n
            })
        })
        .collect();
    // (A thread that stopped has failed: its join below says how.)
    let wrapped_since = |seen: [u32; 2]| {
        while wrapped.iter().zip(seen).any(|(w, s)| w.load(SeqCst) < s + 5) && !threads.iter().any(|t| t.is_finished()) {
            std::thread::yield_now();
        }
        [wrapped[0].load(SeqCst), wrapped[1].load(SeqCst)]
    };
    let mut seen = wrapped_since([0, 0]);
    for _ in 0..3 {
        hsm.rotate(Role::Kek).expect("rotate");
        seen = wrapped_since(seen);
    }
    stop.store(true, SeqCst);
    for th in threads {
        assert!(th.join().expect("thread") >= 20);
    }
    assert_eq!(hsm.wrap_data_key(&[9u8; 32]).expect("wrap").kek_version, 5);
}
