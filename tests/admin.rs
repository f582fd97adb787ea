//! An administrator's first day, against a real SoftHSM2 token and a real gateway: the check
//! that tries what `serve` will try as the service user, reload that keeps a working gateway
//! when the new file is broken, the hospital PKI, CRL expiry, metrics that Prometheus's own
//! checker accepts, a ledger that keeps its hospital, and the officer's commands acting as the
//! service user.
//!
//! The checks that run as another user need root (CI and the demo run as root): the site is
//! given to `nobody`, which plays the service account.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use medgate_fhir::{sample_transaction, PatientId};
use support::{exe, rt, run_medgate, Gw};

fn patient(n: u32) -> PatientId {
    PatientId { system: "urn:oid:1.2.250.1.213.1.4.8".into(), value: format!("PAT-{n:07}") }
}

/// The user that plays the service account: (uid, gid, user name, group name).
fn nobody() -> (u32, u32, String, String) {
    assert!(nix::unistd::geteuid().is_root(), "this test switches users: run the suite as root, as CI does (scripts/test.sh)");
    let u = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
    let g = nix::unistd::Group::from_gid(u.gid).unwrap().expect("nobody's group");
    (u.uid.as_raw(), u.gid.as_raw(), u.name, g.name)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// `medgate config check` on `config`: (exit status, stdout and stderr).
fn check(config: &Path, softhsm_conf: &Path) -> (i32, String) {
    let (code, out, err) = run_medgate(&["config", "check", "--config", config.to_str().unwrap()], softhsm_conf);
    (code, format!("{out}{err}"))
}

/// The report's line for `what` and the fix under it.
fn failure<'a>(out: &'a str, what: &str) -> (&'a str, &'a str) {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("FAIL") && l.contains(what) {
            let fix = lines.next().unwrap_or("");
            assert!(fix.trim_start().starts_with("fix: "), "no fix under {l:?} in:\n{out}");
            return (l, fix);
        }
    }
    panic!("no FAIL line about {what:?} in:\n{out}");
}

#[test]
fn config_check_fails_each_false_ok_as_the_service_user_with_a_fix() {
    let (uid, gid, user, group) = nobody();
    let (site, _dir) = support::site("doctor");
    chown_tree(&site.dir, uid, gid);
    let (conf, cfg) = (&site.softhsm_conf, &site.config);
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("checking as {user}")), "{out}");
    assert!(out.contains("logged in to token"), "{out}");

    // A wrong PIN.
    let pin = site.dir.join("hsm-pin");
    let good = std::fs::read_to_string(&pin).unwrap();
    std::fs::write(&pin, "000000000000").unwrap();
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "HSM");
    assert!(line.contains("refused the user PIN") && fix.contains(pin.to_str().unwrap()), "{line}\n{fix}");
    assert!(!out.contains("000000000000"), "the PIN was printed");
    std::fs::write(&pin, &good).unwrap();

    // A certificate the service user cannot read (root's, 0600).
    let cert = site.dir.join("tls/server.pem");
    std::os::unix::fs::chown(&cert, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&cert, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "his.certificate");
    assert!(line.contains(&format!("cannot be read by {user}")), "{line}");
    assert_eq!(fix.trim(), format!("fix: chgrp {group} {c}; chmod 0640 {c}", c = cert.display()));
    assert_eq!(out.matches("FAIL").count(), 1, "one problem, said once:\n{out}");
    std::os::unix::fs::chown(&cert, Some(uid), Some(gid)).unwrap();

    // A token created by root: SoftHSM shows the service user no token at all.
    let token = std::fs::read_dir(site.dir.join("softhsm/tokens")).unwrap().next().unwrap().unwrap().path();
    chown_tree(&token, 0, 0);
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "HSM");
    assert!(line.contains(&format!("{user} cannot see token")) && line.contains("owned by root"), "{line}");
    assert!(fix.contains(&format!("chown -R {user}:{group} {}", token.display())), "{fix}");
    chown_tree(&token, uid, gid);

    // A certificate for another key.
    let saved = std::fs::read(&cert).unwrap();
    let (other, _) = site.ca.issue_server("localhost").unwrap();
    std::fs::write(&cert, other.pem()).unwrap();
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "his.certificate");
    assert!(line.contains("certifies another key"), "{line}");
    assert!(fix.contains("medgate keys csr") && fix.contains("import-cert"), "{fix}");
    assert!(!out.contains("KeyMismatch") && !out.contains("InconsistentKeys"), "a Rust name in:\n{out}");
    // serve refuses it too, with a status systemd does not restart.
    let (code, _, err) = run_medgate(&["serve", "--config", cfg.to_str().unwrap()], conf);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("the certificate is for another key") && !err.contains("KeyMismatch"), "{err}");
    std::fs::write(&cert, saved).unwrap();

    // A listen address this host does not have (TEST-NET-1: bound, never dialled).
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, text.replacen(&site.his_addr.to_string(), "192.0.2.1:8443", 1)).unwrap();
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "his.listen");
    assert!(line.contains("192.0.2.1:8443"), "{line}");
    assert!(fix.contains("not an address of this host"), "{fix}");
    let (code, _, err) = run_medgate(&["serve", "--config", cfg.to_str().unwrap()], conf);
    assert_eq!(code, 64, "serve must not be restarted into a missing address: {err}");
    std::fs::write(cfg, text).unwrap();
    assert_eq!(check(cfg, conf).0, 0);
}

