//! Gateway-to-gateway record sharing over mutual TLS with certificates from the consortium CA.
//! The keys on both ends are the gateways' HSM `tls` keys. A peer is known by the organisation
//! (O) of its consortium certificate, which must be a member with a sharing key.
//!
//! Connections: HTTP/2 over mutual TLS, one connection per peer kept open and shared by every
//! request to it (a read costs no handshake once the connection is up); a peer that offers only
//! HTTP/1.1 gets a connection per request, as before.
//!
//! One request: `POST /peer/v1/read` with [`ReadRequest`]. The custodian checks the consent on
//! its own ledger copy (or break-glass), puts the access on the ledger (granted or denied), and
//! answers with the document ciphertext and the data key re-wrapped inside its HSM for the
//! requester's sharing key ([`ReadGrant`]), or 403 with a reason code. Plaintext never crosses.
//! A requester that sends [`TRANSPORT_HEADER`] gets the data key sealed under the custodian's
//! transport key for it instead, with that key wrapped for its sharing key: its HSM unwraps the
//! transport key once (RSA) and every later data key with AES-GCM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use medgate_hsm::tls::HsmSigningKey;
use medgate_hsm::Hsm;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use medgate_ledger::{Block, Checkpoint};
use medgate_store::order::BoxFuture;
use medgate_store::ChainStore;

use crate::config::Consortium;
use crate::tls;
use crate::GatewayError;

/// What the requesting gateway asks for, on behalf of its end user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The record asked for.
    pub record_id: String,
    /// The requester's pseudonym of its end user (64 lowercase hex).
    pub user: String,
    /// The end user's role code.
    pub role: String,
    /// The purpose of use.
    pub purpose: String,
    /// Whether the requester asks for the data key under a transport key: the
    /// [`TRANSPORT_HEADER`] of the request, not a field of its body (a custodian that does not
    /// know the header answers as before).
    #[serde(skip)]
    pub transport: bool,
}

/// The request header by which a requester offers to receive data keys under a transport key
/// ([`TRANSPORT_AES_GCM`], medgate_hsm's `share_with_peer`).
pub const TRANSPORT_HEADER: &str = "medgate-transport-key";
/// The one transport scheme: an AES-256 key under the requester's RSA sharing key, each data key
/// sealed under it with AES-256-GCM.
pub const TRANSPORT_AES_GCM: &str = "aes-256-gcm";

/// What a granted read returns: ciphertext and the re-wrapped data key, never plaintext.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadGrant {
    /// The record.
    pub record_id: String,
    /// Its MIME type.
    pub content_type: String,
    /// Hex SHA-256 of its plaintext, as anchored on the ledger.
    pub content_hash: String,
    /// AES-GCM nonce of the document, base64.
    pub doc_nonce: String,
    /// The document ciphertext, base64.
    pub doc_ct: String,
    /// The data key, base64: RSA-OAEP wrapped for the requester's sharing key or, with
    /// `transport_key`, sealed under the transport key with AES-256-GCM.
    pub shared_key: String,
    /// The custodian's transport key for the requester, RSA-OAEP wrapped for its sharing key,
    /// base64; only when the requester offered [`TRANSPORT_HEADER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_key: Option<String>,
}

/// Most blocks one fetch returns.
pub const MAX_BLOCKS_PER_FETCH: u64 = 64;

/// A request for blocks from a height on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocksRequest {
    /// The first height wanted.
    pub from: u64,
}

/// A refusal: the status and a reason code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// The reason code (or, for a fork, the custodian's own signed checkpoint).
    pub reason: String,
}

/// Largest peer request body read.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest peer answer read.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A peer's request as the listener decodes it from the path and the body: the only parsing
/// of what another gateway sends to this one.
#[derive(Debug, Clone)]
pub enum PeerRequest {
    /// `POST /peer/v1/read`.
    Read(ReadRequest),
    /// `POST /peer/v1/checkpoint`.
    Checkpoint(Checkpoint),
    /// `POST /peer/v1/blocks`.
    Blocks(BlocksRequest),
}

