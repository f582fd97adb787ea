//! HSM throughput through medgate's session pool at 1 and 2 threads, next to the raw rate of the
//! same PKCS#11 call on one dedicated session (no pool), so the pool's overhead is visible.
//!
//!     cargo bench -p medgate-hsm --bench hsm_pool
//!
//! Uses a throwaway SoftHSM token made by hsm/softhsm-setup.sh. MEDGATE_BENCH_SECONDS sets the
//! time per measurement (default 2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use medgate_hsm::{Hsm, HsmConfig, Pin, Role};

fn seconds() -> Duration {
    let s = std::env::var("MEDGATE_BENCH_SECONDS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

fn module() -> PathBuf {
    let m = PathBuf::from(std::env::var("MEDGATE_TEST_PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into()));
    assert!(m.is_file(), "SoftHSM2 module {} not found: run scripts/install-deps.sh", m.display());
    m
}

/// Runs `f` on `threads` threads for the configured time; returns operations per second.
fn rate(threads: usize, f: impl Fn() + Sync) -> f64 {
    let dur = seconds();
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        f();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

/// Runs `f` on this thread for the configured time (a raw PKCS#11 session is not `Sync`).
fn rate_here(mut f: impl FnMut()) -> f64 {
    let dur = seconds();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::Builder::new().prefix("medgate-bench").tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm-setup.sh");
    let out = Command::new(script).arg(dir.path()).arg("bench").output().expect("softhsm-setup.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));
    let pin_file = dir.path().join("bench.pin");

    let hsm = Arc::new(
        Hsm::open(HsmConfig { module: module(), token_label: "bench".into(), pool_size: 2 }, Pin::from_file(&pin_file).expect("pin"))
            .expect("open"),
    );
    hsm.generate(Role::Ledger).expect("ledger key");
    hsm.generate(Role::Kek).expect("kek");
    hsm.generate(Role::Pseudonym).expect("pseudonym key");
    let dk = [7u8; 32];
    let wrapped = hsm.wrap_data_key(&dk).expect("wrap");

    // Raw: one session of our own, handles looked up once, the bare calls.
    let p = Pkcs11::new(module()).expect("load");
    let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = p
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == "bench").unwrap_or(false))
        .expect("token");
    let s = p.open_rw_session(slot).expect("session");
    let pin = std::fs::read_to_string(&pin_file).expect("pin");
    let _ = s.login(UserType::User, Some(&AuthPin::from(pin.trim_end())));
    let find = |label: &str, class| {
        s.find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())]).expect("find")[0]
    };
    let sign_key = find("medgate-ledger-v1", ObjectClass::PRIVATE_KEY);
    let kek = find("medgate-kek-v1", ObjectClass::SECRET_KEY);
    let dk_template = |v: Option<&[u8]>| {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        if let Some(v) = v {
            t.push(Attribute::Value(v.to_vec()));
        }
        t
    };
    let raw_sign = rate_here(|| {
        s.sign(&Mechanism::Ecdsa, sign_key, &[1u8; 32]).expect("sign");
    });
    let raw_wrap_only = {
        let obj = s.create_object(&dk_template(Some(&dk))).expect("create");
        let r = rate_here(|| {
            s.wrap_key(&Mechanism::AesKeyWrapPad, kek, obj).expect("wrap");
        });
        s.destroy_object(obj).expect("destroy");
        r
    };
    let raw_wrap = rate_here(|| {
        let obj = s.create_object(&dk_template(Some(&dk))).expect("create");
        s.wrap_key(&Mechanism::AesKeyWrapPad, kek, obj).expect("wrap");
        s.destroy_object(obj).expect("destroy");
    });
    let raw_unwrap = rate_here(|| {
        let obj = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped.bytes, &dk_template(None)).expect("unwrap");
        s.get_attributes(obj, &[cryptoki::object::AttributeType::Value]).expect("value");
        s.destroy_object(obj).expect("destroy");
    });
    drop(s);

    println!("medgate-hsm pool benchmark (SoftHSM2, {} s per figure, {} cores)", seconds().as_secs_f64(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:<34} {:>12} {:>12} {:>12}", "operation", "raw 1 thr/s", "pool 1 thr/s", "pool 2 thr/s");
    let pool_sign = |t| rate(t, || {
        hsm.sign_digest(Role::Ledger, &[1u8; 32]).expect("sign");
    });
    let pool_wrap = |t| rate(t, || {
        hsm.wrap_data_key(&dk).expect("wrap");
    });
    let pool_unwrap = |t| rate(t, || {
        hsm.unwrap_data_key(&wrapped).expect("unwrap");
    });
    println!("{:<34} {:>12.0} {:>12.0} {:>12.0}", "sign (ECDSA P-256, CKM_ECDSA)", raw_sign, pool_sign(1), pool_sign(2));
    println!("{:<34} {:>12.0} {:>12.0} {:>12.0}", "wrap data key (create+wrap+destroy)", raw_wrap, pool_wrap(1), pool_wrap(2));
    println!("{:<34} {:>12.0} {:>12} {:>12}", "  of which C_WrapKey alone", raw_wrap_only, "-", "-");
    println!("{:<34} {:>12.0} {:>12.0} {:>12.0}", "unwrap data key (unwrap+get+destroy)", raw_unwrap, pool_unwrap(1), pool_unwrap(2));
    let st = hsm.stats();
    let ops: u64 = st.ops.iter().map(|(_, n)| n).sum();
    println!("pool: {} operations, {} PKCS#11 calls, {} waits for a session ({:.3} s waiting), {} errors",
        ops, st.pkcs11_calls, st.pool_waits, st.pool_wait_seconds, st.errors.iter().map(|(_, n)| n).sum::<u64>());
    hsm.shutdown();
}
