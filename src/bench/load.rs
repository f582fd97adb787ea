//! The load generator: `concurrency` HIS clients, each on its own keep-alive mutual-TLS
//! connection, storing ITI-65 transaction Bundles one after another until `records` are
//! answered. The same generator drives the gateway and the null endpoint, so the two figures
//! differ only by what the server does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_fhir::{PatientId, SampleDocument};

use crate::client::HisClient;

/// Patients the clients rotate over: pseudonyms are cached per patient, as in a hospital.
pub const PATIENTS: usize = 5000;

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// CPU time the process (server and generator) used over the same span, if the kernel said.
    pub cpu: Option<Duration>,
}

impl Run {
    /// Answers per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds (all cores) per answer: the process's, server and generator together.
    pub fn cpu_us(&self) -> Option<f64> {
        Some(crate::cpu::us_per(self.cpu?, self.latencies.len()))
    }

    /// The `p` quantile of the latencies, in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1e3
    }
}

/// The `p` quantile of sorted durations (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Where the clients connect and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub(super) fn client(&self) -> Result<HisClient, String> {
        Ok(HisClient::new(self.addr, "localhost", self.tls.clone())?.acting_as("dr.house", "physician", "TREAT"))
    }
}

/// Per-client limits that never refuse the load generator: every one of its clients presents
/// the same HIS certificate, so the defaults (64 connections, 200 requests/s per certificate)
/// would measure the limiter, not the gateway. (`medgate bench --flood` measures the limiter.)
pub fn unthrottled(l: &mut medgate_gateway::config::Limits) {
    l.max_connections = l.max_connections.max(8192);
    l.max_connections_per_client = l.max_connections;
    l.max_requests_in_flight_per_client = 1_000_000;
    l.requests_per_second_per_client = 1_000_000;
    l.burst_per_client = 1_000_000;
}

/// The patient of the run's `i`-th record.
fn patient(i: usize) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("{}", 100_000 + (i * 7919) % PATIENTS) }
}

/// Stores `records` documents of `size` bytes with `concurrency` clients; every answer must be
/// `expect` (200 from the gateway: an ITI-65 transaction-response; 201 from the null endpoint).
///
/// Steady state, as a HIS with a connection pool sees it: every client opens its connection
/// before the clock starts (a level's handshakes would otherwise count against its rate, 256
/// of them at c=256), and the clients draw from one count of records, so all of them stay
/// busy until the last one is sent (with a fixed share each, the level's tail ran on the few
/// clients whose share was not done). `opened` is called once the connections are open, just
/// before the clock starts: what the caller counts from there leaves the handshakes out.
pub async fn drive(target: &Target, records: usize, concurrency: usize, size: usize, expect: u16, opened: impl FnOnce()) -> Result<Run, String> {
    let mut opening = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut client = target.client()?;
        opening.push(tokio::spawn(async move { client.open().await.map(|()| client) }));
    }
    let mut clients = Vec::with_capacity(concurrency);
    for o in opening {
        clients.push(o.await.map_err(|e| e.to_string())??);
    }
    opened();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = crate::cpu::this_process();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for (w, mut client) in clients.into_iter().enumerate() {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(records.div_ceil(concurrency));
            let data: Vec<u8> = (0..size).map(|i| (i * 31 + w) as u8).collect();
            let doc = SampleDocument::new("application/pdf", &data);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= records {
                    break;
                }
                let body = serde_json::to_vec(&doc.transaction(&patient(i), None)).map_err(|e| e.to_string())?;
                let t = Instant::now();
                let r = client.send("POST", "/", &[], body).await?;
                if r.status != expect {
                    return Err(format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)));
                }
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(records);
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    let cpu = crate::cpu::this_process().zip(cpu_before).map(|(a, b)| a.saturating_sub(b));
    latencies.sort();
    Ok(Run { latencies, elapsed, cpu })
}