impl PeerRequest {
    /// The paths a peer may post to.
    pub const PATHS: [&'static str; 3] = ["/peer/v1/read", "/peer/v1/checkpoint", "/peer/v1/blocks"];

    /// Decodes the body of a `POST` to `path`: an unknown path is `NotFound`, a body that is not
    /// the path's message is `BadRequest` (reason codes only; nothing of the body is echoed).
    pub fn decode(path: &str, body: &[u8]) -> Result<PeerRequest, GatewayError> {
        fn bad<E>(_: E) -> GatewayError {
            GatewayError::BadRequest("bad-request".into())
        }
        match path {
            "/peer/v1/read" => serde_json::from_slice(body).map(PeerRequest::Read).map_err(bad),
            "/peer/v1/checkpoint" => Checkpoint::from_bytes(body).map(PeerRequest::Checkpoint).map_err(bad),
            "/peer/v1/blocks" => serde_json::from_slice(body).map(PeerRequest::Blocks).map_err(bad),
            _ => Err(GatewayError::NotFound("no-such-endpoint".into())),
        }
    }
}

/// Decodes a custodian's answer to a granted read (the requester's side).
pub fn decode_grant(custodian: &str, bytes: &[u8]) -> Result<ReadGrant, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{custodian} sent an unreadable grant: {e}"))
}

/// Decodes a peer's answer to a block request: a JSON array of blocks, each decoded with
/// [`Block::from_bytes`] (size and shape limits). The caller verifies them against its chain.
pub fn decode_blocks(peer: &str, bytes: &[u8]) -> Result<Vec<Block>, String> {
    let raw: Vec<serde_json::Value> = serde_json::from_slice(bytes).map_err(|e| format!("{peer} sent unreadable blocks: {e}"))?;
    raw.iter()
        .map(|v| Block::from_bytes(v.to_string().as_bytes()).map_err(|e| format!("{peer} sent a malformed block: {e}")))
        .collect()
}

/// The one place a [`GatewayError`] becomes a peer's answer: its status and a reason code.
/// Internal details stay in this gateway's log.
pub fn refusal(e: &GatewayError) -> (u16, Refusal) {
    let reason = match e {
        GatewayError::Forbidden(code)
        | GatewayError::NotFound(code)
        | GatewayError::Gone(code)
        | GatewayError::Conflict(code)
        | GatewayError::InFlight(code)
        | GatewayError::BadRequest(code)
        | GatewayError::Unavailable(code) => code.clone(),
        GatewayError::Request(_) => "bad-request".to_owned(),
        GatewayError::Integrity(_) => "integrity".to_owned(),
        GatewayError::Internal(detail) => {
            tracing::error!(error = %detail, "peer request failed");
            "internal".to_owned()
        }
    };
    (e.status(), Refusal { reason })
}

/// What the peer listener asks of the gateway, as the custodian of records and as a member
/// holding a copy of the ledger.
pub trait PeerService: Send + Sync + std::fmt::Debug + 'static {
    /// Whether `hospital` is a current member.
    fn is_member(&self, hospital: &str) -> bool;
    /// Counts an event for the metrics.
    fn count(&self, name: &str);
    /// A read of a record held here, on behalf of `requester`'s end user.
    fn read<'a>(&'a self, requester: &'a str, req: ReadRequest) -> BoxFuture<'a, Result<ReadGrant, GatewayError>>;
    /// `requester`'s signed checkpoint: `agree`, `behind`, or a fork (409 with ours).
    fn checkpoint<'a>(&'a self, requester: &'a str, cp: Checkpoint) -> BoxFuture<'a, Result<String, GatewayError>>;
    /// Blocks from `from` on (a JSON array), for a member catching up.
    fn blocks(&self, requester: &str, from: u64) -> Result<Vec<u8>, GatewayError>;
}

