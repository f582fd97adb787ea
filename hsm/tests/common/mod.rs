//! Test fixture: real tokens of three PKCS#11 implementations, made by the setup scripts beside
//! this crate (`softhsm-setup.sh`, `kryoptic-setup.sh`, `opencryptoki-setup.sh`). There is no
//! fallback: when a module is not installed the tests fail and say how to install it.
//!
//! SoftHSM2 and kryoptic read their token list once, at C_Initialize, so every token of a test
//! process (one per label in [`LABELS`]) is created before the first test opens one.
//! openCryptoki has one soft token per machine: tests that use it take a lock (within the process
//! and across processes) and start from a token with no medgate objects on it.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use medgate_hsm::{Hsm, HsmConfig, Pin};

pub mod cases;

/// The PKCS#11 implementations the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    SoftHsm,
    Kryoptic,
    OpenCryptoki,
}

pub const KRYOPTIC_MODULE: &str = "/usr/local/lib/kryoptic/libkryoptic_pkcs11.so";
pub const OPENCRYPTOKI_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so";
/// The label of the machine's one openCryptoki soft token, as the tests set it up.
pub const OCK_LABEL: &str = "medgate-test";
/// openCryptoki's soft token slot in Debian's opencryptoki.conf.
pub const OCK_SLOT: u64 = 3;

impl Module {
    pub fn path(self) -> PathBuf {
        let (var, default, install) = match self {
            Module::SoftHsm => ("MEDGATE_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so", "softhsm2"),
            Module::Kryoptic => ("MEDGATE_TEST_KRYOPTIC_MODULE", KRYOPTIC_MODULE, "kryoptic"),
            Module::OpenCryptoki => ("MEDGATE_TEST_OPENCRYPTOKI_MODULE", OPENCRYPTOKI_MODULE, "opencryptoki"),
        };
        let m = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
        assert!(m.is_file(), "{install} PKCS#11 module {} not found: run scripts/install-deps.sh (or set {var})", m.display());
        m
    }
}

/// The SoftHSM module (the default HSM of the test suite).
pub fn module() -> PathBuf {
    Module::SoftHsm.path()
}

/// Every token label the tests use (SoftHSM and kryoptic).
pub const LABELS: &[&str] = &[
    "attrs", "sign", "wrap", "rotate", "hmac", "wrongpin", "missing", "pool", "tls", "recovery", "bench", "sharing", "pseudoimport",
    "rewrap", "rotatewhilewrapping", "gcm", "ready", "legacykek", "peer", "peer2", "probe", "errors",
    "beside", "backupsrc", "backupdst", "card", "tsend", "trecv", "tlsend", "tlrecv",
];

/// The token directory outlives the tests (a static is never dropped). Its process holds an
/// exclusive lock on `owner.lock` inside it until it exits, and each new test process removes
/// the directories whose lock it can take: those of processes that have ended, whatever PID
/// namespace they ran in. At most the last run's directories stay behind, instead of one per
/// test binary and run.
fn setup_dir(kind: &str, script: &str, env: &str, conf: &str) -> PathBuf {
    let prefix = format!("medgate-{kind}-test-");
    remove_abandoned(&prefix);
    let dir = tempfile::Builder::new().prefix(&prefix).tempdir().expect("tempdir").keep();
    hold_owner_lock(&dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    for label in LABELS {
        let out = Command::new(&script).arg(&dir).arg(label).output().expect("run the token setup script");
        assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    std::env::set_var(env, dir.join(conf));
    dir
}

/// Locks `dir/owner.lock` for the rest of the process. The file is locked under another name
/// and then renamed, so that no other process finds it unlocked while this one is starting.
fn hold_owner_lock(dir: &Path) {
    static HELD: Mutex<Vec<nix::fcntl::Flock<std::fs::File>>> = Mutex::new(Vec::new());
    let starting = dir.join("owner.lock.new");
    let file = std::fs::File::create(&starting).expect("create the owner lock");
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e).expect("lock a new file");
    std::fs::rename(&starting, dir.join("owner.lock")).expect("name the owner lock");
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(lock);
}

/// Removes the token directories `<prefix>...` whose owner lock is free (their process ended).
/// A directory without the lock yet is being made: left alone.
fn remove_abandoned(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path().join("owner.lock")) else { continue };
        if let Ok(_free) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn softhsm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| setup_dir("softhsm", "softhsm-setup.sh", "SOFTHSM2_CONF", "softhsm2.conf"))
}

fn kryoptic_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        Module::Kryoptic.path();
        let dir = setup_dir("kryoptic", "kryoptic-setup.sh", "KRYOPTIC_CONF", "kryoptic.conf");
        // One slot whose token is not initialised, for `init_token` (SoftHSM always has one).
        let conf = dir.join("kryoptic.conf");
        let mut text = std::fs::read_to_string(&conf).expect("kryoptic.conf");
        let slot = text.matches("[[slots]]").count() + 1;
        text.push_str(&format!("[[slots]]\nslot = {slot}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n", dir.join("spare.sqlite").display()));
        std::fs::write(&conf, text).expect("write kryoptic.conf");
        dir
    })
}

