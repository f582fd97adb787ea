//! Token initialisation by medgate (`medgate keys init-token`) on SoftHSM2 and kryoptic: PIN
//! lengths checked before anything changes, a rejected SO PIN reported as the SO PIN, a token
//! left without a user PIN (a failed C_InitPIN) completed by running it again.

mod common;

use common::{prepare, Module};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::types::AuthPin;
use medgate_hsm::admin::init_token;
use medgate_hsm::{Hsm, HsmConfig, HsmError, Pin, Role};
use zeroize::Zeroizing;

fn pin(s: &str) -> Pin {
    Pin::from_secret(Zeroizing::new(s.to_owned()))
}

fn init_token_checks_pins_and_completes_a_half_initialised_token(m: Module) {
    prepare(m);
    let module = m.path();
    let (so, user) = ("so-pin-4711-x", "user-pin-0815-y");

    // 1. A user PIN shorter than the token takes: refused before anything is written.
    let err = init_token(&module, "fresh", &pin(so), &pin("abc")).expect_err("too short");
    assert!(matches!(err, HsmError::PinLength { which: "a user", len: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("takes") && !err.to_string().contains("abc"), "{err}");

    // 2. A token initialised whose C_InitPIN never happened, as a failed init leaves it.
    {
        let p = Pkcs11::new(&module).expect("load");
        let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = p
            .get_all_slots()
            .expect("slots")
            .into_iter()
            .find(|s| p.get_token_info(*s).map(|i| !i.token_initialized()).unwrap_or(false))
            .expect("a slot with an uninitialised token");
        p.init_token(slot, &AuthPin::from(so), "fresh").expect("C_InitToken");
    }

    // 3. The wrong SO PIN: reported as the SO PIN, with the way out; the user PIN is not blamed.
    let err = init_token(&module, "fresh", &pin("wrong-so-pin-1"), &pin(user)).expect_err("wrong SO PIN");
    let text = err.to_string();
    assert!(matches!(err, HsmError::UserPinNotSet { .. }), "{err:?}");
    assert!(text.contains("security officer (SO) PIN") && text.contains("init-token` again"), "{text}");
    assert!(!text.contains("rejected the user PIN"), "{text}");

    // 4. Run again with the right SO PIN: only the user PIN is set, and the token works.
    init_token(&module, "fresh", &pin(so), &pin(user)).expect("complete the token");
    let hsm = Hsm::open(HsmConfig { module: module.clone(), token_label: "fresh".into(), pool_size: 1 }, pin(user)).expect("open");
    hsm.generate(Role::Pseudonym).expect("generate");
    hsm.pseudonym_hmac(b"x").expect("hmac");
    drop(hsm);

    // 5. A complete token is never initialised again.
    let err = init_token(&module, "fresh", &pin(so), &pin(user)).expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn softhsm_init_token() {
    init_token_checks_pins_and_completes_a_half_initialised_token(Module::SoftHsm)
}

#[test]
fn kryoptic_init_token() {
    init_token_checks_pins_and_completes_a_half_initialised_token(Module::Kryoptic)
}
