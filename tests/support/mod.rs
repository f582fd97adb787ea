//! Integration test fixture: a real hospital site (SoftHSM2 token, keys in the HSM, hospital CA,
//! mutual TLS) with `medgate serve` running as a child process, as an operator would run it.
//! There is no fallback: without SoftHSM2 the tests fail and say how to install it.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]
#![allow(clippy::unwrap_used, reason = "test fixture")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod rsyslog;

use medgate::client::HisClient;
use medgate::admin_client::get as admin_get;
use medgate::demo::{stop_child, Site};

pub mod officers;

/// SoftHSM reads SOFTHSM2_CONF when the module initialises, and site creation sets it for this
/// process: one site is created at a time.
static SITE_LOCK: Mutex<()> = Mutex::new(());

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_medgate"))
}

/// Runs `f` with this process's SoftHSM configuration pointing at `conf` (SoftHSM reads it when
/// the module initialises), one at a time with site creation.
pub fn with_softhsm<T>(conf: &Path, f: impl FnOnce() -> T) -> T {
    let _one = SITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("SOFTHSM2_CONF", conf);
    f()
}

/// Runs `f` with `site`'s SoftHSM token opened in this process (a pool of one session, the
/// site's PIN file), and closes it after. A gateway of the site may be running: the token is
/// shared, but `f` must then leave its keys as they are.
pub fn with_site_hsm<T>(site: &Site, f: impl FnOnce(&std::sync::Arc<medgate_hsm::Hsm>) -> T) -> T {
    with_softhsm(&site.softhsm_conf, || {
        let pin = medgate_hsm::Pin::from_file(&site.dir.join("hsm-pin")).unwrap();
        let cfg = medgate_hsm::HsmConfig { module: medgate::demo::SOFTHSM_MODULE.into(), token_label: medgate::demo::TOKEN.into(), pool_size: 1 };
        let hsm = std::sync::Arc::new(medgate_hsm::Hsm::open(cfg, pin).unwrap());
        let out = f(&hsm);
        hsm.shutdown();
        out
    })
}

/// A site with no gateway running (for the officer's commands).
pub fn site(name: &str) -> (Site, tempfile::TempDir) {
    site_for(name, "hospital-a")
}

/// The PKCS#11 implementations a scenario can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    SoftHsm,
    Kryoptic,
}

/// The kryoptic module (built by `scripts/install-deps.sh`); the test fails when it is missing.
pub fn kryoptic_module() -> PathBuf {
    let m = std::env::var_os("MEDGATE_TEST_KRYOPTIC_MODULE").map_or_else(|| PathBuf::from("/usr/local/lib/kryoptic/libkryoptic_pkcs11.so"), PathBuf::from);
    assert!(m.is_file(), "kryoptic module {} not found: run scripts/install-deps.sh", m.display());
    m
}

/// kryoptic reads `KRYOPTIC_CONF` from the environment when it initialises, in this process and in
/// every `medgate` this process starts: a test on a kryoptic site holds this for its whole run,
/// with the variable naming its site's configuration.
static KRYOPTIC: Mutex<()> = Mutex::new(());

/// A site's files, and on kryoptic this test's hold on the process's `KRYOPTIC_CONF`.
pub struct SiteFiles {
    dir: tempfile::TempDir,
    _kryoptic: Option<std::sync::MutexGuard<'static, ()>>,
}

