//! The test cases, each a function of the module it runs on; `tests/modules.rs` runs them on
//! SoftHSM2 and kryoptic, `tests/opencryptoki.rs` those that fit openCryptoki's reduced profile.

use std::process::Command;
use std::sync::Arc;

use super::{Module, Token};
use medgate_hsm::{Hsm, HsmError, HsmOptions, Role, RoleStatus, WrappedKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};
use sha2::{Digest, Sha256};

fn all_roles(hsm: &Hsm) {
    for role in Role::ALL {
        let info = hsm.generate(role).expect("generate");
        assert_eq!((info.role, info.version, info.active), (role, 1, true));
    }
}

/// A tampered wrapped key is an integrity error: SoftHSM says CKR_GENERAL_ERROR (read as
/// integrity), kryoptic CKR_DEVICE_ERROR, which medgate reports as it is, never as a lost HSM.
fn assert_tampered(m: Module, err: &HsmError) {
    assert!(err.is_integrity(), "{m:?}: {err:?}");
    let text = err.to_string();
    assert!(text.contains("integrity"), "{text}");
    assert!(!matches!(err, HsmError::Unavailable(_)), "{text}");
    if m == Module::Kryoptic {
        assert!(text.contains("could not unwrap") && text.contains("CKR_DEVICE_ERROR") && text.contains("kek"), "{text}");
    }
}

/// The P-256 point from a P-256 SubjectPublicKeyInfo (its last 65 bytes).
fn point(spki: &[u8]) -> &[u8] {
    &spki[spki.len() - 65..]
}

pub fn every_generated_key_is_sensitive_and_never_extractable(m: Module) {
    let t = Token::on(m, "attrs");
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
        .arg(m.path())
        .args(["--token-label", "attrs", "-O", "--login", "--pin"])
        .arg(t.pin_text())
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

pub fn signatures_verify_both_ways_with_standard_tools(m: Module) {
    let t = Token::on(m, "sign");
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
        .arg(m.path())
        .args(["--token-label", "sign", "--login", "--pin"])
        .arg(t.pin_text())
        .args(["--sign", "-m", "ECDSA", "--id", &id, "-i", "digest", "-o", "p11sig"])
        .current_dir(work.path())
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool --sign: {}", String::from_utf8_lossy(&out.stderr));
    let p11sig = std::fs::read(work.path().join("p11sig")).expect("read");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point(&spki))
        .verify(msg, &p11sig)
        .expect("pkcs11-tool's signature verifies with medgate's exported key");
}

/// RFC 5649 KEK versions (chosen by configuration); AES-GCM, the default where the module
/// offers it, in `aes_gcm_wrapping_round_trips_and_detects_tampering`.
pub fn data_keys_wrap_unwrap_and_tampering_is_an_integrity_error(m: Module) {
    let t = Token::on(m, "wrap");
    let hsm = Hsm::open_with(t.config(2), t.pin(), HsmOptions { kek_rfc5649: true, ..HsmOptions::default() }).expect("open");
    hsm.generate(Role::Kek).expect("generate");
    let dk = [7u8; 32];
    let w = hsm.wrap_data_key(&dk).expect("wrap");
    assert_eq!(w.kek_version, 1);
    assert_eq!(w.bytes.len(), 40, "KWP of 32 bytes is 40 bytes");
    assert_ne!(&w.bytes[..32], &dk[..]);
    assert_eq!(hsm.unwrap_data_key(&w).expect("unwrap").as_slice(), &dk);
    let mut bad = w.clone();
    bad.bytes[5] ^= 1;
    let err = hsm.unwrap_data_key(&bad).expect_err("tampered");
    assert_tampered(m, &err);
    // The KEK may not be used for anything but key wrapping: signing with it is refused.
    assert!(matches!(hsm.sign_digest(Role::Kek, &[0; 32]), Err(HsmError::Invalid(_))));
    assert!(hsm.wrap_data_key(&[1u8; 3]).is_err(), "too short");
}

