//! What the operators reach: the monitoring listener (plain HTTP, loopback by default: only
//! `/healthz`, `/readyz`, `/metrics`), the actions behind the admin socket (the break-glass
//! review, the consortium's members, compaction, membership proposals and approvals; who may use
//! the socket is [`super::officers`]' business), and the systemd watchdog, which pings while the
//! health checks pass.
//!
//! Boundary: requests in, [`Gateway`] calls, text or JSON out; a [`GatewayError`] becomes a
//! status and a line of text in one place ([`refused`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use medgate_store::order::link::EtcdLink;
use medgate_store::Db;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::notify;
use crate::gateway::Gateway;
use crate::reload::Live;
use crate::GatewayError;

/// What the admin listener and the watchdog look at.
#[derive(Debug)]
pub(super) struct AdminState {
    pub(super) gateway: Gateway,
    pub(super) db: Db,
    pub(super) live: Arc<Live>,
    pub(super) link: Option<Arc<EtcdLink>>,
    pub(super) atna: Option<Arc<medgate_atna::Exporter>>,
    /// `[atna] enabled`: the exporter should be running.
    pub(super) atna_enabled: bool,
    pub(super) limiter: Arc<super::limits::Limiter>,
    pub(super) admission: Arc<crate::api::admission::Admission>,
}

/// What `/readyz` and the watchdog check.
#[derive(Debug, Default)]
struct Health {
    hsm: Option<String>,
    store: Option<String>,
    ledger: Option<String>,
    /// Information only: a pending shred pass does not make the gateway unready.
    shred: String,
}

impl Health {
    fn ok(&self) -> bool {
        self.hsm.is_none() && self.store.is_none() && self.ledger.is_none()
    }
    fn text(&self) -> String {
        let line = |name: &str, v: &Option<String>| format!("{name}: {}\n", v.as_deref().unwrap_or("ok"));
        format!("{}{}{}shred: {}\n", line("hsm", &self.hsm), line("store", &self.store), line("ledger", &self.ledger), self.shred)
    }
}

impl AdminState {
    async fn health(&self) -> Health {
        let mut h = Health::default();
        let hsm = self.gateway.hsm.clone();
        match tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || hsm.ping())).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => h.hsm = Some(e.to_string()),
            Ok(Err(e)) => h.hsm = Some(e.to_string()),
            Err(_) => h.hsm = Some("no answer within 5 s".into()),
        }
        // The store must take a small flushed write: catches a full or read-only disk.
        let db = self.db.clone();
        let write = tokio::task::spawn_blocking(move || db.check_writable(&crate::clock::now_rfc3339()));
        match tokio::time::timeout(Duration::from_secs(5), write).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => h.store = Some(e.to_string()),
            Ok(Err(e)) => h.store = Some(e.to_string()),
            Err(_) => h.store = Some("no flushed write within 5 s".into()),
        }
        if !self.gateway.ledger.is_running() {
            h.ledger = Some("the ledger writer has stopped".into());
        } else if let Some(why) = self.link.as_ref().and_then(|l| l.halted()) {
            h.ledger = Some(why);
        } else if let Some(why) = self.link.as_ref().and_then(|l| l.behind()) {
            h.ledger = Some(format!("behind, catching up from peers: {why}"));
        } else if let Err(e) = self.gateway.ledger.store.head() {
            h.ledger = Some(e.to_string());
        }
        h.shred = self.gateway.shred.readiness(&self.gateway.vault);
        h
    }

    fn metrics(&self) -> String {
        let st = self.gateway.hsm.stats();
        let counters: Vec<crate::metrics::Counter<'_>> = vec![
            ("medgate_hsm_operations_total", "HSM operations by kind.", st.ops.iter().map(|(k, n)| (format!("op=\"{k}\""), *n as f64)).collect()),
            ("medgate_hsm_errors_total", "HSM errors by kind.", st.errors.iter().map(|(k, n)| (format!("kind=\"{k}\""), *n as f64)).collect()),
            ("medgate_hsm_pkcs11_calls_total", "PKCS#11 calls made.", vec![(String::new(), st.pkcs11_calls as f64)]),
            ("medgate_hsm_transport_keys_total", "Transport keys made for peers (made) and unwrapped from peers (received).", st.transport_keys.iter().map(|(k, n)| (format!("event=\"{k}\""), *n as f64)).collect()),
            ("medgate_hsm_pool_waits_total", "Times a request waited for an HSM session.", vec![(String::new(), st.pool_waits as f64)]),
            ("medgate_hsm_pool_wait_seconds_total", "Time spent waiting for an HSM session.", vec![(String::new(), st.pool_wait_seconds)]),
        ];
        let mut gauges: Vec<crate::metrics::Gauge<'_>> = vec![
            ("medgate_vault_records", "Records in the local vault.", vec![(String::new(), self.gateway.vault.record_count() as f64)]),
            ("medgate_outbox_entries", "Ledger entries stored but not yet in a block.", vec![(String::new(), self.gateway.vault.outbox_len() as f64)]),
        ];
        if let Ok(Some((h, _))) = self.gateway.ledger.store.head() {
            gauges.push(("medgate_ledger_height", "Height of the last block.", vec![(String::new(), h as f64)]));
            if let Ok(cps) = self.gateway.ledger.store.peer_checkpoints() {
                let lag = cps.iter().map(|c| (format!("peer=\"{}\"", c.gateway), h as f64 - c.height as f64)).collect();
                gauges.push(("medgate_checkpoint_lag_blocks", "This gateway's height minus each peer's last signed checkpoint.", lag));
            }
        }
        if let Ok(Some(roster)) = self.gateway.ledger.store.roster() {
            let me = f64::from(u8::from(roster.is_member(&self.gateway.hospital)));
            gauges.push(("medgate_consortium_member", "1 while this hospital is a current consortium member.", vec![(String::new(), me)]));
            gauges.push(("medgate_consortium_members", "Current consortium members.", vec![(String::new(), roster.members.len() as f64)]));
            if let Ok(ps) = self.gateway.ledger.store.proposals() {
                let open = ps.iter().filter(|p| p.state(roster.version) == "open").count();
                gauges.push(("medgate_consortium_open_proposals", "Membership proposals not yet carried.", vec![(String::new(), open as f64)]));
            }
        }
        if let Ok(forks) = self.gateway.ledger.store.forks() {
            gauges.push(("medgate_ledger_forks", "Forks seen (two signed hashes at one height).", vec![(String::new(), forks.len() as f64)]));
        }
        gauges.extend(self.live.gauges());
        gauges.extend(self.gateway.shred.gauges(&self.gateway.vault));
        let mut counters = counters;
        if self.atna_enabled {
            gauges.push(("medgate_atna_up", "1 while the audit export runs ([atna] enabled); 0 if it could not start.", vec![(String::new(), f64::from(u8::from(self.atna.is_some())))]));
        }
        if let Some(x) = &self.atna {
            let (c, g) = crate::atna::metrics(x);
            counters.extend(c);
            gauges.extend(g);
        }
        let (c, g) = self.limits_metrics();
        counters.extend(c);
        gauges.extend(g);
        self.gateway.metrics.render(&counters, &gauges)
    }
}

