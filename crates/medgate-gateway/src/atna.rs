//! The IHE ATNA audit export wired into the gateway: every audited ledger entry this gateway
//! writes (stores and their SubmissionSets, status changes, searches, reads and refused reads,
//! erasures, consents, key events) also goes to the hospital's audit record repository through
//! `medgate-atna`'s exporter, syslog over mutual TLS with the HSM `tls` key.
//!
//! Boundary: the translation from ledger entries to the exporter's [`AuditEvent`]s, the ledger
//! as the exporter reads it back ([`ChainAuditSource`]), and the [`Feed`] the store calls after
//! each committed block (the store knows only its [`CommitListener`] trait). Positions are
//! `(block height, index of the entry among all the block's entries)`, the same in the feed and
//! in the catch-up, so a repeat is recognised by the exporter's cursor.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use medgate_atna::{Access, AuditEvent, ClientIdentity, EventDetail, Exporter, KeyAction, LedgerSource, Position, Requester};
use medgate_hsm::Hsm;
use medgate_ledger::{Block, Entry, EntryBody};
use medgate_store::{ChainStore, CommitListener};

use crate::config::Atna;

/// The exporter's view of one ledger entry; `None` for entries that are not audit events
/// (membership proposals and approvals) or that the exporter cannot name (an unknown key action).
pub fn to_audit_event(e: &Entry) -> Option<AuditEvent> {
    let by = |user: &str, role: &str, purpose: Option<&str>, hospital: &str| Requester {
        user: user.to_owned(),
        role: role.to_owned(),
        purpose: purpose.map(str::to_owned),
        hospital: hospital.to_owned(),
    };
    let detail = match &e.body {
        EntryBody::RecordAnchored { record_id, patient, custodian, user, role, purpose, .. } => {
            EventDetail::RecordStored { record_id: record_id.clone(), patient: patient.clone(), by: by(user, role, Some(purpose), custodian) }
        }
        EntryBody::ListAnchored { list_id, patient, record_ids, custodian, user, role, purpose, .. } => EventDetail::SubmissionSetStored {
            list_id: list_id.clone(),
            patient: patient.clone(),
            records: u32::try_from(record_ids.len()).unwrap_or(u32::MAX),
            by: by(user, role, Some(purpose), custodian),
        },
        EntryBody::RecordStatusChanged { record_id, patient, custodian, status, replaced_by, user, role } => EventDetail::RecordStatusChanged {
            record_id: record_id.clone(),
            patient: patient.clone(),
            status: status.clone(),
            replaced_by: replaced_by.clone(),
            by: by(user, role, None, custodian),
        },
        EntryBody::PatientSearched { patient, reader, user, role, purpose, results } => {
            EventDetail::PatientSearched { patient: patient.clone(), results: *results, by: by(user, role, Some(purpose), reader) }
        }
        EntryBody::RecordRead { record_id, patient, custodian, reader, user, role, purpose, granted, reason } => {
            let access = match (granted, reason.as_deref()) {
                (false, r) => Access::Denied { reason: r.unwrap_or("denied").to_owned() },
                (true, Some("break-glass")) => Access::BreakGlass,
                (true, _) => Access::Granted,
            };
            EventDetail::RecordRead { record_id: record_id.clone(), patient: patient.clone(), custodian: custodian.clone(), by: by(user, role, Some(purpose), reader), access }
        }
        EntryBody::RecordErased { record_id, patient, custodian, user, role } => {
            EventDetail::RecordErased { record_id: record_id.clone(), patient: patient.clone(), by: by(user, role, None, custodian) }
        }
        EntryBody::ConsentRecorded { consent_id, patient, custodian, grantee, user, role, .. } => EventDetail::ConsentRecorded {
            consent_id: consent_id.clone(),
            patient: patient.clone(),
            grantee: grantee.clone(),
            by: by(user, role, None, custodian),
        },
        EntryBody::ConsentRevoked { consent_id, patient, custodian, grantee, user, role } => EventDetail::ConsentWithdrawn {
            consent_id: consent_id.clone(),
            patient: patient.clone(),
            grantee: grantee.clone(),
            by: by(user, role, None, custodian),
        },
        EntryBody::KeyEvent { action, key_role, key_version, key_id, officer, .. } => EventDetail::KeyEvent {
            action: KeyAction::parse(action)?,
            key_role: key_role.clone(),
            key_version: *key_version,
            key_id: key_id.clone(),
            officer: officer.clone(),
        },
        // The officers' approvals and enrolments are the key events' context; ATNA gets the
        // key events themselves.
        EntryBody::KeyApproval { .. } | EntryBody::OfficerChanged { .. } | EntryBody::MembershipProposed { .. } | EntryBody::MembershipApproved { .. } => {
            return None
        }
    };
    Some(AuditEvent { entry_id: e.id.clone(), time: e.time.clone(), gateway: e.gateway.clone(), detail })
}

