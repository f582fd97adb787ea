//! `medgate bench`: the project's load generator. Builds a throwaway site (SoftHSM token, keys,
//! CA), runs the gateway in this process on loopback (so the HSM counters can be read), and
//! stores documents over mutual TLS exactly as an HIS would, each client on its own keep-alive
//! connection. Before and during the levels it measures its own ceilings in the same run: the
//! HSM's raw wrap and sign rates, the store's write+flush rate, and a null mTLS endpoint driven
//! by the same generator; each gateway figure is printed with its ratio to them. Logs are quiet
//! (warnings only unless `MEDGATE_LOG` says otherwise); a progress line per level goes to
//! standard error; `--json` prints the report as JSON; `--plot FILE.svg` draws it.
//! With `--shred`, it then erases one record and times the shred pass that follows (KEK rotation,
//! every stored record re-wrapped in the HSM, the old KEK version destroyed). With `--flood`, one
//! client certificate floods while another works ([`flood`]). With `--scale`, it measures how
//! search, audit, `ledger verify` and memory grow with the ledger ([`scale`]).

mod ceiling;
pub mod child;
mod flood;
mod load;
mod prefill;
mod reader;
mod report;
mod scale;

pub use flood::run as flood;
pub use scale::{run as scale, ScaleOptions};
use load::percentile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_gateway::config::Config;
use medgate_gateway::server::{Listeners, Running};
use medgate_gateway::tls::TlsFiles;
use medgate_hsm::{Hsm, HsmConfig, HsmStats, Pin};

use crate::demo::{Site, SOFTHSM_MODULE, TOKEN};
use crate::exit::Failure;
use ceiling::{HsmCeilings, NullEndpoint};
use load::Target;
use report::{Level, Report};

/// What to measure and how to report it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Documents stored per level and run.
    pub records: usize,
    /// Concurrency levels.
    pub levels: Vec<usize>,
    /// Document size in bytes.
    pub size: usize,
    /// Runs of each level.
    pub repeat: usize,
    /// Time per HSM ceiling and per store ceiling.
    pub ceiling_seconds: f64,
    /// Print JSON instead of the table.
    pub json: bool,
    /// Draw the chart there.
    pub plot: Option<PathBuf>,
    /// Time a shred pass after the levels.
    pub shred: bool,
    /// Records written to the vault before the gateway starts (see [`prefill`]).
    pub prefill: usize,
    /// One reader retrieving documents alone, then throughout each level (see [`reader`]).
    pub reads: bool,
}

fn rt_err(e: impl std::fmt::Display) -> Failure {
    Failure::runtime(e.to_string())
}

/// Bytes a sealed record of a `size`-byte document takes in the vault (base64 ciphertext plus
/// the sealed metadata and the fixed fields), for the store ceiling.
fn sealed_record_bytes(size: usize) -> usize {
    (size + 16).div_ceil(3) * 4 + 1800
}

fn op_count(s: &HsmStats, name: &str) -> u64 {
    s.ops.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).unwrap_or(0)
}

/// A throwaway site for the bench in a new temporary directory named `prefix...`: its SoftHSM
/// token, keys and CA, its configuration with `[limits]` lifted (every client of the bench
/// presents the same HIS certificate), and the HSM opened.
fn throwaway_site(prefix: &str) -> Result<(tempfile::TempDir, Site, Config, Arc<Hsm>), Failure> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().map_err(rt_err)?;
    eprintln!("medgate bench: building a throwaway site in {}", dir.path().display());
    let site = Site::create(dir.path(), "hospital-bench", &mut |_| {})?;
    let mut cfg = Config::load(&site.config).map_err(|e| Failure::config(e.to_string()))?;
    load::unthrottled(&mut cfg.limits);
    let pin = Pin::from_file(&site.dir.join("hsm-pin")).map_err(rt_err)?;
    let hsm = Arc::new(Hsm::open(HsmConfig { module: SOFTHSM_MODULE.into(), token_label: TOKEN.into(), pool_size: cfg.hsm.pool_size }, pin).map_err(Failure::hsm)?);
    Ok((dir, site, cfg, hsm))
}