impl AdminState {
    /// The HIS listener's limits: (counters, gauges).
    fn limits_metrics(&self) -> (Vec<crate::metrics::Counter<'static>>, Vec<crate::metrics::Gauge<'static>>) {
        use std::sync::atomic::Ordering::Relaxed;
        let (l, a) = (&self.limiter, &self.admission);
        let r = &l.refused;
        let counters = vec![(
            "medgate_his_refused_total",
            "HIS connections and requests refused by the limits, by limit.",
            vec![
                ("limit=\"max_connections\"".into(), r.connections.load(Relaxed) as f64),
                ("limit=\"max_connections_per_client\"".into(), r.client_connections.load(Relaxed) as f64),
                ("limit=\"max_requests_in_flight_per_client\"".into(), r.in_flight.load(Relaxed) as f64),
                ("limit=\"requests_per_second_per_client\"".into(), r.rate.load(Relaxed) as f64),
            ],
        ), (
            "medgate_his_submissions_waited_total",
            "Submissions that waited for a preparation slot (limits.max_submissions_preparing).",
            vec![(String::new(), a.waited() as f64)],
        )];
        let gauges = vec![
            ("medgate_his_connections", "Open HIS connections.", vec![(String::new(), f64::from(l.open_connections()))]),
            ("medgate_his_requests_in_flight", "HIS requests being processed.", vec![(String::new(), f64::from(l.requests_in_flight()))]),
            ("medgate_his_submissions_preparing", "Submissions being parsed, checked and sealed.", vec![(String::new(), f64::from(a.preparing()))]),
            ("medgate_his_submissions_waiting", "Submissions read and waiting for a preparation slot.", vec![(String::new(), a.waiting() as f64)]),
            ("medgate_his_submissions_preparing_max", "limits.max_submissions_preparing.", vec![(String::new(), f64::from(a.size()))]),
        ];
        (counters, gauges)
    }
}

pub(super) fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// A membership proposal as the admin socket takes it (`medgate consortium propose`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalRequest {
    action: String,
    hospital_id: String,
    #[serde(default)]
    card: Option<medgate_ledger::membership::MemberCard>,
}

/// The one place a [`GatewayError`] becomes an admin answer: its status and the message as a
/// line of text (the operator's own machine: details included).
fn refused(e: &GatewayError) -> Response<Full<Bytes>> {
    text(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), format!("{}\n", e.detail()), PLAIN)
}

