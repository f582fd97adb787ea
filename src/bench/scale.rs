//! `medgate bench --scale 10000,100000,1000000`: how the costs grow with the ledger, not only
//! how fast the gateway stores. A throwaway site (SoftHSM token, keys, CA) and its gateway in
//! this process, as for the other measurements. One patient's documents are stored through the
//! real ITI-65 API over mutual TLS; the ledger is then grown step by step to each size with
//! real entries written through the gateway's own ledger writer ([`grow`]). After each step:
//! the ITI-67 search of that patient walked page by page over mutual TLS, the AuditEvent search
//! of a patient with a fixed number of entries, `ledger verify`'s check of the whole chain
//! (entries/s), the resident memory of the process after the step and its peak during the step
//! (the bulk writes included), and the store's size on disk. At the end, with the gateway
//! stopped, the `medgate ledger verify` command itself is timed on the final ledger. Logs are
//! quiet; a progress line per step goes to standard error.

mod grow;
mod table;
mod walk;

use std::path::Path;
use std::time::Instant;

use medgate_fhir::PatientId;
use medgate_gateway::config::Config;
use medgate_gateway::server::{Listeners, Running};

use super::ceiling::{load_average, rss_mib, PeakRss};
use super::load::Target;
use super::rt_err;
use crate::demo::Site;
use crate::exit::Failure;
use grow::{Audited, Grower};
use table::{ScaleReport, Step};

/// Entries of the audited patient.
const AUDITED: usize = 240;
/// Page size asked of both searches (the gateway's default page).
const PAGE: usize = medgate_fhir::search::DEFAULT_COUNT;
/// Walks of each search per ledger size.
const SEARCH_WALKS: usize = 10;
const AUDIT_WALKS: usize = 40;
/// HIS clients storing the searched patient's documents.
const STORE_CLIENTS: usize = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Ledger sizes (entries), increasing.
    pub sizes: Vec<usize>,
    /// Documents of the searched patient.
    pub documents: usize,
    /// Their size in bytes.
    pub size: usize,
    /// Print JSON instead of the table.
    pub json: bool,
}

fn patient(value: &str) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: value.into() }
}

pub fn run(opts: &ScaleOptions) -> Result<(), Failure> {
    if opts.sizes.is_empty() || opts.sizes.contains(&0) || !opts.sizes.windows(2).all(|w| w[0] < w[1]) || opts.documents == 0 || opts.size == 0 {
        return Err(Failure::usage("--scale takes increasing ledger sizes above zero (e.g. 10000,100000,1000000); --scale-documents and --size must be positive"));
    }
    let load_before = load_average();
    let (_dir, site, cfg, hsm) = super::throwaway_site("medgate-bench-scale")?;
    let mut report = ScaleReport {
        date: medgate_gateway::clock::now_rfc3339(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load_before,
        load_after: None,
        documents: opts.documents,
        document_bytes: opts.size,
        page_size: PAGE,
        documents_seconds: 0.0,
        audited_entries: AUDITED,
        search_walks: SEARCH_WALKS,
        audit_walks: AUDIT_WALKS,
        batch_max_entries: cfg.ledger.batch_max_entries,
        steps: Vec::new(),
        verify_command_seconds: None,
        verify_command_output: String::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(rt_err)?;
    let result = rt.block_on(async {
        let his = medgate_gateway::server::bind_tcp(site.his_addr).map_err(rt_err)?;
        let monitor = medgate_gateway::server::bind_tcp(site.admin_addr).map_err(rt_err)?;
        let admin = medgate_gateway::server::officers::bind(&cfg.admin.socket, None).map_err(rt_err)?;
        let running = Running::start(&cfg, hsm.clone(), Listeners { his, monitor, admin }).await.map_err(rt_err)?;
        let outcome = steps(opts, &site, &cfg, &running, &mut report).await;
        running.stop().await;
        outcome
    });
    drop(rt);
    hsm.shutdown();
    result?;
    eprintln!("medgate bench: scale: timing the `medgate ledger verify` command on the final ledger");
    match verify_command(&site.config) {
        Ok((secs, out)) => (report.verify_command_seconds, report.verify_command_output) = (Some(secs), out),
        Err(why) if why.contains("FAILED") => return Err(Failure::runtime(format!("medgate ledger verify on the grown ledger: {why}"))),
        Err(why) => report.verify_command_output = why,
    }
    report.load_after = load_average();
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(rt_err)?);
    } else {
        report.print_table();
    }
    Ok(())
}