/// What the gateway needs to share: the ledger's roster (members' peer addresses and sharing
/// keys, as the chain says at this moment), the mTLS client, the break-glass roles.
#[derive(Debug)]
pub struct Sharing {
    /// This hospital's id.
    pub me: String,
    /// The consortium link, halted when a fork is seen.
    pub link: Option<Arc<medgate_store::order::link::EtcdLink>>,
    store: ChainStore,
    /// Mutual TLS towards the peers (the HSM `tls` key, consortium certificate).
    pub client_tls: Arc<rustls::ClientConfig>,
    /// End-user roles that may read without consent as break-glass.
    pub break_glass_roles: Vec<String>,
    /// Open HTTP/2 connections, by peer and address.
    conns: tokio::sync::Mutex<HashMap<(String, SocketAddr), H2Sender>>,
}

/// A shared HTTP/2 connection's request half.
type H2Sender = http2::SendRequest<Full<Bytes>>;

/// A connection to send one request on.
enum Sender {
    /// Shared, kept for the next requests.
    H2(http2::SendRequest<Full<Bytes>>),
    /// This request's own (a peer without HTTP/2).
    H1(http1::SendRequest<Full<Bytes>>),
}

/// A member as the sharing layer sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its peer listener.
    pub address: Option<SocketAddr>,
    /// RSA modulus and exponent of its sharing key.
    pub sharing_key: Option<(Vec<u8>, Vec<u8>)>,
}

impl Peer {
    fn of(m: &medgate_ledger::membership::MemberState) -> Peer {
        Peer { address: m.peer_address, sharing_key: m.sharing_key().map(|k| (k.modulus, k.exponent)) }
    }
}

impl Sharing {
    /// Sharing for hospital `me`, per the `[consortium]` table.
    pub fn from_config(cfg: &Consortium, me: &str, hsm: &Arc<Hsm>, store: ChainStore) -> Result<Sharing, String> {
        let mut client = (*tls::consortium_client(cfg, hsm)?).clone();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Sharing {
            me: me.to_owned(),
            link: None,
            store,
            client_tls: Arc::new(client),
            break_glass_roles: cfg.break_glass_roles.clone(),
            conns: tokio::sync::Mutex::default(),
        })
    }

    /// A current member as the sharing layer sees it (`None` for a non-member).
    pub fn peer(&self, hospital_id: &str) -> Option<Peer> {
        let roster = self.store.roster().ok().flatten()?;
        roster.get(hospital_id).map(Peer::of)
    }

    /// The other current members, in hospital id order.
    pub fn other_members(&self) -> Vec<(String, Peer)> {
        let Ok(Some(roster)) = self.store.roster() else { return Vec::new() };
        roster
            .members
            .values()
            .filter(|m| m.hospital_id != self.me)
            .map(|m| (m.hospital_id.clone(), Peer::of(m)))
            .collect()
    }

    /// Asks `custodian` for a record. `Ok(Err(refusal))` is an answer (403, 404, 410); `Err`
    /// means the custodian could not be asked.
    pub async fn read(&self, custodian: &str, req: &ReadRequest) -> Result<Result<ReadGrant, (u16, Refusal)>, String> {
        let offer: &[(&str, &str)] = if req.transport { &[(TRANSPORT_HEADER, TRANSPORT_AES_GCM)] } else { &[] };
        let (status, bytes) = self.post(custodian, "/peer/v1/read", &serde_json::to_vec(req).map_err(|e| e.to_string())?, offer).await?;
        if status == 200 {
            Ok(Ok(decode_grant(custodian, &bytes)?))
        } else {
            let refusal = serde_json::from_slice(&bytes).unwrap_or(Refusal { reason: format!("status-{status}") });
            Ok(Err((status, refusal)))
        }
    }

    /// Sends this gateway's signed checkpoint to a peer; the answer says whether it agrees.
    pub async fn send_checkpoint(&self, peer: &str, cp: &Checkpoint) -> Result<(u16, String), String> {
        let (status, bytes) = self.post(peer, "/peer/v1/checkpoint", &serde_json::to_vec(cp).map_err(|e| e.to_string())?, &[]).await?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Blocks of a peer's chain from height `from` (at most [`MAX_BLOCKS_PER_FETCH`]); empty
    /// when the peer has none that high. The caller verifies them.
    pub async fn fetch_blocks(&self, peer: &str, from: u64) -> Result<Vec<Block>, String> {
        let (status, bytes) = self.post(peer, "/peer/v1/blocks", &serde_json::to_vec(&BlocksRequest { from }).map_err(|e| e.to_string())?, &[]).await?;
        if status != 200 {
            return Err(format!("{peer} answered {status} to a block request"));
        }
        decode_blocks(peer, &bytes)
    }

    /// One request to a peer over mutual TLS, on the open connection to it when there is one.
    async fn post(&self, peer: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Result<(u16, Bytes), String> {
        let addr = self.peer(peer).and_then(|p| p.address).ok_or_else(|| format!("{peer} is not a current member with a peer address"))?;
        let mut request = Request::post(path).header("host", peer).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let sent = async {
            match self.connection(peer, addr).await? {
                Sender::H2(mut s) => s.send_request(request).await,
                Sender::H1(mut s) => s.send_request(request).await,
            }
            .map_err(|e| format!("{peer}: {e}"))
        };
        let resp = tokio::time::timeout(Duration::from_secs(20), sent).await.map_err(|_| format!("{peer} did not answer within 20 s"))??;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, bytes))
    }

    /// The open HTTP/2 connection to `peer` at `addr` if it still takes requests, else a new one
    /// (kept when the peer speaks HTTP/2).
    async fn connection(&self, peer: &str, addr: SocketAddr) -> Result<Sender, String> {
        let key = (peer.to_owned(), addr);
        let open = self.conns.lock().await.get(&key).filter(|s| !s.is_closed()).cloned();
        if let Some(mut s) = open {
            if s.ready().await.is_ok() {
                return Ok(Sender::H2(s));
            }
        }
        let stream = self.dial(peer, addr).await?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conns.lock().await.insert(key, send.clone());
            return Ok(Sender::H2(send));
        }
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(send))
    }

    /// A mutual-TLS connection to `peer`, checking that its certificate names that peer.
    async fn dial(&self, peer: &str, addr: SocketAddr) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {peer} at {addr} timed out"))?
            .map_err(|e| format!("connecting to {peer} at {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(self.client_tls.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| format!("TLS with {peer}: {e}"))?;
        // The consortium CA vouches for the hospital id in the certificate's organisation.
        let presented = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| organisation(c.as_ref()));
        if presented.as_deref() != Some(peer) {
            return Err(format!("the gateway at {addr} presented a certificate for {presented:?}, not {peer}"));
        }
        Ok(stream)
    }
}