pub fn rotation_keeps_old_versions_for_unwrap_until_retired(m: Module) {
    let t = Token::on(m, "rotate");
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

pub fn pseudonyms_are_stable_hmacs_and_random_is_random(m: Module) {
    let t = Token::on(m, "hmac");
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

pub fn wrong_pin_is_reported_and_not_retried(m: Module) {
    let t = Token::on(m, "wrongpin");
    let dir = tempfile::tempdir().expect("tmp");
    let pin_path = dir.path().join("pin");
    // Eight characters: a length every module takes (openCryptoki: 4 to 8, kryoptic: 8 or more).
    std::fs::write(&pin_path, "00000000\n").expect("write");
    std::fs::set_permissions(&pin_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let wrong = medgate_hsm::Pin::from_file(&pin_path).expect("pin");
    let err = Hsm::open(t.config(2), wrong).expect_err("wrong PIN");
    assert!(matches!(err, HsmError::WrongPin), "{err}");
    assert!(err.to_string().contains("rejected the user PIN"), "{err}");
    // The right PIN still works: one failed attempt did not lock the token.
    let hsm = t.open(1);
    hsm.generate(Role::Pseudonym).expect("generate");
}

pub fn missing_module_and_missing_token_are_named(m: Module) {
    let t = Token::on(m, "missing");
    let mut cfg = t.config(1);
    cfg.module = "/nonexistent/libpkcs11.so".into();
    let err = Hsm::open(cfg, t.pin()).expect_err("no module");
    assert!(err.to_string().contains("/nonexistent/libpkcs11.so"), "{err}");
    let mut cfg = t.config(1);
    cfg.token_label = "no-such-token".into();
    let err = Hsm::open(cfg, t.pin()).expect_err("no token");
    assert!(err.to_string().contains("no-such-token"), "{err}");
}

pub fn pool_serves_many_threads_with_bounded_sessions(m: Module) {
    let t = Token::on(m, "pool");
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

pub fn tls_signing_key_signs_inside_the_hsm(m: Module) {
    use rustls::sign::SigningKey;
    let t = Token::on(m, "tls");
    let hsm = Arc::new(t.open(1));
    hsm.generate(Role::Tls).expect("generate");
    let key = medgate_hsm::tls::HsmSigningKey::new(hsm.clone()).expect("signing key");
    assert!(key.choose_scheme(&[rustls::SignatureScheme::ED25519]).is_none());
    let signer = key.choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256]).expect("p256");
    let sig = signer.sign(b"transcript").expect("sign");
    let spki = key.public_key().expect("spki");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point(spki.as_ref())).verify(b"transcript", &sig).expect("verifies");
}

pub fn a_data_key_rewrapped_for_a_sharing_key_unwraps_to_the_same_bytes(m: Module) {
    let t = Token::on(m, "sharing");
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
    let err = hsm.unwrap_shared(&bad).expect_err("an altered blob");
    assert!(err.is_integrity(), "an altered blob is an integrity error: {err:?}");
}

/// The transport count of an HSM's statistics (`made` or `received`).
fn transport_count(hsm: &Hsm, event: &str) -> u64 {
    hsm.stats().transport_keys.iter().find(|(k, _)| *k == event).map(|(_, n)| *n).expect("transport counter")
}

/// Seals `dks` at `sender` for `receiver`'s sharing key and opens them at `receiver`: one
/// transport key is made and unwrapped for all of them; altered blobs, seals and contexts are
/// integrity errors.
fn transport_round_trip(sender: &Hsm, receiver: &Hsm, receiver_module: Module) {
    assert!(sender.makes_transport_keys() && receiver.receives_transport_keys());
    let (_, spki) = receiver.public_key_der(Role::Sharing, None).expect("spki");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("rsa");
    let (made, received) = (transport_count(sender, "made"), transport_count(receiver, "received"));
    let dks: Vec<[u8; 32]> = (0u8..3).map(|i| [0x40 + i; 32]).collect();
    let mut wraps = Vec::new();
    for (i, dk) in dks.iter().enumerate() {
        let wrapped = sender.wrap_data_key(dk).expect("wrap");
        let context = format!("record-{i}");
        let w = sender.share_with_peer(&wrapped, &n, &e, context.as_bytes()).expect("seal for the peer");
        let transport = w.transport.expect("an AES-GCM KEK: under a transport key");
        assert!(!w.key.windows(32).any(|x| x == dk) && !transport.windows(32).any(|x| x == dk), "the data key travels encrypted");
        wraps.push((context, transport, w.key));
    }
    assert!(wraps.iter().all(|(_, t, _)| *t == wraps[0].1), "one transport key for the peer");
    assert_eq!(wraps[0].1.len(), 384, "wrapped under RSA-3072");
    assert_eq!(transport_count(sender, "made"), made + 1);
    assert!(sender.transport_keys_locked().expect("attributes"), "the transport key is sensitive, no longer extractable, for AES-GCM only");
    for ((context, transport, sealed), dk) in wraps.iter().zip(&dks) {
        assert_eq!(receiver.open_from_peer("custodian", transport, sealed, context.as_bytes()).expect("open").as_slice(), dk);
    }
    assert_eq!(transport_count(receiver, "received"), received + 1, "unwrapped once, then kept");
    assert!(receiver.transport_keys_locked().expect("attributes"), "the received transport key is sensitive, never extractable, for AES-GCM only");
    let (context, transport, sealed) = &wraps[0];
    let err = receiver.open_from_peer("custodian", transport, sealed, b"record-other").expect_err("another record's context");
    assert!(err.is_integrity(), "{err:?}");
    let mut bad = sealed.clone();
    bad[20] ^= 1;
    let err = receiver.open_from_peer("custodian", transport, &bad, context.as_bytes()).expect_err("an altered seal");
    assert!(err.is_integrity(), "{err:?}");
    let mut bad = transport.clone();
    bad[10] ^= 1;
    let err = receiver.open_from_peer("custodian", &bad, sealed, context.as_bytes()).expect_err("an altered transport key");
    assert!(err.is_integrity(), "{err:?}");
    // A key of another size, wrapped for the sharing key as a transport key would be: an
    // integrity error. Kept only where the module cannot tell its length (SoftHSM2 refuses
    // CKA_VALUE_LEN in an unwrap template and reports 0), and there it opens nothing.
    for len in [16usize, 24] {
        let odd = sender.rewrap_for_peer(&sender.wrap_data_key(&vec![0x11; len]).expect("wrap"), &n, &e).expect("rewrap");
        let err = receiver.open_from_peer("custodian", &odd, sealed, context.as_bytes()).expect_err("not an AES-256 key");
        assert!(err.is_integrity(), "{len} bytes: {err:?}");
    }
    let kept = if receiver_module == Module::SoftHsm { 2 } else { 0 };
    assert_eq!(transport_count(receiver, "received"), received + 1 + kept, "keys of another size");
}

/// A custodian seals data keys for a requester under one transport key; the requester unwraps
/// it once with its sharing key and opens every data key with it, and again after a restart.
pub fn data_keys_travel_to_a_peer_under_one_transport_key(m: Module) {
    let (send_token, recv_token) = (Token::on(m, "tsend"), Token::on(m, "trecv"));
    let sender = send_token.open(2);
    sender.generate(Role::Kek).expect("kek");
    sender.generate(Role::Sharing).expect("sender's sharing key");
    let receiver = recv_token.open(2);
    receiver.generate(Role::Sharing).expect("sharing");
    transport_round_trip(&sender, &receiver, m);
    // A restarted requester has no transport key: it unwraps the blob again.
    let (_, spki) = receiver.public_key_der(Role::Sharing, None).expect("spki");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("rsa");
    let dk = [0x99u8; 32];
    let w = sender.share_with_peer(&sender.wrap_data_key(&dk).expect("wrap"), &n, &e, b"again").expect("seal");
    drop(receiver);
    let restarted = recv_token.open(1);
    assert_eq!(restarted.open_from_peer("custodian", w.transport.as_ref().expect("transport"), &w.key, b"again").expect("open after a restart").as_slice(), &dk);
    assert_eq!(transport_count(&restarted, "received"), 1);
    // A site that keeps data keys inside the HSM (RFC 5649 KEK): no transport key, the data key
    // itself is wrapped for the sharing key, as before.
    drop(sender);
    let rfc5649 = Hsm::open_with(send_token.config(1), send_token.pin(), HsmOptions { kek_rfc5649: true, ..HsmOptions::default() }).expect("open");
    rfc5649.rotate(Role::Kek).expect("an RFC 5649 KEK version");
    let w = rfc5649.share_with_peer(&rfc5649.wrap_data_key(&dk).expect("wrap"), &n, &e, b"kept").expect("share");
    assert_eq!(w.transport, None);
    assert_eq!(restarted.unwrap_shared(&w.key).expect("unwrap").as_slice(), &dk);
    assert_eq!(transport_count(&rfc5649, "made"), 0);
}

/// The limits of transport keys, reached without waiting: the custodian replaces its key after
/// `max_uses` seals or at `max_age`; the requester keeps at most `received_per_peer` keys of one
/// custodian and `received_max` in all, the least recently used going first, and forgets a key
/// no grant carried for `idle` (each forgotten key is unwrapped again when it comes back).
pub fn transport_keys_are_replaced_and_forgotten_at_their_limits(m: Module) {
    use medgate_hsm::TransportLimits;
    use std::time::Duration;
    let (send_token, recv_token) = (Token::on(m, "tlsend"), Token::on(m, "tlrecv"));
    let limits = |l: TransportLimits| HsmOptions { transport: l, ..HsmOptions::default() };
    let sender = Hsm::open_with(send_token.config(1), send_token.pin(), limits(TransportLimits { max_uses: 2, ..TransportLimits::default() })).expect("open");
    sender.generate(Role::Kek).expect("kek");
    sender.generate(Role::Sharing).expect("sender's sharing key");
    let receiver =
        Hsm::open_with(recv_token.config(1), recv_token.pin(), limits(TransportLimits { received_per_peer: 2, received_max: 3, ..TransportLimits::default() })).expect("open");
    receiver.generate(Role::Sharing).expect("sharing");
    let (_, spki) = receiver.public_key_der(Role::Sharing, None).expect("spki");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("rsa");
    let dk = [0x5au8; 32];
    let wrapped = sender.wrap_data_key(&dk).expect("wrap");
    let seal = |hsm: &Hsm, context: &str| {
        let w = hsm.share_with_peer(&wrapped, &n, &e, context.as_bytes()).expect("seal");
        (w.transport.expect("a transport key"), w.key, context.to_owned())
    };

    // Two seals per key: the third seal comes under a new one.
    let seals: Vec<_> = (0..3).map(|i| seal(&sender, &format!("uses-{i}"))).collect();
    assert_eq!(seals[0].0, seals[1].0);
    assert_ne!(seals[1].0, seals[2].0, "a new transport key after max_uses seals");
    assert_eq!(transport_count(&sender, "made"), 2);
    // An hour (here: no time at all) ends a key however little it sealed.
    drop(sender);
    let hourly = Hsm::open_with(send_token.config(1), send_token.pin(), limits(TransportLimits { max_age: Duration::ZERO, ..TransportLimits::default() })).expect("open");
    let (a, b) = (seal(&hourly, "age-0"), seal(&hourly, "age-1"));
    assert_ne!(a.0, b.0, "a new transport key once max_age has passed");
    assert_eq!(transport_count(&hourly, "made"), 2);

    // Every seal of `hourly` brings a new transport key: the requester's side of the limits.
    let received = || transport_count(&receiver, "received");
    let open = |from: &str, s: &(Vec<u8>, Vec<u8>, String)| {
        assert_eq!(receiver.open_from_peer(from, &s.0, &s.1, s.2.as_bytes()).expect("open").as_slice(), &dk);
    };
    let keys: Vec<_> = (0..4).map(|i| seal(&hourly, &format!("key-{i}"))).collect();
    let (k0, k1, k2, k3) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    open("b", k0);
    open("a", k1);
    open("a", k2);
    assert_eq!(received(), 3, "three keys unwrapped");
    open("a", k2);
    assert_eq!(received(), 3, "and kept");
    // A third key from custodian a pushes out a's least recently used (k1), not b's k0, though
    // k0 is the least recently used of all.
    open("a", k3);
    assert_eq!(received(), 4);
    open("b", k0);
    assert_eq!(received(), 4, "another custodian's key stays");
    open("a", k2);
    assert_eq!(received(), 4, "a's more recently used key stays");
    open("a", k1);
    assert_eq!(received(), 5, "a's least recently used key was forgotten and is unwrapped again");
    // Three in all (now k0, k2, k1, least recently used first): a key from custodian c pushes
    // out the least recently used of all, b's k0.
    let k4 = seal(&hourly, "key-4");
    open("c", &k4);
    assert_eq!(received(), 6);
    for (from, k) in [("a", k1), ("a", k2), ("c", &k4)] {
        open(from, k);
    }
    assert_eq!(received(), 6, "the three most recently used stay");
    open("b", k0);
    assert_eq!(received(), 7, "the least recently used of all was forgotten");
    drop(receiver);

    // A key no grant carried for `idle` is destroyed at the next look (here: every call).
    let forgetful = Hsm::open_with(recv_token.config(1), recv_token.pin(), limits(TransportLimits { idle: Duration::ZERO, sweep_every: Duration::ZERO, ..TransportLimits::default() }))
        .expect("open");
    for expected in 1..=2 {
        assert_eq!(forgetful.open_from_peer("a", &k0.0, &k0.1, k0.2.as_bytes()).expect("open").as_slice(), &dk);
        assert_eq!(transport_count(&forgetful, "received"), expected, "unwrapped again after it was swept");
    }
}

pub fn the_shared_pseudonym_key_imports_once_and_gives_the_same_pseudonyms(m: Module) {
    let t = Token::on(m, "pseudoimport");
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

/// With RFC 5649 KEK versions (chosen by configuration) the data key never leaves the HSM on
/// its way from one version to the next; the AES-GCM default is covered below.
pub fn rewrap_moves_a_data_key_to_the_active_kek_so_the_old_version_can_be_destroyed(m: Module) {
    let t = Token::on(m, "rewrap");
    let hsm = Hsm::open_with(t.config(2), t.pin(), HsmOptions { kek_rfc5649: true, ..HsmOptions::default() }).expect("open");
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
    assert_tampered(m, &hsm.rewrap_data_key(&bad).expect_err("tampered"));

    assert_eq!(hsm.destroy(Role::Kek, 1).expect("destroy v1"), 1);
    assert!(matches!(hsm.unwrap_data_key(&v1), Err(HsmError::KeyMissing { role: Role::Kek, .. })));
    assert!(matches!(hsm.rewrap_data_key(&v1), Err(HsmError::KeyMissing { role: Role::Kek, .. })));
    assert_eq!(hsm.unwrap_data_key(&v2).expect("still readable under v2").as_slice(), &dk);
}

pub fn wraps_keep_working_while_the_kek_rotates_under_them(m: Module) {
    let t = Token::on(m, "rotatewhilewrapping");
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

pub fn readiness_and_the_probe_report_follow_the_keys(m: Module) {
    let t = Token::on(m, "ready");
    let hsm = t.open(1);
    let before = hsm.readiness().expect("readiness");
    assert!(before.iter().all(|s| matches!(s, RoleStatus::NoKey { .. })), "{before:?}");
    hsm.ping().expect("no keys yet is not a failure");
    all_roles(&hsm);
    hsm.ping().expect("every role ready");
    // Both modules offer AES-GCM, which new KEK versions use first (two calls per data key).
    let kek = "CKM_AES_GCM (0x1087)";
    let after = hsm.readiness().expect("readiness");
    assert_eq!(after.len(), 5);
    for s in &after {
        let RoleStatus::Ready { role, version, mechanism } = s else { panic!("{s:?}") };
        assert_eq!(*version, 1);
        let want = match role {
            Role::Ledger | Role::Tls => "CKM_ECDSA (0x1041)",
            Role::Kek => kek,
            Role::Sharing => "CKM_RSA_PKCS_OAEP (0x9)",
            Role::Pseudonym => "CKM_SHA256_HMAC (0x251)",
        };
        assert_eq!(mechanism, want, "{role}");
    }
    let report = hsm.probe_report().expect("probe");
    assert!(report.refusals().is_empty(), "{:?}", report.refusals());
    let text = report.to_string();
    assert!(text.contains(&format!("token \"{}\"", t.label)), "{text}");
    assert!(text.contains("key templates: full"), "{text}");
    assert!(text.contains(&format!("v1 ready ({kek})")), "{text}");
    for role in Role::ALL {
        assert!(text.lines().any(|l| l.trim_start().starts_with(role.as_str()) && l.contains(" yes ")), "{role}: {text}");
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    let roles = json["roles"].as_array().expect("roles");
    assert_eq!(roles.len(), 5);
    assert!(roles.iter().all(|r| r["supported"] == true && r["key"]["state"] == "ready"), "{json}");
    assert_eq!(json["template"]["allowed_mechanisms"]["status"], "accepted");
    let slot = json["token_slot"].as_u64().expect("slot");
    let ours = json["slots"].as_array().expect("slots").iter().find(|s| s["id"] == slot).expect("our slot");
    assert!(ours["mechanisms"].as_array().expect("mechanisms").iter().any(|x| x["name"] == kek && x["flags"].as_array().is_some_and(|f| f.contains(&"encrypt".into()))), "{ours}");
}

pub fn aes_gcm_wrapping_round_trips_and_detects_tampering(m: Module) {
    let t = Token::on(m, "gcm");
    let hsm = Hsm::open_with(t.config(1), t.pin(), HsmOptions { kek_aes_gcm: true, ..HsmOptions::default() }).expect("open");
    hsm.generate(Role::Kek).expect("generate");
    hsm.generate(Role::Sharing).expect("sharing");
    let status = hsm.readiness().expect("readiness");
    assert!(status.contains(&RoleStatus::Ready { role: Role::Kek, version: 1, mechanism: "CKM_AES_GCM (0x1087)".into() }), "{status:?}");
    let dk = [0x42u8; 32];
    let w = hsm.wrap_data_key(&dk).expect("wrap");
    assert_eq!(w.bytes.len(), 1 + 12 + 32 + 16, "format byte, IV, ciphertext, tag");
    assert_eq!(w.bytes[0], 1);
    assert!(!w.bytes.windows(32).any(|x| x == dk));
    assert_ne!(hsm.wrap_data_key(&dk).expect("wrap").bytes, w.bytes, "a fresh IV each time");
    assert_eq!(hsm.unwrap_data_key(&w).expect("unwrap").as_slice(), &dk);
    for at in [0, 5, 20, w.bytes.len() - 1] {
        let mut bad = w.clone();
        bad.bytes[at] ^= 1;
        let err = hsm.unwrap_data_key(&bad).expect_err("tampered");
        assert!(err.is_integrity(), "byte {at}: {err:?}");
    }
    // The KEK version is bound in the AAD: the same blob claimed for another version fails.
    hsm.rotate(Role::Kek).expect("rotate");
    let relabelled = WrappedKey { kek_version: 2, bytes: w.bytes.clone() };
    assert!(hsm.unwrap_data_key(&relabelled).expect_err("wrong version").is_integrity());
    assert_eq!(hsm.unwrap_data_key(&w).expect("v1 still unwraps").as_slice(), &dk);
    let v2 = hsm.rewrap_data_key(&w).expect("rewrap");
    assert_eq!(v2.kek_version, 2);
    assert_eq!(hsm.unwrap_data_key(&v2).expect("v2").as_slice(), &dk);
    // Sharing works from an AES-GCM KEK too.
    let (_, spki) = hsm.public_key_der(Role::Sharing, None).expect("spki");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("rsa");
    let blob = hsm.rewrap_for_peer(&v2, &n, &e).expect("rewrap for peer");
    assert_eq!(hsm.unwrap_shared(&blob).expect("unwrap shared").as_slice(), &dk);
}

/// A KEK restricted to a mechanism medgate cannot use on this module, as an older medgate made
/// one on kryoptic (CKM_AES_KEY_WRAP_PAD, which kryoptic lacks): readiness turns red and says
/// why, wraps fail naming the role and the mechanism, a rotation on this module repairs it.
pub fn a_kek_the_module_cannot_use_turns_readiness_red_until_rotated(m: Module) {
    use cryptoki::mechanism::{Mechanism, MechanismType};
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let t = Token::on(m, "legacykek");
    let hsm = t.open(1);
    // Made directly through PKCS#11: medgate itself no longer makes such a key.
    let restricted = match m {
        Module::Kryoptic => MechanismType::AES_KEY_WRAP_PAD,
        _ => MechanismType::AES_KEY_WRAP,
    };
    {
        let p = cryptoki::context::Pkcs11::new(m.path()).expect("load");
        let _ = p.initialize(cryptoki::context::CInitializeArgs::new(cryptoki::context::CInitializeFlags::OS_LOCKING_OK));
        let slot = p
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == t.label).unwrap_or(false))
            .expect("token");
        let s = p.open_rw_session(slot).expect("session");
        let _ = s.login(cryptoki::session::UserType::User, Some(&cryptoki::types::AuthPin::from(t.pin_text())));
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Label(b"medgate-kek-v1".to_vec()),
                Attribute::Id(vec![7; 16]),
                Attribute::AllowedMechanisms(vec![restricted]),
            ],
        )
        .expect("legacy KEK");
    }
    hsm.refresh_keys();
    let err = hsm.ping().expect_err("readiness must be red");
    let text = err.to_string();
    assert!(matches!(err, HsmError::KeyUnusable { role: Role::Kek, .. }), "{err:?}");
    assert!(text.contains("kek") && text.contains(&format!("(0x{:x})", u64::from(restricted))) && text.contains("rotate"), "{text}");
    let err = hsm.wrap_data_key(&[1u8; 32]).expect_err("cannot wrap");
    assert!(err.to_string().contains("kek") && err.to_string().contains("CKA_ALLOWED_MECHANISMS"), "{err}");
    assert_eq!(hsm.rotate(Role::Kek).expect("rotate").version, 2);
    hsm.ping().expect("green after the rotation");
    assert_eq!(hsm.wrap_data_key(&[1u8; 32]).expect("wrap").kek_version, 2);
}

