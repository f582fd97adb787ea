//! The appliance around the gateway: configuration refusals, the systemd notification protocol,
//! SIGTERM and SIGHUP, Prometheus metrics, and logs free of PHI and secrets.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medgate_fhir::{sample_transaction, PatientId};
use support::{exe, rt, run_medgate, Gw};

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("PAT-{n:07}") }
}

#[test]
fn config_check_refuses_bad_configurations_with_file_key_and_reason() {
    let gw = Gw::new("config");
    let good = std::fs::read_to_string(&gw.site.config).unwrap();
    let conf = gw.site.softhsm_conf.clone();
    let check = |name: &str, text: &str| {
        let path = gw.site.dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run_medgate(&["config", "check", "--config", path.to_str().unwrap()], &conf);
        (code, format!("{out}{err}"), path)
    };
    let (code, out, _) = check("good.toml", &good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": OK"), "{out}");

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown.toml", good.replace("[his]\n", "[his]\nlisten_backlog = 5\n"), vec!["his.listen_backlog", "unknown"]),
        ("module.toml", good.replace("/usr/lib/softhsm/libsofthsm2.so", "/nonexistent/libpkcs11.so"), vec!["hsm.module", "/nonexistent/libpkcs11.so"]),
        ("pin.toml", good.replace("hsm-pin\"", "no-such-pin-file\""), vec!["hsm.pin_file", "no-such-pin-file"]),
        ("port.toml", good.replacen(&gw.site.his_addr.to_string(), "127.0.0.1:0", 1), vec!["his.listen", "port 0"]),
        ("address.toml", good.replacen(&gw.site.his_addr.to_string(), "localhost:99999", 1), vec!["his.listen"]),
        ("syntax.toml", good.replace("[admin]", "[admin"), vec!["invalid TOML"]),
        ("mode.toml", format!("{good}\n[ledger]\nmode = \"consortium\"\n"), vec!["consortium", "needs a [consortium] table"]),
        (
            "consortium.toml",
            format!(
                "{good}\n[ledger]\nmode = \"consortium\"\n[consortium]\netcd_endpoints = [\"etcd-1:2379\"]\nca = \"/nonexistent/ca.pem\"\ncertificate = \"/nonexistent/gw.pem\"\ngenesis = \"/nonexistent/genesis.json\"\n"
            ),
            vec!["consortium.etcd_endpoints[0]", "consortium.ca", "consortium.certificate", "consortium.genesis", "/nonexistent/genesis.json"],
        ),
        (
            "members.toml",
            format!("{good}\n[consortium]\netcd_endpoints = []\nca = \"x\"\ncertificate = \"y\"\nmembers = [\"hospital-a\"]\n"),
            vec!["consortium.members", "unknown key", "consortium.genesis", "missing"],
        ),
    ];
    for (name, text, wants) in cases {
        let (code, out, path) = check(name, &text);
        assert_eq!(code, 64, "{name}: {out}");
        assert!(out.contains(path.to_str().unwrap()), "{name}: the message must name the file: {out}");
        for w in wants {
            assert!(out.contains(w), "{name}: expected {w:?} in: {out}");
        }
    }
    // Several problems at once are all reported.
    let both = good.replace("/usr/lib/softhsm/libsofthsm2.so", "/nonexistent/x.so").replace("hsm-pin\"", "nope\"");
    let (code, out, _) = check("both.toml", &both);
    assert_eq!(code, 64);
    assert!(out.contains("hsm.module") && out.contains("hsm.pin_file"), "{out}");
    // A missing file.
    let (code, _, err) = run_medgate(&["config", "check", "--config", "/nonexistent/medgate.toml"], &conf);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/medgate.toml"), "{err}");
    // The shipped reference configuration is complete: only the missing TLS files and PIN are reported.
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/medgate.toml")).unwrap();
    let (code, out, _) = check("reference.toml", &reference);
    assert_eq!(code, 64, "{out}");
    assert!(!out.contains("unknown"), "the reference configuration uses a key the parser does not know: {out}");
}

/// Receives what the gateway tells systemd.
fn notifications(sock: &UnixDatagram, until: &str, deadline: Duration, seen: &mut Vec<String>) {
    let end = Instant::now() + deadline;
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            seen.extend(msg.lines().map(str::to_owned));
            if done {
                return;
            }
        }
    }
    panic!("no {until} within {deadline:?}; saw {seen:?}");
}