impl medgate_store::order::BlockSource for Sharing {
    fn sources(&self) -> Vec<String> {
        self.other_members().into_iter().filter(|(_, p)| p.address.is_some()).map(|(id, _)| id).collect()
    }

    fn fetch_blocks<'a>(&'a self, peer: &'a str, from: u64) -> BoxFuture<'a, Result<Vec<Block>, String>> {
        Box::pin(Sharing::fetch_blocks(self, peer, from))
    }
}

/// The peer listener's TLS: the consortium certificate of the HSM key; clients must chain to
/// the consortium CA.
pub fn server_tls(cfg: &Consortium, hsm: &Arc<Hsm>) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = tls::load_certs(&cfg.certificate).map_err(|e| e.to_string())?;
    let key = HsmSigningKey::new(hsm.clone()).map_err(|e| e.to_string())?;
    let certified = Arc::new(CertifiedKey::new(chain, Arc::new(key)));
    let mut roots = rustls::RootCertStore::empty();
    for ca in tls::load_certs(&cfg.ca).map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider()).build().map_err(|e| e.to_string())?;
    let mut c = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(certified)));
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The organisation (O) of a certificate: the consortium hospital id.
pub fn organisation(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let o = cert.subject().iter_organization().next()?.as_str().ok()?.to_owned();
    Some(o)
}

