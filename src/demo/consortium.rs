//! `medgate demo --consortium`: three hospitals on one machine. A consortium CA, a 3-member etcd
//! cluster with mutual TLS on loopback, three sites (SoftHSM tokens with the shared pseudonym
//! key imported, hospital CAs, gateway and HIS certificates), three `medgate serve` processes;
//! then the sharing scene: A stores a record, B is refused, the patient consents at A, B reads
//! the exact bytes, the consent is withdrawn and B is refused again, every access is in every
//! gateway's audit trail, and the three ledgers verify to one head.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, stop_child, write_private, Site};
use crate::admin_client::get as admin_get;
use crate::exit::Failure;
use crate::client::{query_escape, HisClient};
use medgate_fhir::{sample_transaction, PatientId};
use medgate_gateway::pki::TestCa;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const HOSPITALS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

/// The demo's etcd members; killed when dropped.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<SocketAddr>,
    /// Each member's `/metrics`, plain HTTP on loopback (etcd's own figures; no ledger data).
    metrics: Vec<SocketAddr>,
    /// CA, member and client (`root`) certificates, data and logs.
    dir: PathBuf,
}

impl Etcd {
    /// Runs `etcdctl ARGS` against every member as `root`.
    fn etcdctl_output(&self, timeout: &str, args: &[&str]) -> Result<std::process::Output, Failure> {
        let urls: Vec<String> = self.endpoints.iter().map(|e| format!("https://{e}")).collect();
        Command::new(ETCDCTL)
            .env_clear()
            .args(["--endpoints", &urls.join(","), &format!("--command-timeout={timeout}")])
            .arg("--cacert")
            .arg(self.dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.dir.join("root.crt"))
            .arg("--key")
            .arg(self.dir.join("root.key"))
            .args(args)
            .output()
            .map_err(|e| Failure::runtime(format!("{ETCDCTL}: {e}")))
    }

