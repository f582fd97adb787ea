//! The listen addresses: each one bound (and released at once) as the service user, as `serve`
//! will bind them. An address this host does not have, or a port below 1024, fails with the fix;
//! a port taken by the running gateway itself is fine.

use std::net::SocketAddr;

use medgate_gateway::config::Config;

use super::Report;

pub(super) fn check(cfg: &Config, report: &mut Report) {
    let mut addrs = vec![("his.listen", cfg.his.listen), ("admin.listen", cfg.admin.listen)];
    if let Some(p) = cfg.consortium.as_ref().filter(|_| cfg.ledger.mode == "consortium").and_then(|c| c.peer_listen) {
        addrs.push(("consortium.peer_listen", p));
    }
    let running = crate::admin_client::get(cfg.admin.listen, "/healthz").map(|(s, _)| s == 200).unwrap_or(false);
    for (key, addr) in addrs {
        bind(key, addr, running, report);
    }
}

fn bind(key: &str, addr: SocketAddr, gateway_running: bool, report: &mut Report) {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => report.ok(key, format!("{addr} can be listened on")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && gateway_running => {
            report.ok(key, format!("{addr} is in use, by the running gateway (its admin listener answers)"))
        }
        Err(e) => report.fail(key, format!("cannot listen on {addr}: {e}"), crate::exit::bind_hint(addr, &e).0),
    }
}
