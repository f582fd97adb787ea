//! `medgate bench`: the load generator's options and its dispatch (one site in this process,
//! three hospitals on a 3-member etcd cluster with `--consortium`, one client flooding
//! while another works with `--flood`, or the costs as the ledger grows with `--scale`).

use std::path::PathBuf;

use clap::Args;

use crate::exit::Failure;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Documents stored per concurrency level (and per run).
    #[arg(long, default_value_t = 2000)]
    records: usize,
    /// Concurrency levels (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    /// Document size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Rounds of all the levels, every other one in reverse order (each run printed, and each
    /// level compared with the one listed before it, round by round), so that noise shows.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Seconds per ceiling measurement (HSM raw rates, store write+flush).
    #[arg(long, default_value_t = 1.0)]
    ceiling_seconds: f64,
    /// Print the report as JSON on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw throughput and p99 latency against concurrency into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Three hospitals on a 3-member etcd cluster instead: etcd's raw put rate, consortium
    /// ingest throughput and cross-hospital reads (sequential and concurrent).
    #[arg(long)]
    consortium: bool,
    /// Then erase one record and time the shred pass that follows: KEK rotation, every
    /// stored record re-wrapped in the HSM, the old KEK version destroyed. Prints the pass
    /// time and the records re-wrapped per second.
    #[arg(long, conflicts_with = "consortium")]
    shred: bool,
    /// Write this many sealed-size records straight into the vault before the gateway starts,
    /// to measure ingest into a store that already holds them (they are not on the ledger).
    #[arg(long, default_value_t = 0, conflicts_with = "consortium")]
    prefill: usize,
    /// Fairness under a flood instead: one client certificate sends searches at full speed on
    /// as many connections as the largest concurrency level, while a second certificate sends
    /// `--records` searches one after the other; prints the second client's p50/p99 alone and
    /// under the flood, and the flooder's 200s and 429s per second.
    #[arg(long, conflicts_with_all = ["consortium", "shred", "prefill"])]
    flood: bool,
    /// Also one reader, a client certificate of its own, retrieving documents (ITI-68 GET
    /// /Binary/{id}, each read a ledger access entry) one after another: first alone, then
    /// throughout each level's ingest; prints its p50/p99 alone and under each level. Its reads
    /// share the cores and the ledger with the ingest: compare levels run with it to each
    /// other, not to levels run without.
    #[arg(long, conflicts_with_all = ["consortium", "flood"])]
    reads: bool,
    /// Scale instead of speed: how the costs grow with the ledger. Takes increasing ledger sizes
    /// in entries (e.g. 10000,100000,1000000). One patient's documents (--scale-documents) are
    /// stored over ITI-65; the ledger is then grown to each size in turn with real entries
    /// (records stored, read, searched, for 50 000 other patients and one audited patient with
    /// a fixed 240 entries) signed block by block by the site's ledger key through the
    /// gateway's own ledger writer. After each size it prints: the ITI-67 search of that patient
    /// walked page by page over mutual TLS (p50/p99 per page, time per walk), the AuditEvent
    /// search of the audited patient (p50/p99 per page), `ledger verify`'s rate (entries/s),
    /// resident memory and the store's size on disk, and the bulk write rate. A million
    /// entries take a few GB in the temporary directory and several minutes.
    #[arg(long, value_delimiter = ',', value_name = "ENTRIES", conflicts_with_all = ["consortium", "shred", "prefill", "flood", "plot", "reads"])]
    scale: Vec<usize>,
    /// With --scale: documents stored for the searched patient.
    #[arg(long, default_value_t = 1000, requires = "scale")]
    scale_documents: usize,
    /// (Internal: the bench's child process.) Measure the store ceiling in this directory.
    #[arg(long, hide = true)]
    store_ceiling: Option<PathBuf>,
    /// (Internal.) Values per flush for `--store-ceiling`.
    #[arg(long, hide = true, default_value_t = 1)]
    store_group: usize,
    /// (Internal.) Value size in bytes for `--store-ceiling`.
    #[arg(long, hide = true, default_value_t = 1)]
    store_value_bytes: usize,
    /// (Internal: the bench's child process.) Write `--prefill` records into this state directory.
    #[arg(long, hide = true)]
    prefill_into: Option<PathBuf>,
}

pub(crate) fn bench_command(a: BenchArgs) -> Result<(), Failure> {
    if let Some(dir) = &a.store_ceiling {
        return crate::bench::child::store_ceiling_main(dir, a.store_value_bytes, a.store_group, a.ceiling_seconds);
    }
    if let Some(dir) = &a.prefill_into {
        return crate::bench::child::prefill_main(dir, a.prefill, a.size);
    }
    if !a.scale.is_empty() {
        return crate::bench::scale(&crate::bench::ScaleOptions { sizes: a.scale, documents: a.scale_documents, size: a.size, json: a.json });
    }
    if a.flood {
        return crate::bench::flood(a.records, a.concurrency.iter().copied().max().unwrap_or(16));
    }
    if a.consortium {
        return crate::demo::bench_consortium(a.records, a.concurrency.iter().copied().max().unwrap_or(16));
    }
    crate::bench::run(&crate::bench::Options {
        records: a.records,
        levels: a.concurrency,
        size: a.size,
        repeat: a.repeat,
        ceiling_seconds: a.ceiling_seconds,
        json: a.json,
        plot: a.plot,
        shred: a.shred,
        prefill: a.prefill,
        reads: a.reads,
    })
}