#[test]
fn a_broken_reload_exits_non_zero_and_the_gateway_keeps_serving_the_old_settings() {
    let gw = Gw::new("reload");
    let cfg = gw.site.config.to_str().unwrap();
    let good = std::fs::read_to_string(&gw.site.config).unwrap();
    let rt = rt();
    // A live change: the body limit, applied at once.
    std::fs::write(&gw.site.config, good.replace("[admin]", "[log]\nlevel = \"debug\"\n\n[admin]").replace("crl = [", "max_body_bytes = 2048\ncrl = [")).unwrap();
    let (code, out, err) = gw.medgate(&["reload", "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("his.max_body_bytes = 2048") && out.contains("log.level = \"debug\""), "{out}");
    rt.block_on(async {
        let mut c = gw.client();
        let big = sample_transaction(&patient(1), "text/plain", &[b'x'; 4096], None);
        assert_eq!(c.post_json("/", &big, &[]).await.unwrap().status, 413);
    });
    // A broken file: a CRL that does not exist. Refused, nothing changes.
    let broken = good.replace("crl = [", "crl = [\"/nonexistent/his-ca.crl.pem\", ");
    std::fs::write(&gw.site.config, &broken).unwrap();
    let (code, out, err) = gw.medgate(&["reload", "--config", cfg]);
    assert_eq!(code, 64, "a refused reload must fail `systemctl reload`: {out}{err}");
    assert!(err.contains("/nonexistent/his-ca.crl.pem") && err.contains("keeps its previous settings"), "{err}");
    assert_eq!(gw.metric("medgate_config_last_reload_successful"), Some(0.0));
    rt.block_on(async {
        let mut c = gw.client();
        assert_eq!(c.get("/metadata").await.unwrap().status, 200, "a new connection after the refused reload");
        let big = sample_transaction(&patient(2), "text/plain", &[b'x'; 4096], None);
        assert_eq!(c.post_json("/", &big, &[]).await.unwrap().status, 413, "the last good limit stays");
    });
    // SIGHUP says the same in the log.
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    gw.wait_log("reload failed; the previous settings stay in use");
    // A change that needs a restart is named, and the old address stays in use.
    let moved = good.replacen(&gw.site.his_addr.to_string(), "127.0.0.1:1", 1);
    std::fs::write(&gw.site.config, moved).unwrap();
    let (code, out, err) = gw.medgate(&["reload", "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("needs a restart (old value kept): his.listen"), "{out}");
    assert_eq!(gw.metric("medgate_config_last_reload_successful"), Some(1.0));
    rt.block_on(async { assert_eq!(gw.client().get("/metadata").await.unwrap().status, 200) });
}

#[test]
fn medgate_reload_without_a_gateway_says_so() {
    let (site, _dir) = support::site("reload-none");
    let (code, _, err) = run_medgate(&["reload", "--config", site.config.to_str().unwrap()], &site.softhsm_conf);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("is medgate running?"), "{err}");
}

/// `promtool`, from Debian's prometheus package (scripts/install-deps.sh).
fn promtool() -> std::path::PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("promtool");
        if p.is_file() {
            return p;
        }
    }
    panic!("promtool not found: run scripts/install-deps.sh (it takes promtool from Debian's prometheus package)");
}