pub fn run(opts: &Options) -> Result<(), Failure> {
    if opts.records == 0 || opts.levels.contains(&0) || opts.size == 0 || opts.repeat == 0 || !opts.ceiling_seconds.is_finite() || opts.ceiling_seconds <= 0.0 {
        return Err(Failure::usage("records, every concurrency level, size, repeat and ceiling seconds must be positive"));
    }
    let load_before = ceiling::load_average();
    let (_dir, site, cfg, hsm) = throwaway_site("medgate-bench")?;
    eprintln!("medgate bench: HSM ceilings ({} s per figure)", opts.ceiling_seconds);
    let hsm_ceilings = HsmCeilings::measure(&hsm, opts.ceiling_seconds);
    let kek_scheme = match hsm.active_kek_scheme().map_err(Failure::hsm)? {
        medgate_hsm::profile::KekScheme::AesGcm => "aes_gcm",
        medgate_hsm::profile::KekScheme::Rfc5649 { .. } => "rfc5649",
    };
    let wrap_ceiling = hsm_ceilings.best(if kek_scheme == "aes_gcm" { medgate_hsm::ceiling::RawOp::WrapAesGcm.name() } else { medgate_hsm::ceiling::RawOp::WrapRfc5649.name() });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(rt_err)?;
    let mut report = Report {
        date: medgate_gateway::clock::now_rfc3339(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load_before,
        load_after: None,
        records_per_level: opts.records,
        document_bytes: opts.size,
        batch_max_entries: cfg.ledger.batch_max_entries,
        hsm_pool: cfg.hsm.pool_size,
        submissions_preparing: cfg.limits.max_submissions_preparing,
        kek_scheme: kek_scheme.into(),
        hsm: hsm_ceilings,
        wrap_ceiling,
        levels: Vec::new(),
        shred: None,
        prefilled: opts.prefill,
        same_round: Vec::new(),
        reads_alone: None,
    };
    let result = rt.block_on(async {
        if opts.prefill > 0 {
            eprintln!("medgate bench: prefilling the vault with {} records", opts.prefill);
            child::prefill(&cfg.gateway.state_directory, opts.prefill, opts.size).await?;
        }
        let his = medgate_gateway::server::bind_tcp(site.his_addr).map_err(rt_err)?;
        let monitor = medgate_gateway::server::bind_tcp(site.admin_addr).map_err(rt_err)?;
        let admin = medgate_gateway::server::officers::bind(&cfg.admin.socket, None).map_err(rt_err)?;
        let running = Running::start(&cfg, hsm.clone(), Listeners { his, monitor, admin }).await.map_err(rt_err)?;
        let outcome = levels(opts, &site, &cfg, &hsm, &running, &mut report).await;
        running.stop().await;
        outcome
    });
    drop(rt);
    hsm.shutdown();
    result?;
    report.load_after = ceiling::load_average();
    report.compare_rounds();
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(rt_err)?);
    } else {
        report.print_table();
    }
    if let Some(path) = &opts.plot {
        report.plot(path).map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
        eprintln!("medgate bench: chart written to {}", path.display());
    }
    Ok(())
}

/// `repeat` rounds of every level (each level: the null endpoint, the store ceiling, then the
/// gateway). Rounds rather than each level's runs in a row, so that the machine's drift over the
/// run (a loaded host, a throttled core) touches every level alike and two levels of one round
/// can be compared with each other; every other round runs the levels in reverse, so that what
/// still changes within a round (the drift, the vault growing by each level's records) does not
/// always weigh on the same level.
async fn levels(opts: &Options, site: &Site, cfg: &Config, hsm: &Arc<Hsm>, running: &Running, report: &mut Report) -> Result<(), Failure> {
    let files = TlsFiles::from_config(cfg);
    let null = NullEndpoint::start(medgate_gateway::tls::server_config(hsm, &files).map_err(rt_err)?).await.map_err(Failure::runtime)?;
    let tls = site.his_tls()?;
    let gateway = Target { addr: site.his_addr, tls: tls.clone() };
    let null_target = Target { addr: null.addr, tls };
    let reader = match opts.reads {
        false => None,
        true => {
            let r = reader::Reader::prepare(site, opts.size).await?;
            let alone = tokio::task::block_in_place(|| r.alone())?;
            eprintln!("medgate bench: one reader alone: {} reads, p50 {:.2} ms, p99 {:.2} ms", alone.count, alone.p50_ms, alone.p99_ms);
            report.reads_alone = Some(alone);
            Some(r)
        }
    };
    for run in 1..=opts.repeat {
        let order: Vec<usize> = if run % 2 == 0 { opts.levels.iter().rev().copied().collect() } else { opts.levels.clone() };
        for c in order {
            let null_run = load::drive(&null_target, opts.records, c, opts.size, 201, || {}).await.map_err(Failure::runtime)?;
            let group = c.min(cfg.ledger.batch_max_entries).max(1);
            let store = child::store_ceiling(&site.dir, sealed_record_bytes(opts.size), group, opts.ceiling_seconds).await?;
            let mut before = hsm.stats();
            let peak = ceiling::PeakRss::start();
            let started = Instant::now();
            let reading = reader.as_ref().map(|r| tokio::task::block_in_place(|| r.start())).transpose()?;
            // The HSM's calls are counted from the open connections on: the level's TLS
            // handshakes (a signature each, c of them) are not its records' work.
            let gw = load::drive(&gateway, opts.records, c, opts.size, 200, || before = hsm.stats()).await.map_err(Failure::runtime);
            let reads = reading.map(|r| tokio::task::block_in_place(|| r.stop())).transpose()?;
            let gw = gw?;
            let after = hsm.stats();
            let n = gw.latencies.len().max(1) as f64;
            let per = |name: &str| (op_count(&after, name) - op_count(&before, name)) as f64 / n;
            let level = Level {
                concurrency: c,
                run,
                records_per_s: gw.rate(),
                p50_ms: gw.ms(0.5),
                p99_ms: gw.ms(0.99),
                null_per_s: null_run.rate(),
                null_p99_ms: null_run.ms(0.99),
                store_per_s: store.values_per_second,
                store_group: group,
                pkcs11_calls_per_record: (after.pkcs11_calls - before.pkcs11_calls) as f64 / n,
                wraps_per_record: per("wrap"),
                signs_per_record: per("sign"),
                hmacs_per_record: per("hmac"),
                cpu_us_per_record: gw.cpu_us(),
                null_cpu_us_per_request: null_run.cpu_us(),
                rss_mib: ceiling::rss_mib(),
                peak_rss_mib: peak.mib(),
                reads,
            };
            eprintln!(
                "medgate bench: c={c} run {run}/{}: {:.0} records/s (p50 {:.2} ms, p99 {:.2} ms, {} CPU µs each), null endpoint {:.0}/s, store {:.0}/s, {:.1} s",
                opts.repeat,
                level.records_per_s,
                level.p50_ms,
                level.p99_ms,
                level.cpu_us_per_record.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}")),
                level.null_per_s,
                level.store_per_s,
                started.elapsed().as_secs_f64()
            );
            if let Some(r) = &level.reads {
                eprintln!("medgate bench: c={c} run {run}/{}: the reader meanwhile: {} reads, p50 {:.2} ms, p99 {:.2} ms", opts.repeat, r.count, r.p50_ms, r.p99_ms);
            }
            report.levels.push(level);
        }
    }
    drop(null);
    if opts.shred {
        report.shred = Some(shred_pass(site, running, hsm).await?);
    }
    Ok(())
}

