//! The etcd ordering service, reached over mutual TLS whose client key stays in the HSM.
//!
//! etcd-client's own TLS options take a PEM private key, so medgate builds the gRPC channel
//! itself: a connector that dials the configured endpoints in turn (a dead member is skipped at
//! the next connection; the crate does not eject it) and speaks TLS with rustls, with the client
//! configuration the caller built around the HSM `tls` key ([`EtcdSettings::tls`]). HTTP/2 keepalive is 5 s (shorter made etcd drop
//! idle streams), and every request requires a leader.
//!
//! Keys: `{prefix}/batches/{gateway}/{batch hash}` → the batch bytes. A submission is a Txn
//! "put if absent": a retried submission whose first attempt did commit (a timed-out write may
//! have) finds the key and creates nothing new. etcd's revision of the key is the batch's place
//! in the total order. Per-gateway RBAC grants each gateway write on its own
//! `{prefix}/batches/{gateway}/` and read on `{prefix}/batches/`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions};
use hyper_util::rt::TokioIo;
use medgate_ledger::Batch;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

use super::link::Feed;
use crate::ChainStore;

/// How a stream that ended on a compacted resume point says so.
pub const COMPACTED: &str = "the ordered stream was compacted";

/// Attempts per submission before the entries are left to the outbox.
const SUBMIT_ATTEMPTS: u32 = 4;

/// Where etcd is and how to reach it: the client endpoints, the key prefix of this consortium's
/// ledger, and the mutual-TLS client configuration (whose key is the HSM's, built by the caller).
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// etcd client endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Key prefix of the consortium's ledger.
    pub prefix: String,
    /// Client TLS (ALPN h2), trusting the consortium CA.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Submits this gateway's batches and reads the ordered stream.
#[derive(Clone)]
pub struct EtcdOrderer {
    client: Client,
    prefix: String,
    gateway: String,
}

impl std::fmt::Debug for EtcdOrderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOrderer").field("prefix", &self.prefix).field("gateway", &self.gateway).finish_non_exhaustive()
    }
}

impl EtcdOrderer {
    /// Builds the client. Connections are made lazily: the gateway starts (and stores records,
    /// answering 202) while etcd is unreachable.
    pub async fn connect(settings: EtcdSettings, gateway: &str) -> Result<EtcdOrderer, String> {
        let EtcdSettings { endpoints, prefix, tls } = settings;
        let next = Arc::new(AtomicUsize::new(0));
        let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
            let (tls, endpoints, next) = (tls.clone(), endpoints.clone(), next.clone());
            async move {
                let start = next.fetch_add(1, AtomicOrdering::Relaxed);
                let mut last = std::io::Error::other("no etcd endpoint configured");
                for k in 0..endpoints.len() {
                    let addr = endpoints[(start + k) % endpoints.len()];
                    match dial(addr, tls.clone()).await {
                        Ok(s) => return Ok::<_, std::io::Error>(TokioIo::new(s)),
                        Err(e) => {
                            tracing::debug!(%addr, error = %e, "etcd endpoint unreachable; trying the next");
                            last = e;
                        }
                    }
                }
                Err(last)
            }
        });
        let channel = tonic::transport::Endpoint::from_static("http://etcd.consortium.invalid")
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        let client = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(ConnectOptions::new().with_require_leader(true)))
            .await
            .map_err(|e| format!("etcd client: {e}"))?;
        Ok(EtcdOrderer { client, prefix, gateway: gateway.to_owned() })
    }

    /// Compacts etcd's history below `revision` (kept: `revision` and later).
    pub async fn compact(&self, revision: u64) -> Result<(), String> {
        self.client.kv_client().compact(revision as i64, None).await.map(|_| ()).map_err(|e| format!("etcd compaction: {e}"))
    }

    fn batches_prefix(&self) -> String {
        format!("{}/batches/", self.prefix)
    }

    /// Puts the batch in the order (idempotently) and returns its revision.
    pub async fn submit(&self, batch: &Batch) -> Result<u64, String> {
        let key = format!("{}{}/{}", self.batches_prefix(), self.gateway, hex::encode(batch.hash()));
        let value = batch.to_bytes();
        let mut last = String::new();
        for attempt in 0..SUBMIT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            match self.client.kv_client().txn(txn).await {
                Ok(resp) if resp.succeeded() => {
                    return resp.header().map(|h| h.revision() as u64).ok_or_else(|| "etcd answered without a header".to_owned());
                }
                Ok(resp) => {
                    // Already there: an earlier attempt committed.
                    for op in resp.op_responses() {
                        if let TxnOpResponse::Get(g) = op {
                            if let Some(kv) = g.kvs().first() {
                                return Ok(kv.mod_revision() as u64);
                            }
                        }
                    }
                    last = "etcd reported the batch present but returned no revision".into();
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "batch submission to etcd failed");
                    last = e.to_string();
                }
            }
        }
        Err(format!("the ordering service did not take the batch after {SUBMIT_ATTEMPTS} attempts: {last}"))
    }

    /// Feeds the ordered stream to the follower: every batch put under the prefix, with its
    /// revision, from the revision after the stored chain's position. Reconnects and resumes
    /// after any failure. Returns only when the resume point has been compacted away (the
    /// gateway must then catch up from peers; it never skips ahead) or the follower stopped.
    pub async fn stream(&self, store: ChainStore, tx: mpsc::Sender<Feed>) -> String {
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = match store.state() {
                Ok(s) => s.order_position().map_or(1, |p| p + 1),
                Err(e) => return format!("chain state unreadable: {e}"),
            };
            let opts = WatchOptions::new().with_prefix().with_start_revision(from as i64);
            let mut stream = match self.client.watch_client().watch(self.batches_prefix(), Some(opts)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, from, "cannot watch the ordered stream; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 && resp.canceled() {
                            return format!(
                                "{COMPACTED} up to revision {} before this gateway read revision {from}",
                                resp.compact_revision()
                            );
                        }
                        backoff = Duration::from_millis(100);
                        for ev in resp.events() {
                            if ev.event_type() != EventType::Put {
                                continue;
                            }
                            if let Some(kv) = ev.kv() {
                                if tx.send(Feed::Batch(kv.mod_revision() as u64, kv.value().to_vec())).await.is_err() {
                                    return "the follower stopped".into();
                                }
                            }
                        }
                        if resp.canceled() {
                            tracing::warn!(reason = resp.cancel_reason(), "etcd cancelled the watch; resuming");
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "ordered stream interrupted; resuming");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn dial(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect {addr}")))??;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(tls).connect(ServerName::IpAddress(addr.ip().into()), tcp).await
}

/// etcd's own put rate and latencies, measured with a plain client (`tls`: a client
/// configuration with its key in process, not the HSM): the reference figures next to which
/// `medgate bench --consortium` prints the consortium's rates (at the run's concurrency) and
/// its read latency (one put after another: one consensus round, the floor of an access entry).
#[derive(Debug, Clone)]
pub struct RawPuts {
    /// Puts per second over the run.
    pub rate: f64,
    /// Each put's latency, sorted.
    pub latencies: Vec<Duration>,
}

/// Puts 1 KiB values for `duration` from `concurrency` tasks over one connection.
pub async fn raw_puts(endpoints: &[SocketAddr], tls: &rustls::ClientConfig, duration: Duration, concurrency: usize) -> Result<RawPuts, String> {
    let mut cfg = tls.clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let addr = *endpoints.first().ok_or("no endpoint")?;
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let cfg = cfg.clone();
        async move { dial(addr, cfg).await.map(TokioIo::new) }
    });
    let channel = tonic::transport::Endpoint::from_static("http://etcd.bench.invalid").connect_with_connector_lazy(connector);
    let client = Client::from_channel(etcd_client::Channel::Tonic(channel), None).await.map_err(|e| e.to_string())?;
    let value = vec![b'x'; 1024];
    // The connection is made (and its first round trip paid) before the clock starts.
    client.kv_client().put("/bench/raw/warm", value.clone(), None).await.map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, value) = (client.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while start.elapsed() < duration {
                let t = std::time::Instant::now();
                client.kv_client().put(format!("/bench/raw/{w}/{}", took.len()), value.clone(), None).await.map_err(|e| e.to_string())?;
                took.push(t.elapsed());
            }
            Ok::<Vec<Duration>, String>(took)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok(RawPuts { rate, latencies })
}