    /// `etcdctl ARGS` against every member as `root`; a failure names the command.
    fn etcdctl(&self, args: &[&str]) -> Result<String, Failure> {
        let out = self.etcdctl_output("5s", args)?;
        if !out.status.success() {
            return Err(Failure::runtime(format!("etcdctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rt_err(e: impl std::fmt::Display) -> Failure {
    Failure::runtime(e.to_string())
}

fn start_etcd(dir: &Path, ca: &TestCa) -> Result<Etcd, Failure> {
    if !Path::new(ETCD).is_file() {
        return Err(Failure::config(format!("{ETCD} not found: run scripts/install-deps.sh (package etcd-server)")));
    }
    std::fs::create_dir_all(dir).map_err(rt_err)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).map_err(rt_err)?;
    let now = time::OffsetDateTime::now_utc();
    let (cc, ck) = ca.issue_client("root", "etcd", now - time::Duration::minutes(5), now + time::Duration::days(1)).map_err(rt_err)?;
    std::fs::write(dir.join("root.crt"), cc.pem()).map_err(rt_err)?;
    write_private(&dir.join("root.key"), ck.serialize_pem().as_bytes())?;
    let ports: Vec<SocketAddr> = (0..9).map(|_| free_port()).collect::<Result<_, _>>()?;
    let cluster: Vec<String> = (0..3).map(|i| format!("m{i}=https://{}", ports[2 * i + 1])).collect();
    let mut etcd = Etcd { children: Vec::new(), endpoints: (0..3).map(|i| ports[2 * i]).collect(), metrics: ports[6..].to_vec(), dir: dir.to_path_buf() };
    for i in 0..3 {
        let name = format!("m{i}");
        let (cert, key) = ca.issue_server(&name).map_err(rt_err)?;
        let (cert_file, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_file, cert.pem()).map_err(rt_err)?;
        write_private(&key_file, key.serialize_pem().as_bytes())?;
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(rt_err)?;
        let (client, peer) = (format!("https://{}", ports[2 * i]), format!("https://{}", ports[2 * i + 1]));
        let child = Command::new(ETCD)
            .env_clear()
            .args(["--name", &name, "--data-dir"])
            .arg(dir.join(format!("{name}.data")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--listen-metrics-urls", &format!("http://{}", etcd.metrics[i])])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new", "--initial-cluster-token", "medgate-demo"])
            .arg("--cert-file")
            .arg(&cert_file)
            .arg("--key-file")
            .arg(&key_file)
            .arg("--trusted-ca-file")
            .arg(&ca_file)
            .arg("--peer-cert-file")
            .arg(&cert_file)
            .arg("--peer-key-file")
            .arg(&key_file)
            .arg("--peer-trusted-ca-file")
            .arg(&ca_file)
            .args(["--client-cert-auth", "--peer-client-cert-auth", "--pre-vote", "--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(rt_err)?)
            .stderr(log)
            .spawn()
            .map_err(|e| Failure::runtime(format!("{ETCD}: {e}")))?;
        etcd.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcd.etcdctl_output("2s", &["endpoint", "health"])?;
        // etcdctl 3.4 prints the verdicts on standard error.
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() && said.matches("is healthy").count() == 3 {
            return Ok(etcd);
        }
        if Instant::now() > deadline {
            return Err(Failure::runtime(format!("the etcd cluster was not healthy within 30 s; logs in {}", dir.display())));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check(cond: bool, what: &str) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure::runtime(format!("demo check failed: {what}")))
    }
}

/// A running three-hospital consortium: the etcd cluster, the sites and their gateways.
struct Consortium {
    etcd: Etcd,
    sites: Vec<Site>,
    children: Vec<Child>,
}

/// CPU time used so far by the consortium's processes on this machine.
#[derive(Debug, Clone)]
struct CpuUse {
    /// Each hospital's gateway, in [`HOSPITALS`] order.
    gateways: Vec<Option<Duration>>,
    /// The three etcd members together.
    etcd: Option<Duration>,
    /// This process: the load generator (and the bench's HIS clients).
    generator: Option<Duration>,
}

/// CPU microseconds per record of each part of [`CpuUse`], and of all of them.
#[derive(Debug, Clone)]
struct CpuPerRecord {
    gateways: Vec<Option<f64>>,
    etcd: Option<f64>,
    generator: Option<f64>,
    all: Option<f64>,
}

impl CpuUse {
    /// Microseconds per record of each part between `before` and `self`, and in all.
    fn per_record(&self, before: &CpuUse, records: usize) -> CpuPerRecord {
        let us = |a: Option<Duration>, b: Option<Duration>| Some(crate::cpu::us_per(a?.saturating_sub(b?), records));
        let gateways: Vec<Option<f64>> = self.gateways.iter().zip(&before.gateways).map(|(a, b)| us(*a, *b)).collect();
        let (etcd, generator) = (us(self.etcd, before.etcd), us(self.generator, before.generator));
        let all = gateways.iter().copied().chain([etcd, generator]).sum::<Option<f64>>();
        CpuPerRecord { gateways, etcd, generator, all }
    }
}

impl Consortium {
    /// What each process has used of the CPU so far (`/proc`, getrusage for this one).
    fn cpu(&self) -> CpuUse {
        let of = crate::cpu::of_process;
        CpuUse {
            gateways: self.children.iter().map(|c| of(c.id())).collect(),
            etcd: self.etcd.children.iter().map(|c| of(c.id())).sum(),
            generator: crate::cpu::this_process(),
        }
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = stop_child(c);
        }
        self.children.clear();
    }
}

impl Drop for Consortium {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Builds and starts the consortium under `dir`.
/// `[limits]` for the gateways of the consortium bench: each site's load comes from one HIS
/// certificate, which the defaults (64 connections, 200 requests/s) would throttle.
const BENCH_LIMITS: &str = "\n[limits]\nmax_connections = 8192\nmax_connections_per_client = 8192\nmax_requests_in_flight_per_client = 1000000\nrequests_per_second_per_client = 1000000\nburst_per_client = 1000000\n";

/// The three-hospital consortium; `extra` is appended to each gateway's configuration.
fn build(dir: &Path, extra: &str, say: &mut dyn FnMut(&str)) -> Result<Consortium, Failure> {
    let ca = TestCa::new("Consortium CA").map_err(rt_err)?;
    let etcd = start_etcd(&dir.join("etcd"), &ca)?;
    say(&format!("consortium CA created; 3-member etcd cluster with mutual TLS on {:?}", etcd.endpoints));
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(|_| Failure::runtime("random"))?;
    let mut sites = Vec::new();
    for h in HOSPITALS {
        sites.push(Site::create_with(&dir.join(h), h, Some(&key), &mut |_| {})?);
        say(&format!("{h}: SoftHSM token with its keys (the consortium pseudonym key imported at the key ceremony), hospital CA, HIS certificate"));
    }
    key.iter_mut().for_each(|b| *b = 0);
    let peers: Vec<SocketAddr> = sites.iter().map(|_| free_port()).collect::<Result<_, _>>()?;
    let cards = sites
        .iter()
        .zip(&peers)
        .map(|(s, p)| medgate_ledger::membership::MemberCard::from_files(&s.hospital, &s.ledger_public_key, 1, Some(&s.dir.join("sharing-public-key.pem")), Some(*p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::runtime)?;
    let genesis_path = dir.join("genesis.json");
    let genesis_hash = medgate_ledger::membership::Genesis::new("medgate demo consortium", &medgate_gateway::clock::now_rfc3339(), cards).and_then(|g| g.write(&genesis_path)).map_err(Failure::runtime)?;
    // Per-hospital RBAC, as `medgate consortium etcd-rbac --genesis ... --enable-auth` prints it.
    let ids: Vec<String> = sites.iter().map(|s| s.hospital.clone()).collect();
    for cmd in medgate_store::order::etcd::rbac_commands("/medgate/ledger", &ids, &[], true).map_err(Failure::runtime)? {
        etcd.etcdctl(&cmd.split_whitespace().collect::<Vec<_>>())?;
    }
    say("etcd authentication on: each hospital's etcd user (its certificate's CN) reads the ledger stream and writes only under /medgate/ledger/batches/<its id>/");
    let endpoints: Vec<String> = etcd.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    for (s, p) in sites.iter().zip(&peers) {
        let csr = std::fs::read_to_string(s.dir.join("tls/server.csr")).map_err(rt_err)?;
        let cert = ca.sign_peer_csr(&csr, 30, &[IpAddr::from([127, 0, 0, 1])]).map_err(rt_err)?;
        std::fs::write(s.dir.join("tls/consortium.pem"), cert.pem()).map_err(rt_err)?;
        std::fs::write(s.dir.join("tls/consortium-ca.pem"), ca.cert.pem()).map_err(rt_err)?;
        let text = std::fs::read_to_string(&s.config).map_err(rt_err)?;
        let tls = s.dir.join("tls");
        std::fs::write(
            &s.config,
            format!(
                "{text}{extra}\n[ledger]\nmode = \"consortium\"\n\n[consortium]\netcd_endpoints = [{}]\nca = \"{}/consortium-ca.pem\"\ncertificate = \"{}/consortium.pem\"\ngenesis = \"{}\"\npeer_listen = \"{p}\"\nbreak_glass_roles = [\"emergency-physician\"]\n",
                endpoints.join(", "),
                tls.display(),
                tls.display(),
                genesis_path.display()
            ),
        )
        .map_err(rt_err)?;
    }
    say(&format!(
        "consortium certificates issued for each gateway's HSM TLS key; genesis {} names the three founding members (ledger and sharing keys, peer addresses)",
        &hex::encode(genesis_hash)[..16]
    ));
    let exe = std::env::current_exe().map_err(rt_err)?;
    let mut c = Consortium { etcd, sites, children: Vec::new() };
    for i in 0..c.sites.len() {
        let log = c.sites[i].dir.join("medgate.log");
        let child = c.sites[i].spawn(&exe, Some(&log))?;
        c.children.push(child);
    }
    say("three gateways started (medgate serve), each following etcd's ordered stream");
    Ok(c)
}

pub fn run(workdir: Option<&Path>) -> Result<(), Failure> {
    let temp;
    let dir: PathBuf = match workdir {
        Some(d) => d.to_path_buf(),
        None => {
            temp = tempfile::Builder::new().prefix("medgate-consortium").tempdir().map_err(rt_err)?;
            temp.path().to_path_buf()
        }
    };
    let mut step = 0;
    let mut say = |m: &str| {
        step += 1;
        println!("[{step:2}] {m}");
    };
    let mut c = build(&dir, "", &mut say)?;
    let sites = c.sites.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(rt_err)?;
    let outcome = rt.block_on(scene(&sites, &mut say));
    c.stop();
    outcome?;
    say("gateways stopped with SIGTERM");
    let keys: Vec<Vec<u8>> = sites.iter().map(|s| medgate_ledger::keys::read_public_key(&s.ledger_public_key)).collect::<Result<_, _>>().map_err(|e| Failure::runtime(e.to_string()))?;
    let mut heads = Vec::new();
    for s in &sites {
        let db = medgate_store::Db::open(&s.dir.join("state")).map_err(rt_err)?;
        let store = medgate_store::ChainStore::open(&db).map_err(rt_err)?;
        let r = store.verify(&keys).map_err(|e| Failure::runtime(format!("{}: ledger verification FAILED: {e}", s.hospital)))?;
        heads.push((r.head, r.blocks));
    }
    check(heads.iter().all(|h| h == &heads[0]), "the three ledgers differ")?;
    say(&format!("the three ledger copies verify against the members' keys to one head: {} blocks, head {}", heads[0].1, &heads[0].0[..16]));
    drop(c);
    match workdir {
        Some(d) => say(&format!("everything is kept in {}", d.display())),
        None => say("throwaway tokens, keys, certificates, etcd data and ledgers removed (use --workdir DIR to keep them)"),
    }
    println!("consortium demo finished: OK");
    Ok(())
}

fn client(site: &Site, user: &str, role: &str, purpose: &str) -> Result<HisClient, Failure> {
    Ok(HisClient::new(site.his_addr, "localhost", site.his_tls()?).map_err(Failure::runtime)?.acting_as(user, role, purpose))
}

async fn scene(sites: &[Site], say: &mut dyn FnMut(&str)) -> Result<(), Failure> {
    let (a, b) = (&sites[0], &sites[1]);
    let patient = PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "2750912345678".into() };
    let q = query_escape(&patient.canonical());
    let letter = b"Cardiology report: sinus rhythm, no ischaemia.\n".to_vec();
    let mut his_a = client(a, "dr.alvarez", "physician", "TREAT")?;
    let mut his_b = client(b, "dr.baker", "physician", "TREAT")?;
    let r = his_a.post_json("/", &sample_transaction(&patient, "text/plain", &letter, None), &[]).await.map_err(Failure::runtime)?;
    check(r.status == 200, &format!("A stores the record: {}", r.status))?;
    let id = medgate_fhir::answer_ids(&r.json(), "DocumentReference").pop().unwrap_or_default();
    say(&format!("hospital A stores a record for the patient: 200, DocumentReference/{id}, anchored on the consortium ledger"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = his_b.get(&format!("/DocumentReference?patient={q}")).await.map_err(Failure::runtime)?.json();
        if found["total"] == 1 {
            say("hospital B finds it by the patient's identifier (custodian: hospital-a)");
            break;
        }
        check(Instant::now() < deadline, "B sees A's record in its ledger copy")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = his_b.get(&format!("/Binary/{id}")).await.map_err(Failure::runtime)?;
    check(r.status == 403, "B is refused without consent")?;
    say("B asks A for the document: 403, no consent; A wrote the denial on the ledger");
    let consent = |status: &str| {
        json!({
            "resourceType": "Consent", "status": status,
            "patient": {"identifier": {"system": patient.system, "value": patient.value}},
            "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
        })
    };
    let r = his_a.post_json("/Consent", &consent("active"), &[]).await.map_err(Failure::runtime)?;
    check(r.status == 201, "A records the consent")?;
    let consent_id = r.json()["id"].as_str().unwrap_or_default().to_owned();
    say("the patient consents at A: access for hospital B, recorded on the ledger");
    let r = his_b.get(&format!("/Binary/{id}")).await.map_err(Failure::runtime)?;
    check(r.status == 200 && r.body.as_ref() == letter.as_slice(), "B reads the exact bytes")?;
    say(&format!("B reads it: 200, {} bytes identical to A's (key re-wrapped in A's HSM for B's, hash checked against the ledger)", r.body.len()));
    let r = his_a
        .send("PUT", &format!("/Consent/{consent_id}"), &[("content-type", "application/fhir+json")], serde_json::to_vec(&consent("inactive")).unwrap_or_default())
        .await
        .map_err(Failure::runtime)?;
    check(r.status == 200, "A withdraws the consent")?;
    let r = his_b.get(&format!("/Binary/{id}")).await.map_err(Failure::runtime)?;
    check(r.status == 403, "B is refused after the withdrawal")?;
    say("the patient withdraws the consent at A; B's very next read is refused");
    // A's last access entry was ordered before its answer; its block lands right after.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(a, "medgate_outbox_entries ")? != Some(0.0) {
        check(Instant::now() < deadline, "A's access entries reach its ledger copy")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want_height = admin_get(a.admin_addr, "/metrics").map_err(Failure::runtime)?.1;
    let height = |text: &str| text.lines().find(|l| l.starts_with("medgate_ledger_height")).map(str::to_owned);
    let target = height(&want_height);
    for s in sites {
        while height(&admin_get(s.admin_addr, "/metrics").map_err(Failure::runtime)?.1) != target {
            check(Instant::now() < deadline, "every gateway reaches the same height")?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for s in sites {
        let mut his = client(s, "auditor", "privacy-officer", "HOPERAT")?;
        let trail: Value = his.get(&format!("/AuditEvent?patient={q}")).await.map_err(Failure::runtime)?.json();
        let events = trail["entry"].as_array().cloned().unwrap_or_default();
        let reads: Vec<&str> = events
            .iter()
            .filter(|e| e["resource"]["subtype"][0]["code"] == "ITI-68")
            .map(|e| e["resource"]["outcomeDesc"].as_str().unwrap_or(""))
            .collect();
        check(reads.len() == 3, &format!("{}: three reads on the ledger", s.hospital))?;
        say(&format!("{}'s audit trail for the patient: {} events, reads {:?}", s.hospital, events.len(), reads));
    }
    Ok(())
}

/// `medgate bench --consortium`: etcd's raw put rate, consortium ingest throughput, and
/// cross-hospital read latency, all in one run on one machine.
pub fn bench(records: usize, concurrency: usize) -> Result<(), Failure> {
    let temp = tempfile::Builder::new().prefix("medgate-consortium-bench").tempdir().map_err(rt_err)?;
    let mut c = build(temp.path(), BENCH_LIMITS, &mut |_| {})?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(rt_err)?;
    let result = rt.block_on(bench_run(&c, records, concurrency));
    c.stop();
    result
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize].as_secs_f64() * 1e3
}

/// `n` HIS clients of `site`, each with its connection open (the handshakes are not measured).
async fn open_clients(site: &Site, n: usize) -> Result<Vec<HisClient>, Failure> {
    let mut opening = Vec::with_capacity(n);
    for _ in 0..n {
        let mut his = client(site, "bench", "physician", "TREAT")?;
        opening.push(tokio::spawn(async move { his.open().await.map(|()| his) }));
    }
    let mut out = Vec::with_capacity(n);
    for o in opening {
        out.push(o.await.map_err(rt_err)?.map_err(Failure::runtime)?);
    }
    Ok(out)
}

/// `records` 4 KiB documents stored at `a` by `concurrency` HIS clients (connected first, drawing
/// from one count); prints the rate, latencies and CPU, and returns the record ids, the rate and
/// the bound of [`print_cpu`].
async fn bench_ingest(c: &Consortium, patient: &PatientId, records: usize, concurrency: usize) -> Result<(Vec<String>, f64, Option<f64>), Failure> {
    let a = &c.sites[0];
    let clients = open_clients(a, concurrency).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = c.cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, mut his) in clients.into_iter().enumerate() {
        let (patient, next) = (patient.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let data: Vec<u8> = (0..4096).map(|i| (i * 7 + w) as u8).collect();
            let doc = medgate_fhir::SampleDocument::new("application/pdf", &data);
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < records {
                let t = Instant::now();
                let r = his.post_json("/", &doc.transaction(&patient, None), &[]).await?;
                if r.status != 200 {
                    return Err(format!("ingest answered {}", r.status));
                }
                out.push((t.elapsed(), medgate_fhir::answer_ids(&r.json(), "DocumentReference").pop().unwrap_or_default()));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for t in tasks {
        for (d, id) in t.await.map_err(rt_err)?.map_err(Failure::runtime)? {
            lat.push(d);
            ids.push(id);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = c.cpu().per_record(&cpu_before, lat.len());
    lat.sort();
    let rate = lat.len() as f64 / secs;
    println!(
        "consortium ingest (4 KiB, {concurrency} concurrent HIS clients at A): {rate:.0} records/s, p50 {:.2} ms, p99 {:.2} ms ({} records)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    let bound = print_cpu(&cpu, rate);
    Ok((ids, rate, bound))
}

/// Where the machine's CPU went per record of the ingest, and the rate all cores would allow
/// at that cost; then the most the cores would allow at the other parts' costs per record (the
/// other gateways following its blocks, etcd and the load generator) if the ingesting gateway
/// cost nothing, returned. A model, not a limit: etcd's and the followers' work is partly per
/// batch, so their cost per record may fall somewhat as batches fill.
fn print_cpu(CpuPerRecord { gateways, etcd, generator, all }: &CpuPerRecord, rate: f64) -> Option<f64> {
    let names = gateway_cpu(gateways);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let allowed = all.and_then(|a| crate::cpu::rate_allowed(cores, a));
    println!(
        "  CPU per record, µs over all cores: gateways {names}; etcd (3 members) {}; load generator {}; in all {}: {cores} cores allow {} records/s (ingest ran at {})",
        us(etcd),
        us(generator),
        us(all),
        allowed.map_or_else(|| "?".to_owned(), |a| format!("{a:.0}")),
        allowed.map_or_else(|| "?".to_owned(), |a| format!("{:.2} of that", rate / a)),
    );
    let others = all.zip(gateways.first().copied().flatten()).map(|(a, ingesting)| a - ingesting);
    let bound = others.and_then(|o| crate::cpu::rate_allowed(cores, o));
    println!(
        "  without {}'s own CPU, at the other parts' costs per record (the other gateways, etcd and the load generator: {} µs) the cores would allow at most {} records/s",
        HOSPITALS[0],
        us(&others),
        bound.map_or_else(|| "?".to_owned(), |b| format!("{b:.0}")),
    );
    bound
}

async fn bench_run(c: &Consortium, records: usize, concurrency: usize) -> Result<(), Failure> {
    let read = |p: &str| std::fs::read(c.etcd.dir.join(p)).map_err(rt_err);
    let (ca, cert, key) = (read("ca.pem")?, read("root.crt")?, read("root.key")?);
    let tls = medgate_gateway::tls::client_config(&ca, Some((&cert, &key))).map_err(rt_err)?;
    let raw = medgate_store::order::etcd::raw_puts(&c.etcd.endpoints, &tls, Duration::from_secs(3), concurrency).await.map_err(Failure::runtime)?.rate;
    let (disk_before, cpu_before) = (EtcdDisk::of(&c.etcd)?, c.cpu());
    let one = medgate_store::order::etcd::raw_puts(&c.etcd.endpoints, &tls, Duration::from_secs(2), 1).await.map_err(Failure::runtime)?;
    let raw_etcd_cpu = c.cpu().per_record(&cpu_before, one.latencies.len()).etcd;
    let raw_disk = EtcdDisk::of(&c.etcd)?.since(&disk_before, one.latencies.len());
    println!(
        "medgate consortium bench {}: 3 etcd members (mutual TLS, loopback), 3 gateways, SoftHSM2, {} cores, load average {}",
        medgate_gateway::clock::now_rfc3339(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_owned)).unwrap_or_else(|| "?".into()),
    );
    println!("etcd raw put (1 KiB, {concurrency} concurrent, as root): {raw:.0} puts/s");
    println!(
        "etcd raw put (1 KiB, one after another: one consensus round, the floor of a read's access entry): p50 {:.2} ms, p99 {:.2} ms ({} puts)",
        percentile(&one.latencies, 0.5),
        percentile(&one.latencies, 0.99),
        one.latencies.len()
    );
    println!("  {}; etcd's CPU per put {} µs over all cores", raw_disk.line("put"), us(&raw_etcd_cpu));
    let a = &c.sites[0];
    let patient = PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "bench-patient".into() };
    let (ids, rate, bound) = bench_ingest(c, &patient, records, concurrency).await?;
    println!(
        "consortium ingest / etcd raw put in this run: {:.2} (the bound without {}'s own CPU / etcd raw put: {})",
        rate / raw.max(1e-9),
        HOSPITALS[0],
        bound.map_or_else(|| "?".to_owned(), |b| format!("{:.2}", b / raw.max(1e-9))),
    );
    // The patient consents to B; B reads A's records one after another.
    let mut his_a = client(a, "bench", "physician", "TREAT")?;
    let consent = json!({
        "resourceType": "Consent", "status": "active",
        "patient": {"identifier": {"system": patient.system, "value": patient.value}},
        "provision": {"type": "permit", "actor": [{"reference": {"identifier": {"system": "urn:medgate:hospital", "value": "hospital-b"}}}]}
    });
    let r = his_a.post_json("/Consent", &consent, &[]).await.map_err(Failure::runtime)?;
    check(r.status == 201, "consent recorded")?;
    let b = &c.sites[1];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut his_b = client(b, "bench", "physician", "TREAT")?;
    let last = ids.last().cloned().unwrap_or_default();
    while his_b.get(&format!("/Binary/{last}")).await.map_err(Failure::runtime)?.status != 200 {
        check(Instant::now() < deadline, "B sees A's records and the consent")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reads = Vec::new();
    let n = ids.len().min(SEQUENTIAL_READS);
    let before = ReadSteps::of(a, b)?;
    let disk_before = EtcdDisk::of(&c.etcd)?;
    let (cpu_before, reading) = (c.cpu(), Instant::now());
    for id in ids.iter().take(n) {
        let t = Instant::now();
        let r = his_b.get(&format!("/Binary/{id}")).await.map_err(Failure::runtime)?;
        check(r.status == 200 && r.body.len() == 4096, "cross-hospital read")?;
        reads.push(t.elapsed());
    }
    let read_cpu = c.cpu().per_record(&cpu_before, reads.len());
    let read_time = reading.elapsed();
    let read_disk = EtcdDisk::of(&c.etcd)?.since(&disk_before, reads.len());
    reads.sort();
    println!(
        "cross-hospital read (B reads A's record under consent, sequential): p50 {:.2} ms, p99 {:.2} ms ({} reads)",
        percentile(&reads, 0.5),
        percentile(&reads, 0.99),
        reads.len()
    );
    let now = ReadSteps::of(a, b)?;
    let mean = |now: &Steps, before: &Steps, step: &str| {
        let ((s1, c1), (s0, c0)) = (now.get(step).copied().unwrap_or_default(), before.get(step).copied().unwrap_or_default());
        if c1 > c0 {
            (s1 - s0) / (c1 - c0) * 1e3
        } else {
            f64::NAN
        }
    };
    println!(
        "  its steps, mean ms (medgate_peer_read_step_seconds): B calls A {:.2} (A: access entry flushed and ordered {:.2}, data key sealed for B alongside {:.2}), B unwraps {:.2}",
        mean(&now.at_b, &before.at_b, "custodian"),
        mean(&now.at_a, &before.at_a, "access_entry"),
        mean(&now.at_a, &before.at_a, "rewrap"),
        mean(&now.at_b, &before.at_b, "unwrap"),
    );
    println!(
        "  A's ledger writer meanwhile, mean ms (medgate_ledger_step_seconds): a batch signed and checked {:.2}, etcd's transaction until it holds the batch {:.2}, a flush {:.2}",
        mean(&now.writer_at_a, &before.writer_at_a, "sign"),
        mean(&now.writer_at_a, &before.writer_at_a, "submit"),
        mean(&now.writer_at_a, &before.writer_at_a, "flush"),
    );
    println!("  {}", read_disk.line("read"));
    print_read_cpu(&read_cpu, reads.len(), read_time);
    let count = |v: Option<f64>| v.map_or_else(|| "none".to_owned(), |n| format!("{n}"));
    println!(
        "  transport keys (medgate_hsm_transport_keys_total): A made {}, B unwrapped {} with its RSA sharing key",
        count(metric(a, "medgate_hsm_transport_keys_total{event=\"made\"} ")?),
        count(metric(b, "medgate_hsm_transport_keys_total{event=\"received\"} ")?),
    );
    concurrent_reads(b, &ids, READ_CONCURRENCY).await
}

/// Microseconds, or `?` when a process's CPU could not be read.
fn us(v: &Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0}"))
}

/// Each hospital's gateway with its CPU, in [`HOSPITALS`] order.
fn gateway_cpu(gateways: &[Option<f64>]) -> String {
    HOSPITALS.iter().zip(gateways).map(|(h, g)| format!("{h} {}", us(g))).collect::<Vec<_>>().join(", ")
}

/// Where the CPU went per sequential read, and how busy that kept the cores while the reads ran.
fn print_read_cpu(CpuPerRecord { gateways, etcd, generator, all }: &CpuPerRecord, reads: usize, took: Duration) {
    let names = gateway_cpu(gateways);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let busy = all.map(|a| a * reads as f64 / (took.as_secs_f64() * 1e6 * cores as f64));
    println!(
        "  CPU per read, µs over all cores: gateways {names}; etcd (3 members) {}; this process (B's HIS) {}; in all {}: the {cores} cores {} busy while the reads ran",
        us(etcd),
        us(generator),
        us(all),
        busy.map_or_else(|| "?".to_owned(), |b| format!("{:.0} %", b * 100.0)),
    );
}

/// etcd's disk, summed over the members (`etcd_disk_wal_fsync_duration_seconds`,
/// `etcd_disk_backend_commit_duration_seconds`): (sum in seconds, count) of each.
#[derive(Debug, Default)]
struct EtcdDisk {
    wal: (f64, f64),
    backend: (f64, f64),
    /// The operations of the stretch measured, once [`EtcdDisk::since`] made it one.
    operations: usize,
}

impl EtcdDisk {
    fn of(etcd: &Etcd) -> Result<EtcdDisk, Failure> {
        let mut d = EtcdDisk::default();
        for addr in &etcd.metrics {
            let text = match admin_get(*addr, "/metrics") {
                Ok((200, text)) => text,
                Ok((status, _)) => return Err(Failure::runtime(format!("etcd metrics at {addr}: status {status}"))),
                Err(e) => return Err(Failure::runtime(format!("etcd metrics at {addr}: {e}"))),
            };
            // Unlabelled families: `NAME_sum VALUE` and `NAME_count VALUE`.
            let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0);
            let family = |f: &str| (value(&format!("{f}_sum")), value(&format!("{f}_count")));
            let (wal, backend) = (family("etcd_disk_wal_fsync_duration_seconds"), family("etcd_disk_backend_commit_duration_seconds"));
            d.wal = (d.wal.0 + wal.0, d.wal.1 + wal.1);
            d.backend = (d.backend.0 + backend.0, d.backend.1 + backend.1);
        }
        Ok(d)
    }

    /// What the disk did between `before` and this scrape, over `operations`.
    fn since(&self, before: &EtcdDisk, operations: usize) -> EtcdDisk {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        EtcdDisk { wal: d(self.wal, before.wal), backend: d(self.backend, before.backend), operations }
    }

    /// One line: WAL fsyncs per `what` and their mean, backend commits' mean.
    fn line(&self, what: &str) -> String {
        let mean = |(sum, count): (f64, f64)| if count > 0.0 { format!("{:.2} ms", sum / count * 1e3) } else { "?".to_owned() };
        format!(
            "etcd's disk meanwhile, 3 members: {:.1} WAL fsyncs per {what}, mean {}; backend commits mean {}",
            self.wal.1 / (self.operations.max(1) as f64),
            mean(self.wal),
            mean(self.backend),
        )
    }
}

/// The value of the `/metrics` line of `site` that starts with `prefix` (name, labels and the
/// space before the value).
fn metric(site: &Site, prefix: &str) -> Result<Option<f64>, Failure> {
    let text = metrics_text(site)?;
    Ok(text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse::<f64>().ok()))
}

/// The steps of a cross-hospital read, and of the ledger writer (histogram families).
const PEER_READ_STEPS: &str = "medgate_peer_read_step_seconds";
const WRITER_STEPS: &str = "medgate_ledger_step_seconds";

/// (sum in seconds, count) of each step of a histogram family.
type Steps = BTreeMap<String, (f64, f64)>;

/// The step histograms the sequential reads are measured by, from one scrape of each gateway:
/// the read's steps at A (custodian) and B (requester), A's ledger writer's steps.
struct ReadSteps {
    at_a: Steps,
    at_b: Steps,
    writer_at_a: Steps,
}

impl ReadSteps {
    fn of(a: &Site, b: &Site) -> Result<ReadSteps, Failure> {
        let (text_a, text_b) = (metrics_text(a)?, metrics_text(b)?);
        Ok(ReadSteps {
            at_a: histogram_steps(&text_a, PEER_READ_STEPS),
            at_b: histogram_steps(&text_b, PEER_READ_STEPS),
            writer_at_a: histogram_steps(&text_a, WRITER_STEPS),
        })
    }
}

/// `site`'s `/metrics` page.
fn metrics_text(site: &Site) -> Result<String, Failure> {
    Ok(admin_get(site.admin_addr, "/metrics").map_err(Failure::runtime)?.1)
}

/// (sum in seconds, count) of each `step` of histogram `family` in a `/metrics` page.
fn histogram_steps(text: &str, family: &str) -> Steps {
    let prefix = format!("{family}_");
    let mut steps = Steps::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else { continue };
        let Some((kind, rest)) = rest.split_once("{step=\"") else { continue };
        let Some((step, value)) = rest.split_once("\"} ") else { continue };
        let Ok(v) = value.trim().parse::<f64>() else { continue };
        match kind {
            "sum" => steps.entry(step.to_owned()).or_default().0 = v,
            "count" => steps.entry(step.to_owned()).or_default().1 = v,
            _ => {}
        }
    }
    steps
}

/// Reads measured one after another (and then at once): enough that the p99 is not the second
/// slowest of a handful.
const SEQUENTIAL_READS: usize = 1000;

/// HIS clients at B reading A's records at once.
const READ_CONCURRENCY: usize = 16;

/// `concurrency` HIS clients at B read A's records at once (each its own share of `ids`).
async fn concurrent_reads(b: &Site, ids: &[String], concurrency: usize) -> Result<(), Failure> {
    let ids: Arc<Vec<String>> = Arc::new(ids.iter().take(SEQUENTIAL_READS).cloned().collect());
    let clients = open_clients(b, concurrency).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut his in clients {
        let (ids, next) = (ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                let t = Instant::now();
                let r = his.get(&format!("/Binary/{id}")).await?;
                if r.status != 200 {
                    return Err(format!("cross-hospital read answered {}", r.status));
                }
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(rt_err)?.map_err(Failure::runtime)?);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "cross-hospital read ({concurrency} concurrent HIS clients at B): {:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms ({} reads)",
        lat.len() as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    Ok(())
}