fn json_answer(v: Result<impl serde::Serialize, GatewayError>) -> Response<Full<Bytes>> {
    match v.and_then(|v| serde_json::to_string(&v).map_err(GatewayError::internal)) {
        Ok(body) => text(StatusCode::OK, body, "application/json"),
        Err(e) => refused(&e),
    }
}

/// What a monitor may read: health, readiness, metrics. `None` for anything else.
async fn monitoring(state: &AdminState, method: &hyper::Method, path: &str) -> Option<Response<Full<Bytes>>> {
    if method != hyper::Method::GET {
        return None;
    }
    Some(match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" => {
            let h = state.health().await;
            let status = if h.ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, h.text(), PLAIN)
        }
        "/metrics" => text(StatusCode::OK, state.metrics(), "text/plain; version=0.0.4; charset=utf-8"),
        _ => return None,
    })
}

/// One request on the admin socket, from a peer already authorised
/// ([`super::officers::authorize`]): the monitoring reads, the reviews and every change.
pub(super) async fn action(state: &AdminState, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(r) = monitoring(state, req.method(), &path).await {
        return r;
    }
    if req.method() == hyper::Method::POST && path.starts_with("/consortium/proposals") {
        let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable or oversized body (64 KiB at most)\n".into(), PLAIN),
        };
        if path == "/consortium/proposals" {
            return match serde_json::from_slice::<ProposalRequest>(&body) {
                Ok(p) => json_answer(state.gateway.propose_membership(&p.action, &p.hospital_id, p.card).await),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("not a proposal: {e}\n"), PLAIN),
            };
        }
        return match path.strip_prefix("/consortium/proposals/").and_then(|r| r.strip_suffix("/approve")) {
            Some(id) => json_answer(state.gateway.approve_membership(id).await),
            None => text(StatusCode::NOT_FOUND, "not found: POST /consortium/proposals or /consortium/proposals/{id}/approve\n".into(), PLAIN),
        };
    }
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/reload") => match super::reload_counted(&state.live, &state.gateway) {
            Ok(done) => text(StatusCode::OK, done.text(), PLAIN),
            Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("reload refused; the gateway keeps its previous settings:\n{e}\n"), PLAIN),
        },
        ("POST", "/ledger/compact") => json_answer(state.gateway.compact_ordering().await.map(|rev| serde_json::json!({"compacted_below": rev}))),
        ("GET", "/audit/break-glass") => json_answer(state.gateway.ledger.store.break_glass_reads().map(|l| crate::gateway::break_glass_json(&l)).map_err(GatewayError::from)),
        ("GET", "/consortium/members") => json_answer(state.gateway.membership_json()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: GET /healthz, /readyz, /metrics, /audit/break-glass, /consortium/members; POST /reload, /ledger/compact, /consortium/proposals, /consortium/proposals/{id}/approve\n".into(),
            PLAIN,
        ),
    }
}

/// One request on the monitoring listener: health, readiness and metrics, for anyone who can
/// reach it; everything else is on the admin socket only.
async fn monitor_request(state: Arc<AdminState>, req: Request<hyper::body::Incoming>, from: SocketAddr) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if let Some(r) = monitoring(&state, req.method(), req.uri().path()).await {
        return Ok(r);
    }
    if req.method() != hyper::Method::GET {
        tracing::warn!(peer = %from, path = %req.uri().path(), "admin action refused on the monitoring listener");
    }
    Ok(text(
        StatusCode::NOT_FOUND,
        "the monitoring listener serves GET /healthz, /readyz and /metrics only; admin actions are on the admin socket ([admin] socket)\n".into(),
        PLAIN,
    ))
}

pub(super) async fn serve_monitor(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, from) = tokio::select! {
            r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| monitor_request(state.clone(), req, from));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// The watchdog interval systemd asked for, as sd_watchdog_enabled(3) reads it: WATCHDOG_USEC,
/// for this process unless WATCHDOG_PID names another one.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        Some(Err(_)) => None,
        _ => (usec > 0).then_some(usec),
    }
}

/// Sends WATCHDOG=1 while the process can still do its job. A PKCS#11 module that hangs, or a
/// store that fails, stops the pings and systemd restarts the service. An HSM that answers
/// "unavailable" does not: the session pool recovers by itself when the device returns, and a
/// restart could not log in either; it shows in STATUS= and /readyz instead.
pub(super) async fn watchdog(state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let Some(usec) = watchdog_usec() else { return };
    let every = Duration::from_micros(usec / 3);
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let h = state.health().await;
        let hung = h.hsm.as_deref() == Some("no answer within 5 s");
        let status = if h.ok() { "serving".to_owned() } else { format!("degraded: {}", h.text().replace('\n', "; ")) };
        if status != last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = status;
        }
        if !hung && h.store.is_none() {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(health = %h.text().replace('\n', "; "), "watchdog withheld");
        }
    }
}
