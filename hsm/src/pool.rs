//! The PKCS#11 context, the one login, the session pool and the key-handle cache, with recovery.
//!
//! Thread ownership: a `cryptoki::Session` is `Send` but not `Sync`. Sessions live in the pool's
//! idle list; a [`Lease`] takes one out for the duration of a single operation on a single thread
//! and gives it back on drop. No session is ever shared.
//!
//! Login is application-wide in PKCS#11: the pool logs in once, on the first session of each
//! connection, treats `CKR_USER_ALREADY_LOGGED_IN` as success and never logs out. A rejected PIN is
//! remembered and never tried again by this process, so a misconfigured appliance cannot burn the
//! token's retry counter.
//!
//! Recovery: when the module reports the device, the token or a session gone, the connection is
//! dropped (its sessions are forgotten, never closed, because after re-initialisation their
//! numbers may belong to new sessions), the module is finalised and initialised again, and the
//! operation is retried once. Reconnection is attempted at most once a second; in between, callers
//! get [`HsmError::Unavailable`] at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::{AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;

use crate::error::{is_connection_lost, map_op_error, HsmError, OpCtx};
use crate::keys::{Label, Role};
use crate::pin::Pin;
use crate::profile::{KekScheme, Profile};
use crate::raw::Raw;

const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Operations that create, change or destroy token objects (generate, rotate, retire, destroy,
/// imports) hold this exclusively; every other operation holds it shared. SoftHSM rewrites an
/// object's file when its attributes change, and meanwhile other threads of the same process find
/// the object's handle invalid or do not find the object at all (measured: about 20 consecutive
/// unwraps failed, some 5 ms, while a rotation cleared the old version's Wrap flag). SoftHSM's
/// file locks keep other processes out, not other threads.
static TOKEN_OBJECTS: RwLock<()> = RwLock::new(());

/// A cached handle can name a key that the officer's console, another process, has destroyed
/// since. Operations that may be retried then look the keys up again (and get `KeyMissing` if
/// the key is really gone).
const STALE_HANDLE_RETRIES: u32 = 2;
const STALE_HANDLE_WAIT: Duration = Duration::from_millis(2);

fn is_handle_stale(e: &P11Error) -> bool {
    matches!(
        e,
        P11Error::Pkcs11(
            RvError::KeyHandleInvalid
                | RvError::WrappingKeyHandleInvalid
                | RvError::UnwrappingKeyHandleInvalid
                | RvError::ObjectHandleInvalid,
            _
        )
    )
}

/// C_Initialize and C_Finalize act on the whole process, and a module need not cope with two of
/// them at once (SoftHSM 2.6.1 initialises twice and loses its sessions when they race), so every
/// load, initialisation and finalisation in this process goes through this lock. It also holds
/// the number of users of each module (by path): a module is finalised only when its last user
/// lets go ([`ModuleHold`]), never under another pool, probe or token initialisation of the
/// same process.
static MODULE_LOCK: Mutex<Vec<(PathBuf, usize)>> = Mutex::new(Vec::new());

fn module_users() -> MutexGuard<'static, Vec<(PathBuf, usize)>> {
    MODULE_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// One user's hold on an initialised module. Every [`load_module`] gives one; dropping the last
/// hold of a module finalises it (C_Finalize), so that the next user initialises it afresh and
/// sees a token that came back (kryoptic reads its database at C_Initialize).
#[derive(Debug)]
pub(crate) struct ModuleHold {
    path: PathBuf,
    pkcs11: Option<Pkcs11>,
}

impl Drop for ModuleHold {
    fn drop(&mut self) {
        let mut users = module_users();
        let Some(i) = users.iter().position(|(m, _)| *m == self.path) else { return };
        users[i].1 -= 1;
        if users[i].1 > 0 {
            return;
        }
        users.swap_remove(i);
        if let Some(pkcs11) = self.pkcs11.take() {
            if let Err(e) = pkcs11.finalize() {
                tracing::debug!(module = %self.path.display(), error = %e, "C_Finalize");
            }
        }
    }
}

/// Loads `module` and initialises it, accepting a module another part of the process initialised.
/// Also returns the module's raw function list ([`Raw`]) and the caller's [`ModuleHold`]: keep it
/// as long as any session or handle of the module is in use.
pub(crate) fn load_module(module: &Path) -> Result<(Pkcs11, Raw, ModuleHold), HsmError> {
    if !module.is_file() {
        return Err(HsmError::ModuleMissing(module.to_path_buf()));
    }
    let mut users = module_users();
    let pkcs11 = Pkcs11::new(module)
        .map_err(|e| HsmError::ModuleLoad { path: module.to_path_buf(), detail: e.to_string() })?;
    let raw = Raw::load(module).map_err(|detail| HsmError::ModuleLoad { path: module.to_path_buf(), detail })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(HsmError::Init { module: module.to_path_buf(), detail: init_diagnosis(&e) }),
    }
    match users.iter_mut().find(|(m, _)| m == module) {
        Some((_, n)) => *n += 1,
        None => users.push((module.to_path_buf(), 1)),
    }
    let hold = ModuleHold { path: module.to_path_buf(), pkcs11: Some(pkcs11.clone()) };
    Ok((pkcs11, raw, hold))
}