/// openCryptoki 3.8's soft token has no elliptic curves and neither RFC 5649 nor AES-GCM: the
/// ledger, tls and kek roles are refused with an error naming the module, the role and the
/// mechanisms, before anything is created; the sharing and pseudonym keys work, with the
/// template attributes the module rejects left out.
pub fn opencryptoki_refuses_ledger_tls_and_kek_and_holds_the_rest(m: Module) {
    let t = Token::on(m, "any");
    let hsm = t.open(1);
    for (role, mechanism) in [(Role::Ledger, "CKM_EC_KEY_PAIR_GEN (0x1040)"), (Role::Tls, "CKM_ECDSA (0x1041)"), (Role::Kek, "CKM_AES_KEY_WRAP_KWP (0x210b)")] {
        let err = hsm.generate(role).expect_err("refused");
        assert!(matches!(err, HsmError::RoleUnsupported { role: r, .. } if r == role), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("libopencryptoki.so") && text.contains(&format!("the {role} key")) && text.contains(mechanism), "{text}");
    }
    assert!(matches!(hsm.sign_digest(Role::Ledger, &[0; 32]), Err(HsmError::RoleUnsupported { role: Role::Ledger, .. })));
    assert!(matches!(hsm.wrap_data_key(&[0; 32]), Err(HsmError::RoleUnsupported { role: Role::Kek, .. })));
    assert!(hsm.list_keys().expect("list").is_empty(), "nothing was created");
    assert!(matches!(hsm.ping(), Err(HsmError::RoleUnsupported { .. })), "readiness is red: the gateway needs every role");

    hsm.generate(Role::Pseudonym).expect("pseudonym");
    hsm.generate(Role::Sharing).expect("sharing");
    for k in hsm.list_keys().expect("list") {
        assert!(k.sensitive && k.always_sensitive && !k.extractable && k.never_extractable && k.can_create, "{k:?}");
    }
    let report = hsm.probe_report().expect("probe");
    let text = report.to_string();
    for attr in ["CKA_ALLOWED_MECHANISMS left out", "CKA_COPYABLE left out", "CKA_DESTROYABLE left out"] {
        assert!(text.contains(attr), "{text}");
    }
    assert!(report.problems.iter().any(|p| p.contains("cryptoki cannot parse the token information")), "{:?}", report.problems);
    let refused: Vec<Role> = report.refusals().iter().filter_map(|e| match e {
        HsmError::RoleUnsupported { role, .. } => Some(*role),
        _ => None,
    }).collect();
    assert_eq!(refused, vec![Role::Ledger, Role::Tls, Role::Kek]);
    let sharing = report.roles.iter().find(|r| r.role == Role::Sharing).expect("sharing");
    assert!(sharing.also_admitted.iter().any(|x| x.contains("CKM_RSA_PKCS (0x1)")), "{sharing:?}");
}