impl SiteFiles {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A site of hospital-a on a token of `module`, no gateway running. On kryoptic the site has its
/// own kryoptic configuration with two slots: the site's token and an uninitialised one (for
/// `keys init-token`); `KRYOPTIC_CONF` names it until the returned [`SiteFiles`] is dropped.
pub fn site_on(module: Module, name: &str) -> (Site, SiteFiles) {
    match module {
        Module::SoftHsm => {
            let (site, dir) = site(name);
            (site, SiteFiles { dir, _kryoptic: None })
        }
        Module::Kryoptic => {
            let hold = KRYOPTIC.lock().unwrap_or_else(|p| p.into_inner());
            let module = kryoptic_module();
            let dir = tempfile::Builder::new().prefix(&format!("medgate-test-{name}-")).tempdir().unwrap();
            let conf_dir = dir.path().join("kryoptic");
            std::fs::create_dir_all(&conf_dir).unwrap();
            let slot = |n: u32, db: &str| format!("[[slots]]\nslot = {n}\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n\n", conf_dir.join(db).display());
            let conf = conf_dir.join("kryoptic.conf");
            std::fs::write(&conf, slot(1, "token.sqlite") + &slot(2, "spare.sqlite")).unwrap();
            let site = {
                let _one = SITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                std::env::set_var("KRYOPTIC_CONF", &conf);
                std::env::set_var("MEDGATE_DEMO_HSM_MODULE", &module);
                let site = Site::create_with(dir.path(), "hospital-a", None, &mut |_| {});
                std::env::remove_var("MEDGATE_DEMO_HSM_MODULE");
                site.unwrap_or_else(|f| panic!("site on kryoptic: {}", f.message))
            };
            let text = std::fs::read_to_string(&site.config).unwrap();
            assert!(text.contains(&format!("module = \"{}\"", module.display())), "the site is not on kryoptic:\n{text}");
            (site, SiteFiles { dir, _kryoptic: Some(hold) })
        }
    }
}

/// `#[test]` functions running scenarios of module `scenarios` on `module`:
/// `on_module!(Kryoptic, keys => [a, b]);` gives `#[test] fn a() { keys::a(Module::Kryoptic) }`.
#[macro_export]
macro_rules! on_module {
    ($module:ident, $scenarios:ident => [$($test:ident),+ $(,)?]) => {
        $(
            #[test]
            fn $test() {
                $scenarios::$test($crate::support::Module::$module)
            }
        )+
    };
}

/// A site of hospital `hospital` with no gateway running.
pub fn site_for(name: &str, hospital: &str) -> (Site, tempfile::TempDir) {
    site_sharing(name, hospital, None)
}

/// As [`site_for`], with the consortium's shared pseudonym key imported when given.
pub fn site_sharing(name: &str, hospital: &str, pseudonym_key: Option<&[u8]>) -> (Site, tempfile::TempDir) {
    let dir = tempfile::Builder::new().prefix(&format!("medgate-test-{name}-")).tempdir().unwrap();
    let _one = SITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let site = Site::create_with(dir.path(), hospital, pseudonym_key, &mut |_| {}).unwrap_or_else(|f| panic!("site: {}", f.message));
    (site, dir)
}

/// One hospital: its files in a temporary directory, and its gateway process.
pub struct Gw {
    pub site: Site,
    pub child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gw {
    /// Creates a site; `edit` may change the configuration text before the gateway starts.
    pub fn with_config(name: &str, edit: impl FnOnce(String) -> String) -> Gw {
        let dir = tempfile::Builder::new().prefix(&format!("medgate-test-{name}-")).tempdir().unwrap();
        let site = {
            let _one = SITE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            Site::create(dir.path(), "hospital-a", &mut |_| {}).unwrap_or_else(|f| panic!("site: {}", f.message))
        };
        let text = std::fs::read_to_string(&site.config).unwrap();
        std::fs::write(&site.config, edit(text)).unwrap();
        let log = site.dir.join("medgate.log");
        let mut gw = Gw { site, child: None, log, _dir: dir };
        gw.start();
        gw
    }

    pub fn new(name: &str) -> Gw {
        Gw::with_config(name, |t| t)
    }

    /// A gateway for a site made with [`site_for`], not started yet.
    pub fn prepared(site: Site, dir: tempfile::TempDir) -> Gw {
        let log = site.dir.join("medgate.log");
        Gw { site, child: None, log, _dir: dir }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self.site.spawn(&exe(), Some(&self.log)).unwrap_or_else(|f| panic!("start: {}\nlog:\n{}", f.message, self.log_text()));
        self.child = Some(child);
    }

    /// Starts the gateway and waits only until it is alive (`/healthz`), not ready.
    pub fn start_alive(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self.site.spawn_until(&exe(), Some(&self.log), "/healthz").unwrap_or_else(|f| panic!("start: {}\nlog:\n{}", f.message, self.log_text()));
        self.child = Some(child);
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        stop_child(&mut c).unwrap()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    pub fn client(&self) -> HisClient {
        self.site.his_client().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value from /metrics (first sample whose line starts with `prefix`).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = admin_get(self.site.admin_addr, "/metrics").unwrap();
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    /// Runs `medgate ARGS` and returns (status, stdout, stderr).
    pub fn medgate(&self, args: &[&str]) -> (i32, String, String) {
        run_medgate(args, &self.site.softhsm_conf)
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(text) {
            assert!(Instant::now() < deadline, "log never showed {text:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run_medgate(args: &[&str], softhsm_conf: &Path) -> (i32, String, String) {
    let out = Command::new(exe()).args(args).env("SOFTHSM2_CONF", softhsm_conf).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The id of the DocumentReference a create answered (ITI-65: from its entry's location).
pub fn created_id(answer: &serde_json::Value) -> String {
    medgate_fhir::answer_ids(answer, "DocumentReference").into_iter().next().unwrap_or_else(|| panic!("no DocumentReference in {answer}"))
}

/// The base64 ledger receipt carried by a created DocumentReference (or by an answer entry's
/// `response`), decoded.
pub fn receipt_of(doc: &serde_json::Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = doc["extension"][0]["valueAttachment"]["data"].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Opens the store of a stopped gateway in the state directory `dir`. A gateway process that
/// has just exited may still be closing it (the kernel releases sled's file lock when its last
/// descriptor closes): wait for the lock to be free first. Within this process, open a store
/// once and keep the handle: sled releases a dropped handle's lock only when its deferred
/// cleanup runs, so reopening here can meet its own old lock.
pub fn open_store(dir: &Path) -> medgate_store::Db {
    wait_store_unlocked(dir);
    medgate_store::Db::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Waits until nobody holds the lock of the store in `dir` (sled's exclusive flock on its data
/// file), by taking and releasing it; a store not created yet is free.
fn wait_store_unlocked(dir: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(mut file) = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("medgate.sled").join("db")) else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                drop(lock);
                return;
            }
            Err((f, e)) => {
                assert!(Instant::now() < deadline, "the store in {} is still locked after 30 s: {e}", dir.display());
                file = f;
                // Polls the lock itself: the holder is a process that is exiting.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Runs `medgate bench ARGS --json` (logs at their default) and returns its report and its
/// standard error; a failed run fails the test with what it said.
pub fn bench_report(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(exe()).arg("bench").args(args).arg("--json").env_remove("MEDGATE_LOG").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "medgate bench {args:?} failed: {stderr}");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (report, stderr)
}