/// Where the HSM is and how many sessions to keep.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (for SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so).
    pub module: PathBuf,
    /// Label of the token that holds medgate's keys.
    pub token_label: String,
    /// Sessions in the pool; size it to the number of worker threads.
    pub pool_size: usize,
}

/// Choices beyond [`HsmConfig`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HsmOptions {
    /// Make new KEK versions AES-GCM keys, and refuse the role on a module without AES-GCM.
    /// (AES-GCM is already the choice wherever the module offers it.) A KEK version keeps the
    /// scheme it was made with.
    pub kek_aes_gcm: bool,
    /// Make new KEK versions RFC 5649 key-wrapping keys even where the module offers AES-GCM:
    /// for sites whose HSM policy wants data keys re-wrapped inside the HSM only, at three
    /// PKCS#11 calls per record instead of two.
    pub kek_rfc5649: bool,
    /// How long transport keys live and how many are kept ([`crate::TransportLimits`]).
    pub transport: crate::TransportLimits,
}

/// The kinds of operations counted in [`HsmStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sign,
    Wrap,
    Unwrap,
    Hmac,
    Random,
    Admin,
}

impl Op {
    const ALL: [Op; 6] = [Op::Sign, Op::Wrap, Op::Unwrap, Op::Hmac, Op::Random, Op::Admin];
    fn name(self) -> &'static str {
        match self {
            Op::Sign => "sign",
            Op::Wrap => "wrap",
            Op::Unwrap => "unwrap",
            Op::Hmac => "hmac",
            Op::Random => "random",
            Op::Admin => "admin",
        }
    }
}

const ERROR_KINDS: [&str; 12] = [
    "module", "init", "token_missing", "wrong_pin", "pin_locked", "key_missing",
    "mechanism_not_allowed", "integrity", "unavailable", "invalid", "device", "other",
];

#[derive(Debug, Default)]
struct Counters {
    ops: [AtomicU64; 6],
    errors: [AtomicU64; 12],
    calls: AtomicU64,
    pool_waits: AtomicU64,
    pool_wait_ns: AtomicU64,
    recoveries: AtomicU64,
    logins: AtomicU64,
    transport_made: AtomicU64,
    transport_received: AtomicU64,
}

