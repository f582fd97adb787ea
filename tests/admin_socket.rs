//! The admin socket: only root, the service's user and the officers' group may call an admin
//! action. Throwaway users and a group are created with useradd/groupadd (the test runs as root,
//! as CI does) and removed afterwards; the medgate CLI runs as them under `setpriv`.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use support::{exe, Gw};

/// Throwaway accounts: an officers' group with one member, and a stranger. Removed on drop.
struct Accounts {
    group: String,
    officer: String,
    stranger: String,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Accounts {
    fn create() -> Accounts {
        assert!(nix::unistd::Uid::effective().is_root(), "this test creates throwaway users with useradd: run it as root (CI does)");
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        let a = Accounts { group: format!("mgoff{tag}"), officer: format!("mgofu{tag}"), stranger: format!("mgstr{tag}") };
        run("groupadd", &["--system", &a.group]);
        for (user, extra) in [(&a.officer, Some(&a.group)), (&a.stranger, None)] {
            let mut args = vec!["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"];
            if let Some(g) = extra {
                args.extend(["--groups", g.as_str()]);
            }
            args.push(user.as_str());
            run("useradd", &args);
        }
        a
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in [&self.officer, &self.stranger] {
            let _ = Command::new("userdel").arg(u).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// `medgate ARGS` run as `user` with that user's groups: (exit status, stdout, stderr).
fn medgate_as(user: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(exe())
        .args(args)
        .env_remove("MEDGATE_CONFIG")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn only_root_the_service_user_and_officers_may_call_admin_actions() {
    let accounts = Accounts::create();
    let group = accounts.group.clone();
    let gw = Gw::with_config("admin-socket", |t| t.replace("\n[admin]\n", &format!("\n[admin]\nofficers_group = \"{group}\"\n")));
    let site = &gw.site;
    let cfg = site.config.to_str().unwrap();
    // The throwaway users may read the configuration ([admin] only is used) and reach the
    // socket's directory; the HSM PIN file stays 0600.
    chmod(&site.dir, 0o711);
    chmod(&site.config, 0o644);
    let socket = &site.admin_socket;
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "the socket is the service user's and the officers' group's");
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), nix::unistd::Group::from_name(&group).unwrap().unwrap().gid.as_raw());

    // First gate, the file mode: the stranger cannot even connect.
    let (code, _, err) = medgate_as(&accounts.stranger, &["audit", "break-glass", "--config", cfg, "--json"]);
    assert_ne!(code, 0);
    assert!(err.contains("ermission denied"), "{err}");

    // Second gate, the peer's credentials: with the socket opened to everyone, every action is
    // still refused to the stranger, and each refusal is logged.
    chmod(socket, 0o666);
    let actions: [&[&str]; 4] = [
        &["audit", "break-glass", "--config", cfg, "--json"],
        &["consortium", "members", "--config", cfg],
        &["consortium", "approve", "--config", cfg, &"ab".repeat(16)],
        &["consortium", "propose", "--config", cfg, "--remove", "hospital-b"],
    ];
    for args in actions {
        let (code, out, err) = medgate_as(&accounts.stranger, args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains("refused (403)") && err.contains("officers' group"), "{args:?}: {err}");
    }
    gw.wait_log("admin action refused");

    // The officer passes both gates: the review answers, and a consortium action reaches the
    // gateway, which says why it does not apply to a standalone ledger.
    let (code, out, err) = medgate_as(&accounts.officer, &["audit", "break-glass", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let review: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(review["break_glass_reads"].as_array().is_some_and(Vec::is_empty), "{out}");
    let (code, _, err) = medgate_as(&accounts.officer, &["consortium", "members", "--config", cfg]);
    assert_ne!(code, 0);
    assert!(err.contains("(409)") && err.contains("consortium"), "{err}");

    // Root may; and the monitoring listener serves no action to anyone.
    assert_eq!(medgate::admin_client::get(socket, "/audit/break-glass").unwrap().0, 200);
    assert_eq!(medgate::admin_client::get(site.admin_addr, "/audit/break-glass").unwrap().0, 404);
    assert_eq!(medgate::admin_client::request(site.admin_addr, "POST", "/ledger/compact", b"").unwrap().0, 404);
    assert_eq!(medgate::admin_client::get(site.admin_addr, "/readyz").unwrap().0, 200);
}