/// The audit events of `block` that gateway `me` wrote, with their index among all the block's
/// entries. Entries of a batch flagged invalid are skipped: their resubmission is the one that
/// counts, and it is reported when it lands.
pub fn block_events(block: &Block, me: &str) -> Vec<(u32, AuditEvent)> {
    let mut out = Vec::new();
    let mut index = 0u32;
    for (batch, valid) in block.batches.iter().zip(&block.valid) {
        for e in &batch.entries {
            if *valid && e.gateway == me {
                if let Some(a) = to_audit_event(e) {
                    out.push((index, a));
                }
            }
            index = index.saturating_add(1);
        }
    }
    out
}

/// The ledger as the exporter reads it when it catches up: this gateway's audit events, in
/// ledger order, from the chain store.
#[derive(Debug, Clone)]
pub struct ChainAuditSource {
    pub store: ChainStore,
    pub me: String,
}

impl LedgerSource for ChainAuditSource {
    fn events_after(&self, after: Option<Position>, max: usize) -> Result<Vec<(Position, AuditEvent)>, String> {
        let Some((last, _)) = self.store.head().map_err(|e| e.to_string())? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for height in after.map_or(0, |p| p.height)..=last {
            let block = self.store.block(height).map_err(|e| e.to_string())?.ok_or_else(|| format!("block {height} is missing from the chain store"))?;
            for (i, event) in block_events(&block, &self.me) {
                let at = Position::new(height, i);
                if after.is_none_or(|a| at > a) {
                    out.push((at, event));
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn head(&self) -> Result<Option<Position>, String> {
        Ok(self.store.head().map_err(|e| e.to_string())?.map(|(h, _)| Position::new(h, u32::MAX)))
    }
}

/// A block's audit events as offered to the exporter: its height, and each event's index in it.
type Offer = (u64, Vec<(u32, AuditEvent)>);

/// What the store calls after each committed block. Until the exporter is running, blocks are
/// held here (the exporter's cursor drops whatever it already has), so a block committed while
/// the exporter starts is not missed.
#[derive(Default)]
pub struct Feed {
    me: String,
    exporter: OnceLock<Arc<Exporter>>,
    early: Mutex<Vec<Offer>>,
    /// The exporter did not start: blocks are no longer held (the ledger keeps the events).
    abandoned: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("me", &self.me).field("running", &self.exporter.get().is_some()).finish_non_exhaustive()
    }
}

impl Feed {
    pub fn new(me: &str) -> Feed {
        Feed { me: me.to_owned(), ..Feed::default() }
    }

    /// Hands the blocks held so far to `exporter`, then every later one as it commits.
    pub fn run_with(&self, exporter: Arc<Exporter>) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        for (height, events) in early.drain(..) {
            exporter.offer(height, events);
        }
        let _ = self.exporter.set(exporter);
    }

    /// The exporter will not run in this process: stop holding blocks (the events stay on the
    /// ledger, and the next exporter that starts catches up from there).
    pub fn abandon(&self) {
        self.abandoned.store(true, std::sync::atomic::Ordering::SeqCst);
        self.early.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl CommitListener for Feed {
    fn committed(&self, block: &Block) {
        let events = block_events(block, &self.me);
        if events.is_empty() {
            return;
        }
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if self.abandoned.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        match self.exporter.get() {
            Some(x) => x.offer(block.height, events),
            None => early.push((block.height, events)),
        }
    }
}

/// Starts the exporter for `[atna]`: the client certificate chain with the HSM `tls` key for
/// mutual TLS, the queue in its directory, the chain store as the ledger to catch up from, and
/// `feed` (already listening on the store) connected to it.
pub async fn start(cfg: &Atna, his_certificate: &Path, state_directory: &Path, hospital: &str, hsm: &Arc<Hsm>, store: &ChainStore, feed: &Feed) -> Result<Arc<Exporter>, String> {
    let chain_path = cfg.client_cert.as_deref().unwrap_or(his_certificate);
    let chain = crate::tls::load_certs(chain_path).map_err(|e| format!("atna.client_cert: {e}"))?;
    let key = medgate_hsm::tls::HsmSigningKey::new(hsm.clone()).map_err(|e| format!("atna: the HSM tls key: {e}"))?;
    let ca_path = cfg.ca.as_deref().ok_or("atna.ca is not set")?;
    let ca = std::fs::read(ca_path).map_err(|e| format!("atna.ca: {}: {e}", ca_path.display()))?;
    let tls = medgate_atna::TlsClient::new(&ca, &cfg.server_name(), ClientIdentity::Key { chain, key: Arc::new(key) }).map_err(|e| format!("atna: {e}"))?;
    let dir = cfg.queue_dir(state_directory);
    let max = cfg.queue_max_messages;
    let queue = tokio::task::spawn_blocking(move || medgate_atna::FileQueue::open(&dir, max))
        .await
        .map_err(|e| format!("atna queue: {e}"))?
        .map_err(|e| format!("atna queue: {e}"))?;
    let source = Arc::new(ChainAuditSource { store: store.clone(), me: hospital.to_owned() });
    let exporter = Arc::new(Exporter::start(cfg.exporter_config(hospital), tls, Box::new(queue), source).await.map_err(|e| e.to_string())?);
    feed.run_with(exporter.clone());
    Ok(exporter)
}

/// The `medgate_atna_*` figures for `/metrics`: (counters, gauges).
pub fn metrics(exporter: &Exporter) -> (Vec<crate::metrics::Counter<'static>>, Vec<crate::metrics::Gauge<'static>>) {
    let s = exporter.stats();
    let one = |v: f64| vec![(String::new(), v)];
    let counters: Vec<crate::metrics::Counter<'static>> = vec![
        ("medgate_atna_sent_total", "Audit messages the repository confirmed.", one(s.sent_total as f64)),
        ("medgate_atna_resent_total", "Audit messages written again after a session broke.", one(s.resent_total as f64)),
        ("medgate_atna_failures_total", "Failed connections to the audit repository and broken sessions.", one(s.failed_total as f64)),
        ("medgate_atna_rejected_total", "Audit events refused by the shape check (never sent).", one(s.rejected_total as f64)),
    ];
    let mut gauges: Vec<crate::metrics::Gauge<'static>> = vec![
        ("medgate_atna_queue_depth", "Audit messages waiting for the repository (sent but unconfirmed included).", one(s.queue_depth as f64)),
        ("medgate_atna_queue_capacity", "Most audit messages the queue holds ([atna] queue_max_messages).", one(s.queue_capacity as f64)),
        ("medgate_atna_catching_up", "1 while audit events wait on the ledger rather than in the queue.", one(f64::from(u8::from(s.catching_up)))),
        ("medgate_atna_connected", "1 while a session to the audit repository is open.", one(f64::from(u8::from(s.connected)))),
    ];
    if let Some(age) = s.oldest_age {
        gauges.push(("medgate_atna_oldest_message_age_seconds", "How long the oldest waiting audit message has been queued.", one(age.as_secs_f64())));
    }
    (counters, gauges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gateway: &str, body: EntryBody) -> Entry {
        Entry::new(gateway, "2026-11-28T10:00:00Z", [7u8; 16], body)
    }

    fn read(granted: bool, reason: Option<&str>) -> EntryBody {
        EntryBody::RecordRead {
            record_id: "rec-1".into(),
            patient: "ab".repeat(32),
            custodian: "hospital-a".into(),
            reader: "hospital-b".into(),
            user: "cd".repeat(16),
            role: "physician".into(),
            purpose: "TREAT".into(),
            granted,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn reads_map_to_granted_break_glass_or_denied() {
        let access = |b| match to_audit_event(&entry("hospital-a", b)).map(|a| a.detail) {
            Some(EventDetail::RecordRead { access, by, .. }) => {
                assert_eq!(by.hospital, "hospital-b");
                access
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(access(read(true, None)), Access::Granted);
        assert_eq!(access(read(true, Some("break-glass"))), Access::BreakGlass);
        assert_eq!(access(read(false, Some("no-consent"))), Access::Denied { reason: "no-consent".into() });
    }

    #[test]
    fn membership_entries_and_unknown_key_actions_are_not_audit_events() {
        let approve = EntryBody::MembershipApproved { proposal_id: "a".repeat(32), approver: "hospital-a".into() };
        assert!(to_audit_event(&entry("hospital-a", approve)).is_none());
        let key = |action: &str| EntryBody::KeyEvent { action: action.into(), key_role: "kek".into(), key_version: 2, key_id: "0a".into(), officer: "o".into(), request: None };
        assert!(to_audit_event(&entry("hospital-a", key("export"))).is_none());
        let ok = to_audit_event(&entry("hospital-a", key("rotate"))).map(|a| a.detail);
        assert!(matches!(ok, Some(EventDetail::KeyEvent { action: KeyAction::Rotate, .. })), "{ok:?}");
        for (action, parsed) in [("change-pin", KeyAction::ChangePin), ("backup-init", KeyAction::BackupInit), ("backup", KeyAction::Backup), ("restore", KeyAction::Restore)] {
            let got = to_audit_event(&entry("hospital-a", key(action))).map(|a| a.detail);
            assert!(matches!(got, Some(EventDetail::KeyEvent { action: a, .. }) if a == parsed && a.as_str() == action), "{action}: {got:?}");
        }
    }

    #[test]
    fn only_this_gateways_entries_of_valid_batches_count_and_indexes_run_across_batches() {
        use medgate_ledger::UnsignedBatch;
        let mine = |n: u8| Entry::new("hospital-a", "2026-11-28T10:00:00Z", [n; 16], read(true, None));
        let theirs = Entry::new("hospital-b", "2026-11-28T10:00:00Z", [9; 16], read(true, None));
        let b1 = UnsignedBatch::new("hospital-a", 1, vec![mine(1), mine(2)]).sign(1, &[0u8; 64]);
        let b2 = UnsignedBatch::new("hospital-b", 1, vec![theirs]).sign(1, &[0u8; 64]);
        let b3 = UnsignedBatch::new("hospital-a", 2, vec![mine(3)]).sign(1, &[0u8; 64]);
        let b4 = UnsignedBatch::new("hospital-a", 3, vec![mine(4)]).sign(1, &[0u8; 64]);
        let block = Block { height: 5, prev_hash: "0".repeat(64), order_position: 1, batches: vec![b1, b2, b3, b4], valid: vec![true, true, true, false] };
        let got: Vec<u32> = block_events(&block, "hospital-a").into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, vec![0, 1, 3]);
    }
}