/// Stores the searched patient's documents, then grows the ledger to each size and measures.
async fn steps(opts: &ScaleOptions, site: &Site, cfg: &Config, running: &Running, report: &mut ScaleReport) -> Result<(), Failure> {
    let target = Target { addr: site.his_addr, tls: site.his_tls()? };
    let (searched, audited) = (patient("scale-search"), patient("scale-audit"));
    eprintln!("medgate bench: scale: storing {} documents of one patient over mutual TLS ({STORE_CLIENTS} clients)", opts.documents);
    let started = Instant::now();
    walk::store_documents(&target, &searched, opts.documents, STORE_CLIENTS, opts.size).await.map_err(Failure::runtime)?;
    report.documents_seconds = started.elapsed().as_secs_f64();
    let gateway = &running.gateway;
    let (key_version, pseudonym) = gateway.patient_pseudonym(&audited).await.map_err(rt_err)?;
    let mut grower = Grower::new(gateway.ledger.clone(), cfg.ledger.batch_max_entries, &gateway.hospital, Audited { pseudonym, key_version, entries: AUDITED });
    let store = gateway.ledger.store.clone();
    let mut entries = verify(&store).await?.0.entries as usize;
    for &size in &opts.sizes {
        let add = size.saturating_sub(entries);
        let peak = PeakRss::start();
        eprintln!("medgate bench: scale: growing the ledger from {entries} to {size} entries");
        let grown = grower.grow(add).await?;
        eprintln!("medgate bench: scale: {add} entries written in {:.1} s ({:.0} entries/s)", grown.elapsed.as_secs_f64(), grown.rate());
        let search = walk::walk(&target, &walk::first_page("DocumentReference", &searched, PAGE), "DocumentReference", SEARCH_WALKS, opts.documents).await.map_err(Failure::runtime)?;
        eprintln!("medgate bench: scale: ITI-67 search: page p50 {:.2} ms, p99 {:.2} ms; walk of {} pages p50 {:.1} ms", search.page_ms(0.5), search.page_ms(0.99), search.pages_per_walk(), search.walk_ms(0.5));
        let audit = walk::walk(&target, &walk::first_page("AuditEvent", &audited, PAGE), "AuditEvent", AUDIT_WALKS, grower.audited_written()).await.map_err(Failure::runtime)?;
        eprintln!("medgate bench: scale: AuditEvent search: page p50 {:.2} ms, p99 {:.2} ms", audit.page_ms(0.5), audit.page_ms(0.99));
        let (verified, secs) = verify(&store).await?;
        entries = verified.entries as usize;
        let step = Step {
            ledger_entries: verified.entries,
            blocks: verified.blocks,
            bulk_entries: add,
            bulk_entries_per_s: grown.rate(),
            search_pages_per_walk: search.pages_per_walk(),
            search_page_p50_ms: search.page_ms(0.5),
            search_page_p99_ms: search.page_ms(0.99),
            search_walk_p50_ms: search.walk_ms(0.5),
            search_walk_max_ms: search.walk_ms(1.0),
            audit_pages_per_walk: audit.pages_per_walk(),
            audit_page_p50_ms: audit.page_ms(0.5),
            audit_page_p99_ms: audit.page_ms(0.99),
            audit_walk_p50_ms: audit.walk_ms(0.5),
            verify_seconds: secs,
            verify_entries_per_s: verified.entries as f64 / secs.max(1e-9),
            rss_mib: rss_mib(),
            peak_rss_mib: peak.mib(),
            disk_mib: dir_bytes(&cfg.gateway.state_directory) as f64 / (1024.0 * 1024.0),
        };
        eprintln!("medgate bench: scale: ledger verify: {} entries in {:.2} s ({:.0} entries/s); RSS {} MiB, peak in this step {} MiB", step.ledger_entries, secs, step.verify_entries_per_s, step.rss_mib.map_or("?".into(), |m| format!("{m:.0}")), step.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0}")));
        report.steps.push(step);
    }
    Ok(())
}

/// `ledger verify`'s check of the whole chain ([`medgate_store::ChainStore::verify`], the call
/// the command makes once it has opened the store), timed; the chain must verify.
async fn verify(store: &medgate_store::ChainStore) -> Result<(medgate_ledger::ChainReport, f64), Failure> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let r = store.verify(&[]).map_err(|e| Failure::runtime(format!("the grown ledger does not verify, at block {}: {e}", e.height())))?;
        Ok((r, started.elapsed().as_secs_f64()))
    })
    .await
    .map_err(rt_err)?
}

/// Runs `medgate ledger verify --config CONFIG` (this executable) and times it.
fn verify_command(config: &Path) -> Result<(f64, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let started = Instant::now();
    let out = std::process::Command::new(exe).arg("ledger").arg("verify").arg("--config").arg(config).output().map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_owned();
    if out.status.success() && text.starts_with("ledger OK") {
        Ok((secs, text))
    } else {
        Err(format!("exit {}: {}{}", out.status, text, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
