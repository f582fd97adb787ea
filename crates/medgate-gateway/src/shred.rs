//! Crypto-shredding everywhere. An erasure removes the record's wrapped data key from the vault
//! at once, but every copy of the store taken before (backups, and sled's own log files until
//! they are rewritten) still holds it, and the KEK version that wrapped it is still in the HSM. A
//! shred pass closes that: it rotates the KEK, re-wraps every live record's data key under the new
//! version (inside the HSM), and destroys the old versions once no live record needs them. After
//! that, no copy of any data key wrapped before the pass can be unwrapped: not the erased
//! record's, and not the live records' either, so backups taken before the pass are unreadable.
//!
//! Boundary: the erasure's own transaction leaves a durable marker in the vault
//! ([`Vault::shred_pending`]); [`run`] makes passes while it is set, one at a time, and clears it
//! with compare-and-swap, so erasures that arrive during a pass cause exactly one more pass, and a
//! gateway stopped or killed during a pass makes it again at the next start. Ingest holds
//! [`Shredder::sealing`] shared from its data-key wrap until the record is stored; a pass holds it
//! exclusively while it rotates, so once the rotation is done no record wrapped by an old version
//! can still be on its way into the vault.
//!
//! Key events (the rotation, each destruction) are journalled and put on the ledger exactly as
//! the officer's `medgate keys rotate` and `destroy` do, by the officer `medgate-shred-pass`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medgate_hsm::{Hsm, KeyInfo, Role};
use medgate_store::order::BoxFuture;
use medgate_store::vault::{Rewrap, Vault};
use medgate_store::StoreError;
use tokio::sync::{watch, Notify, RwLock, RwLockReadGuard};

use crate::metrics::Gauge;

/// What a shred pass needs from the gateway that hosts it: the HSM, the vault, the shredding
/// state, a place to count, and a way to put the key events it journals on the ledger.
pub trait ShredHost: Send + Sync + 'static {
    /// The HSM whose KEK is rotated and destroyed.
    fn hsm(&self) -> &Arc<Hsm>;
    /// The vault whose records are re-wrapped.
    fn vault(&self) -> &Vault;
    /// The gate and status shared with ingest.
    fn shredder(&self) -> &Arc<Shredder>;
    /// Adds `n` to the counter `name`.
    fn count(&self, name: &str, n: u64);
    /// Puts the journalled key events on the ledger; how many were new.
    fn anchor_key_events<'a>(&'a self, state_dir: &'a Path) -> BoxFuture<'a, Result<usize, String>>;
}

/// The officer named in the key events a shred pass journals.
pub const OFFICER: &str = medgate_ledger::officers::SHRED_PASS;

/// First wait before a failed or incomplete pass is tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// The marker is checked this often even when nothing wakes the task.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// The KEK version every live record is wrapped by (or below) afterwards.
    pub kek_version: u32,
    /// False when an earlier, interrupted pass had already rotated for the same erasures.
    pub rotated: bool,
    /// Records looked at, and those whose data key was re-wrapped.
    pub scanned: usize,
    pub rewrapped: usize,
    /// Time spent re-wrapping (HSM and store, flush included).
    pub rewrap_time: Duration,
    /// KEK versions destroyed.
    pub destroyed: Vec<u32>,
    /// KEK versions that had to stay, with the number of live records they still wrap.
    pub kept: Vec<(u32, usize)>,
    /// The whole pass.
    pub duration: Duration,
}

impl PassReport {
    /// Records re-wrapped per second of re-wrapping.
    pub fn rewrap_rate(&self) -> f64 {
        self.rewrapped as f64 / self.rewrap_time.as_secs_f64().max(1e-9)
    }
}

/// Where shredding stands, for `/readyz`, `/metrics` and `medgate bench`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub running: bool,
    pub passes: u64,
    pub last: Option<PassReport>,
    pub last_error: Option<String>,
}

/// The gateway's shredding state: the seal gate, the wake-up, the status. One per gateway.
#[derive(Debug, Default)]
pub struct Shredder {
    sealing: RwLock<()>,
    wake: Notify,
    cancel: AtomicBool,
    status: Mutex<Status>,
}