/// Makes sure the module's test tokens exist and its configuration is in the environment.
pub fn prepare(m: Module) {
    match m {
        Module::SoftHsm => drop(softhsm_dir()),
        Module::Kryoptic => drop(kryoptic_dir()),
        Module::OpenCryptoki => drop(ock_state()),
    }
}

/// openCryptoki keeps its test state (SO PIN, user PIN) in one directory per machine.
fn ock_state() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        Module::OpenCryptoki.path();
        let dir = std::env::var_os("MEDGATE_TEST_OCK_STATE").map(PathBuf::from).unwrap_or_else(|| "/var/lib/medgate-test/opencryptoki".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("opencryptoki-setup.sh");
        let out = Command::new(&script).arg(&dir).arg(OCK_LABEL).output().expect("run opencryptoki-setup.sh");
        assert!(out.status.success(), "opencryptoki-setup.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// One test at a time on the machine's openCryptoki token.
static OCK: Mutex<()> = Mutex::new(());

/// Removes every medgate object (label `medgate-...`) from the openCryptoki token.
fn wipe_ock(pin: &str) {
    let p = Pkcs11::new(Module::OpenCryptoki.path()).expect("load openCryptoki");
    let _ = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = p.get_slots_with_token().expect("slots").into_iter().find(|s| s.id() == OCK_SLOT).expect("openCryptoki soft token slot");
    let s = p.open_rw_session(slot).expect("session");
    match s.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("openCryptoki login: {e}"),
    }
    for h in s.find_objects(&[Attribute::Token(true)]).expect("find") {
        let label = s.get_attributes(h, &[AttributeType::Label]).expect("label");
        if label.iter().any(|a| matches!(a, Attribute::Label(l) if l.starts_with(b"medgate-"))) {
            s.destroy_object(h).expect("destroy");
        }
    }
}

pub struct Token {
    pub module: Module,
    pub dir: PathBuf,
    pub label: String,
    // Dropped in this order: the lock other processes wait on, then the one of this process.
    _machine: Option<nix::fcntl::Flock<std::fs::File>>,
    _exclusive: Option<MutexGuard<'static, ()>>,
}

impl Token {
    /// A SoftHSM token.
    pub fn new(label: &str) -> Token {
        Token::on(Module::SoftHsm, label)
    }

    /// A token of `module`: its own token labelled `label` for SoftHSM and kryoptic; for
    /// openCryptoki the machine's one soft token, emptied of medgate objects and held by this
    /// test until the `Token` is dropped.
    pub fn on(module: Module, label: &str) -> Token {
        match module {
            Module::SoftHsm | Module::Kryoptic => {
                assert!(LABELS.contains(&label), "add {label} to LABELS");
                let dir = if module == Module::SoftHsm { softhsm_dir() } else { kryoptic_dir() };
                Token { module, dir: dir.to_path_buf(), label: label.to_owned(), _machine: None, _exclusive: None }
            }
            Module::OpenCryptoki => {
                let dir = ock_state().to_path_buf();
                let guard = OCK.lock().unwrap_or_else(|p| p.into_inner());
                // Other test processes on this machine (another checkout) use the same token.
                let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).expect("lock file");
                let machine = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).expect("flock");
                let t = Token { module, dir, label: OCK_LABEL.to_owned(), _machine: Some(machine), _exclusive: Some(guard) };
                wipe_ock(&t.pin_text());
                t
            }
        }
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pin", self.label))
    }

    pub fn so_pin_file(&self) -> PathBuf {
        match self.module {
            Module::OpenCryptoki => self.dir.join("so-pin"),
            _ => self.dir.join(format!("{}.so-pin", self.label)),
        }
    }

    pub fn pin(&self) -> Pin {
        Pin::from_file(&self.pin_file()).expect("pin")
    }

    pub fn pin_text(&self) -> String {
        std::fs::read_to_string(self.pin_file()).expect("pin").trim_end().to_owned()
    }

    pub fn config(&self, pool_size: usize) -> HsmConfig {
        HsmConfig { module: self.module.path(), token_label: self.label.clone(), pool_size }
    }

    pub fn open(&self, pool_size: usize) -> Hsm {
        Hsm::open(self.config(pool_size), self.pin()).expect("open HSM")
    }
}

/// Declares each named test function `fn name(m: Module)` once per module, in a module named
/// after it: `on_modules!(softhsm: SoftHsm, kryoptic: Kryoptic => [a, b, c]);`
#[macro_export]
macro_rules! on_modules {
    ($($modname:ident : $module:ident),+ => $tests:tt) => {
        $( $crate::on_modules!(@one $modname $module $tests); )+
    };
    (@one $modname:ident $module:ident [$($test:ident),+ $(,)?]) => {
        mod $modname {
            $(
                #[test]
                fn $test() {
                    $crate::common::cases::$test($crate::common::Module::$module)
                }
            )+
        }
    };
}