/// The etcdctl commands that give each hospital its etcd user (the CN of its consortium
/// certificate, which the consortium CA sets to the hospital id) with read on
/// `{prefix}/batches/` and write on `{prefix}/batches/{hospital}/` only; that take a removed
/// hospital's user away; and, with `enable`, that create the `root` user (client certificate
/// CN root, kept by the consortium's etcd administrators) and turn authentication on.
/// Arguments only, without endpoints or TLS flags.
pub fn rbac_commands(prefix: &str, grant: &[String], revoke: &[String], enable: bool) -> Result<Vec<String>, String> {
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b)) {
        return Err(format!("prefix {prefix:?}: must start with '/', not end with one, and hold only A-Z a-z 0-9 / - _ ."));
    }
    let mut out = Vec::new();
    if enable {
        out.extend(["user add root --no-password".to_owned(), "role add root".to_owned(), "user grant-role root root".to_owned()]);
    }
    for h in grant.iter().chain(revoke) {
        if !medgate_ledger::hospital::is_hospital_id(h) {
            return Err(format!("hospital id {h:?}: not usable as an etcd user (1 to 64 of A-Z a-z 0-9 - _ . only, not root)"));
        }
    }
    for h in grant {
        let role = format!("medgate-{h}");
        out.push(format!("role add {role}"));
        out.push(format!("role grant-permission {role} --prefix=true read {prefix}/batches/"));
        out.push(format!("role grant-permission {role} --prefix=true readwrite {prefix}/batches/{h}/"));
        out.push(format!("user add {h} --no-password"));
        out.push(format!("user grant-role {h} {role}"));
    }
    for h in revoke {
        out.push(format!("user delete {h}"));
        out.push(format!("role delete medgate-{h}"));
    }
    if enable {
        out.push("auth enable".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::rbac_commands;

    #[test]
    fn each_hospital_writes_only_under_its_own_prefix() {
        let cmds = rbac_commands("/m/ledger", &["hospital-a".into()], &["hospital-c".into()], true).unwrap();
        assert_eq!(cmds.first().map(String::as_str), Some("user add root --no-password"));
        assert_eq!(cmds.last().map(String::as_str), Some("auth enable"));
        assert!(cmds.contains(&"role grant-permission medgate-hospital-a --prefix=true readwrite /m/ledger/batches/hospital-a/".to_owned()));
        assert!(cmds.contains(&"role grant-permission medgate-hospital-a --prefix=true read /m/ledger/batches/".to_owned()));
        assert!(cmds.contains(&"user delete hospital-c".to_owned()));
        assert!(!cmds.iter().any(|c| c.contains("readwrite /m/ledger/batches/ ")), "no hospital writes the whole prefix");
        assert!(rbac_commands("/m/ledger", &["root".into()], &[], false).is_err());
        assert!(rbac_commands("/m/ledger", &["a b".into()], &[], false).is_err());
        assert!(rbac_commands("m/ledger/", &[], &[], false).is_err());
    }
}
