//! `medgate demo` and the hospital "site" it builds: a throwaway SoftHSM2 token with every key
//! role, a hospital CA with the gateway's certificate (key in the HSM) and an HIS client
//! certificate, a PIN file, and a configuration, all under one directory. The integration tests
//! and the load generator build the same site, so what the demo shows is what is tested.
//!
//! The site needs SoftHSM2 (`scripts/install-deps.sh`); nothing here is used by `medgate serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medgate_hsm::{Hsm, HsmConfig, Pin, Role};
use time::OffsetDateTime;

use crate::exit::Failure;
use crate::client::{query_escape, HisClient};
use medgate_fhir::{sample_transaction, PatientId};
use medgate_gateway::pki::TestCa;

mod consortium;
mod ports;

pub use ports::free_port;
pub use consortium::{bench as bench_consortium, run as run_consortium};

/// Where Debian's softhsm2 package puts the module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token label every site uses.
pub const TOKEN: &str = "medgate";

/// One hospital's files, ready for `medgate serve --config <dir>/medgate.toml`.
#[derive(Debug, Clone)]
pub struct Site {
    pub dir: PathBuf,
    pub hospital: String,
    pub config: PathBuf,
    pub softhsm_conf: PathBuf,
    pub his_addr: SocketAddr,
    /// The monitoring listener (health, readiness, metrics).
    pub admin_addr: SocketAddr,
    /// The admin socket (every admin action).
    pub admin_socket: PathBuf,
    /// PEM: the hospital CA (trusted by the HIS for the server, and by the gateway for clients).
    pub ca_pem: String,
    /// PEM: the HIS client certificate and its key (role `his`).
    pub his_cert_pem: String,
    pub his_key_pem: String,
    /// PEM: the gateway's ledger public key, as the security officer exports it.
    pub ledger_public_key: PathBuf,
    /// The hospital CA, in memory only (its key is never written out): tests issue and revoke
    /// further client certificates with it.
    pub ca: Arc<TestCa>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::runtime(format!("{}: {e}", path.display()))
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Failure> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

impl Site {
    /// Builds a site under `dir` (created; must not hold a site already). `say` narrates.
    pub fn create(dir: &Path, hospital: &str, say: &mut dyn FnMut(&str)) -> Result<Site, Failure> {
        Site::create_with(dir, hospital, None, say)
    }

    /// As [`Site::create`]; with `shared_pseudonym_key`, the consortium's pseudonym key is
    /// imported (key ceremony) instead of a hospital-local one being generated.
    pub fn create_with(dir: &Path, hospital: &str, shared_pseudonym_key: Option<&[u8]>, say: &mut dyn FnMut(&str)) -> Result<Site, Failure> {
        // scripts/demo.sh --hsm-module names another PKCS#11 module here (its token store prepared).
        let module = std::env::var_os("MEDGATE_DEMO_HSM_MODULE").map_or_else(|| PathBuf::from(SOFTHSM_MODULE), PathBuf::from);
        if !module.is_file() {
            return Err(Failure::config(format!("PKCS#11 module {} not found: run scripts/install-deps.sh", module.display())));
        }
        std::fs::create_dir_all(dir.join("softhsm/tokens")).map_err(io(dir))?;
        std::fs::create_dir_all(dir.join("tls")).map_err(io(dir))?;
        std::fs::create_dir_all(dir.join("state")).map_err(io(dir))?;
        let dir = dir.canonicalize().map_err(io(dir))?;
        let (softhsm_conf, pin_file, pin) = init_token(&dir, &module, say)?;

        let hsm = Arc::new(Hsm::open(HsmConfig { module: module.clone(), token_label: TOKEN.into(), pool_size: 2 }, pin).map_err(Failure::hsm)?);
        let result = Self::keys_and_certificates(&dir, hospital, &hsm, shared_pseudonym_key, say);
        hsm.shutdown();
        let (ca, his_cert_pem, his_key_pem, ledger_public_key) = result?;
        let ca_pem = ca.cert.pem();

        let his_addr = free_port()?;
        let admin_addr = free_port()?;
        let admin_socket = dir.join("admin.sock");
        let config = write_config(&dir, hospital, &module, &pin_file, his_addr, admin_addr)?;
        say(&format!("configuration written to {}", config.display()));
        Ok(Site {
            dir: dir.clone(),
            hospital: hospital.to_owned(),
            config,
            softhsm_conf,
            his_addr,
            admin_addr,
            admin_socket,
            ca_pem,
            his_cert_pem,
            his_key_pem,
            ledger_public_key,
            ca: Arc::new(ca),
        })
    }