/// A sharing key on one module receives a data key re-wrapped by a KEK on SoftHSM: the roles
/// openCryptoki cannot hold stay on another module.
pub fn a_sharing_key_receives_data_keys_from_a_kek_on_another_module(m: Module) {
    let receiver_token = Token::on(m, "probe");
    let receiver = receiver_token.open(1);
    receiver.generate(Role::Sharing).expect("sharing");
    let sender_token = Token::on(Module::SoftHsm, if m == Module::OpenCryptoki { "peer" } else { "peer2" });
    let sender = sender_token.open(1);
    sender.generate(Role::Kek).expect("kek");
    let dk = [0x77u8; 32];
    let wrapped = sender.wrap_data_key(&dk).expect("wrap");
    let (_, spki) = receiver.public_key_der(Role::Sharing, None).expect("spki");
    let (n, e) = medgate_hsm::rsa_spki_parts(&spki).expect("rsa");
    let blob = sender.rewrap_for_peer(&wrapped, &n, &e).expect("rewrap for the other module");
    assert_eq!(receiver.unwrap_shared(&blob).expect("unwrap").as_slice(), &dk);
    let mut bad = blob.clone();
    bad[7] ^= 1;
    let err = receiver.unwrap_shared(&bad).expect_err("tampered");
    assert!(err.is_integrity(), "{err:?}");
    if m != Module::OpenCryptoki {
        transport_round_trip(&sender, &receiver, m);
    }
}