impl Shredder {
    /// Held by ingest from the data-key wrap until the record is stored (see the module doc).
    pub async fn sealing(&self) -> RwLockReadGuard<'_, ()> {
        self.sealing.read().await
    }

    /// An erasure was committed: make a pass soon (passes coalesce).
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// Where shredding stands.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One line for `/readyz` (information; a pending shred does not make the gateway unready).
    pub fn readiness(&self, vault: &Vault) -> String {
        let st = self.status();
        match vault.shred_pending() {
            Ok(None) => "none pending".into(),
            Ok(Some(_)) => {
                let mut s = "pending: backups taken before the pass still hold erased records' keys".to_owned();
                if st.running {
                    s.push_str("; pass running");
                }
                if let Some(e) = st.last_error {
                    s.push_str("; last pass failed: ");
                    s.push_str(&e);
                }
                s
            }
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self, vault: &Vault) -> Vec<Gauge<'static>> {
        let st = self.status();
        let pending = matches!(vault.shred_pending(), Ok(Some(_)));
        let mut g: Vec<Gauge<'static>> = vec![(
            "medgate_shred_pending",
            "1 while an erasure waits for its shred pass (KEK rotation, re-wrap, old KEK versions destroyed).",
            vec![(String::new(), if pending { 1.0 } else { 0.0 })],
        )];
        if let Some(last) = st.last {
            g.push(("medgate_shred_last_pass_seconds", "Duration of the last completed shred pass.", vec![(String::new(), last.duration.as_secs_f64())]));
            g.push(("medgate_shred_last_pass_records", "Records re-wrapped by the last completed shred pass.", vec![(String::new(), last.rewrapped as f64)]));
        }
        g
    }
}

/// Sets the cancel flag when the task that owns it is dropped (the gateway stopping), so that a
/// re-wrap running on a blocking thread stops at the next record.
struct CancelOnDrop(Arc<Shredder>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel.store(true, Ordering::Relaxed);
    }
}