    fn keys_and_certificates(
        dir: &Path,
        hospital: &str,
        hsm: &Arc<Hsm>,
        shared_pseudonym_key: Option<&[u8]>,
        say: &mut dyn FnMut(&str),
    ) -> Result<(TestCa, String, String, PathBuf), Failure> {
        for role in Role::ALL {
            let k = match (role, shared_pseudonym_key) {
                (Role::Pseudonym, Some(v)) => hsm.import_pseudonym_key(v).map_err(Failure::hsm)?,
                _ => hsm.generate(role).map_err(Failure::hsm)?,
            };
            say(&format!("key generated in the HSM: {} ({}, CKA_ID {}, sensitive, never extractable)", k.label, role.algorithm(), k.id_hex));
        }
        let tls = dir.join("tls");
        let ca = TestCa::new(&format!("{hospital} CA")).map_err(|e| Failure::runtime(e.to_string()))?;
        let ca_pem = ca.cert.pem();
        std::fs::write(tls.join("hospital-ca.pem"), &ca_pem).map_err(io(&tls))?;
        let dn = medgate_gateway::pki::parse_subject(&format!("CN=localhost,O={hospital}")).map_err(Failure::usage)?;
        let csr = medgate_gateway::pki::csr_for_hsm_key(hsm.clone(), Role::Tls, dn, &["localhost".to_owned()]).map_err(|e| Failure::runtime(e.to_string()))?;
        std::fs::write(tls.join("server.csr"), &csr).map_err(io(&tls))?;
        let server = ca.sign_server_csr(&csr, 365).map_err(|e| Failure::runtime(e.to_string()))?;
        std::fs::write(tls.join("server.pem"), server.pem()).map_err(io(&tls))?;
        hsm.import_certificate(Role::Tls, server.der(), &[]).map_err(Failure::hsm)?;
        say("hospital CA created; the gateway's TLS certificate was issued for a CSR signed inside the HSM");
        let now = OffsetDateTime::now_utc();
        let (his, his_key) = ca
            .issue_client("his-main", "his", now - time::Duration::days(1), now + time::Duration::days(365))
            .map_err(|e| Failure::runtime(e.to_string()))?;
        std::fs::write(tls.join("his.pem"), his.pem()).map_err(io(&tls))?;
        write_private(&tls.join("his-key.pem"), his_key.serialize_pem().as_bytes())?;
        std::fs::write(tls.join("hospital-ca.crl"), ca.crl(&[], 30).map_err(|e| Failure::runtime(e.to_string()))?).map_err(io(&tls))?;
        say("HIS client certificate issued (CN=his-main, OU=his); empty CRL published");
        let (_, pem) = hsm.public_key_pem(Role::Ledger, None).map_err(Failure::hsm)?;
        let ledger_public_key = dir.join("ledger-public-key.pem");
        std::fs::write(&ledger_public_key, pem).map_err(io(&ledger_public_key))?;
        let (_, sharing) = hsm.public_key_pem(Role::Sharing, None).map_err(Failure::hsm)?;
        std::fs::write(dir.join("sharing-public-key.pem"), sharing).map_err(io(dir))?;
        Ok((ca, his.pem(), his_key.serialize_pem(), ledger_public_key))
    }

    /// A TLS client configuration presenting the site's HIS certificate.
    pub fn his_tls(&self) -> Result<Arc<rustls::ClientConfig>, Failure> {
        medgate_gateway::tls::client_config(self.ca_pem.as_bytes(), Some((self.his_cert_pem.as_bytes(), self.his_key_pem.as_bytes())))
            .map_err(|e| Failure::runtime(e.to_string()))
    }

    /// An HIS client acting for a physician treating the patient.
    pub fn his_client(&self) -> Result<HisClient, Failure> {
        Ok(HisClient::new(self.his_addr, "localhost", self.his_tls()?).map_err(Failure::runtime)?.acting_as("dr.house", "physician", "TREAT"))
    }