fn json(status: u16, v: &impl Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Serves other gateways until `stop` changes.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, service: Arc<dyn PeerService>, mut stop: watch::Receiver<bool>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r { Ok(v) => v, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::info!(peer = %addr, "peer TLS handshake refused");
                    return;
                }
            };
            let Some(requester) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| organisation(c.as_ref())) else {
                tracing::info!(peer = %addr, "peer certificate names no organisation; closed");
                return;
            };
            // The consortium CA vouches for the name; the ledger says whether it is still a member
            // (asked again, and counted, for every request: a connection outlives membership).
            if !service.is_member(&requester) {
                tracing::warn!(peer = %addr, hospital = %requester, "peer connection from a hospital that is not a current member; its requests are refused");
            }
            let handler = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (service, requester) = (service.clone(), requester.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(service.as_ref(), &requester, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), handler).await;
        });
    }
}

/// One peer request: `POST /peer/v1/read`, `/peer/v1/checkpoint` or `/peer/v1/blocks`.
async fn answer(service: &dyn PeerService, requester: &str, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let refused = |e: GatewayError| {
        let (status, r) = refusal(&e);
        json(status, &r)
    };
    if !service.is_member(requester) {
        service.count("peer_requests_from_non_members");
        return refused(GatewayError::Forbidden("not-a-member".into()));
    }
    let path = req.uri().path().to_owned();
    let transport = req.headers().get(TRANSPORT_HEADER).is_some_and(|v| v.as_bytes() == TRANSPORT_AES_GCM.as_bytes());
    if req.method() != hyper::Method::POST || !PeerRequest::PATHS.contains(&path.as_str()) {
        return refused(GatewayError::NotFound("no-such-endpoint".into()));
    }
    let Ok(body) = Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await.map(|b| b.to_bytes()) else {
        return refused(GatewayError::BadRequest("bad-request".into()));
    };
    match PeerRequest::decode(&path, &body) {
        Err(e) => refused(e),
        Ok(PeerRequest::Blocks(r)) => match service.blocks(requester, r.from) {
            Ok(blocks) => {
                let mut r = Response::new(Full::new(Bytes::from(blocks)));
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                r
            }
            Err(e) => refused(e),
        },
        Ok(PeerRequest::Checkpoint(cp)) => match service.checkpoint(requester, cp).await {
            Ok(verdict) => json(200, &Refusal { reason: verdict }),
            Err(e) => refused(e),
        },
        Ok(PeerRequest::Read(read)) => match service.read(requester, ReadRequest { transport, ..read }).await {
            Ok(grant) => json(200, &grant),
            Err(e) => refused(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transport offer travels as a header, so a custodian that knows nothing of it (its
    /// requests refuse unknown fields) answers a new requester as before; and a grant without a
    /// transport key is what such a custodian sends and an older requester reads.
    #[test]
    fn the_transport_offer_and_key_leave_the_old_messages_as_they_were() {
        let req = ReadRequest { record_id: "r".into(), user: "u".into(), role: "physician".into(), purpose: "TREAT".into(), transport: true };
        let body = serde_json::to_value(&req).expect("serde");
        assert_eq!(body, serde_json::json!({"record_id": "r", "user": "u", "role": "physician", "purpose": "TREAT"}));
        let mut with_field = body.clone();
        with_field["transport"] = true.into();
        assert!(PeerRequest::decode("/peer/v1/read", with_field.to_string().as_bytes()).is_err(), "not a body field");
        let Ok(PeerRequest::Read(decoded)) = PeerRequest::decode("/peer/v1/read", body.to_string().as_bytes()) else { panic!("decodes") };
        assert!(!decoded.transport, "only the header offers it");
        let grant = ReadGrant {
            record_id: "r".into(),
            content_type: "text/plain".into(),
            content_hash: "00".into(),
            doc_nonce: "AA".into(),
            doc_ct: "AA".into(),
            shared_key: "AQID".into(),
            transport_key: None,
        };
        let old = serde_json::to_value(&grant).expect("serde");
        assert!(old.get("transport_key").is_none(), "{old}");
        assert_eq!(decode_grant("hospital-a", old.to_string().as_bytes()).expect("serde").transport_key, None);
        let new = serde_json::to_string(&ReadGrant { transport_key: Some("BAUG".into()), ..grant }).expect("serde");
        assert_eq!(decode_grant("hospital-a", new.as_bytes()).expect("serde").transport_key.as_deref(), Some("BAUG"));
    }
}