/// `medgate keys probe` on openCryptoki: the token is found although cryptoki cannot parse its
/// token information (reported, not skipped), and the roles it cannot hold are refused.
pub fn opencryptoki_probe_reports_the_reduced_profile(m: Module) {
    let t = Token::on(m, "any");
    let report = medgate_hsm::probe(&m.path(), &t.label, Some(&t.pin())).expect("probe");
    println!("{report}");
    assert_eq!(report.token_slot, Some(common_ock_slot()));
    let slot = report.slots.iter().find(|s| Some(s.id) == report.token_slot).expect("slot");
    let token = slot.token.as_ref().expect("token info read field by field");
    assert_eq!(token.label, t.label);
    assert!(token.parse_error.as_deref().is_some_and(|e| e.contains("cryptoki cannot parse")), "{token:?}");
    assert_eq!((token.min_pin_len, token.max_pin_len), (4, 8));
    let refused: Vec<Role> = report.roles.iter().filter(|r| !r.supported).map(|r| r.role).collect();
    assert_eq!(refused, vec![Role::Ledger, Role::Tls, Role::Kek]);
    let ledger = &report.roles[0];
    assert!(ledger.refusal.as_deref().is_some_and(|r| r.contains("libopencryptoki.so") && r.contains("no elliptic-curve mechanisms")), "{ledger:?}");
    assert_eq!(report.refusals().len(), 3);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["template"]["copyable"]["status"], "rejected");
    assert_eq!(json["template"]["copyable"]["detail"], "CKR_ATTRIBUTE_TYPE_INVALID");
}

