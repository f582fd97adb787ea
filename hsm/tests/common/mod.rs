//! Test fixture: real SoftHSM2 tokens made by `hsm/softhsm-setup.sh`. There is no fallback: when
//! SoftHSM is not installed the tests fail and say how to install it.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use medgate_hsm::{Hsm, HsmConfig, Pin};

pub fn module() -> PathBuf {
    let m = std::env::var_os("MEDGATE_TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        m.is_file(),
        "SoftHSM2 module {} not found: run scripts/install-deps.sh (or set MEDGATE_TEST_PKCS11_MODULE)",
        m.display()
    );
    m
}

/// Every token label the tests use. SoftHSM reads its configuration and its token list once, at
/// C_Initialize, so all tokens of a test process are created before the first test opens one.
pub const LABELS: &[&str] = &[
    "attrs", "sign", "wrap", "rotate", "hmac", "wrongpin", "missing", "pool", "tls", "recovery", "bench", "sharing", "pseudoimport",
    "rewrap", "rotatewhilewrapping",
];

/// One SoftHSM directory per test process, holding one token per label in [`LABELS`].
fn softhsm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("medgate-hsm-test").tempdir().expect("tempdir").keep();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm-setup.sh");
        for label in LABELS {
            let out = Command::new(&script).arg(&dir).arg(label).output().expect("run softhsm-setup.sh");
            assert!(out.status.success(), "softhsm-setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        dir
    })
}

pub struct Token {
    pub dir: PathBuf,
    pub label: String,
}

impl Token {
    pub fn new(label: &str) -> Token {
        assert!(LABELS.contains(&label), "add {label} to LABELS");
        let dir = softhsm_dir().to_path_buf();
        Token { dir, label: label.to_owned() }
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pin", self.label))
    }

    pub fn pin(&self) -> Pin {
        Pin::from_file(&self.pin_file()).expect("pin")
    }

    pub fn pin_text(&self) -> String {
        std::fs::read_to_string(self.pin_file()).expect("pin")
    }

    pub fn config(&self, pool_size: usize) -> HsmConfig {
        HsmConfig { module: module(), token_label: self.label.clone(), pool_size }
    }

    pub fn open(&self, pool_size: usize) -> Hsm {
        Hsm::open(self.config(pool_size), self.pin()).expect("open HSM")
    }
}
