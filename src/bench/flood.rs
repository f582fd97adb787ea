//! `medgate bench --flood`: one HIS certificate floods the gateway at full speed while a second
//! one (a ward's system) goes about its work; prints the second client's latency alone and under
//! the flood, and what the flooder got (429s and the few it was allowed).
//!
//! Boundary: a throwaway site and the gateway in this process (default `[limits]`); the flooder
//! and the ward each run on a runtime and thread of their own, so the figures show the gateway's
//! fairness, not the load generator's scheduling.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_fhir::{sample_transaction, PatientId};
use medgate_gateway::config::Config;
use medgate_gateway::server::{Listeners, Running};
use medgate_hsm::{Hsm, HsmConfig, Pin};

use super::percentile;
use crate::client::{query_escape, HisClient};
use crate::demo::{Site, SOFTHSM_MODULE, TOKEN};
use crate::exit::Failure;

fn patient() -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "flood-bench".into() }
}

/// The ward's client: a certificate of its own from the hospital CA, acting for a nurse.
pub(super) fn ward(site: &Site) -> Result<HisClient, Failure> {
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = site.ca.issue_client("his-ward", "his", now - time::Duration::days(1), now + time::Duration::days(30)).map_err(|e| Failure::runtime(e.to_string()))?;
    let tls = medgate_gateway::tls::client_config(site.ca_pem.as_bytes(), Some((cert.pem().as_bytes(), key.serialize_pem().as_bytes()))).map_err(|e| Failure::runtime(e.to_string()))?;
    Ok(HisClient::new(site.his_addr, "localhost", tls).map_err(Failure::runtime)?.acting_as("dr.ward", "nurse", "TREAT"))
}

/// `n` searches one after the other on the ward's connection, on a thread of its own: latencies.
fn ward_run(site: &Site, n: usize) -> Result<Vec<Duration>, Failure> {
    let mut client = ward(site)?;
    let q = format!("/DocumentReference?patient={}", query_escape(&patient().canonical()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure::runtime(e.to_string()))?;
    rt.block_on(async {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = client.get(&q).await.map_err(Failure::runtime)?;
            if r.status != 200 {
                return Err(Failure::runtime(format!("the ward's search answered {}", r.status)));
            }
            lat.push(t.elapsed());
        }
        lat.sort();
        Ok(lat)
    })
}

#[derive(Debug, Default)]
struct FloodCount {
    ok: AtomicU64,
    throttled: AtomicU64,
    other: AtomicU64,
}

