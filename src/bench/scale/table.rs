//! What `medgate bench --scale` prints: one row per ledger size (a table for people, or JSON
//! with `--json`), with the date and the load average before and after, as the other reports.

use serde::Serialize;

/// One ledger size, measured after the ledger was grown to it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Entries on the ledger when measured (as `ledger verify` counted them).
    pub ledger_entries: u64,
    pub blocks: u64,
    /// Entries written in bulk to reach this size, and their rate.
    pub bulk_entries: usize,
    pub bulk_entries_per_s: f64,
    /// ITI-67 for the patient with the stored documents: each page and each whole walk.
    pub search_pages_per_walk: usize,
    pub search_page_p50_ms: f64,
    pub search_page_p99_ms: f64,
    pub search_walk_p50_ms: f64,
    pub search_walk_max_ms: f64,
    /// AuditEvent search for the audited patient: each page and each whole walk.
    pub audit_pages_per_walk: usize,
    pub audit_page_p50_ms: f64,
    pub audit_page_p99_ms: f64,
    pub audit_walk_p50_ms: f64,
    /// `ledger verify`'s check of the whole chain.
    pub verify_seconds: f64,
    pub verify_entries_per_s: f64,
    /// Resident memory of this process (gateway and generator) after the step, MiB.
    pub rss_mib: Option<f64>,
    /// The most it had resident during the step (bulk writes, searches, verify), MiB; None
    /// when the kernel would not reset its high-water mark.
    pub peak_rss_mib: Option<f64>,
    /// The store's files on disk after the step, MiB.
    pub disk_mib: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// UTC date and time of the run.
    pub date: String,
    pub cores: usize,
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// The searched patient's documents (stored over ITI-65), their size, the page size asked.
    pub documents: usize,
    pub document_bytes: usize,
    pub page_size: usize,
    /// Seconds and rate of storing them over HTTP (16 clients).
    pub documents_seconds: f64,
    /// The audited patient's entries (spread over the first step, none after).
    pub audited_entries: usize,
    /// Walks measured per step (search, audit).
    pub search_walks: usize,
    pub audit_walks: usize,
    pub batch_max_entries: usize,
    pub steps: Vec<Step>,
    /// `medgate ledger verify` run as a command on the final ledger after the gateway stopped
    /// (process start and store opening included): seconds, or why it could not run.
    pub verify_command_seconds: Option<f64>,
    pub verify_command_output: String,
}

impl ScaleReport {
    /// The table for people.
    pub fn print_table(&self) {
        println!(
            "medgate bench --scale {}: ITI-67 for one patient with {} documents of {} bytes (_count={}, {} walks per size), AuditEvent for a patient with {} entries ({} walks), blocks of at most {} entries, {} cores, load average {} before",
            self.date,
            self.documents,
            self.document_bytes,
            self.page_size,
            self.search_walks,
            self.audited_entries,
            self.audit_walks,
            self.batch_max_entries,
            self.cores,
            self.load_before.map_or("?".into(), |l| format!("{l:.2}")),
        );
        println!("documents stored over mutual TLS in {:.1} s ({:.0}/s)", self.documents_seconds, self.documents as f64 / self.documents_seconds.max(1e-9));
        println!(
            "{:>9} {:>7} | {:>9} | {:>5} {:>8} {:>8} {:>9} {:>9} | {:>5} {:>8} {:>8} {:>8} | {:>7} {:>9} | {:>7} {:>8} {:>8}",
            "entries", "blocks", "bulk/s", "pages", "p50 ms", "p99 ms", "walk p50", "walk max", "pages", "p50 ms", "p99 ms", "walk p50", "verify s", "entries/s", "RSS MiB", "peak MiB", "disk MiB"
        );
        println!("{:>9} {:>7} | {:>9} | {:<43} | {:<35} | {:<17} |", "", "", "", "ITI-67 search (ms)", "AuditEvent search (ms)", "ledger verify");
        for s in &self.steps {
            println!(
                "{:>9} {:>7} | {:>9.0} | {:>5} {:>8.2} {:>8.2} {:>9.1} {:>9.1} | {:>5} {:>8.2} {:>8.2} {:>8.1} | {:>8.2} {:>9.0} | {:>7} {:>8} {:>8.0}",
                s.ledger_entries,
                s.blocks,
                s.bulk_entries_per_s,
                s.search_pages_per_walk,
                s.search_page_p50_ms,
                s.search_page_p99_ms,
                s.search_walk_p50_ms,
                s.search_walk_max_ms,
                s.audit_pages_per_walk,
                s.audit_page_p50_ms,
                s.audit_page_p99_ms,
                s.audit_walk_p50_ms,
                s.verify_seconds,
                s.verify_entries_per_s,
                s.rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                s.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                s.disk_mib,
            );
        }
        match self.verify_command_seconds {
            Some(t) => println!("medgate ledger verify (the command, gateway stopped) on the final ledger: {t:.2} s: {}", self.verify_command_output.trim()),
            None => println!("medgate ledger verify (the command) not timed: {}", self.verify_command_output.trim()),
        }
        println!("load average after the run: {}", self.load_after.map_or("?".into(), |l| format!("{l:.2}")));
    }
}
