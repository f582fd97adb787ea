//! Recovery without a restart, against real SoftHSM and kryoptic tokens: the module is finalised
//! under the pool's feet (what an HSM restart looks like to a PKCS#11 client), the token
//! disappears and comes back, and the PIN changes while the gateway runs. This is its own test
//! binary because finalising a module affects the whole process (the two modules are separate
//! libraries and do not disturb each other).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Module, Token};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use medgate_hsm::{HsmError, Role};

/// Finalises the module from outside the pool, as a restarted HSM would invalidate every session.
fn pull_the_plug(m: Module) {
    let p = Pkcs11::new(m.path()).expect("load module");
    p.finalize().expect("C_Finalize");
}

/// Where the token's data lies, to take it away and bring it back: SoftHSM's token directory,
/// kryoptic's sqlite file.
fn token_store(t: &Token) -> (PathBuf, PathBuf) {
    match t.module {
        Module::Kryoptic => (t.dir.join("recovery.sqlite"), t.dir.join("recovery.sqlite.away")),
        _ => (t.dir.join("tokens"), t.dir.join("tokens.away")),
    }
}

fn hide(t: &Token, store: &Path, away: &Path) {
    std::fs::rename(store, away).expect("hide the token");
    if t.module == Module::SoftHsm {
        std::fs::create_dir(store).expect("empty token dir");
    }
}

fn restore(store: &Path, away: &Path) {
    if store.is_dir() {
        std::fs::remove_dir(store).expect("remove empty dir");
    } else if store.exists() {
        // kryoptic made an empty database in its place meanwhile.
        std::fs::remove_file(store).expect("remove the empty database");
    }
    std::fs::rename(away, store).expect("restore the token");
}

#[test]
fn softhsm_pool_recovers() {
    the_pool_recovers_from_a_restarted_or_vanished_hsm(Module::SoftHsm)
}

#[test]
fn kryoptic_pool_recovers() {
    the_pool_recovers_from_a_restarted_or_vanished_hsm(Module::Kryoptic)
}

fn the_pool_recovers_from_a_restarted_or_vanished_hsm(m: Module) {
    let t = Token::on(m, "recovery");
    let hsm = t.open(2);
    hsm.generate(Role::Ledger).expect("generate");
    hsm.generate(Role::Kek).expect("generate");
    let wrapped = hsm.wrap_data_key(&[3u8; 32]).expect("wrap");

    // 1. The HSM "restarts": the next operation re-initialises, logs in again and succeeds.
    pull_the_plug(m);
    hsm.sign_digest(Role::Ledger, &[1; 32]).expect("sign after restart");
    assert_eq!(hsm.stats().recoveries, 1);
    assert_eq!(hsm.unwrap_data_key(&wrapped).expect("unwrap").as_slice(), &[3u8; 32]);

    // 2. The token is gone: callers get a clear "unavailable", never a panic.
    let (store, away) = token_store(&t);
    hide(&t, &store, &away);
    pull_the_plug(m);
    for _ in 0..3 {
        let err = hsm.sign_digest(Role::Ledger, &[2; 32]).expect_err("HSM is down");
        assert!(matches!(err, HsmError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().starts_with("HSM unavailable"), "{err}");
    }
    std::thread::sleep(Duration::from_millis(1100));
    let err = hsm.wrap_data_key(&[4u8; 32]).expect_err("still down");
    assert!(matches!(err, HsmError::Unavailable(_)), "{err:?}");

    // 3. The token comes back: service resumes with no restart of the gateway.
    restore(&store, &away);
    std::thread::sleep(Duration::from_millis(1100));
    hsm.sign_digest(Role::Ledger, &[5; 32]).expect("sign after the token returned");
    assert_eq!(hsm.unwrap_data_key(&wrapped).expect("unwrap").as_slice(), &[3u8; 32]);

    // 4. The PIN is changed behind the gateway's back: after the next restart the old PIN is
    // refused once, and never presented again, however many requests arrive.
    {
        let p = Pkcs11::new(m.path()).expect("load");
        let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = p
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == "recovery").unwrap_or(false))
            .expect("token");
        let s = p.open_rw_session(slot).expect("session");
        let old = AuthPin::from(t.pin_text());
        let _ = s.login(UserType::User, Some(&old));
        s.set_pin(&old, &AuthPin::from("new-pin-1234")).expect("set_pin");
    }
    pull_the_plug(m);
    let before = hsm.stats().login_attempts;
    for _ in 0..5 {
        let err = hsm.sign_digest(Role::Ledger, &[6; 32]).expect_err("old PIN");
        assert!(matches!(err, HsmError::WrongPin), "{err:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(hsm.stats().login_attempts, before + 1, "the rejected PIN was presented exactly once");
    let p = Pkcs11::new(m.path()).expect("load");
    let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = p
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == "recovery").unwrap_or(false))
        .expect("token");
    assert!(!p.get_token_info(slot).expect("info").user_pin_locked());
}