/// The background task: a pass whenever the marker is set, at start and after every erasure.
pub async fn run<H: ShredHost>(gateway: Arc<H>, state_dir: PathBuf, mut stop: watch::Receiver<bool>) {
    let shred = gateway.shredder().clone();
    let _cancel = CancelOnDrop(shred.clone());
    let mut retry: Option<Duration> = None;
    loop {
        retry = match passes(gateway.as_ref(), &state_dir).await {
            Ok(()) => None,
            Err(e) => {
                let wait = retry.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX));
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "shred pass did not finish; erased records stay readable from older copies of the store until it does");
                gateway.count("shred_pass_failures", 1);
                shred.update(|s| s.last_error = Some(e));
                Some(wait)
            }
        };
        tokio::select! {
            _ = shred.wake.notified() => {}
            _ = tokio::time::sleep(retry.unwrap_or(IDLE_CHECK)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Passes until the marker is clear (an erasure during a pass leaves it set: one more pass).
async fn passes<H: ShredHost>(gateway: &H, state_dir: &Path) -> Result<(), String> {
    loop {
        let Some(seen) = gateway.vault().shred_pending().map_err(|e| e.to_string())? else { return Ok(()) };
        gateway.shredder().update(|s| s.running = true);
        let result = pass(gateway, state_dir, seen).await;
        gateway.shredder().update(|s| s.running = false);
        let report = result?;
        gateway.count("shred_passes", 1);
        gateway.count("shred_rewrapped_records", report.rewrapped as u64);
        gateway.count("shred_kek_versions_destroyed", report.destroyed.len() as u64);
        let kept = report.kept.clone();
        gateway.shredder().update(|s| {
            s.passes += 1;
            s.last = Some(report.clone());
            s.last_error = None;
        });
        tracing::info!(
            kek_version = report.kek_version,
            rotated = report.rotated,
            scanned = report.scanned,
            rewrapped = report.rewrapped,
            destroyed = ?report.destroyed,
            rewrap_per_s = report.rewrap_rate().round(),
            duration_ms = report.duration.as_millis() as u64,
            "shred pass finished"
        );
        if !kept.is_empty() {
            let kept: Vec<String> = kept.iter().map(|(v, n)| format!("version {v} ({n} live records)")).collect();
            return Err(format!(
                "KEK kept, not destroyed: {}. Its records could not be re-wrapped (a retired KEK version, or records that fail their integrity check: see the errors logged)",
                kept.join(", ")
            ));
        }
        if gateway.vault().finish_shred(seen).map_err(|e| e.to_string())? {
            return Ok(());
        }
        tracing::info!("erasures arrived during the shred pass; one more pass");
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("shred task: {e}"))?
}

/// One pass for the erasures counted up to `seen`.
async fn pass<H: ShredHost>(gateway: &H, state_dir: &Path, seen: u64) -> Result<PassReport, String> {
    let started = Instant::now();
    let hsm = gateway.hsm().clone();
    let vault = gateway.vault().clone();

    // 1. A KEK version that never wrapped an erased record. An interrupted pass that already
    // rotated for these same erasures (no erasure since) is not rotated again.
    let remembered = vault.shred_rotation().map_err(|e| e.to_string())?;
    let h = hsm.clone();
    let active = blocking(move || active_kek(&h)).await?;
    let (kek_version, rotated) = match (remembered, active) {
        (Some((at, _)), Some(v)) if at == seen => (v, false),
        _ => {
            let exclusive = gateway.shredder().sealing.write().await;
            let h = hsm.clone();
            let info = blocking(move || h.rotate(Role::Kek).map_err(|e| format!("KEK rotation: {e}"))).await;
            drop(exclusive);
            let info = info?;
            journal(state_dir, "rotate", &info);
            vault.set_shred_rotation(seen, info.version).map_err(|e| e.to_string())?;
            (info.version, true)
        }
    };

    // 2. Every live record under an older version, re-wrapped under the new one; flushed.
    let t = Instant::now();
    let (h, v, shred) = (hsm.clone(), vault.clone(), gateway.shredder().clone());
    let (scanned, rewrapped) = blocking(move || rewrap_all(&h, &v, kek_version, &shred.cancel)).await?;
    let rewrap_time = t.elapsed();

    // 3. Old versions that no live record needs any more, destroyed.
    let (h, v) = (hsm.clone(), vault.clone());
    let (keys, live) = blocking(move || {
        Ok((h.list_keys().map_err(|e| e.to_string())?, v.live_kek_versions().map_err(|e| e.to_string())?))
    })
    .await?;
    let on_token: Vec<u32> = keys.iter().filter(|k| k.role == Role::Kek).map(|k| k.version).collect();
    let (destroy, kept) = plan(&on_token, kek_version, &live);
    let mut destroyed = Vec::new();
    for version in destroy {
        let Some(info) = keys.iter().find(|k| k.role == Role::Kek && k.version == version).cloned() else { continue };
        let h = hsm.clone();
        blocking(move || h.destroy(Role::Kek, version).map_err(|e| format!("destroying KEK version {version}: {e}"))).await?;
        journal(state_dir, "destroy", &info);
        destroyed.push(version);
    }
    match gateway.anchor_key_events(state_dir).await {
        Ok(n) if n > 0 => tracing::info!(events = n, "shred key events put on the ledger"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "shred key events journalled but not on the ledger yet; retried at the next start"),
    }
    Ok(PassReport { kek_version, rotated, scanned, rewrapped, rewrap_time, destroyed, kept, duration: started.elapsed() })
}

/// The active (highest, not retired) KEK version.
fn active_kek(hsm: &Hsm) -> Result<Option<u32>, String> {
    Ok(hsm.list_keys().map_err(|e| e.to_string())?.iter().filter(|k| k.role == Role::Kek && k.active).map(|k| k.version).max())
}

/// Re-wraps every live record under a version older than `below`, then flushes. Records that
/// cannot be re-wrapped are logged and left as they are (their version is then kept).
fn rewrap_all(hsm: &Hsm, vault: &Vault, below: u32, cancel: &AtomicBool) -> Result<(usize, usize), String> {
    let (mut scanned, mut rewrapped, mut failed) = (0, 0, 0usize);
    for id in vault.record_ids() {
        if cancel.load(Ordering::Relaxed) {
            return Err("the gateway is stopping; the pass resumes at the next start".into());
        }
        let id = id.map_err(|e| e.to_string())?;
        scanned += 1;
        match vault.rewrap_record(hsm, &id, below) {
            Ok(Rewrap::Done { .. }) => rewrapped += 1,
            Ok(Rewrap::Current) => {}
            Err(StoreError::Hsm(e)) if matches!(e, medgate_hsm::HsmError::Unavailable(_)) => return Err(e.to_string()),
            Err(e) => {
                failed += 1;
                if failed <= 10 {
                    tracing::error!(record = %id, error = %e, "record not re-wrapped; its KEK version cannot be destroyed");
                }
            }
        }
    }
    if failed > 10 {
        tracing::error!(failed, "records not re-wrapped in all (the first 10 are logged above)");
    }
    vault.flush_blocking().map_err(|e| e.to_string())?;
    Ok((scanned, rewrapped))
}

/// Which KEK versions on the token to destroy: every version older than `current` that no live
/// record is wrapped by. The others older than `current` are kept, with their live record count.
fn plan(on_token: &[u32], current: u32, live: &BTreeMap<u32, usize>) -> (Vec<u32>, Vec<(u32, usize)>) {
    let mut old: Vec<u32> = on_token.iter().copied().filter(|v| *v < current).collect();
    old.sort_unstable();
    old.dedup();
    let (kept, destroy): (Vec<u32>, Vec<u32>) = old.into_iter().partition(|v| live.get(v).is_some_and(|n| *n > 0));
    (destroy, kept.into_iter().map(|v| (v, live[&v])).collect())
}

/// Journals a key event as the officer's console does, so that it reaches the ledger.
fn journal(state_dir: &Path, action: &str, info: &KeyInfo) {
    if let Err(e) = crate::journal::record_event_by(Some(state_dir), OFFICER, action, info) {
        tracing::error!(action, version = info.version, error = %e, "key event not journalled; it is in this log only");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_versions_that_wrap_no_live_record_are_destroyed() {
        let live = BTreeMap::from([(2, 3), (5, 10)]);
        // Versions 1, 3 and 4 wrap nothing live; 2 still wraps 3 records; 5 is the current one;
        // 6 (made by an officer during the pass) is newer and never touched.
        assert_eq!(plan(&[4, 1, 2, 3, 5, 6], 5, &live), (vec![1, 3, 4], vec![(2, 3)]));
        assert_eq!(plan(&[5], 5, &live), (vec![], vec![]));
        assert_eq!(plan(&[], 5, &BTreeMap::new()), (vec![], vec![]));
        // A version a live record names but that is no longer on the token is nothing to destroy.
        assert_eq!(plan(&[3], 3, &BTreeMap::from([(1, 1)])), (vec![], vec![]));
        // A count of zero is no reference.
        assert_eq!(plan(&[1, 2], 2, &BTreeMap::from([(1, 0)])), (vec![1], vec![]));
    }

    #[tokio::test]
    async fn readiness_and_gauges_show_a_pending_shred() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = medgate_store::Db::open(dir.path()).expect("db");
        let vault = Vault::open(&db).expect("vault");
        let s = Shredder::default();
        assert_eq!(s.readiness(&vault), "none pending");
        assert_eq!(s.gauges(&vault)[0].2, vec![(String::new(), 0.0)]);
        let rec = medgate_store::vault::fixture::record("r1", 1);
        vault.erase(&rec, &medgate_store::vault::fixture::erasure(&rec)).await.expect("erase");
        assert!(s.readiness(&vault).starts_with("pending"), "{}", s.readiness(&vault));
        assert_eq!(s.gauges(&vault)[0].2, vec![(String::new(), 1.0)]);
        s.update(|st| st.last_error = Some("HSM unavailable".into()));
        assert!(s.readiness(&vault).ends_with("last pass failed: HSM unavailable"), "{}", s.readiness(&vault));
    }
}