    /// Starts `medgate serve` for this site as a child process and waits until it is ready.
    pub fn spawn(&self, exe: &Path, log: Option<&Path>) -> Result<Child, Failure> {
        self.spawn_until(exe, log, "/readyz")
    }

    /// As [`Site::spawn`], waiting until the admin `path` answers 200 (`/healthz`: alive, even
    /// when not ready to serve).
    pub fn spawn_until(&self, exe: &Path, log: Option<&Path>, path: &str) -> Result<Child, Failure> {
        let mut cmd = Command::new(exe);
        cmd.arg("serve").arg("--config").arg(&self.config).env("SOFTHSM2_CONF", &self.softhsm_conf).stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(io(p))?;
                let f2 = f.try_clone().map_err(io(p))?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.spawn().map_err(|e| Failure::runtime(format!("{}: {e}", exe.display())))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Failure::runtime(format!("medgate serve exited during start-up ({status})")));
            }
            if crate::admin_client::get(self.admin_addr, path).map(|(s, _)| s == 200).unwrap_or(false) {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(Failure::runtime("medgate serve was not ready within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A SoftHSM2 token store under `dir/softhsm`, and a token labelled [`TOKEN`] with random user
/// and SO PINs in 0600 files: (the SoftHSM configuration, the PIN file, the user PIN).
fn init_token(dir: &Path, module: &Path, say: &mut dyn FnMut(&str)) -> Result<(PathBuf, PathBuf, Pin), Failure> {
    let softhsm_conf = dir.join("softhsm/softhsm2.conf");
    std::fs::write(
        &softhsm_conf,
        format!(
            "# SoftHSM2 token store of this medgate site\ndirectories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("softhsm/tokens").display()
        ),
    )
    .map_err(io(&softhsm_conf))?;
    // SoftHSM reads this at C_Initialize; the gateway process inherits it.
    std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
    let pin_file = dir.join("hsm-pin");
    let so_pin_file = dir.join("hsm-so-pin");
    write_private(&pin_file, random_hex(12).as_bytes())?;
    write_private(&so_pin_file, random_hex(12).as_bytes())?;
    let pin = || Pin::from_file(&pin_file).map_err(|e| Failure::runtime(e.to_string()));
    let so = Pin::from_file(&so_pin_file).map_err(|e| Failure::runtime(e.to_string()))?;
    medgate_hsm::admin::init_token(module, TOKEN, &so, &pin()?).map_err(Failure::hsm)?;
    say(&format!("SoftHSM2 token {TOKEN:?} initialised in {}; user PIN in {} (0600)", dir.join("softhsm").display(), pin_file.display()));
    let pin = pin()?;
    Ok((softhsm_conf, pin_file, pin))
}

/// The site's configuration file, as an operator would write it.
fn write_config(dir: &Path, hospital: &str, module: &Path, pin_file: &Path, his_addr: SocketAddr, admin_addr: SocketAddr) -> Result<PathBuf, Failure> {
    let config = dir.join("medgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"# medgate configuration written by `medgate demo` (see packaging/medgate.toml for every key)
[gateway]
hospital_id = "{hospital}"
state_directory = "{state}"

[hsm]
module = "{module}"
token_label = "{TOKEN}"
pin_file = "{pin}"
pool_size = 4

[his]
listen = "{his_addr}"
public_base_url = "https://localhost:{his_port}"
certificate = "{tls}/server.pem"
client_ca = "{tls}/hospital-ca.pem"
crl = ["{tls}/hospital-ca.crl"]

[admin]
listen = "{admin_addr}"
socket = "{admin_socket}"
"#,
            admin_socket = dir.join("admin.sock").display(),
            state = dir.join("state").display(),
            module = module.display(),
            pin = pin_file.display(),
            tls = dir.join("tls").display(),
            his_port = his_addr.port(),
        ),
    )
    .map_err(io(&config))?;
    Ok(config)
}

/// Sends SIGTERM and waits for the exit status.
pub fn stop_child(child: &mut Child) -> Result<std::process::ExitStatus, Failure> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    child.wait().map_err(|e| Failure::runtime(e.to_string()))
}

/// The sample patient of the demo. Fictitious; never logged by the gateway.
pub fn demo_patient() -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: "1840712345678".into() }
}

