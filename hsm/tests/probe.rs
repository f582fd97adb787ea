//! `medgate keys probe` as a library call: a module probed on its own, with and without the user
//! PIN, for SoftHSM2 and kryoptic (openCryptoki's is in `opencryptoki.rs`). The report is printed
//! (run with `--nocapture` to read it).

mod common;

use common::{Module, Token};
use medgate_hsm::{probe, Role, RoleStatus};

fn the_probe_reports_slots_mechanisms_and_each_role(m: Module) {
    let t = Token::on(m, "probe");
    {
        let hsm = t.open(1);
        hsm.generate(Role::Kek).expect("kek");
        hsm.generate(Role::Ledger).expect("ledger");
    }
    let report = probe(&m.path(), &t.label, Some(&t.pin())).expect("probe");
    println!("{report}");
    let (kek, library) = match m {
        Module::Kryoptic => ("CKM_AES_KEY_WRAP_KWP (0x210b)", "Kryoptic"),
        _ => ("CKM_AES_KEY_WRAP_PAD (0x210a)", "SoftHSM"),
    };
    assert!(report.library.as_ref().is_some_and(|l| l.description.contains(library) || l.manufacturer.contains(library)), "{:?}", report.library);
    let slot = report.token_slot.expect("token found");
    let ours = report.slots.iter().find(|s| s.id == slot).expect("slot listed");
    assert_eq!(ours.token.as_ref().map(|t| t.label.as_str()), Some(t.label.as_str()));
    assert!(ours.mechanisms.iter().any(|x| x.name == kek && x.flags.contains(&"unwrap")), "{ours:?}");
    assert!(ours.mechanisms.iter().any(|x| x.name == "CKM_ECDSA (0x1041)" && x.flags.contains(&"sign")));
    assert!(report.refusals().is_empty(), "{:?}", report.refusals());
    for r in &report.roles {
        assert!(r.supported && r.refusal.is_none(), "{r:?}");
        let key = r.key.as_ref().expect("checked with the PIN");
        match r.role {
            Role::Kek => assert_eq!(key, &RoleStatus::Ready { role: Role::Kek, version: 1, mechanism: kek.into() }),
            Role::Ledger => assert!(matches!(key, RoleStatus::Ready { version: 1, .. }), "{key:?}"),
            _ => assert_eq!(key, &RoleStatus::NoKey { role: r.role }),
        }
    }
    let text = report.to_string();
    assert!(text.contains(&format!("key roles on token \"{}\"", t.label)) && text.contains("key templates: full"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
    assert_eq!(json["token_label"], t.label.as_str());
    assert_eq!(json["roles"][2]["role"], "kek");
    assert_eq!(json["roles"][2]["operation"], kek);

    // Without the PIN: mechanisms and roles, but neither templates nor keys.
    let bare = probe(&m.path(), &t.label, None).expect("probe");
    assert!(bare.roles.iter().all(|r| r.supported && r.key.is_none()), "{bare:?}");
    assert!(bare.problems.iter().any(|p| p.contains("no user PIN")), "{:?}", bare.problems);
    assert!(bare.to_string().contains("not tried"), "{bare}");

    // A label that no slot has: named, and the slots are still listed.
    let none = probe(&m.path(), "no-such-token", None).expect("probe");
    assert!(none.token_slot.is_none() && !none.slots.is_empty());
    assert!(none.problems.iter().any(|p| p.contains("no token labelled \"no-such-token\"")), "{:?}", none.problems);
    assert!(none.roles.is_empty());
}

#[test]
fn softhsm_probe() {
    the_probe_reports_slots_mechanisms_and_each_role(Module::SoftHsm)
}

#[test]
fn kryoptic_probe() {
    the_probe_reports_slots_mechanisms_and_each_role(Module::Kryoptic)
}