/// A snapshot of the HSM counters, for metrics and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct HsmStats {
    /// Successful operations by kind (sign, wrap, unwrap, hmac, random, admin).
    pub ops: Vec<(&'static str, u64)>,
    /// Failed operations by error kind.
    pub errors: Vec<(&'static str, u64)>,
    /// PKCS#11 function calls made (C_Sign, C_WrapKey, C_FindObjects, ...).
    pub pkcs11_calls: u64,
    /// Times a caller had to wait for a free session, and the total time waited.
    pub pool_waits: u64,
    pub pool_wait_seconds: f64,
    /// Times the module was re-initialised after the device or session was lost.
    pub recoveries: u64,
    /// C_Login calls made. A rejected PIN is never presented twice.
    pub login_attempts: u64,
    /// Transport keys made for peers (`made`) and unwrapped from peers (`received`).
    pub transport_keys: Vec<(&'static str, u64)>,
}

/// Key handles by (role, version asked for, object class) → (version, handle).
type KeyCache = HashMap<(Role, Option<u32>, u64), (u32, ObjectHandle)>;

/// One connection to the module: the loaded library, the slot, what the token can do, and the key
/// handles found in it. Handles are only valid for the connection that found them.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// This connection's hold on the module, released when the `Ctx` goes or, at once, when the
    /// pool drops the connection ([`Ctx::release`]). The module is finalised when the last hold
    /// in the process goes.
    hold: Mutex<Option<ModuleHold>>,
    pub(crate) pkcs11: Pkcs11,
    pub(crate) raw: Raw,
    pub(crate) slot: Slot,
    pub(crate) profile: Arc<Profile>,
    generation: u64,
    keys: Mutex<KeyCache>,
    /// How each KEK object (by handle) wraps, read from its attributes once.
    pub(crate) kek_schemes: Mutex<HashMap<u64, KekScheme>>,
    /// The last readiness verdict, until the keys change.
    pub(crate) readiness: Mutex<Option<Vec<crate::profile::RoleStatus>>>,
    /// Set once the module refused CKA_SENSITIVE=false / CKA_EXTRACTABLE=true in the template of
    /// an unwrapped data key (openCryptoki: CKR_ATTRIBUTE_READ_ONLY); they are then left to the
    /// module's defaults.
    pub(crate) data_key_defaults: std::sync::atomic::AtomicBool,
    /// Transport keys made for peers and received from them (session objects of this connection).
    pub(crate) transport: crate::held::Cache,
}

#[derive(Debug)]
struct State {
    ctx: Option<Arc<Ctx>>,
    generation: u64,
    idle: Vec<Session>,
    open: usize,
    last_attempt: Option<Instant>,
    last_failure: Option<String>,
    pin_refused: Option<PinRefusal>,
}

#[derive(Debug, Clone, Copy)]
enum PinRefusal {
    Wrong,
    Locked,
}

/// The HSM as the gateway sees it: typed operations over a pool of sessions. `Hsm` is `Send + Sync`;
/// share it in an `Arc`. Every operation blocks the calling thread for one or a few PKCS#11
/// calls; async callers use `spawn_blocking`.
#[derive(Debug)]
pub struct Hsm {
    cfg: HsmConfig,
    options: HsmOptions,
    pin: Pin,
    state: Mutex<State>,
    freed: Condvar,
    counters: Counters,
    /// What the current connection can do with transport keys ([`TRANSPORT_MAKE`],
    /// [`TRANSPORT_RECEIVE`]), read without the state lock, which a reconnection holds.
    transport: AtomicU8,
}

/// The connection can make transport keys and seal data keys under them (a custodian).
pub(crate) const TRANSPORT_MAKE: u8 = 1;
/// The connection can open data keys sealed under a peer's transport key (a requester).
pub(crate) const TRANSPORT_RECEIVE: u8 = 2;

/// Failures inside an operation: either straight from the module (with what the operation was
/// doing, when known), or already typed.
#[derive(Debug)]
pub(crate) enum Fail {
    P11(P11Error, Option<OpCtx>),
    Hsm(HsmError),
}

impl From<P11Error> for Fail {
    fn from(e: P11Error) -> Self {
        Fail::P11(e, None)
    }
}

impl Fail {
    /// Attaches the role, operation and mechanism to a module error.
    /// What an operation's failure says: its role, the operation and the mechanism's name (made
    /// only when the operation fails, not on every call).
    pub(crate) fn with(role: Role, operation: &'static str, mechanism: cryptoki_sys::CK_MECHANISM_TYPE) -> impl Fn(P11Error) -> Fail {
        move |e| Fail::P11(e, Some(OpCtx { role, operation, mechanism: crate::profile::mechanism_name(mechanism) }))
    }
}
impl From<HsmError> for Fail {
    fn from(e: HsmError) -> Self {
        Fail::Hsm(e)
    }
}

/// A session taken from the pool for one operation.
struct Lease<'a> {
    hsm: &'a Hsm,
    session: Option<Session>,
    ctx: Arc<Ctx>,
}

