//! Process hardening of `medgate serve`, checked on a real gateway (SoftHSM token, mutual TLS):
//! another process of the same user can neither open the gateway's memory nor get a core dump
//! out of it, and a gateway started as root binds its ports and its admin socket, drops to the
//! service account (`gateway.user`, else the state directory's owner; none: it stays root and
//! says so), and only then loads the HSM module.
//!
//! The tests switch users, so they run as root (as the suite does in CI); `nobody` (65534) plays
//! the service account and the local attacker. A control process of the same user, without the
//! hardening, shows that the same attempts succeed where nothing prevents them.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use medgate::admin_client::get as admin_get;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(Uid::effective().is_root(), "these tests switch users: run the suite as root (CI does)");
}

/// `chown -R nobody:nogroup`, except `keep` (left to root).
fn give_to_nobody(dir: &Path, keep: Option<&Path>) {
    if Some(dir) == keep {
        return;
    }
    std::os::unix::fs::lchown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    if dir.is_dir() && !dir.is_symlink() {
        for e in std::fs::read_dir(dir).unwrap() {
            give_to_nobody(&e.unwrap().path(), keep);
        }
    }
}

/// `argv` run as nobody (no supplementary groups), with an unlimited core size.
fn as_nobody(argv: &[&str]) -> Command {
    let mut c = Command::new("prlimit");
    c.args(["--core=unlimited", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]).args(argv);
    c
}

/// `cat FILE` as nobody: its output.
fn read_as_nobody(file: &str) -> Output {
    as_nobody(&["cat", file]).stdin(Stdio::null()).output().unwrap()
}

fn wait_ready(child: &mut Child, admin: std::net::SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("medgate serve exited during start-up ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        if admin_get(admin, "/readyz").map(|(s, _)| s == 200).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(cmd: &mut Command, site: &medgate::demo::Site, cwd: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    std::os::unix::fs::lchown(log, Some(NOBODY), Some(NOBODY)).unwrap();
    cmd.args(["serve", "--config"])
        .arg(&site.config)
        .env("SOFTHSM2_CONF", &site.softhsm_conf)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut child = cmd.spawn().unwrap();
    wait_ready(&mut child, site.admin_addr, log);
    child
}

/// The four ids of a `Uid:` or `Gid:` line of `/proc/PID/status`.
fn status_ids(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in status"));
    line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
}

/// SIGABRT, whose default action is a core dump (unlike SIGSEGV, Rust's runtime does not catch
/// it), and the exit status.
fn abort(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGABRT).unwrap();
    child.wait().unwrap()
}

fn cores_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("core")).collect()
}

#[test]
fn a_process_of_the_same_user_cannot_open_the_gateway_memory_nor_get_a_core() {
    require_root();
    let (site, dir) = support::site("harden-same-user");
    let cwd = dir.path().join("cwd-gateway");
    let control_cwd = dir.path().join("cwd-control");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&control_cwd).unwrap();
    give_to_nobody(dir.path(), None);
    let log = dir.path().join("medgate.log");

    // The gateway runs as nobody from the start (as under systemd's User=), allowed to dump core.
    let mut gateway = serve(&mut as_nobody(&[support::exe().to_str().unwrap()]), &site, &cwd, &log);
    let pid = gateway.id();
    assert_eq!(status_ids(pid, "Uid:"), vec![NOBODY; 4]);
    // A process of the same user, without the hardening, for comparison.
    let mut control = as_nobody(&["sleep", "3600"]).current_dir(&control_cwd).spawn().unwrap();

    for file in ["mem", "environ"] {
        let theirs = read_as_nobody(&format!("/proc/{pid}/{file}"));
        let stderr = String::from_utf8_lossy(&theirs.stderr);
        assert!(!theirs.status.success() && stderr.contains("Permission denied"), "/proc/{pid}/{file} as nobody: {stderr}");
        assert!(theirs.stdout.is_empty(), "read {} bytes of the gateway's {file}", theirs.stdout.len());
    }
    // The same user opens the control process's memory (reading address 0 then fails with EIO)
    // and reads its environment.
    let control_mem = read_as_nobody(&format!("/proc/{}/mem", control.id()));
    assert!(!String::from_utf8_lossy(&control_mem.stderr).contains("Permission denied"), "control: {control_mem:?}");
    assert!(read_as_nobody(&format!("/proc/{}/environ", control.id())).status.success());

    // A crash leaves no core, although the inherited core limit is unlimited.
    let status = abort(&mut gateway);
    assert_eq!(status.signal(), Some(Signal::SIGABRT as i32));
    assert!(!status.core_dumped(), "the gateway dumped core");
    assert!(cores_in(&cwd).is_empty(), "core files: {:?}", cores_in(&cwd));
    let status = abort(&mut control);
    assert!(status.core_dumped() && !cores_in(&control_cwd).is_empty(), "the control process did not dump core: {status}");
}