fn common_ock_slot() -> u64 {
    super::OCK_SLOT
}

/// C_Initialize and C_Finalize act on the whole process: a probe, a pool that cannot find its
/// token, or one that is dropped, must not finalise the module under another pool of the same
/// process. The pool here keeps its sessions throughout: no recovery is needed.
pub fn a_probe_a_missing_token_or_a_dropped_pool_beside_a_pool_leave_it_working(m: Module) {
    let t = Token::on(m, "beside");
    let hsm = t.open(1);
    hsm.generate(Role::Pseudonym).expect("generate");
    let before = hsm.pseudonym_hmac(b"patient").expect("hmac");
    let report = medgate_hsm::probe(&m.path(), &t.label, Some(&t.pin())).expect("probe");
    assert!(report.token_slot.is_some(), "{report}");
    let mut missing = t.config(1);
    missing.token_label = "no-such-token".into();
    assert!(Hsm::open(missing, t.pin()).is_err());
    drop(t.open(1));
    assert_eq!(hsm.pseudonym_hmac(b"patient").expect("hmac after"), before);
    assert_eq!(hsm.stats().recoveries, 0, "the module was finalised under the pool");
}

/// The bench's raw ceilings run every operation on the token, the site's KEK included, and
/// leave the token's keys as they were (the scratch keys are session objects, and wrapping
/// under the KEK writes nothing).
pub fn raw_ceilings_measure_every_operation_and_leave_the_token_as_it_was(m: Module) {
    use medgate_hsm::ceiling::RawOp;
    let t = Token::on(m, "bench");
    let hsm = Hsm::open_with(t.config(2), t.pin(), HsmOptions::default()).expect("open");
    for role in [Role::Kek, Role::Ledger] {
        hsm.generate(role).expect("generate");
    }
    let before = hsm.list_keys().expect("list");
    let d = std::time::Duration::from_millis(50);
    for op in [RawOp::WrapRfc5649, RawOp::WrapAesGcm, RawOp::WrapSiteKek, RawOp::Sign] {
        for threads in [1, 2] {
            let rate = hsm.raw_rate(op, threads, d).unwrap_or_else(|e| panic!("{m:?} {}: {e}", op.name()));
            assert!(rate > 0.0, "{m:?} {} on {threads} threads: {rate}", op.name());
        }
    }
    assert_eq!(hsm.list_keys().expect("list"), before, "{m:?}: the measurement changed the token's keys");
}