#[test]
fn systemd_hears_ready_watchdog_reload_and_stopping_in_order() {
    let mut gw = Gw::new("notify");
    gw.stop();
    let sock_path = gw.site.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    /// Kills the gateway if the test fails before it stops it.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(Command::new(exe())
        .args(["serve", "--config", gw.site.config.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &gw.site.softhsm_conf)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut seen = Vec::new();
    notifications(&sock, "READY=1", Duration::from_secs(30), &mut seen);
    let status_before_ready: Vec<_> = seen.iter().filter(|l| l.starts_with("STATUS=")).cloned().collect();
    assert!(status_before_ready.iter().any(|s| s.contains("HSM")), "{seen:?}");
    notifications(&sock, "WATCHDOG=1", Duration::from_secs(5), &mut seen);
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    notifications(&sock, "RELOADING=1", Duration::from_secs(5), &mut seen);
    notifications(&sock, "READY=1", Duration::from_secs(5), &mut seen);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    notifications(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen);
    assert!(child.0.wait().unwrap().success());
    let order: Vec<&str> = seen.iter().map(String::as_str).filter(|l| ["READY=1", "WATCHDOG=1", "RELOADING=1", "STOPPING=1"].contains(l)).collect();
    let first = |what: &str| order.iter().position(|l| *l == what).unwrap();
    assert!(first("READY=1") < first("WATCHDOG=1"), "{order:?}");
    assert!(first("WATCHDOG=1") < first("RELOADING=1"), "{order:?}");
    assert!(first("RELOADING=1") < first("STOPPING=1"), "{order:?}");
    assert!(seen.iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "reload must carry MONOTONIC_USEC: {seen:?}");
}

type Acked = (String, Vec<u8>);

#[test]
fn sigterm_under_load_loses_no_acknowledged_record() {
    let mut gw = Gw::new("sigterm");
    let rt = rt();
    // (record id, document) of every create answered 200 (all anchored).
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    rt.block_on(async {
        let (progress, mut seen) = tokio::sync::watch::channel(0usize);
        let progress = Arc::new(progress);
        let mut tasks = Vec::new();
        for w in 0..4u32 {
            let mut c = gw.client();
            let (acked, progress) = (acked.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..10_000u32 {
                    let data = format!("w{w} n{n}").into_bytes();
                    match c.post_json("/", &sample_transaction(&patient(w), "text/plain", &data, None), &[]).await {
                        Ok(r) if r.status == 200 => {
                            acked.lock().unwrap().push((support::created_id(&r.json()), data));
                            progress.send_modify(|n| *n += 1);
                        }
                        Ok(r) if r.status >= 500 => panic!("{}: {}", r.status, String::from_utf8_lossy(&r.body)),
                        Ok(_) | Err(_) => return,
                    }
                }
            }));
        }
        // SIGTERM once the load is well under way: every writer has a create in flight.
        seen.wait_for(|n| *n >= 20).await.unwrap();
        let status = tokio::task::block_in_place(|| gw.stop());
        assert_eq!(status.code(), Some(0), "SIGTERM must end in exit 0");
        for t in tasks {
            t.await.unwrap();
        }
    });
    let acked = acked.lock().unwrap().clone();
    assert!(gw.log_text().contains("store flushed"), "{}", gw.log_text());
    gw.start();
    rt.block_on(async {
        let mut c = gw.client();
        for (id, data) in &acked {
            let r = c.get(&format!("/Binary/{id}")).await.unwrap();
            assert_eq!(r.status, 200, "acknowledged {id} lost");
            assert_eq!(r.body.as_ref(), data.as_slice());
        }
    });
}

async fn server_serial(gw: &Gw) -> (String, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let tls = gw.site.his_tls().unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.site.his_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    (parsed.raw_serial_as_string(), stream)
}