/// A loopback port below 1024 that nobody listens on right now.
fn privileged_port() -> std::net::SocketAddr {
    (600..1000)
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
        .find(|a| std::net::TcpListener::bind(a).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn started_as_root_it_binds_then_becomes_the_service_user_before_loading_the_hsm() {
    require_root();
    let (site, dir) = support::site("harden-drop");
    let his = privileged_port();
    let text = std::fs::read_to_string(&site.config).unwrap();
    assert!(!text.contains("user ="), "{text}");
    let text = text.replace(&site.his_addr.to_string(), &his.to_string());
    // The admin socket in a directory that does not exist yet, as /run/medgate outside systemd.
    let socket_dir = dir.path().join("run");
    let admin_socket = socket_dir.join("admin.sock");
    assert!(text.contains(&site.admin_socket.display().to_string()), "{text}");
    let text = text.replace(&site.admin_socket.display().to_string(), &admin_socket.display().to_string());
    std::fs::write(&site.config, text).unwrap();
    // Everything belongs to nobody but the PIN file, which only root may read (the PIN is read
    // before the drop). No gateway.user: the service account is the state directory's owner,
    // as `medgate config check` finds it.
    let pin = dir.path().join("hsm-pin");
    give_to_nobody(dir.path(), Some(&pin));
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let log = dir.path().join("medgate.log");

    let mut gateway = serve(&mut Command::new(support::exe()), &site, dir.path(), &log);
    let pid = gateway.id();
    assert_eq!(status_ids(pid, "Uid:"), vec![NOBODY; 4], "real, effective, saved and filesystem uid");
    assert_eq!(status_ids(pid, "Gid:"), vec![NOBODY; 4]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(!groups.split_whitespace().any(|g| g == "0"), "still in root's group: {groups}");
    // The HIS listener on the port below 1024 serves, over mutual TLS, as nobody.
    let rt = support::rt();
    let mut client = medgate::client::HisClient::new(his, "localhost", site.his_tls().unwrap()).unwrap();
    let reply = rt.block_on(client.get("/metadata")).unwrap();
    assert_eq!(reply.status, 200);
    // The store was created by the service account, and the log shows the drop before the HSM.
    let owned: Vec<u32> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| std::os::unix::fs::MetadataExt::uid(&e.unwrap().metadata().unwrap()))
        .collect();
    assert!(!owned.is_empty() && owned.iter().all(|u| *u == NOBODY), "state owners: {owned:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let (dropped, hsm) = (text.find("dropped root privileges"), text.find("HSM logged in"));
    assert!(dropped.is_some() && hsm.is_some() && dropped < hsm, "log order:\n{text}");
    assert!(!read_as_nobody(&format!("/proc/{pid}/mem")).status.success());
    // The admin socket and its directory, made as root before the drop, are handed to the
    // service account, which can still reach its own socket.
    let socket = std::fs::symlink_metadata(&admin_socket).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&socket), NOBODY, "admin socket owner");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&socket_dir).unwrap()), NOBODY, "admin socket directory owner");
    let sock = admin_socket.to_str().unwrap();
    let call = as_nobody(&["curl", "-sS", "--fail", "--unix-socket", sock, "http://localhost/audit/break-glass"]).output().unwrap();
    assert!(call.status.success(), "the service user reaches the admin socket: {}", String::from_utf8_lossy(&call.stderr));
    let status = medgate::demo::stop_child(&mut gateway).unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM as the service user:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn started_as_root_with_no_service_account_it_stays_root_and_says_so() {
    require_root();
    // Everything is root's, as in `medgate demo` run by root: no account to become.
    let (site, dir) = support::site("harden-no-account");
    let log = dir.path().join("medgate.log");
    let mut gateway = serve(&mut Command::new(support::exe()), &site, dir.path(), &log);
    assert_eq!(status_ids(gateway.id(), "Uid:"), vec![0; 4]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("no service account") && text.contains("still running as root"), "log:\n{text}");
    assert!(!text.contains("dropped root privileges"), "log:\n{text}");
    let status = medgate::demo::stop_child(&mut gateway).unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn gateway_user_wins_over_the_owner_of_the_state_directory() {
    require_root();
    let (site, dir) = support::site("harden-named");
    let text = std::fs::read_to_string(&site.config).unwrap();
    let state_line = text.lines().find(|l| l.starts_with("state_directory = ")).unwrap().to_owned();
    std::fs::write(&site.config, text.replacen(&state_line, &format!("{state_line}\nuser = \"nobody\""), 1)).unwrap();
    give_to_nobody(dir.path(), None);
    // The state directory belongs to daemon (the service account `config check` would pick),
    // writable by nobody's group: gateway.user names nobody, so nobody it is.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::lchown(&state, Some(1), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o2770)).unwrap();
    let log = dir.path().join("medgate.log");

    let mut gateway = serve(&mut Command::new(support::exe()), &site, dir.path(), &log);
    assert_eq!(status_ids(gateway.id(), "Uid:"), vec![NOBODY; 4]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("dropped root privileges") && text.contains("gateway.user"), "log:\n{text}");
    let status = medgate::demo::stop_child(&mut gateway).unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap_or_default());
}