/// `medgate demo [--workdir DIR]`.
pub fn run(workdir: Option<&Path>) -> Result<(), Failure> {
    let temp;
    let dir = match workdir {
        Some(d) => {
            if d.join("medgate.toml").exists() {
                return Err(Failure::usage(format!("{} already holds a demo site; choose an empty directory", d.display())));
            }
            d.to_path_buf()
        }
        None => {
            temp = tempfile_dir()?;
            temp.path().to_path_buf()
        }
    };
    let mut step = 0;
    let mut say = |m: &str| {
        step += 1;
        println!("[{step:2}] {m}");
    };
    let site = Site::create(&dir, "hospital-a", &mut say)?;
    let exe = std::env::current_exe().map_err(|e| Failure::runtime(e.to_string()))?;
    let log = dir.join("medgate.log");
    let mut child = site.spawn(&exe, Some(&log))?;
    say(&format!("gateway started: FHIR on https://{} (mutual TLS), monitoring on http://{}, admin socket {}; log in {}", site.his_addr, site.admin_addr, site.admin_socket.display(), log.display()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure::runtime(e.to_string()))?;
    let outcome = rt.block_on(his_session(&site, &mut say));
    let status = stop_child(&mut child)?;
    say(&format!("gateway stopped with SIGTERM ({status})"));
    let receipt = outcome?;
    if !status.success() {
        return Err(Failure::runtime(format!("the gateway did not stop cleanly: {status}")));
    }

    let db = medgate_store::Db::open(&dir.join("state")).map_err(|e| Failure::runtime(e.to_string()))?;
    let store = medgate_store::ChainStore::open(&db).map_err(|e| Failure::runtime(e.to_string()))?;
    let key = medgate_ledger::keys::read_public_key(&site.ledger_public_key).map_err(|e| Failure::runtime(e.to_string()))?;
    let report = store.verify(std::slice::from_ref(&key)).map_err(|e| Failure::runtime(format!("ledger verification FAILED: {e}")))?;
    say(&format!(
        "ledger verified offline against {}: {} blocks, {} entries, head {}",
        site.ledger_public_key.display(),
        report.blocks,
        report.entries,
        &report.head[..16]
    ));
    let r = medgate_ledger::check_receipt(&receipt, &key).map_err(|e| Failure::runtime(e.to_string()))?;
    say(&format!("the HIS's receipt for the first record checks out with only the public key (entry {}, block {})", &r.entry.id[..16], r.height));
    match workdir {
        Some(d) => say(&format!("everything is kept in {}: try `medgate ledger verify --config {}`", d.display(), site.config.display())),
        None => say("throwaway token, keys, certificates and data removed (use --workdir DIR to keep them)"),
    }
    println!("demo finished: OK");
    Ok(())
}

fn tempfile_dir() -> Result<tempfile::TempDir, Failure> {
    tempfile::Builder::new().prefix("medgate-demo").tempdir().map_err(|e| Failure::runtime(format!("temporary directory: {e}")))
}

fn check(cond: bool, what: &str) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure::runtime(format!("demo check failed: {what}")))
    }
}