/// Runs `promtool ARGS`, feeding `stdin`: (success, output).
fn run_promtool(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Gauges a standalone gateway does not serve (only in consortium mode).
const CONSORTIUM_ONLY: [&str; 4] = ["medgate_consortium_member", "medgate_consortium_members", "medgate_consortium_open_proposals", "medgate_checkpoint_lag_blocks"];

#[test]
fn promtool_accepts_the_metrics_and_the_alert_rules_and_both_name_real_metrics() {
    let gw = Gw::new("promtool");
    rt().block_on(async {
        let mut c = gw.client();
        assert_eq!(c.post_json("/", &sample_transaction(&patient(3), "text/plain", b"p", None), &[]).await.unwrap().status, 200);
        assert_eq!(c.get("/Binary/ffff").await.unwrap().status, 404);
    });
    let (code, out, err) = gw.medgate(&["reload", "--config", gw.site.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, text) = medgate::admin_client::get(gw.site.admin_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let (ok, out) = run_promtool(&["check", "metrics"], &text);
    assert!(ok && out.trim().is_empty(), "promtool check metrics:\n{out}\n---\n{text}");
    for want in ["# TYPE medgate_hsm_operations_total counter", "# TYPE medgate_config_last_reload_successful gauge", "medgate_crl_next_update_timestamp_seconds{", "medgate_certificate_expiry_timestamp_seconds{certificate=\"server\""] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let rules = root.join("medgate-alerts.yml");
    let (ok, out) = run_promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{out}");
    // The rules' own unit tests: which alerts fire on which series (medgate-alerts.test.yml).
    let cases = root.join("medgate-alerts.test.yml");
    let (ok, out) = run_promtool(&["test", "rules", cases.to_str().unwrap()], "");
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    // Every medgate_ name the rules and the dashboard use is a metric the gateway serves.
    let served: std::collections::BTreeSet<String> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap().to_owned()).collect();
    let served_or_part = |name: &str| served.iter().any(|s| name == s || name.strip_prefix(s.as_str()).is_some_and(|r| ["_bucket", "_sum", "_count"].contains(&r)));
    for file in [rules, root.join("medgate-dashboard.json")] {
        let body = std::fs::read_to_string(&file).unwrap();
        let names: std::collections::BTreeSet<&str> =
            body.match_indices("medgate_").map(|(i, _)| body[i..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap()).collect();
        assert!(names.len() >= 5, "{}: {names:?}", file.display());
        for n in names.iter().filter(|n| n.ends_with(|c: char| c.is_ascii_lowercase()) && !CONSORTIUM_ONLY.contains(n)) {
            assert!(served_or_part(n), "{} uses {n}, which /metrics does not serve", file.display());
        }
    }
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/medgate-gateway/src/server/admin.rs")).unwrap();
    for n in CONSORTIUM_ONLY {
        assert!(source.contains(&format!("\"{n}\"")), "{n} is not a gauge of the admin listener");
    }
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("medgate-dashboard.json")).unwrap()).unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 6), "the dashboard has panels");
}

