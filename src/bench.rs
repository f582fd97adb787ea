//! `medgate bench`: the project's load generator. Builds a throwaway site (SoftHSM token, keys,
//! CA), runs the gateway in this process on loopback (so the HSM counters can be read), and
//! stores documents over mutual TLS exactly as an HIS would, each client on its own keep-alive
//! connection. Prints records/s, p50/p99 latency and HSM calls per record per concurrency level.
//! With `--shred`, it then erases one record and times the shred pass that follows (KEK rotation,
//! every stored record re-wrapped in the HSM, the old KEK version destroyed). With `--flood`, one
//! client certificate floods while another works ([`flood`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_hsm::{Hsm, HsmConfig, Pin};

use crate::exit::Failure;
use medgate_gateway::config::Config;
use crate::demo::{Site, SOFTHSM_MODULE, TOKEN};
use medgate_fhir::{sample_transaction, PatientId};
use medgate_gateway::server::Running;

mod flood;
pub use flood::run as flood;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(records: usize, levels: &[usize], size: usize, shred: bool) -> Result<(), Failure> {
    if records == 0 || levels.contains(&0) || size == 0 {
        return Err(Failure::usage("records, every concurrency level and size must be at least 1"));
    }
    let dir = tempfile::Builder::new().prefix("medgate-bench").tempdir().map_err(|e| Failure::runtime(e.to_string()))?;
    let site = Site::create(dir.path(), "hospital-bench", &mut |_| {})?;
    let cfg = Config::load(&site.config).map_err(|e| Failure::config(e.to_string()))?;
    let pin = Pin::from_file(&site.dir.join("hsm-pin")).map_err(|e| Failure::runtime(e.to_string()))?;
    let hsm = Arc::new(
        Hsm::open(HsmConfig { module: SOFTHSM_MODULE.into(), token_label: TOKEN.into(), pool_size: cfg.hsm.pool_size }, pin).map_err(Failure::hsm)?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Failure::runtime(e.to_string()))?;
    let result = rt.block_on(async {
        let his = tokio::net::TcpListener::bind(site.his_addr).await.map_err(|e| Failure::runtime(e.to_string()))?;
        let monitor = tokio::net::TcpListener::bind(site.admin_addr).await.map_err(|e| Failure::runtime(e.to_string()))?;
        let admin = medgate_gateway::server::officers::bind(&cfg.admin.socket, None).map_err(|e| Failure::runtime(e.to_string()))?;
        let running = Running::start(&cfg, hsm.clone(), medgate_gateway::server::Listeners { his, monitor, admin }).await.map_err(|e| Failure::runtime(e.to_string()))?;
        println!(
            "medgate bench: {records} documents of {size} bytes per level, mutual TLS over loopback, SoftHSM2, batch <= {} entries / {} ms, {} cores",
            cfg.ledger.batch_max_entries,
            cfg.ledger.batch_max_delay_ms,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        println!("{:>11} {:>10} {:>9} {:>9} {:>12} {:>28}", "concurrency", "records/s", "p50 ms", "p99 ms", "HSM calls/rec", "HSM ops/rec (wrap sign hmac)");
        let mut outcome = Ok(());
        for &c in levels {
            if let Err(e) = level(&site, &hsm, records, c, size).await {
                outcome = Err(e);
                break;
            }
        }
        if shred && outcome.is_ok() {
            outcome = shred_pass(&site, &running, &hsm).await;
        }
        running.stop().await;
        outcome
    });
    drop(rt);
    hsm.shutdown();
    result
}

async fn level(site: &Site, hsm: &Arc<Hsm>, records: usize, concurrency: usize, size: usize) -> Result<(), Failure> {
    let before = hsm.stats();
    let per_client = records.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = site.his_client()?;
        let n = per_client.min(records.saturating_sub(w * per_client));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let data: Vec<u8> = (0..size).map(|i| (i * 31 + w) as u8).collect();
            for i in 0..n {
                // Many patients, as in a hospital: pseudonyms are cached per patient.
                let patient = PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("{}", 100_000 + (w * 7919 + i) % 5000) };
                let bundle = sample_transaction(&patient, "application/pdf", &data, None);
                let t = Instant::now();
                let r = client.post_json("/", &bundle, &[]).await?;
                if r.status != 200 {
                    return Err(format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)));
                }
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(records);
    for t in tasks {
        lat.extend(t.await.map_err(|e| Failure::runtime(e.to_string()))?.map_err(Failure::runtime)?);
    }
    let elapsed = started.elapsed();
    lat.sort();
    let after = hsm.stats();
    let n = lat.len().max(1) as f64;
    let op = |name: &str| {
        let get = |s: &medgate_hsm::HsmStats| s.ops.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).unwrap_or(0);
        (get(&after) - get(&before)) as f64 / n
    };
    println!(
        "{:>11} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>28}",
        concurrency,
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        (after.pkcs11_calls - before.pkcs11_calls) as f64 / n,
        format!("{:.2} {:.3} {:.3}", op("wrap"), op("sign"), op("hmac")),
    );
    Ok(())
}

/// Erases one record and times the shred pass it starts: every other stored record is re-wrapped.
async fn shred_pass(site: &Site, running: &Running, hsm: &Arc<Hsm>) -> Result<(), Failure> {
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
    let wraps = |s: &medgate_hsm::HsmStats| s.ops.iter().find(|(k, _)| *k == "wrap").map(|(_, v)| *v).unwrap_or(0);
    println!(
        "shred pass after one erasure: {} records re-wrapped (of {} scanned) in {:.3} s = {:.0} records/s; whole pass {:.3} s (KEK rotated to v{}, destroyed {:?}); erasure answered to pass done {:.3} s; {} HSM re-wraps",
        report.rewrapped,
        report.scanned,
        report.rewrap_time.as_secs_f64(),
        report.rewrap_rate(),
        report.duration.as_secs_f64(),
        report.kek_version,
        report.destroyed,
        seen.as_secs_f64(),
        wraps(&after) - wraps(&before),
    );
    Ok(())
}
