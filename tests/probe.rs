//! `medgate keys probe` on each module, and the start-up refusal: SoftHSM2 holds every role; the
//! openCryptoki soft token lacks the mechanisms of the ledger, tls and kek roles, so the probe
//! exits 64 naming the module, each role and the mechanism it lacks, and `medgate serve` on it
//! refuses with the same error before it listens on anything. (kryoptic's probe is in
//! `kryoptic.rs`, beside its gateway.)

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::run_medgate;

const OPENCRYPTOKI_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so";
const OCK_LABEL: &str = "medgate-test";

#[test]
fn the_probe_of_softhsm_reports_every_role_ready() {
    let (site, _dir) = support::site("probe");
    let cfg = site.config.to_str().unwrap();
    let (code, out, err) = run_medgate(&["keys", "--config", cfg, "probe"], &site.softhsm_conf);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("libsofthsm2.so") && out.contains("key roles on token \"medgate\""), "{out}");
    for role in ["ledger", "tls", "kek", "sharing", "pseudonym"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(role) && l.contains(" yes ") && l.contains("v1 ready")), "{role}: {out}");
    }
    // SoftHSM offers CKM_AES_GCM: a new KEK wraps data keys with C_Encrypt (two calls per key).
    assert!(out.contains("v1 ready (CKM_AES_GCM (0x1087))"), "{out}");
    let (code, json, err) = run_medgate(&["keys", "--config", cfg, "probe", "--json"], &site.softhsm_conf);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["token_label"], "medgate");
    assert!(v["roles"].as_array().unwrap().iter().all(|r| r["supported"] == true && r["key"]["state"] == "ready"), "{json}");
    // Without the user PIN the probe still runs and says what it could not check.
    std::fs::rename(site.dir.join("hsm-pin"), site.dir.join("hsm-pin.away")).unwrap();
    let (code, out, err) = run_medgate(&["keys", "--config", cfg, "probe"], &site.softhsm_conf);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("no user PIN") && out.contains("not checked"), "{out}{err}");
    // A token that is not there: the probe lists the slots and exits 64.
    std::fs::rename(site.dir.join("hsm-pin.away"), site.dir.join("hsm-pin")).unwrap();
    let other = site.dir.join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&site.config).unwrap().replace("token_label = \"medgate\"", "token_label = \"absent\"")).unwrap();
    let (code, out, err) = run_medgate(&["keys", "--config", other.to_str().unwrap(), "probe"], &site.softhsm_conf);
    assert_eq!(code, 64, "{out}{err}");
    assert!(out.contains("token \"absent\" not found") && err.contains("no token labelled \"absent\""), "{out}{err}");
}

/// The machine's openCryptoki soft token, prepared by `hsm/opencryptoki-setup.sh` as the hsm
/// tests do, and held (flock) against the other test processes that use it.
struct Ock {
    state: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn opencryptoki() -> Ock {
    assert!(Path::new(OPENCRYPTOKI_MODULE).is_file(), "openCryptoki not installed: run scripts/install-deps.sh");
    let state = std::env::var_os("MEDGATE_TEST_OCK_STATE").map(PathBuf::from).unwrap_or_else(|| "/var/lib/medgate-test/opencryptoki".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm/opencryptoki-setup.sh");
    let out = Command::new(&script).arg(&state).arg(OCK_LABEL).output().unwrap();
    assert!(out.status.success(), "opencryptoki-setup.sh: {}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.join("lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    Ock { state, _lock: lock }
}

#[test]
fn on_opencryptoki_the_probe_names_the_missing_mechanisms_and_serve_refuses_before_listening() {
    let (site, _dir) = support::site("probe-ock");
    let ock = opencryptoki();
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&format!("module = \"{}\"", medgate::demo::SOFTHSM_MODULE), &format!("module = \"{OPENCRYPTOKI_MODULE}\""))
        .replace("token_label = \"medgate\"", &format!("token_label = \"{OCK_LABEL}\""))
        .replace(&format!("pin_file = \"{}\"", site.dir.join("hsm-pin").display()), &format!("pin_file = \"{}\"", ock.state.join(format!("{OCK_LABEL}.pin")).display()));
    let cfg = site.dir.join("opencryptoki.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();

    let (code, out, err) = run_medgate(&["keys", "--config", cfg, "probe"], &site.softhsm_conf);
    assert_eq!(code, 64, "{out}{err}");
    assert!(out.contains("REFUSED") && out.contains("CKA_ALLOWED_MECHANISMS left out"), "{out}");
    for (role, mechanism) in [("ledger", "CKM_EC_KEY_PAIR_GEN (0x1040)"), ("tls", "CKM_ECDSA (0x1041)"), ("kek", "CKM_AES_KEY_WRAP_KWP (0x210b)")] {
        assert!(
            err.lines().any(|l| l.contains("libopencryptoki.so") && l.contains(&format!("the {role} key")) && l.contains(mechanism)),
            "{role}: {err}"
        );
    }
    assert!(!err.contains("the sharing key") && !err.contains("the pseudonym key"), "{err}");
    let (code, json, _) = run_medgate(&["keys", "--config", cfg, "probe", "--json"], &site.softhsm_conf);
    assert_eq!(code, 64);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let supported: Vec<(String, bool)> = v["roles"].as_array().unwrap().iter().map(|r| (r["role"].as_str().unwrap().to_owned(), r["supported"].as_bool().unwrap())).collect();
    assert_eq!(
        supported,
        [("ledger", false), ("tls", false), ("kek", false), ("sharing", true), ("pseudonym", true)].map(|(r, s)| (r.to_owned(), s)).to_vec()
    );

    // serve: the same refusal, exit 64, and nothing listening.
    let (code, _, err) = run_medgate(&["serve", "--config", cfg], &site.softhsm_conf);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("cannot serve medgate") && err.contains("the kek key") && err.contains("CKM_AES_KEY_WRAP_KWP (0x210b)"), "{err}");
    assert!(std::net::TcpStream::connect(site.his_addr).is_err(), "serve listened before refusing");
    assert!(std::net::TcpStream::connect(site.admin_addr).is_err(), "serve listened before refusing");
}