#[test]
fn sighup_swaps_the_certificate_while_open_connections_keep_working() {
    let gw = Gw::new("sighup");
    let rt = rt();
    rt.block_on(async {
        let (old_serial, _held) = server_serial(&gw).await;
        let mut open = gw.client();
        assert_eq!(open.get("/metadata").await.unwrap().status, 200);
        // The CA re-issues the gateway's certificate for the same HSM key.
        let csr = std::fs::read_to_string(gw.site.dir.join("tls/server.csr")).unwrap();
        let renewed = gw.site.ca.sign_server_csr(&csr, 30).unwrap();
        std::fs::write(gw.site.dir.join("tls/server.pem"), renewed.pem()).unwrap();
        gw.signal(nix::sys::signal::Signal::SIGHUP);
        tokio::task::block_in_place(|| gw.wait_log("certificates and CRLs reloaded"));
        assert_eq!(open.get("/metadata").await.unwrap().status, 200, "the open connection was dropped by the reload");
        let (new_serial, _) = server_serial(&gw).await;
        assert_ne!(old_serial, new_serial, "new handshakes must present the renewed certificate");
        // A broken file keeps the working configuration.
        std::fs::write(gw.site.dir.join("tls/server.pem"), "not a certificate").unwrap();
        gw.signal(nix::sys::signal::Signal::SIGHUP);
        tokio::task::block_in_place(|| gw.wait_log("reload failed"));
        let (still, _) = server_serial(&gw).await;
        assert_eq!(still, new_serial);
    });
}

/// Checks the Prometheus text exposition format line by line.
fn check_prometheus(text: &str) -> usize {
    let mut samples = 0;
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned()), "TYPE twice for {name}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "bad value: {line}");
        let name = series.split('{').next().unwrap();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line}");
                for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name: {line}");
                    assert!(!v.contains('\n'));
                }
            }
        }
        let base = ["_bucket", "_sum", "_count", "_total"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(typed.contains(name) || typed.contains(base), "sample before its TYPE: {line}");
        samples += 1;
    }
    samples
}

#[test]
fn metrics_are_prometheus_text_and_health_endpoints_answer() {
    let gw = Gw::new("metrics");
    let rt = rt();
    rt.block_on(async {
        let mut c = gw.client();
        let r = c.post_json("/", &sample_transaction(&patient(9), "text/plain", b"m", None), &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(c.get("/Binary/ffff").await.unwrap().status, 404);
    });
    let (status, text) = medgate::admin_client::get(gw.site.admin_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(check_prometheus(&text) > 20, "{text}");
    for want in [
        "medgate_http_requests_total{route=\"POST /\",status=\"200\"} 1",
        "medgate_http_requests_total{route=\"GET /Binary/{id}\",status=\"404\"} 1",
        "medgate_http_request_duration_seconds_bucket",
        // One data key for the document, one for its SubmissionSet.
        "medgate_hsm_operations_total{op=\"wrap\"} 2",
        "medgate_hsm_pool_waits_total",
        "medgate_ledger_height 0",
        "medgate_outbox_entries 0",
        "medgate_certificate_expiry_timestamp_seconds{certificate=\"server\",",
        "medgate_shred_pending 0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("PAT-0000009"), "patient identifier in metrics");
    assert_eq!(medgate::admin_client::get(gw.site.admin_addr, "/healthz").unwrap(), (200, "ok\n".into()));
    let (status, body) = medgate::admin_client::get(gw.site.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "hsm: ok\nstore: ok\nledger: ok\nshred: none pending\n");
}

#[test]
fn a_full_demo_run_logs_no_patient_identifier_and_no_pin() {
    let dir = tempfile::Builder::new().prefix("medgate-test-demo-").tempdir().unwrap();
    let work = dir.path().join("site");
    let out = Command::new(exe()).args(["demo", "--workdir", work.to_str().unwrap()]).env("MEDGATE_LOG", "debug").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("demo finished: OK"), "{stdout}");
    let log = std::fs::read_to_string(work.join("medgate.log")).unwrap();
    assert!(log.contains("route=\"POST /\" status=200"), "the log must show the requests: {log}");
    let pin = std::fs::read_to_string(work.join("hsm-pin")).unwrap();
    let so_pin = std::fs::read_to_string(work.join("hsm-so-pin")).unwrap();
    let patient = medgate::demo::demo_patient().value;
    for (what, text) in [("gateway log", log.as_str()), ("demo stderr", &*stderr)] {
        assert!(!text.contains(&patient), "patient identifier in the {what}");
        assert!(!text.contains(pin.trim()), "PIN in the {what}");
        assert!(!text.contains(so_pin.trim()), "SO PIN in the {what}");
    }
    // The ledger store itself carries no identifier either.
    let db = support::open_store(&work.join("state"));
    let store = medgate_store::ChainStore::open(&db).unwrap();
    for block in store.blocks() {
        assert!(!String::from_utf8_lossy(&block.unwrap().to_bytes()).contains(&patient), "patient identifier in a ledger block");
    }
}