#[test]
fn hospital_pki_from_init_ca_to_a_revoked_his_refused_after_reload() {
    let mut gw = Gw::new("pki");
    let dir = gw.site.dir.clone();
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let ca = dir.join("his-ca");
    let tls = dir.join("tls");
    let m = |args: &[&str]| {
        let (code, out, err) = gw.medgate(args);
        assert_eq!(code, 0, "medgate {args:?}:\n{out}{err}");
        out
    };
    m(&["pki", "init-ca", "--dir", ca.to_str().unwrap(), "--name", "Hospital A HIS CA"]);
    assert_eq!(std::fs::metadata(ca.join("ca-key.pem")).unwrap().mode() & 0o777, 0o600);
    let csr = tls.join("gateway.csr");
    m(&["keys", "--config", &cfg, "csr", "--subject", "CN=localhost,O=hospital-a", "--dns", "localhost", "--out", csr.to_str().unwrap()]);
    let chain = tls.join("gateway-chain.pem");
    m(&["pki", "sign-gateway", "--dir", ca.to_str().unwrap(), "--csr", csr.to_str().unwrap(), "--out", chain.to_str().unwrap()]);
    m(&["keys", "--config", &cfg, "import-cert", chain.to_str().unwrap()]);
    for his in ["his-main", "his-lab"] {
        m(&["pki", "issue-his", "--dir", ca.to_str().unwrap(), "--cn", his, "--out", tls.join(his).to_str().unwrap()]);
    }
    let crl = tls.join("his-client-ca.crl.pem");
    m(&["pki", "crl", "--dir", ca.to_str().unwrap(), "--out", crl.to_str().unwrap()]);
    let text = std::fs::read_to_string(&gw.site.config).unwrap();
    let text = text
        .replace(&format!("{}/server.pem", tls.display()), chain.to_str().unwrap())
        .replace(&format!("{}/hospital-ca.pem", tls.display()), ca.join("ca.pem").to_str().unwrap())
        .replace(&format!("{}/hospital-ca.crl", tls.display()), crl.to_str().unwrap());
    std::fs::write(&gw.site.config, text).unwrap();
    m(&["reload", "--config", &cfg]);
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let client = |his: &str| {
        let (cert, key) = (std::fs::read(tls.join(format!("{his}.pem"))).unwrap(), std::fs::read(tls.join(format!("{his}.key"))).unwrap());
        let tls = medgate_gateway::tls::client_config(ca_pem.as_bytes(), Some((&cert, &key))).unwrap();
        medgate::client::HisClient::new(gw.site.his_addr, "localhost", tls).unwrap().acting_as("dr.house", "physician", "TREAT")
    };
    let rt = rt();
    rt.block_on(async {
        assert_eq!(client("his-main").get("/metadata").await.unwrap().status, 200, "the gateway's new chain, checked by the HIS against the new CA");
        assert_eq!(client("his-lab").get("/metadata").await.unwrap().status, 200);
    });
    let out = m(&["pki", "crl", "--dir", ca.to_str().unwrap(), "--revoke", tls.join("his-lab.pem").to_str().unwrap(), "--out", crl.to_str().unwrap()]);
    assert!(out.contains("CRL number 2") && out.contains("1 revoked"), "{out}");
    m(&["reload", "--config", &cfg]);
    rt.block_on(async {
        assert!(client("his-lab").get("/metadata").await.is_err(), "a revoked HIS certificate must be refused in the handshake");
        assert_eq!(client("his-main").get("/metadata").await.unwrap().status, 200);
    });
    // The revocation is kept by the next renewal.
    let out = m(&["pki", "crl", "--dir", ca.to_str().unwrap(), "--out", crl.to_str().unwrap()]);
    assert!(out.contains("CRL number 3") && out.contains("1 revoked"), "{out}");
    gw.stop();
    let (code, out) = check(&gw.site.config, &gw.site.softhsm_conf);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_crl_past_its_next_update_is_refused_unless_dangerously_allowed() {
    let mut gw = Gw::new("stalecrl");
    let crl = gw.site.dir.join("tls/hospital-ca.crl");
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    std::fs::write(&crl, gw.site.ca.crl_of(&[], past, 1, &[7]).unwrap()).unwrap();
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let (code, _, err) = gw.medgate(&["reload", "--config", &cfg]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("past its nextUpdate") && err.contains("medgate pki crl"), "{err}");
    let next = gw.metric("medgate_crl_next_update_timestamp_seconds").unwrap();
    assert!(next > past.unix_timestamp() as f64 + 2.0 * 86_400.0, "the gauge shows the CRL in use, not the refused one");
    gw.stop();
    let (code, out) = check(&gw.site.config, &gw.site.softhsm_conf);
    assert_eq!(code, 64, "{out}");
    assert!(failure(&out, "his.crl[0]").0.contains("past its nextUpdate"), "{out}");
    // Started with it anyway, the gateway refuses every client of that CA in the handshake.
    gw.start();
    rt().block_on(async { assert!(gw.client().get("/metadata").await.is_err(), "a client accepted on an expired CRL") });
    assert!(gw.log_text().contains("past its nextUpdate"), "{}", gw.log_text());
    gw.stop();
    let text = std::fs::read_to_string(&gw.site.config).unwrap();
    std::fs::write(&gw.site.config, format!("{text}\n[dangerous]\nallow_expired_crl = true\n")).unwrap();
    let (code, out) = check(&gw.site.config, &gw.site.softhsm_conf);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("WARN  his.crl[0]: past its nextUpdate"), "{out}");
    gw.start();
    rt().block_on(async { assert_eq!(gw.client().get("/metadata").await.unwrap().status, 200) });
}