/// Erases one record and times the shred pass it starts: every other stored record is re-wrapped.
async fn shred_pass(site: &Site, running: &Running, hsm: &Arc<Hsm>) -> Result<serde_json::Value, Failure> {
    use medgate_fhir::{sample_transaction, PatientId};
    let mut client = site.his_client()?;
    let patient = PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "shred-bench".into() };
    let r = client.post_json("/", &sample_transaction(&patient, "text/plain", b"to be erased", None), &[]).await.map_err(Failure::runtime)?;
    let id = medgate_fhir::answer_ids(&r.json(), "DocumentReference").pop().ok_or_else(|| Failure::runtime("no record id in the answer"))?;
    let gateway = &running.gateway;
    let before = hsm.stats();
    let passes = gateway.shred.status().passes;
    let started = Instant::now();
    let del = client.send("DELETE", &format!("/DocumentReference/{id}"), &[], Vec::new()).await.map_err(Failure::runtime)?;
    if del.status != 204 {
        return Err(Failure::runtime(format!("erasure answered {}", del.status)));
    }
    eprintln!("medgate bench: waiting for the shred pass");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while gateway.shred.status().passes == passes || !matches!(gateway.vault.shred_pending(), Ok(None)) {
        if let Some(e) = gateway.shred.status().last_error {
            return Err(Failure::runtime(format!("shred pass failed: {e}")));
        }
        if Instant::now() > deadline {
            return Err(Failure::runtime("no shred pass finished within 30 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = started.elapsed();
    let report = gateway.shred.status().last.ok_or_else(|| Failure::runtime("no shred pass report"))?;
    let after = hsm.stats();
    let shred = serde_json::json!({
        "rewrapped": report.rewrapped,
        "scanned": report.scanned,
        "rewrap_seconds": report.rewrap_time.as_secs_f64(),
        "rewrapped_per_s": report.rewrap_rate(),
        "pass_seconds": report.duration.as_secs_f64(),
        "kek_version": report.kek_version,
        "erasure_to_done_seconds": seen.as_secs_f64(),
        "hsm_rewraps": op_count(&after, "wrap") - op_count(&before, "wrap"),
    });
    eprintln!(
        "medgate bench: shred pass: {} records re-wrapped (of {} scanned) in {:.3} s = {:.0} records/s; whole pass {:.3} s; erasure answered to pass done {:.3} s",
        report.rewrapped,
        report.scanned,
        report.rewrap_time.as_secs_f64(),
        report.rewrap_rate(),
        report.duration.as_secs_f64(),
        seen.as_secs_f64(),
    );
    Ok(shred)
}