impl Lease<'_> {
    fn session(&self) -> &Session {
        self.session.as_ref().expect("a lease holds its session until dropped")
    }
    /// The session is unusable (device lost): do not return it to the pool.
    fn discard(mut self) {
        self.session = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.hsm.lock();
        let current = st.ctx.as_ref().is_some_and(|c| c.generation == self.ctx.generation);
        match self.session.take() {
            Some(s) if current => st.idle.push(s),
            // A discarded session, or one of an old connection: forget it (no C_CloseSession).
            _ if current => st.open = st.open.saturating_sub(1),
            _ => {}
        }
        drop(st);
        self.hsm.freed.notify_one();
    }
}

impl Hsm {
    /// Loads the module, finds the token, logs in and opens the first session. Errors name the
    /// module path, the token label or the SoftHSM configuration that is at fault.
    pub fn open(cfg: HsmConfig, pin: Pin) -> Result<Hsm, HsmError> {
        Hsm::open_with(cfg, pin, HsmOptions::default())
    }

    /// As [`Hsm::open`], with [`HsmOptions`].
    pub fn open_with(cfg: HsmConfig, pin: Pin, options: HsmOptions) -> Result<Hsm, HsmError> {
        let cfg = HsmConfig { pool_size: cfg.pool_size.max(1), ..cfg };
        let hsm = Hsm {
            cfg,
            options,
            pin,
            state: Mutex::new(State {
                ctx: None,
                generation: 0,
                idle: Vec::new(),
                open: 0,
                last_attempt: None,
                last_failure: None,
                pin_refused: None,
            }),
            freed: Condvar::new(),
            counters: Counters::default(),
            transport: AtomicU8::new(0),
        };
        {
            let mut st = hsm.lock();
            hsm.connect(&mut st)?;
        }
        tracing::info!(module = %hsm.cfg.module.display(), token = %hsm.cfg.token_label, pool = hsm.cfg.pool_size, "HSM logged in");
        Ok(hsm)
    }