/// The flooder: `connections` connections of one certificate sending searches back to back
/// until `stop`, on a runtime of its own.
fn flood(site: Site, connections: usize, stop: Arc<AtomicBool>, count: Arc<FloodCount>) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let q = format!("/DocumentReference?patient={}", query_escape(&patient().canonical()));
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let mut c = site.his_client().map_err(|f| f.message)?;
                let (q, stop, count) = (q.clone(), stop.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match c.get(&q).await.map(|r| r.status) {
                            Ok(200) => count.ok.fetch_add(1, Ordering::Relaxed),
                            Ok(429) => count.throttled.fetch_add(1, Ordering::Relaxed),
                            _ => count.other.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for t in tasks {
                t.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `medgate bench --flood`.
pub fn run(requests: usize, connections: usize) -> Result<(), Failure> {
    if requests == 0 || connections == 0 {
        return Err(Failure::usage("--records and the concurrency must be at least 1"));
    }
    let dir = tempfile::Builder::new().prefix("medgate-bench-flood").tempdir().map_err(|e| Failure::runtime(e.to_string()))?;
    let site = Site::create(dir.path(), "hospital-bench", &mut |_| {})?;
    let cfg = Config::load(&site.config).map_err(|e| Failure::config(e.to_string()))?;
    let pin = Pin::from_file(&site.dir.join("hsm-pin")).map_err(|e| Failure::runtime(e.to_string()))?;
    let hsm = Arc::new(Hsm::open(HsmConfig { module: SOFTHSM_MODULE.into(), token_label: TOKEN.into(), pool_size: cfg.hsm.pool_size }, pin).map_err(Failure::hsm)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Failure::runtime(e.to_string()))?;
    let running = rt.block_on(async {
        let his = medgate_gateway::server::bind_tcp(site.his_addr).map_err(|e| Failure::runtime(e.to_string()))?;
        let monitor = medgate_gateway::server::bind_tcp(site.admin_addr).map_err(|e| Failure::runtime(e.to_string()))?;
        let admin = medgate_gateway::server::officers::bind(&cfg.admin.socket, None).map_err(|e| Failure::runtime(e.to_string()))?;
        Running::start(&cfg, hsm.clone(), Listeners { his, monitor, admin }).await.map_err(|e| Failure::runtime(e.to_string()))
    })?;
    let result = measure(&site, &cfg, requests, connections, &rt);
    rt.block_on(running.stop());
    drop(rt);
    hsm.shutdown();
    result
}

fn measure(site: &Site, cfg: &Config, requests: usize, connections: usize, rt: &tokio::runtime::Runtime) -> Result<(), Failure> {
    let l = &cfg.limits;
    rt.block_on(async {
        let mut c = site.his_client()?;
        let r = c.post_json("/", &sample_transaction(&patient(), "text/plain", b"flood bench", None), &[]).await.map_err(Failure::runtime)?;
        if r.status != 200 {
            return Err(Failure::runtime(format!("seed record: {} (a transaction answers 200)", r.status)));
        }
        Ok(())
    })?;
    println!(
        "medgate bench --flood: searches (one ledger entry each) over mutual TLS on loopback, SoftHSM2, {} cores; limits per certificate: {} requests/s, burst {}, {} connections",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        l.requests_per_second_per_client,
        l.burst_per_client,
        l.max_connections_per_client
    );
    let _ = ward_run(site, requests.min(50))?; // warm-up: pseudonym cache, connection
    let alone = ward_run(site, requests)?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(FloodCount::default());
    let flooder = flood(site.clone(), connections, stop.clone(), count.clone());
    // Under the flood: wait for the flooder's burst allowance to be spent first.
    while count.throttled.load(Ordering::Relaxed) == 0 && !flooder.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ok0, thr0) = (count.ok.load(Ordering::Relaxed), count.throttled.load(Ordering::Relaxed));
    let started = Instant::now();
    let loaded = ward_run(site, requests);
    let secs = started.elapsed().as_secs_f64();
    let (ok, thr, other) = (count.ok.load(Ordering::Relaxed) - ok0, count.throttled.load(Ordering::Relaxed) - thr0, count.other.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    flooder.join().map_err(|_| Failure::runtime("the flooder thread failed"))?.map_err(Failure::runtime)?;
    let loaded = loaded?;
    println!("{:<28} {:>9} {:>9} {:>9}", "the ward's searches", "p50 ms", "p99 ms", "max ms");
    for (name, lat) in [("alone", &alone), ("while the flooder floods", &loaded)] {
        println!("{name:<28} {:>9.2} {:>9.2} {:>9.2}", ms(percentile(lat, 0.50)), ms(percentile(lat, 0.99)), ms(percentile(lat, 1.0)));
    }
    println!(
        "flooder ({connections} connections, one certificate): {:.0} requests/s answered, {:.0}/s 200, {:.0}/s 429 ({:.1}% throttled), {other} other",
        (ok + thr) as f64 / secs,
        ok as f64 / secs,
        thr as f64 / secs,
        100.0 * thr as f64 / (ok + thr).max(1) as f64
    );
    println!("ward p99 under flood / alone: {:.2}x", ms(percentile(&loaded, 0.99)) / ms(percentile(&alone, 0.99)).max(1e-9));
    Ok(())
}