/// What the HIS does in the demo. Returns the first record's receipt (JSON bytes).
async fn his_session(site: &Site, say: &mut dyn FnMut(&str)) -> Result<Vec<u8>, Failure> {
    let mut his = site.his_client()?;
    let rt = |e: String| Failure::runtime(e);
    let meta = his.get("/metadata").await.map_err(rt)?;
    check(meta.status == 200, "GET /metadata")?;
    say(&format!("HIS connected with its client certificate; CapabilityStatement: FHIR {}", meta.json()["fhirVersion"].as_str().unwrap_or("?")));

    let patient = demo_patient();
    let letter = b"Discharge letter\nPatient recovered well after appendectomy.\n".to_vec();
    let bundle = sample_transaction(&patient, "text/plain", &letter, Some(("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.5.6.1")));
    let created = his.post_json("/", &bundle, &[("idempotency-key", "demo-1")]).await.map_err(rt)?;
    check(created.status == 200, &format!("POST / answered {}: {}", created.status, String::from_utf8_lossy(&created.body)))?;
    // One answer entry per request entry: the DocumentReference first, as the bundle has it.
    let answer = created.json();
    let id = medgate_fhir::answer_ids(&answer, "DocumentReference").pop().unwrap_or_default();
    let receipt_b64 = answer["entry"][0]["response"]["extension"][0]["valueAttachment"]["data"].as_str().unwrap_or_default();
    use base64::Engine as _;
    let receipt = base64::engine::general_purpose::STANDARD.decode(receipt_b64).map_err(|e| Failure::runtime(format!("receipt: {e}")))?;
    let r: serde_json::Value = serde_json::from_slice(&receipt).unwrap_or_default();
    say(&format!(
        "ITI-65 transaction stored: 200, DocumentReference/{id}, ledger receipt at block {} with a {}-step Merkle proof",
        r["height"], r["proof"].as_array().map(Vec::len).unwrap_or(0)
    ));

    let again = his.post_json("/", &bundle, &[("idempotency-key", "demo-1")]).await.map_err(rt)?;
    check(again.status == 200 && again.json() == answer, "retry with the same Idempotency-Key")?;
    say("the HIS retried the same request (same Idempotency-Key): the same answer, nothing stored twice");

    let lab = b"Lab result: haemoglobin 13.9 g/dL".to_vec();
    let second = his.post_json("/", &sample_transaction(&patient, "text/plain", &lab, None), &[]).await.map_err(rt)?;
    check(second.status == 200, "second document")?;
    say("a second document for the same patient stored");

    let q = format!("/DocumentReference?patient={}", query_escape(&patient.canonical()));
    let found = his.get(&q).await.map_err(rt)?;
    check(found.status == 200 && found.json()["total"] == 2, "search finds both documents")?;
    say("ITI-67 search by patient identifier: 2 DocumentReferences (the ledger only ever saw a pseudonym)");

    let bin = his.get(&format!("/Binary/{id}")).await.map_err(rt)?;
    check(bin.status == 200 && bin.body.as_ref() == letter.as_slice(), "the document reads back byte for byte")?;
    say(&format!("ITI-68 retrieve: Binary/{id} decrypted ({} bytes, identical to what was sent)", bin.body.len()));

    let bad = his.post_json("/", &serde_json::json!({"resourceType": "Bundle", "type": "batch"}), &[]).await.map_err(rt)?;
    check(bad.status == 422, "a malformed bundle is refused")?;
    say(&format!("a malformed bundle is refused: {} OperationOutcome \"{}\"", bad.status, bad.json()["issue"][0]["diagnostics"].as_str().unwrap_or("")));

    let anon = medgate_gateway::tls::client_config(site.ca_pem.as_bytes(), None).map_err(|e| Failure::runtime(e.to_string()))?;
    let mut stranger = HisClient::new(site.his_addr, "localhost", anon).map_err(rt)?;
    check(stranger.get("/metadata").await.is_err(), "a client without a certificate is refused")?;
    say("a client without a certificate is refused during the TLS handshake");

    // Every access was in a signed block before its answer came back: the trail is complete.
    let audit = his.get(&format!("/AuditEvent?patient={}", query_escape(&patient.canonical()))).await.map_err(rt)?;
    check(audit.status == 200, "audit trail")?;
    let events = audit.json()["entry"].as_array().cloned().unwrap_or_default();
    say(&format!("audit trail of the patient from the ledger: {} AuditEvents", events.len()));
    for e in &events {
        let r = &e["resource"];
        println!(
            "       {}  {:<6} {:<32} by user {}… ({}, {}) {}",
            r["recorded"].as_str().unwrap_or(""),
            r["subtype"][0]["code"].as_str().unwrap_or(""),
            r["entity"].get(1).and_then(|x| x["what"]["reference"].as_str()).unwrap_or("(search)"),
            &r["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("")[..12.min(r["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("").len())],
            r["agent"][0]["role"][0]["coding"][0]["code"].as_str().unwrap_or(""),
            r["purposeOfEvent"][0]["coding"][0]["code"].as_str().unwrap_or(""),
            r["outcomeDesc"].as_str().unwrap_or(""),
        );
    }
    // Two creates (each a DocumentReference and its SubmissionSet), one search, one read; the
    // retried create is not a second event.
    check(events.len() == 6, "every create, search and read is on the ledger, the retry is not")?;
    let metrics = crate::admin_client::get(site.admin_addr, "/metrics").map_err(Failure::runtime)?;
    let height = metrics.1.lines().find(|l| l.starts_with("medgate_ledger_height")).unwrap_or("").to_owned();
    say(&format!("admin /metrics: {height}"));
    Ok(receipt)
}
