//! `medgate bench`: the project's load generator. Builds a throwaway site (SoftHSM token, keys,
//! CA), runs the gateway in this process on loopback (so the HSM counters can be read), and
//! stores documents over mutual TLS exactly as an HIS would, each client on its own keep-alive
//! connection. Prints records/s, p50/p99 latency and HSM calls per record per concurrency level.

use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_hsm::{Hsm, HsmConfig, Pin};

use crate::cli::Failure;
use crate::config::Config;
use crate::demo::{Site, SOFTHSM_MODULE, TOKEN};
use crate::fhir::{sample_transaction, PatientId};
use crate::server::Running;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(records: usize, levels: &[usize], size: usize) -> Result<(), Failure> {
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
        let admin = tokio::net::TcpListener::bind(site.admin_addr).await.map_err(|e| Failure::runtime(e.to_string()))?;
        let running = Running::start(&cfg, hsm.clone(), his, admin).await.map_err(|e| Failure::runtime(e.to_string()))?;
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
                if r.status != 201 {
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