    pub fn config(&self) -> &HsmConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters behind; the state stays valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connect(&self, st: &mut State) -> Result<(), HsmError> {
        match st.pin_refused {
            Some(PinRefusal::Wrong) => return Err(HsmError::WrongPin),
            Some(PinRefusal::Locked) => return Err(HsmError::PinLocked),
            None => {}
        }
        if let (Some(t), Some(why)) = (st.last_attempt, &st.last_failure) {
            if t.elapsed() < RECONNECT_INTERVAL {
                return Err(HsmError::Unavailable(why.clone()));
            }
        }
        st.last_attempt = Some(Instant::now());
        match self.try_connect(st.generation) {
            Ok((ctx, session)) => {
                let p = &ctx.profile;
                let abilities = if p.can_make_transport_keys() { TRANSPORT_MAKE } else { 0 } | if p.can_receive_transport_keys() { TRANSPORT_RECEIVE } else { 0 };
                self.transport.store(abilities, Ordering::Relaxed);
                st.generation = ctx.generation;
                st.ctx = Some(Arc::new(ctx));
                st.idle.push(session);
                st.open = 1;
                st.last_failure = None;
                Ok(())
            }
            Err(e) => {
                match e {
                    HsmError::WrongPin => st.pin_refused = Some(PinRefusal::Wrong),
                    HsmError::PinLocked => st.pin_refused = Some(PinRefusal::Locked),
                    _ => {}
                }
                st.last_failure = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn try_connect(&self, generation: u64) -> Result<(Ctx, Session), HsmError> {
        // On every failure below the hold is dropped: the module is finalised if nothing else in
        // the process uses it, so that the next attempt sees a token that came back (some
        // modules, kryoptic among them, read their token list only at C_Initialize).
        let (pkcs11, raw, hold) = load_module(&self.cfg.module)?;
        let slot = find_token(&pkcs11, &raw, &self.cfg.module, &self.cfg.token_label)?;
        let info = raw.token_info(slot.id()).map_err(|e| map_op_error(e, None))?;
        if info.flags & cryptoki_sys::CKF_USER_PIN_LOCKED != 0 {
            return Err(HsmError::PinLocked);
        }
        if info.flags & cryptoki_sys::CKF_USER_PIN_FINAL_TRY != 0 {
            return Err(HsmError::PinFinalTry);
        }
        let session = pkcs11.open_rw_session_no_drop(slot).map_err(|e| map_op_error(e, None))?;
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        match session.login(UserType::User, Some(&self.pin.to_auth())) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                let _ = session.close();
                tracing::error!(token = %self.cfg.token_label, "HSM rejected the user PIN; not retrying");
                return Err(HsmError::WrongPin);
            }
            Err(P11Error::Pkcs11(RvError::PinLocked, _)) => {
                let _ = session.close();
                return Err(HsmError::PinLocked);
            }
            Err(e) => {
                let _ = session.close();
                return Err(map_op_error(e, None));
            }
        }
        let profile = match crate::profile::profile_of(&raw, slot, Some(&session)) {
            Ok(mut p) => {
                if self.options.kek_rfc5649 {
                    p.prefer_rfc5649_for_kek();
                }
                if self.options.kek_aes_gcm {
                    p.prefer_aes_gcm_for_kek();
                }
                p
            }
            Err(e) => {
                let _ = session.close();
                return Err(map_op_error(e, None));
            }
        };
        for (role, plan) in &profile.roles {
            match plan {
                Ok(p) => tracing::debug!(%role, how = %p.how, "HSM role plan"),
                Err(r) => tracing::warn!(%role, module = %self.cfg.module.display(), refusal = %r, "this token cannot hold the role"),
            }
        }
        for a in profile.template.adaptations() {
            tracing::info!(module = %self.cfg.module.display(), adaptation = %a, "key template adapted to the module");
        }
        let ctx = Ctx {
            hold: Mutex::new(Some(hold)),
            pkcs11,
            raw,
            slot,
            profile: Arc::new(profile),
            generation: generation + 1,
            keys: Mutex::new(HashMap::new()),
            kek_schemes: Mutex::new(HashMap::new()),
            readiness: Mutex::new(None),
            data_key_defaults: std::sync::atomic::AtomicBool::new(false),
            transport: crate::held::Cache::default(),
        };
        Ok((ctx, session))
    }

    /// Drops the connection of `generation` (if it is still the current one) and finalises the
    /// module so that the next lease initialises it afresh.
    fn reset(&self, generation: u64) {
        let mut st = self.lock();
        let Some(ctx) = st.ctx.as_ref() else { return };
        if ctx.generation != generation {
            return;
        }
        let ctx = st.ctx.take();
        self.transport.store(0, Ordering::Relaxed);
        // Forget the sessions: after re-initialisation their handles may name new sessions.
        st.idle.clear();
        st.open = 0;
        st.last_attempt = None;
        st.last_failure = None;
        self.counters.recoveries.fetch_add(1, Ordering::Relaxed);
        // Release the module now, even while other threads' leases still hold the old `Ctx`:
        // if no other user of the process holds it, it is finalised and the next lease
        // initialises it afresh (a restarted HSM needs that); the old leases then fail and are
        // forgotten.
        if let Some(ctx) = ctx {
            ctx.release();
        }
        drop(st);
        self.freed.notify_all();
    }

    fn lease(&self) -> Result<Lease<'_>, HsmError> {
        let mut st = self.lock();
        let mut waited: Option<Instant> = None;
        loop {
            if st.ctx.is_none() {
                let reconnecting = st.generation > 0;
                if let Err(e) = self.connect(&mut st) {
                    return Err(match e {
                        HsmError::WrongPin | HsmError::PinLocked | HsmError::PinFinalTry => e,
                        HsmError::Unavailable(_) => e,
                        other if reconnecting => HsmError::Unavailable(other.to_string()),
                        other => other,
                    });
                }
                if reconnecting {
                    tracing::warn!(token = %self.cfg.token_label, "HSM connection re-established");
                }
            }
            let ctx = st.ctx.clone().expect("connected above");
            if let Some(session) = st.idle.pop() {
                self.note_wait(waited);
                return Ok(Lease { hsm: self, session: Some(session), ctx });
            }
            if st.open < self.cfg.pool_size {
                match ctx.pkcs11.open_rw_session_no_drop(ctx.slot) {
                    Ok(session) => {
                        st.open += 1;
                        self.note_wait(waited);
                        return Ok(Lease { hsm: self, session: Some(session), ctx });
                    }
                    Err(e) if is_connection_lost(&e) => {
                        drop(st);
                        self.reset(ctx.generation);
                        st = self.lock();
                        continue;
                    }
                    Err(e) => return Err(map_op_error(e, None)),
                }
            }
            if waited.is_none() {
                waited = Some(Instant::now());
                self.counters.pool_waits.fetch_add(1, Ordering::Relaxed);
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn note_wait(&self, since: Option<Instant>) {
        if let Some(t) = since {
            self.counters.pool_wait_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Runs one operation on a pooled session. If the module reports the connection lost, the
    /// pool re-initialises and, when `retry` is set, runs the operation once more.
    pub(crate) fn run<T>(
        &self,
        op: Op,
        calls: u64,
        retry: bool,
        f: impl Fn(&Session, &Ctx) -> Result<T, Fail>,
    ) -> Result<T, HsmError> {
        let _shared = TOKEN_OBJECTS.read().unwrap_or_else(|p| p.into_inner());
        self.count(op, calls, self.run_inner(op, retry, f))
    }

    /// As [`Hsm::run`], for an operation that creates, changes or destroys token objects: no
    /// other operation of this process runs meanwhile.
    pub(crate) fn run_exclusive<T>(&self, calls: u64, f: impl Fn(&Session, &Ctx) -> Result<T, Fail>) -> Result<T, HsmError> {
        let _exclusive = TOKEN_OBJECTS.write().unwrap_or_else(|p| p.into_inner());
        self.count(Op::Admin, calls, self.run_inner(Op::Admin, false, f))
    }

    fn count<T>(&self, op: Op, calls: u64, result: Result<T, HsmError>) -> Result<T, HsmError> {
        match &result {
            Ok(_) => {
                self.counters.ops[op as usize].fetch_add(1, Ordering::Relaxed);
                self.counters.calls.fetch_add(calls, Ordering::Relaxed);
            }
            Err(e) => {
                let i = ERROR_KINDS.iter().position(|k| *k == e.kind()).unwrap_or(ERROR_KINDS.len() - 1);
                self.counters.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn run_inner<T>(&self, op: Op, retry: bool, f: impl Fn(&Session, &Ctx) -> Result<T, Fail>) -> Result<T, HsmError> {
        let attempts = if retry { 2 } else { 1 };
        let mut last = None;
        let mut stale = 0;
        let mut attempt = 0;
        while attempt < attempts {
            let lease = self.lease()?;
            match f(lease.session(), &lease.ctx) {
                Ok(v) => return Ok(v),
                Err(Fail::P11(e, _)) if is_connection_lost(&e) => {
                    let generation = lease.ctx.generation;
                    lease.discard();
                    self.reset(generation);
                    tracing::warn!(op = op.name(), error = %e, attempt, "HSM connection lost; re-initialising the module");
                    last = Some(HsmError::Unavailable(format!("connection lost during {}: {e}", op.name())));
                    attempt += 1;
                }
                Err(Fail::P11(e, _)) if retry && is_handle_stale(&e) && stale < STALE_HANDLE_RETRIES => {
                    lease.ctx.clear_keys();
                    drop(lease);
                    stale += 1;
                    tracing::debug!(op = op.name(), error = %e, stale, "key handle invalid; looking the keys up again");
                    std::thread::sleep(STALE_HANDLE_WAIT);
                }
                Err(Fail::P11(e, ctx)) => return Err(map_op_error(e, ctx.as_ref())),
                Err(Fail::Hsm(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HsmError::Unavailable("no attempt made".into())))
    }

    /// The token's profile: what medgate decided for each role on this module.
    pub fn profile(&self) -> Result<Arc<Profile>, HsmError> {
        self.run(Op::Admin, 0, true, |_, ctx| Ok(ctx.profile.clone()))
    }

    /// Whether the current connection can do `ability` with transport keys; false while the
    /// HSM is not connected. Takes no lock and makes no PKCS#11 call.
    pub(crate) fn transport_ability(&self, ability: u8) -> bool {
        self.transport.load(Ordering::Relaxed) & ability == ability
    }

    /// Takes `ability` away from the current connection (the module refused a transport key).
    pub(crate) fn withdraw_transport_ability(&self, ability: u8) {
        self.transport.fetch_and(!ability, Ordering::Relaxed);
    }

    /// How long transport keys live and how many are kept, as this pool was opened with.
    pub(crate) fn transport_limits(&self) -> crate::TransportLimits {
        self.options.transport
    }

    /// The module path, for messages.
    pub(crate) fn module(&self) -> &Path {
        &self.cfg.module
    }

    /// Forgets cached key handles, so the next operation sees keys rotated by the security officer.
    pub fn refresh_keys(&self) {
        if let Some(ctx) = self.lock().ctx.as_ref() {
            ctx.clear_keys();
        }
    }

    pub fn stats(&self) -> HsmStats {
        let c = &self.counters;
        HsmStats {
            ops: Op::ALL.iter().map(|o| (o.name(), c.ops[*o as usize].load(Ordering::Relaxed))).collect(),
            errors: ERROR_KINDS.iter().enumerate().map(|(i, k)| (*k, c.errors[i].load(Ordering::Relaxed))).collect(),
            pkcs11_calls: c.calls.load(Ordering::Relaxed),
            pool_waits: c.pool_waits.load(Ordering::Relaxed),
            pool_wait_seconds: c.pool_wait_ns.load(Ordering::Relaxed) as f64 / 1e9,
            recoveries: c.recoveries.load(Ordering::Relaxed),
            login_attempts: c.logins.load(Ordering::Relaxed),
            transport_keys: vec![("made", c.transport_made.load(Ordering::Relaxed)), ("received", c.transport_received.load(Ordering::Relaxed))],
        }
    }

    pub(crate) fn note_transport_key(&self, made: bool) {
        let c = if made { &self.counters.transport_made } else { &self.counters.transport_received };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_calls(&self, n: u64) {
        self.counters.calls.fetch_add(n, Ordering::Relaxed);
    }

    /// Closes every session and lets go of the module, which is finalised unless another user
    /// in the process (another pool, a probe) still holds it. Call once at shutdown.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        for s in st.idle.drain(..) {
            let _ = s.close();
        }
        st.open = 0;
        self.transport.store(0, Ordering::Relaxed);
        if let Some(ctx) = st.ctx.take() {
            ctx.release();
        }
        tracing::info!("HSM sessions closed and module released");
    }
}

impl Drop for Hsm {
    /// Closes the idle sessions of the current connection; the connection's hold on the module
    /// goes with it, so the module is finalised when this was its last user in the process.
    fn drop(&mut self) {
        let mut st = self.lock();
        for s in st.idle.drain(..) {
            let _ = s.close();
        }
    }
}

impl Ctx {
    /// Lets go of the module now (see [`ModuleHold`]); the connection's handles are dead after.
    fn release(&self) {
        drop(self.hold.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// The handle of a key of `role`: the given version, or the active one (`None`). `class` is the
    /// object class wanted (private, public, secret key or certificate). Handles are cached for
    /// the life of the connection.
    pub(crate) fn key(
        &self,
        hsm: &Hsm,
        s: &Session,
        role: Role,
        version: Option<u32>,
        class: ObjectClass,
    ) -> Result<(u32, ObjectHandle), Fail> {
        let cache_key = (role, version, u64::from(class));
        if let Some(hit) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(*hit);
        }
        let found = find_keys(hsm, s, class)?;
        let pick = found
            .into_iter()
            .filter(|(l, _)| l.role == role && !l.retired)
            .filter(|(l, _)| version.is_none_or(|v| v == l.version))
            .max_by_key(|(l, _)| l.version);
        let Some((label, handle)) = pick else {
            let detail = match version {
                Some(v) => format!(" (version {v}, not retired)"),
                None => String::new(),
            };
            return Err(HsmError::KeyMissing { role, detail }.into());
        };
        let hit = (label.version, handle);
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, hit);
        Ok(hit)
    }

    pub(crate) fn clear_keys(&self) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.kek_schemes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Every medgate key object of `class` with its parsed label.
pub(crate) fn find_keys(hsm: &Hsm, s: &Session, class: ObjectClass) -> Result<Vec<(Label, ObjectHandle)>, Fail> {
    let found = find_keys_in(s, class)?;
    hsm.add_calls(3 + found.len() as u64);
    Ok(found)
}

/// [`find_keys`] without counting the calls.
pub(crate) fn find_keys_in(s: &Session, class: ObjectClass) -> Result<Vec<(Label, ObjectHandle)>, Fail> {
    // Token objects only: the data keys that other sessions create and destroy while wrapping
    // are session objects of the same class, and reading the label of one that another thread
    // has just destroyed fails with CKR_OBJECT_HANDLE_INVALID.
    let handles = s.find_objects(&[cryptoki::object::Attribute::Class(class), cryptoki::object::Attribute::Token(true)])?;
    let mut out = Vec::new();
    for h in handles {
        let attrs = s.get_attributes(h, &[AttributeType::Label])?;
        for a in attrs {
            if let cryptoki::object::Attribute::Label(l) = a {
                if let Some(label) = std::str::from_utf8(&l).ok().and_then(Label::parse) {
                    out.push((label, h));
                }
            }
        }
    }
    Ok(out)
}

/// The slot whose token is labelled `label`. Token information is read field by field
/// ([`Raw::token_info`]), so a token whose clock cryptoki cannot parse is still found; a slot
/// whose token information the module cannot give at all is reported with the module's error
/// rather than skipped, when no other slot has the token.
pub(crate) fn find_token(pkcs11: &Pkcs11, raw: &Raw, module: &Path, label: &str) -> Result<Slot, HsmError> {
    let slots = pkcs11.get_slots_with_token().map_err(|e| map_op_error(e, None))?;
    let mut unreadable = None;
    for slot in slots {
        match raw.token_info(slot.id()) {
            Ok(info) if info.label == label => return Ok(slot),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(module = %module.display(), slot = slot.id(), error = %e, "token information unreadable");
                unreadable.get_or_insert((slot.id(), e.to_string()));
            }
        }
    }
    match unreadable {
        Some((slot, detail)) => Err(HsmError::TokenInfo { module: module.to_path_buf(), slot, label: label.to_owned(), detail }),
        None => Err(HsmError::TokenMissing(label.to_owned())),
    }
}

/// Turns the opaque CKR_GENERAL_ERROR that SoftHSM gives for a bad configuration into a message
/// that names the file or directory at fault.
fn init_diagnosis(e: &P11Error) -> String {
    let mut msg = e.to_string();
    if let P11Error::Pkcs11(RvError::GeneralError, _) = e {
        msg = "CKR_GENERAL_ERROR".into();
        if let Some(conf) = std::env::var_os("SOFTHSM2_CONF") {
            let conf = PathBuf::from(conf);
            match std::fs::read_to_string(&conf) {
                Err(err) => return format!("{msg}: SOFTHSM2_CONF file {} cannot be read: {err}", conf.display()),
                Ok(text) => {
                    if let Some(dir) = text.lines().find_map(|l| {
                        let l = l.trim();
                        l.strip_prefix("directories.tokendir").map(|r| r.trim_start_matches([' ', '=']).trim().to_owned())
                    }) {
                        if let Err(err) = std::fs::read_dir(Path::new(&dir)) {
                            return format!("{msg}: token directory {dir} (from {}) cannot be read: {err}", conf.display());
                        }
                    }
                    return format!("{msg}: check SOFTHSM2_CONF file {} and its token directory", conf.display());
                }
            }
        }
        msg.push_str(": check the module's configuration file and token directory");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn a_failed_operation_names_its_mechanism() {
        let fail = Fail::with(Role::Ledger, "sign", cryptoki_sys::CKM_ECDSA)(P11Error::Pkcs11(RvError::KeyFunctionNotPermitted, Function::SignInit));
        let Fail::P11(e, Some(ctx)) = fail else { panic!("the failure keeps its context") };
        assert_eq!((ctx.role, ctx.operation, ctx.mechanism.as_str()), (Role::Ledger, "sign", "CKM_ECDSA (0x1041)"));
        let text = map_op_error(e, Some(&ctx)).to_string();
        assert!(text.contains("CKM_ECDSA (0x1041)") && text.contains("CKR_KEY_FUNCTION_NOT_PERMITTED"), "{text}");
    }
}