#[test]
fn a_ledger_keeps_its_hospital_id_and_verifies_without_a_pin() {
    let mut gw = Gw::new("hospital");
    rt().block_on(async {
        let r = gw.client().post_json("/", &sample_transaction(&patient(4), "text/plain", b"h", None), &[]).await.unwrap();
        assert_eq!(r.status, 200, "a transaction answers 200: {}", String::from_utf8_lossy(&r.body));
    });
    gw.stop();
    let good = std::fs::read_to_string(&gw.site.config).unwrap();
    std::fs::write(&gw.site.config, good.replace("hospital_id = \"hospital-a\"", "hospital_id = \"hospital-b\"")).unwrap();
    let cfg = gw.site.config.to_str().unwrap().to_owned();
    let (code, _, err) = gw.medgate(&["serve", "--config", &cfg]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("\"hospital-a\"") && err.contains("cannot change"), "{err}");
    let (code, out) = check(&gw.site.config, &gw.site.softhsm_conf);
    assert_eq!(code, 64);
    assert!(failure(&out, "gateway.hospital_id").1.contains("hospital_id = \"hospital-a\""), "{out}");
    // An auditor's copy of the configuration without any PIN source.
    let no_pin = good.lines().filter(|l| !l.starts_with("pin_file")).collect::<Vec<_>>().join("\n");
    std::fs::write(&gw.site.config, no_pin).unwrap();
    std::fs::remove_file(gw.site.dir.join("hsm-pin")).unwrap();
    let key = gw.site.ledger_public_key.to_str().unwrap().to_owned();
    let (code, out, err) = gw.medgate(&["ledger", "verify", "--config", &cfg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ledger OK"), "{out}");
}

#[test]
fn officer_commands_act_as_the_service_user_and_refuse_anyone_else() {
    let (uid, gid, user, _) = nobody();
    let (site, _dir) = support::site("officer-user");
    chown_tree(&site.dir, uid, gid);
    let cfg = site.config.to_str().unwrap();
    // As root: the command becomes the service user, so what it writes is the service's. (A
    // rotation one officer may do alone: the KEK's needs a quorum of officers.)
    let (code, out, err) = run_medgate(&["keys", "--config", cfg, "rotate", "--role", "sharing"], &site.softhsm_conf);
    assert_eq!(code, 0, "{out}{err}");
    let journal = site.dir.join("state/key-events.jsonl");
    assert_eq!(std::fs::metadata(&journal).unwrap().uid(), uid, "the key-event journal must be the service user's");
    let event: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&journal).unwrap().lines().last().unwrap()).unwrap();
    assert_ne!(event["officer"], serde_json::json!(user), "the officer is the person, not the service account: {event}");
    let token = std::fs::read_dir(site.dir.join("softhsm/tokens")).unwrap().next().unwrap().unwrap().path();
    for f in std::fs::read_dir(&token).unwrap() {
        assert_eq!(f.unwrap().metadata().unwrap().uid(), uid, "token files must stay the service user's");
    }
    // As another user (who may read the configuration): refused, with the fix.
    std::fs::set_permissions(&site.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&site.config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let daemon = nix::unistd::User::from_name("daemon").unwrap().expect("user daemon");
    let out = Command::new(exe())
        .args(["keys", "--config", cfg, "list"])
        .env("SOFTHSM2_CONF", &site.softhsm_conf)
        .current_dir("/")
        .uid(daemon.uid.as_raw())
        .gid(daemon.gid.as_raw())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&format!("the service runs as {user}")) && err.contains("sudo medgate keys"), "{err}");
}

#[test]
fn config_check_runs_as_gateway_user_and_fails_on_a_user_this_machine_lacks() {
    let (uid, gid, user, _) = nobody();
    let (site, _dir) = support::site("doctor-user");
    chown_tree(&site.dir, uid, gid);
    let (conf, cfg) = (&site.softhsm_conf, &site.config);
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains("[gateway]\n"), "{text}");
    let with_user = |name: &str| std::fs::write(cfg, text.replacen("[gateway]\n", &format!("[gateway]\nuser = {name:?}\n"), 1)).unwrap();

    // The account serve becomes is the one the check runs as.
    with_user(&user);
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("checking as {user} (gateway.user)")), "{out}");

    // A user this machine does not have stops serve when started as root: the check says so.
    with_user("medgate-no-such-user");
    let (code, out) = check(cfg, conf);
    assert_eq!(code, 64, "{out}");
    let (line, fix) = failure(&out, "gateway.user");
    assert!(line.contains("\"medgate-no-such-user\"") && line.contains("no such user"), "{line}");
    assert!(fix.contains("useradd --system") && fix.contains("medgate-no-such-user"), "{fix}");
    assert!(!out.contains("no service account found"), "{out}");

    // Root by choice: a warning, and the check runs as root.
    with_user("root");
    let (_, out) = check(cfg, conf);
    assert!(out.lines().any(|l| l.starts_with("WARN") && l.contains("gateway.user = \"root\"")), "{out}");
    assert!(out.contains("checking as root (gateway.user)"), "{out}");
}
